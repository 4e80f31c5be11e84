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
    """``torch.empty`` (fp32 by default), NaN-filled under ``MIXIR_POISON``."""
    t = torch.empty(*shape, device=device, dtype=dtype)
    if poison():
        t.fill_(float("nan"))
    return t


def packed(x, dtype=None):
    """[B, T, H(, D)] -> contiguous [B*T, H(, D)], converted to ``dtype`` when given (None stays
    None)."""
    if x is None:
        return None
    x = x.contiguous() if dtype is None else x.to(dtype).contiguous()
    return x.view(x.shape[0] * x.shape[1], *x.shape[2:])


class ChunkPlan:
    """Packed-sequence bookkeeping shared by the kernels of one call (see the module docstring);
    ``BT`` None: only the sequence offsets (the token-loop kernels need no chunk tables)."""

    def __init__(self, q, cu_seqlens, BT):
        B, T, H, K = q.shape
        device = q.device
        if cu_seqlens is None:
            offsets = torch.arange(B + 1, dtype=torch.int64) * T
        else:
            assert B == 1, "cu_seqlens requires B == 1 (packed sequences)"
            offsets = cu_seqlens.detach().to("cpu", torch.int64)
            assert offsets.dim() == 1 and offsets.numel() >= 2
            assert int(offsets[0]) == 0 and int(offsets[-1]) == T
            assert bool((offsets[1:] >= offsets[:-1]).all()), "cu_seqlens must be non-decreasing"
        self.B, self.T, self.H = B, T, H
        self.N = offsets.numel() - 1
        self.T_total = B * T
        self.cu = offsets.to(device=device, dtype=torch.int32)
        if BT is not None:
            lens = offsets[1:] - offsets[:-1]
            nts = (lens + BT - 1) // BT
            chunk_off = torch.zeros(self.N + 1, dtype=torch.int64)
            chunk_off[1:] = torch.cumsum(nts, 0)
            self.NT = int(chunk_off[-1])
            seq = torch.repeat_interleave(torch.arange(self.N, dtype=torch.int64), nts)
            local = torch.arange(self.NT, dtype=torch.int64) - torch.repeat_interleave(chunk_off[:-1], nts)
            self.chunk_tbl = torch.stack([seq, local], 1).to(device=device, dtype=torch.int32).contiguous()
            self.chunk_off = chunk_off.to(device=device, dtype=torch.int32)


__all__ = ["LOG_FLOOR", "ChunkPlan", "empty", "packed", "poison", "tile"]
