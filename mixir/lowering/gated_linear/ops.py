"""The gated-linear core as torch custom ops (``mixir::gla_fwd`` / ``mixir::gla_bwd``).

Registering the Triton-backed core as custom ops with fake (shape/dtype) functions and an
autograd formula makes compiled mixers work inside ``torch.compile``d models without graph breaks:
dynamo sees one opaque op per call, inductor fuses the pointwise prologue/epilogue around it.
Optional tensors that an op cannot return as ``None`` travel as empty tensors.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..common.launch import decode_config
from . import core



def _num_seqs(q, cu_seqlens):
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


@torch.library.custom_op("mixir::gla_fwd", mutates_args=())
def gla_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
            gk: Optional[torch.Tensor], gv: Optional[torch.Tensor], h0: Optional[torch.Tensor],
            cu_seqlens: Optional[torch.Tensor], strategy: str, config: str, scale: float = 1.0,
            out_fp32: bool = True, bias: Optional[torch.Tensor] = None,
            v_scale: Optional[torch.Tensor] = None, v_bias: Optional[torch.Tensor] = None,
            g_scale: Optional[torch.Tensor] = None, gk_scale: Optional[torch.Tensor] = None,
            o_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """o = o_scale * scale * core(q, k, v_scale * v; log-decays g * g_scale, gk * gk_scale)
    + bias (+ v_bias * v), in fp32 or q's dtype (``out_fp32``), and the final state (``v_scale``
    [B, T, H], ``v_bias`` [H], ``g_scale`` [H], ``gk_scale`` [H, K], ``o_scale`` [B, T, H]:
    optional)."""
    o, hT = core.gla_forward(q, k, v, g, gk, gv, h0, cu_seqlens, strategy=strategy,
                             config=decode_config(config), output_final_state=True, scale=scale,
                             out_dtype=_out_dtype(q, out_fp32), bias=bias, v_scale=v_scale,
                             v_bias=v_bias, g_scale=g_scale, gk_scale=gk_scale, o_scale=o_scale)
    return o, hT


def _out_dtype(q, out_fp32):
    return torch.float32 if out_fp32 else q.dtype


@gla_fwd.register_fake
def _(q, k, v, g, gk, gv, h0, cu_seqlens, strategy, config, scale=1.0, out_fp32=True, bias=None,
      v_scale=None, v_bias=None, g_scale=None, gk_scale=None, o_scale=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    return (q.new_empty((B, T, H, V), dtype=_out_dtype(q, out_fp32)),
            q.new_empty((N, H, K, V), dtype=torch.float32))


@torch.library.custom_op("mixir::gla_bwd", mutates_args=())
def gla_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
            gk: Optional[torch.Tensor], gv: Optional[torch.Tensor], h0: Optional[torch.Tensor],
            cu_seqlens: Optional[torch.Tensor], do: torch.Tensor, dhT: Optional[torch.Tensor],
            strategy: str, config: str, scale: float = 1.0,
            v_scale: Optional[torch.Tensor] = None, v_bias: Optional[torch.Tensor] = None,
            g_scale: Optional[torch.Tensor] = None, gk_scale: Optional[torch.Tensor] = None,
            o_scale: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Gradients of ``gla_fwd``: dq, dk, dv in the input dtype, the gates', h0's, v_scale's,
    v_bias's, g_scale's, gk_scale's and o_scale's in fp32."""
    grads = core.gla_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, strategy=strategy,
                              config=decode_config(config), scale=scale, grad_dtype=q.dtype,
                              v_scale=v_scale, v_bias=v_bias, g_scale=g_scale,
                              gk_scale=gk_scale, o_scale=o_scale)
    grads = list(grads)
    de = grads.pop() if o_scale is not None else None
    dak = grads.pop() if gk_scale is not None else None
    da = grads.pop() if g_scale is not None else None
    grads = (tuple(grads) + ((None, None) if v_scale is None and v_bias is None else ())
             + (da, dak, de))
    return [q.new_empty((0,), dtype=torch.float32) if x is None else x for x in grads]


@gla_bwd.register_fake
def _(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, strategy, config, scale=1.0, v_scale=None,
      v_bias=None, g_scale=None, gk_scale=None, o_scale=None):
    def like(t, dtype=torch.float32):
        return q.new_empty((0,), dtype=torch.float32) if t is None else t.new_empty(t.shape, dtype=dtype)
    return [like(q, q.dtype), like(k, q.dtype), like(v, torch.float32 if v.dtype == torch.float32 else q.dtype), like(g), like(gk), like(gv),
            like(h0), like(v_scale), like(v_bias), like(g_scale), like(gk_scale), like(o_scale)]


def _setup(ctx, inputs, output):
    (q, k, v, g, gk, gv, h0, cu_seqlens, strategy, config, scale, _, bias, v_scale, v_bias,
     g_scale, gk_scale, o_scale) = inputs
    ctx.save_for_backward(q, k, v, g, gk, gv, h0, cu_seqlens, v_scale, v_bias, g_scale, gk_scale,
                          o_scale)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.strategy, ctx.config, ctx.scale = strategy, config, scale
    # an unused output's gradient stays None (not a zero tensor): no final-state adjoint pass
    ctx.set_materialize_grads(False)


def _backward(ctx, do, dhT):
    (q, k, v, g, gk, gv, h0, cu_seqlens, v_scale, v_bias, g_scale, gk_scale,
     o_scale) = ctx.saved_tensors
    if do is None:
        do = q.new_zeros(q.shape[:3] + v.shape[-1:])
    dq, dk, dv, dg, dgk, dgv, dh0, du, dc, da, dak, de = torch.ops.mixir.gla_bwd(
        q, k, v, g, gk, gv, h0, cu_seqlens, do.contiguous(), dhT, ctx.strategy, ctx.config,
        ctx.scale, v_scale, v_bias, g_scale, gk_scale, o_scale)
    present = (g, gk, gv, h0, v_scale, v_bias, g_scale, gk_scale, o_scale)
    dg, dgk, dgv, dh0, du, dc, da, dak, de = (
        None if p is None else d.to(p.dtype)
        for d, p in zip((dg, dgk, dgv, dh0, du, dc, da, dak, de), present))
    dbias = None if ctx.bias_dtype is None else do.to(ctx.bias_dtype)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dgk, dgv, dh0, None, None, None,
            None, None, dbias, du, dc, da, dak, de)


gla_fwd.register_autograd(_backward, setup_context=_setup)
