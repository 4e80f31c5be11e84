"""What every fla drop-in shares: fla 0.6's keyword conventions, checks and result shapes.

- ``**kwargs``: fla 0.6 raises ``DeprecationWarning`` (as an exception) for ``head_first`` in its
  ``chunk_*`` ops and silently ignores it in its ``fused_recurrent_*`` ops; here every op raises it
  (a head-first tensor read as ``[B, T, H, ...]`` is a silent wrong answer). ``chunk_size`` and
  ``chunk_indices`` are performance knobs of fla's kernels: accepted, no effect (mixir chooses its
  own chunk). ``transpose_state_layout`` is the deprecated alias of ``state_v_first`` (warning, as
  fla). ``cp_context`` (context parallelism) is refused by name.
- ``cu_seqlens``: fla's two ``ValueError`` checks (batch 1, one initial state per sequence), then
  mixir's own checks of the offsets.
- ``reverse``: the recurrence run from the last token to the first is the forward recurrence on
  the time-reversed sequences (each sequence of ``cu_seqlens`` reversed in place), so it is computed
  as such: flip, run, flip the output back.
- results: fla returns ``(o, final_state)`` with ``final_state = None`` unless
  ``output_final_state``; ``state_v_first`` stores states as ``[N, H, V, K]``.
"""
from __future__ import annotations

import warnings

import torch

from ...errors import InputError

HEAD_FIRST = "head_first has been removed. Inputs must be in `[B, T, H, ...]` format."


def options(name: str, kwargs: dict, state_v_first: bool = False) -> bool:
    """Apply fla's handling of the extra keywords of op ``name``; returns ``state_v_first``
    (folding in the deprecated ``transpose_state_layout``)."""
    if "head_first" in kwargs:
        raise DeprecationWarning(HEAD_FIRST)
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise InputError(f"{name}: Cannot pass both `state_v_first` and the deprecated "
                             "`transpose_state_layout`.")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.",
                      DeprecationWarning, stacklevel=3)
        state_v_first = bool(kwargs.pop("transpose_state_layout"))
    if kwargs.get("cp_context") is not None:
        raise InputError(f"{name}: cp_context (fla's context parallelism across devices) is not "
                         "supported by mixir; run each device's sequences with cu_seqlens instead")
    return state_v_first


def check_varlen(name: str, x, initial_state, cu_seqlens) -> None:
    """fla's checks of a packed (``cu_seqlens``) call, with fla's messages."""
    if cu_seqlens is None:
        return
    if x.shape[0] != 1:
        raise InputError(f"{name}: The batch size is expected to be 1 rather than {x.shape[0]} when "
                         "using `cu_seqlens`. Please flatten variable-length inputs before processing.")
    if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
        raise InputError(f"{name}: The number of initial states is expected to be equal to the number "
                         f"of input sequences, i.e., {len(cu_seqlens) - 1} rather than "
                         f"{initial_state.shape[0]}.")


def tensor(name: str, arg: str, x, ndim: int | None = None):
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: {arg} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise InputError(f"{name}: {arg} must have {ndim} dims, got shape {tuple(x.shape)}")
    return x


def swap(state):
    """``[.., K, V]`` <-> ``[.., V, K]`` (``state_v_first``); ``None`` stays ``None``."""
    return None if state is None else state.transpose(-1, -2)


def pair(res, output_final_state: bool, v_first: bool = False):
    """A library wrapper's result (``o`` or ``(o, S)``) as fla's ``(o, S or None)``."""
    if output_final_state:
        o, S = res
        return o, (swap(S) if v_first else S)
    return res, None


def v_like_q(q, v):
    """fla's ``fused_recurrent_{linear_attn, retention, simple_gla, gla}`` compute in fp32 and return
    ``o.to(q.dtype)``: with fp32 q a 16-bit v is read in fp32, so the result is fp32 (the library,
    like fla's other ops, would return v's dtype)."""
    if isinstance(q, torch.Tensor) and isinstance(v, torch.Tensor) and q.dtype == torch.float32:
        return v.float()
    return v


def reversal(T: int, cu_seqlens, device):
    """Indices along time that reverse each sequence in place (all of ``T`` without cu_seqlens)."""
    pos = torch.arange(T, device=device)
    if cu_seqlens is None:
        return T - 1 - pos
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    seq = torch.searchsorted(cu[1:], pos, right=True).clamp(max=cu.numel() - 2)
    return cu[seq] + cu[seq + 1] - 1 - pos


def flip(x, idx):
    return None if x is None else x.index_select(1, idx)


def run(fn, tensors: dict, reverse: bool, cu_seqlens, output_final_state: bool, **kw):
    """``fn(**tensors, **kw)`` (a library wrapper) with fla's ``reverse``: per-token tensors of
    ``tensors`` are flipped in time before and the output after."""
    if not reverse:
        return fn(**tensors, cu_seqlens=cu_seqlens, output_final_state=output_final_state, **kw)
    first = next(iter(tensors.values()))
    idx = reversal(first.shape[1], cu_seqlens, first.device)
    res = fn(**{n: flip(t, idx) for n, t in tensors.items()}, cu_seqlens=cu_seqlens,
             output_final_state=output_final_state, **kw)
    if output_final_state:
        return flip(res[0], idx), res[1]
    return flip(res, idx)


def n_sequences(x, cu_seqlens) -> int:
    return x.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
