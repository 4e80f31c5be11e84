"""The Householder core as torch custom ops (``mixir::delta_fwd`` / ``mixir::delta_bwd``), so that
compiled delta-rule mixers trace under ``torch.compile`` as one opaque op per call (as the
gated-linear core does in gated_linear/ops.py). Optional tensors the backward cannot return as ``None``
travel as empty tensors.

Dtypes: o is fp32, or the input dtype with ``o_input_dtype`` (then the kernel rounds once, and no
conversion pass follows); hT fp32. The chunked backward returns dq, dk, dv in the input dtype (the
kernel's stores round, as the cast in ``_backward`` would) and dβ, dg in β's and g's dtype, the
recurrent one fp32; dh0 fp32. ``q_scale`` and ``v_beta``: the pieces the core applies on load
(``core``; gradients are those of the q, v, β passed in)."""
from __future__ import annotations

from typing import Optional

import torch

from . import core
from ..common.launch import decode_config


@torch.library.custom_op("mixir::delta_fwd", mutates_args=())
def delta_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
              g: Optional[torch.Tensor], h0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
              strategy: str, config: str, n_h: int = 1, o_input_dtype: bool = False,
              q_scale: float = 1.0, v_beta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return core.delta_forward(q, k, v, beta, g, h0, cu_seqlens, strategy, decode_config(config), n_h,
                              out_dtype=q.dtype if o_input_dtype else torch.float32,
                              q_scale=q_scale, v_beta=v_beta)


@delta_fwd.register_fake
def _(q, k, v, beta, g, h0, cu_seqlens, strategy, config, n_h=1, o_input_dtype=False, q_scale=1.0,
      v_beta=False):
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (q.new_empty((B, T, H, v.shape[-1]), dtype=q.dtype if o_input_dtype else torch.float32),
            q.new_empty((N, H, K, v.shape[-1]), dtype=torch.float32))


@torch.library.custom_op("mixir::delta_bwd", mutates_args=())
def delta_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
              g: Optional[torch.Tensor], h0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
              do: torch.Tensor, dhT: Optional[torch.Tensor], strategy: str, config: str,
              n_h: int = 1, q_scale: float = 1.0, v_beta: bool = False) -> list[torch.Tensor]:
    grads = core.delta_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy,
                                decode_config(config), n_h, q_scale, v_beta)
    return [q.new_empty((0,), dtype=torch.float32) if x is None else x for x in grads]


@delta_bwd.register_fake
def _(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy, config, n_h=1, q_scale=1.0, v_beta=False):
    def like(t, keep=False):
        if t is None:
            return q.new_empty((0,), dtype=torch.float32)
        return t.new_empty(t.shape, dtype=t.dtype if keep else torch.float32)
    keep = strategy == "chunked" and core.grads_in_input_dtype(q.dtype)
    chunked = strategy == "chunked"
    return [like(q, keep), like(k, keep), like(v, keep), like(beta, chunked), like(g, chunked),
            like(h0)]


def _setup(ctx, inputs, output):
    q, k, v, beta, g, h0, cu_seqlens, strategy, config, n_h, _, q_scale, v_beta = inputs
    ctx.save_for_backward(q, k, v, beta, g, h0, cu_seqlens)
    ctx.o_shape, ctx.o_dtype = output[0].shape, output[0].dtype
    ctx.strategy, ctx.config, ctx.n_h = strategy, config, n_h
    ctx.q_scale, ctx.v_beta = q_scale, v_beta
    # an unused output's gradient stays None (not a zero tensor): no final-state adjoint read
    ctx.set_materialize_grads(False)


def _backward(ctx, do, dhT):
    q, k, v, beta, g, h0, cu_seqlens = ctx.saved_tensors
    if do is None:
        do = torch.zeros(ctx.o_shape, dtype=ctx.o_dtype, device=q.device)
    dq, dk, dv, db, dg, dh0 = torch.ops.mixir.delta_bwd(q, k, v, beta, g, h0, cu_seqlens, do.contiguous(),
                                                         dhT, ctx.strategy, ctx.config, ctx.n_h,
                                                         ctx.q_scale, ctx.v_beta)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db, dg if g is not None else None,
            dh0 if h0 is not None else None, None, None, None, None, None, None, None)


delta_fwd.register_autograd(_backward, setup_context=_setup)
