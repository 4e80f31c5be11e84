"""Host-side bookkeeping of packed sequences, shared by the families whose kernels walk chunks of
sequences (gated-linear, Householder).

Every sequence tensor is packed as [T_total, H, D] (contiguous); the sequences are given by
``cu_seqlens`` (N + 1 offsets), or are the B rows of a [B, T, ...] batch. A chunked kernel splits
each sequence into chunks of BT tokens that never cross a sequence boundary:

* ``ChunkPlan(q, cu_seqlens, BT)``: ``cu`` (int32 offsets on q's device), ``N`` sequences,
  ``T_total`` tokens, and with a chunk length BT the chunk tables: ``NT`` chunks in all,
  ``chunk_tbl`` [NT, 2] (chunk c is chunk ``chunk_tbl[c, 1]`` of sequence ``chunk_tbl[c, 0]``)
  and ``chunk_off`` [N + 1] (sequence n owns chunks ``chunk_off[n] .. chunk_off[n + 1] - 1``).
  ``cu_seqlens`` is read on the host (one device sync per call, like fla).
* ``empty``: an output / scratch buffer; with the environment variable ``MIXIR_POISON`` set (to
  anything but "" / "0") it is NaN-filled, so an element a kernel forgets to write shows up.
* ``packed``: [B, T, H(, D)] -> contiguous [B*T, H(, D)].
* ``tile``: the power-of-two tile extent of a dimension (>= 16 for ``tl.dot``), under a cap.
* ``LOG_FLOOR``: the floor of the per-step log-decays of the chunked strategies: exp(-100) ~ 4e-44
  is a gate that is already 0 in fp32 terms, and it bounds |cumsum| by BT * 100, so differences of
  chunk-local cumulative sums stay accurate when tiny and huge (-1e4) decays are mixed.
"""
from __future__ import annotations

import os

import torch

from ...tiles import pow2

LOG_FLOOR = -100.0


def tile(n: int, cap: int) -> int:
    """Power-of-two tile extent for a dimension of size n: >= 16 (tl.dot), <= max(cap, 16)."""
    return max(16, min(pow2(n), cap))


def poison() -> bool:
    """Whether ``MIXIR_POISON`` asks for NaN-filled buffers."""
    return os.environ.get("MIXIR_POISON", "") not in ("", "0")


def empty(*shape, device, dtype=torch.float32):
    """``torch.empty`` (fp32 by default), NaN-filled under ``MIXIR_POISON`` (floating dtypes;
    integer buffers, e.g. flags, are left as allocated)."""
    t = torch.empty(*shape, device=device, dtype=dtype)
    if poison() and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def packed(x, dtype=None):
    """[B, T, H(, D)] -> contiguous [B*T, H(, D)], converted to ``dtype`` when given (None stays
    None)."""
    if x is None:
        return None
    x = x.contiguous() if dtype is None else x.to(dtype).contiguous()
    return x.view(x.shape[0] * x.shape[1], *x.shape[2:])


_TABLES: dict = {}      # (offsets, BT, device) -> (cu, N, NT, chunk_tbl, chunk_off)
_TABLES_MAX = 64


def fp32_state(x, *shape):
    """A state tensor of ``shape`` (e.g. [N, H, K, V]) as a contiguous fp32 tensor (None stays
    None)."""
    if x is None:
        return None
    assert tuple(x.shape) == shape, (tuple(x.shape), shape)
    return x.to(torch.float32).contiguous()


def _tables(offsets: tuple, BT, device):
    """The device-side offsets and chunk tables of one packing, built once per (offsets, BT,
    device) and then reused (read-only): no host-side table building and no host-to-device copies
    on later calls of the same shape."""
    key = (offsets, BT, str(device))
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    off = torch.tensor(offsets, dtype=torch.int64)
    N = off.numel() - 1
    cu = off.to(device=device, dtype=torch.int32)
    NT = chunk_tbl = chunk_off = None
    if BT is not None:
        lens = off[1:] - off[:-1]
        nts = (lens + BT - 1) // BT
        co = torch.zeros(N + 1, dtype=torch.int64)
        co[1:] = torch.cumsum(nts, 0)
        NT = int(co[-1])
        seq = torch.repeat_interleave(torch.arange(N, dtype=torch.int64), nts)
        local = torch.arange(NT, dtype=torch.int64) - torch.repeat_interleave(co[:-1], nts)
        chunk_tbl = torch.stack([seq, local], 1).to(device=device, dtype=torch.int32).contiguous()
        chunk_off = co.to(device=device, dtype=torch.int32)
    if len(_TABLES) >= _TABLES_MAX:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = hit = (cu, N, NT, chunk_tbl, chunk_off)
    return hit


class ChunkPlan:
    """Packed-sequence bookkeeping shared by the kernels of one call (see the module docstring);
    ``BT`` None: only the sequence offsets (the token-loop kernels need no chunk tables). The
    tables are cached per packing (``_tables``)."""

    def __init__(self, q, cu_seqlens, BT):
        B, T, H, K = q.shape
        device = q.device
        if cu_seqlens is None:
            offsets = tuple(range(0, (B + 1) * T, T)) if T else (0,) * (B + 1)
        else:
            assert B == 1, "cu_seqlens requires B == 1 (packed sequences)"
            off = cu_seqlens.detach().to("cpu", torch.int64)
            assert off.dim() == 1 and off.numel() >= 2
            assert int(off[0]) == 0 and int(off[-1]) == T
            assert bool((off[1:] >= off[:-1]).all()), "cu_seqlens must be non-decreasing"
            offsets = tuple(off.tolist())
        self.B, self.T, self.H = B, T, H
        self.T_total = B * T
        self.cu, self.N, NT, chunk_tbl, chunk_off = _tables(offsets, BT, device)
        if BT is not None:
            self.NT, self.chunk_tbl, self.chunk_off = NT, chunk_tbl, chunk_off


__all__ = ["LOG_FLOOR", "ChunkPlan", "empty", "fp32_state", "packed", "poison", "tile"]
