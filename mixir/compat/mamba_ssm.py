"""Drop-ins for mamba_ssm 2.3's scans, over mixir's declared Mamba mixers (``mixir.library.ssm``).

- ``selective_scan_fn`` (``mamba_ssm.ops.selective_scan_interface``): Mamba-1, layout ``[B, D, L]``,
  → ``library.mamba`` (the four declared variants: with/without ``z``, with/without softplus);
- ``mamba_chunk_scan_combined`` (``mamba_ssm.ops.triton.ssd_combined``): Mamba-2 SSD, layout
  ``[b, l, h, p]``, → ``library.mamba2`` with mixir's chunked strategy.

Same names, signatures, layouts and results as mamba_ssm 2.3.2. What is computed in torch around
the declared scan: mamba_ssm's ``dt`` preprocessing (``dt_bias``, softplus, the ``dt_limit`` clamp —
always applied, as its kernel does), a per-channel ``D [h, p]`` skip and the ``silu(z)`` gate of
Mamba-2. ``seq_idx`` becomes sequence boundaries (``cu_seqlens`` of a packed call). Refused, as
``InputError`` naming the argument: complex ``A``, a decreasing ``seq_idx``, and the varlen-state
combinations whose mamba_ssm meaning is not a per-sequence scan (docs/compat.md).
"""
from __future__ import annotations

import torch

import mixir.library as lib
from ..errors import InputError
from ..library.ssm import mamba2_scan

MAMBA_SSM_VERSION = "2.3.2.post1"

__all__ = ["MAMBA_SSM_VERSION", "selective_scan_fn", "mamba_chunk_scan_combined"]


def _tensor(fn, name, t, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise InputError(f"{fn}: {name} must have {ndim} dims, got shape {tuple(t.shape)}")
    return t


# ---- Mamba-1 -----------------------------------------------------------------------------------


def _scan_input(name, t, Bsz, D, L):
    """B or C of selective_scan_fn → the library's ``[B, L, N]`` / ``[B, L, G, N]``; a time-invariant
    ``[D, N]`` passes through (the library broadcasts it over batch and time)."""
    _tensor("selective_scan_fn", name, t, (2, 3, 4))
    if t.is_complex():
        raise InputError(f"selective_scan_fn: complex {name} is not supported (real A, B, C only)")
    if t.ndim == 2:
        return t
    if t.shape[0] != Bsz or t.shape[-1] != L:
        raise InputError(f"selective_scan_fn: {name} must be [B, N, L] or [B, G, N, L] with B = {Bsz}, "
                         f"L = {L}, got {tuple(t.shape)}")
    return t.transpose(1, 2) if t.ndim == 3 else t.permute(0, 3, 1, 2)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm's selective scan: ``out [B, D, L]``, or ``(out, last_state [B, D, N])`` with
    ``return_last_state``. u, delta, z ``[B, D, L]``; A ``[D, N]`` (real); B, C ``[B, N, L]``,
    ``[B, G, N, L]`` or time-invariant ``[D, N]``; D, delta_bias ``[D]``. Unlike mamba_ssm, the
    gradient does flow from ``last_state``."""
    fn = "selective_scan_fn"
    _tensor(fn, "u", u, 3)
    _tensor(fn, "delta", delta, 3)
    _tensor(fn, "A", A, 2)
    if A.is_complex():
        raise InputError(f"{fn}: complex A (S4D-style complex state) is not supported: mixir's Mamba "
                         "mixers are declared with a real A (declare the real and imaginary parts as "
                         "two states for a complex scan)")
    Bsz, Dch, L = u.shape
    if tuple(delta.shape) != (Bsz, Dch, L) or (z is not None and tuple(z.shape) != (Bsz, Dch, L)):
        raise InputError(f"{fn}: delta and z must be [B, D, L] = {(Bsz, Dch, L)} like u, got "
                         f"{tuple(delta.shape)}" + ("" if z is None else f" and {tuple(z.shape)}"))
    res = lib.mamba(u.transpose(1, 2), delta.transpose(1, 2), A, _scan_input("B", B, Bsz, Dch, L),
                    _scan_input("C", C, Bsz, Dch, L), D=D, z=None if z is None else z.transpose(1, 2),
                    delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
                    output_final_state=bool(return_last_state))
    if return_last_state:
        out, last = res
        return out.transpose(1, 2), last
    return res.transpose(1, 2)


# ---- Mamba-2 -----------------------------------------------------------------------------------


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                              dt_limit=(0.0, float("inf")), return_final_states=False,
                              return_varlen_states=False):
    """mamba_ssm's Mamba-2 SSD scan. x ``[b, l, h, p]``, dt ``[b, l, h]``, A ``[h]``, B, C
    ``[b, l, g, n]``, D ``[h]`` or ``[h, p]``, z ``[b, l, h, p]`` (``out = y·silu(z)``), dt_bias
    ``[h]``, initial_states ``[b, h, p, n]``, seq_idx ``[b, l]`` (a new sequence where it
    changes; the initial state feeds a row's first sequence when its id is 0, as in mamba_ssm).
    ``chunk_size`` is accepted and unused (mixir picks its chunk). Returns ``out``,
    ``(out, final_states [b, h, p, n])``, ``(out, varlen_states [S, h, p, n])`` or
    ``(out, final_states, varlen_states)``. ``cu_seqlens`` is read only with
    ``return_varlen_states`` (as mamba_ssm), which needs batch 1 and a ``seq_idx`` whose
    sequences are those of ``cu_seqlens``."""
    fn = "mamba_chunk_scan_combined"
    _tensor(fn, "x", x, 4)
    b, L, h, p = x.shape
    if tuple(_tensor(fn, "dt", dt, 3).shape) != (b, L, h):
        raise InputError(f"{fn}: dt must be [b, l, h] = {(b, L, h)}, got {tuple(dt.shape)}")
    if tuple(_tensor(fn, "A", A).shape) != (h,):
        raise InputError(f"{fn}: A must be [h] = [{h}], got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if _tensor(fn, name, t, 4).shape[:2] != (b, L) or h % t.shape[2]:
            raise InputError(f"{fn}: {name} must be [b, l, g, n] with b = {b}, l = {L} and g dividing "
                             f"h = {h}, got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise InputError(f"{fn}: D must be [h] or [h, p] = {(h, p)}, got {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != tuple(x.shape):
        raise InputError(f"{fn}: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    n = B.shape[-1]
    if initial_states is not None and tuple(initial_states.shape) != (b, h, p, n):
        raise InputError(f"{fn}: initial_states must be [b, h, p, n] = {(b, h, p, n)}, got "
                         f"{tuple(initial_states.shape)}")
    if return_varlen_states:
        _check_varlen(fn, cu_seqlens, seq_idx, b, initial_states)
    h0 = None if initial_states is None else initial_states.transpose(-1, -2)   # [.., n, p]
    y, final, per_seq = mamba2_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, tuple(dt_limit), h0,
                                    None, seq_idx, None, "chunked", fn)
    out = [y]
    if return_final_states:
        out.append(final.transpose(-1, -2))
    if return_varlen_states:
        out.append(per_seq.transpose(-1, -2))
    return out[0] if len(out) == 1 else tuple(out)


def _check_varlen(fn, cu_seqlens, seq_idx, b, initial_states):
    """mamba_ssm's varlen states are per-sequence final states only when the scan restarts at each
    sequence (``seq_idx`` matching ``cu_seqlens``) and no initial state is involved."""
    if cu_seqlens is None:
        raise InputError(f"{fn}: cu_seqlens must be provided if return_varlen_states is True")
    if b != 1:
        raise InputError(f"{fn}: passing cu_seqlens to get the varlen states is only supported if the "
                         f"batch dimension is 1, got {b}")
    if seq_idx is None:
        raise InputError(f"{fn}: return_varlen_states needs seq_idx marking the sequences of cu_seqlens: "
                         "without it mamba_ssm's scan runs across sequence boundaries and its varlen "
                         "states mix sequences at chunk granularity, which mixir does not reproduce")
    if initial_states is not None:
        raise InputError(f"{fn}: initial_states with return_varlen_states is not supported (mamba_ssm "
                         "drops the initial state from the varlen state of a first sequence shorter "
                         "than a chunk; mixir does not reproduce that)")
    cu = cu_seqlens.long().to(seq_idx.device)
    L = seq_idx.shape[-1]
    if cu.ndim != 1 or int(cu[0]) != 0 or int(cu[-1]) != L or bool((cu[1:] <= cu[:-1]).any()):
        raise InputError(f"{fn}: cu_seqlens must be increasing offsets from 0 to seqlen = {L}, got "
                         f"{cu.tolist()}")
    s = seq_idx.reshape(-1).long()
    change = torch.nonzero(s[1:] != s[:-1]).squeeze(1) + 1
    if change.tolist() != cu[1:-1].tolist():
        raise InputError(f"{fn}: seq_idx must change exactly at the boundaries of cu_seqlens "
                         f"{cu.tolist()} (it changes at {change.tolist()})")
