"""The Householder core as torch custom ops (``mixir::delta_fwd`` / ``mixir::delta_bwd``), so that
compiled delta-rule mixers trace under ``torch.compile`` as one opaque op per call (as the
gated-linear core does in gated_linear/ops.py). Optional tensors the backward cannot return as ``None``
travel as empty tensors."""
from __future__ import annotations

from typing import Optional

import torch

from . import core
from ..common.launch import decode_config


@torch.library.custom_op("mixir::delta_fwd", mutates_args=())
def delta_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
              g: Optional[torch.Tensor], h0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
              strategy: str, config: str, n_h: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return core.delta_forward(q, k, v, beta, g, h0, cu_seqlens, strategy, decode_config(config), n_h)


@delta_fwd.register_fake
def _(q, k, v, beta, g, h0, cu_seqlens, strategy, config, n_h=1):
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (q.new_empty((B, T, H, v.shape[-1]), dtype=torch.float32),
            q.new_empty((N, H, K, v.shape[-1]), dtype=torch.float32))


@torch.library.custom_op("mixir::delta_bwd", mutates_args=())
def delta_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
              g: Optional[torch.Tensor], h0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
              do: torch.Tensor, dhT: Optional[torch.Tensor], strategy: str, config: str,
              n_h: int = 1) -> list[torch.Tensor]:
    grads = core.delta_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy,
                                      decode_config(config), n_h)
    return [q.new_empty((0,), dtype=torch.float32) if x is None else x for x in grads]


@delta_bwd.register_fake
def _(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy, config, n_h=1):
    def like(t):
        return q.new_empty((0,), dtype=torch.float32) if t is None else t.new_empty(t.shape, dtype=torch.float32)
    return [like(q), like(k), like(v), like(beta), like(g), like(h0)]


def _setup(ctx, inputs, output):
    q, k, v, beta, g, h0, cu_seqlens, strategy, config, n_h = inputs
    ctx.save_for_backward(q, k, v, beta, g, h0, cu_seqlens)
    ctx.strategy, ctx.config, ctx.n_h = strategy, config, n_h


def _backward(ctx, do, dhT):
    q, k, v, beta, g, h0, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, db, dg, dh0 = torch.ops.mixir.delta_bwd(q, k, v, beta, g, h0, cu_seqlens, do.contiguous(),
                                                         dhT, ctx.strategy, ctx.config, ctx.n_h)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db, dg if g is not None else None,
            dh0 if h0 is not None else None, None, None, None, None)


delta_fwd.register_autograd(_backward, setup_context=_setup)
