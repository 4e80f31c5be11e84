"""A stabiliser state's max-plus scan (``analysis.MaxPlusForm``: mLSTM's m) as torch custom ops.

``maxplus_scan(a, b, m0, cu_seqlens)`` evaluates ``m_t = max(m_{t-1} + a_t, b_t)`` of every
sequence from ``m0`` in one launch of ``kernels/maxplus.maxplus_fwd`` (per sequence, head and
state element, blocks of tokens in order, an associative scan of the max-plus maps within each:
T / BT dependent steps), and its gradient in one launch of ``maxplus_bwd``: the subgradient that
follows the branch that attained each maximum (the carried one on ties). ``mixir::maxplus_fwd`` /
``maxplus_bwd`` are custom ops with fake functions, so the scan traces into ``torch.compile``
graphs as one op.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...tiles import cdiv, pow2
from ..common.chunks import ChunkPlan, empty
from .kernels import maxplus as _mk


def _grid(plan, H, D):
    """(grid, BT, BD): blocks of 64 tokens by up to 16 state elements."""
    BD = min(pow2(D), 16)
    return (plan.N * H, cdiv(D, BD)), 64, BD


@torch.library.custom_op("mixir::maxplus_fwd", mutates_args=())
def maxplus_fwd(a: torch.Tensor, b: torch.Tensor, m0: torch.Tensor,
                cu_seqlens: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m [B, T, H, D] in a's dtype, final [N, H, D], attained-branch flags int8 like m) of
    ``a, b`` [B, T, H, D] and ``m0`` [N, H, D]."""
    B, T, H, D = a.shape
    plan = ChunkPlan(a, cu_seqlens, None)
    m = empty(B * T, H, D, device=a.device, dtype=a.dtype)
    c = empty(B * T, H, D, device=a.device, dtype=torch.int8)
    fin = empty(plan.N, H, D, device=a.device, dtype=a.dtype)
    grid, BT, BD = _grid(plan, H, D)
    if plan.N > 0 and H > 0 and D > 0:
        _mk.maxplus_fwd[grid](a.contiguous(), b.contiguous(), m0.contiguous(), m, c, fin, plan.cu,
                              H, D, BT=BT, BD=BD, num_warps=2, num_stages=1)
    return m.view(B, T, H, D), fin, c.view(B, T, H, D)


@maxplus_fwd.register_fake
def _(a, b, m0, cu_seqlens):
    return a.new_empty(a.shape), m0.new_empty(m0.shape, dtype=a.dtype), a.new_empty(a.shape, dtype=torch.int8)


@torch.library.custom_op("mixir::maxplus_bwd", mutates_args=())
def maxplus_bwd(c: torch.Tensor, dm: Optional[torch.Tensor], dfin: Optional[torch.Tensor],
                m0: torch.Tensor, cu_seqlens: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db [B, T, H, D], dm0 [N, H, D]), fp32 (fp64 for fp64 m0) of ``maxplus_fwd`` at the
    adjoints ``dm`` of m and ``dfin`` of the final values (None: zero)."""
    B, T, H, D = c.shape
    plan = ChunkPlan(c, cu_seqlens, None)
    dtype = torch.float64 if m0.dtype == torch.float64 else torch.float32
    da = empty(B * T, H, D, device=c.device, dtype=dtype)
    db = empty(B * T, H, D, device=c.device, dtype=dtype)
    dm0 = empty(plan.N, H, D, device=c.device, dtype=dtype)
    grid, BT, BD = _grid(plan, H, D)
    if plan.N > 0 and H > 0 and D > 0:
        _mk.maxplus_bwd[grid](c, None if dm is None else dm.contiguous(),
                              None if dfin is None else dfin.contiguous(), da, db, dm0, plan.cu,
                              H, D, USE_DM=dm is not None, USE_DFIN=dfin is not None, BT=BT,
                              BD=BD, num_warps=2, num_stages=1)
    return da.view(B, T, H, D), db.view(B, T, H, D), dm0


@maxplus_bwd.register_fake
def _(c, dm, dfin, m0, cu_seqlens):
    dtype = torch.float64 if m0.dtype == torch.float64 else torch.float32
    return (c.new_empty(c.shape, dtype=dtype), c.new_empty(c.shape, dtype=dtype),
            m0.new_empty(m0.shape, dtype=dtype))


def _setup(ctx, inputs, output):
    a, b, m0, cu_seqlens = inputs
    ctx.save_for_backward(output[2], m0, cu_seqlens)
    ctx.dtypes = (a.dtype, b.dtype, m0.dtype)
    ctx.set_materialize_grads(False)


def _backward(ctx, dm, dfin, _dc):
    c, m0, cu_seqlens = ctx.saved_tensors
    if dm is None and dfin is None:
        return None, None, None, None
    da, db, dm0 = torch.ops.mixir.maxplus_bwd(c, dm, dfin, m0, cu_seqlens)
    return (da.to(ctx.dtypes[0]), db.to(ctx.dtypes[1]), dm0.to(ctx.dtypes[2]), None)


maxplus_fwd.register_autograd(_backward, setup_context=_setup)


def maxplus_scan(a, b, m0, cu_seqlens=None):
    """The max-plus recurrence ``m_t = max(m_{t-1} + a_t, b_t)`` of every sequence, from ``m0``:
    ``a, b`` ``[B, T, H, ...]`` (fp32 from the pieces kernel; b is read in a's dtype), ``m0``
    ``[N, H, ...]``, ``cu_seqlens`` packed sequences (B = 1). Returns (m like ``a``, final
    ``[N, H, ...]``: the last ``m`` of each sequence, ``m0`` for an empty one). Differentiable:
    the adjoint goes to the branch that attained each maximum (the carried one on ties)."""
    B, T, H = a.shape[:3]
    dims = tuple(a.shape[3:])
    D = math.prod(dims)
    m, fin, _ = torch.ops.mixir.maxplus_fwd(a.reshape(B, T, H, D), b.reshape(B, T, H, D),
                                            m0.reshape(m0.shape[0], H, D), cu_seqlens)
    return m.view(B, T, H, *dims), fin.view(fin.shape[0], H, *dims)
