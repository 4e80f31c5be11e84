"""The gated-linear core's "recurrent" strategy: one fused token loop, the state in registers.

``recurrent_forward`` / ``recurrent_backward`` take the core's tensors (``core``: layouts,
decays, ``cu_seqlens``) and a full config; each is one launch of ``kernels/recurrent``. One
program per (sequence·head, V-tile) holds the [K, BV] state tile and walks the tokens in order
(docs/gla_math.md, "Recurrent strategy"): no chunk tables, no tensor cores - the default for short
sequences (decoding), and valid for every decay form.

The forward applies the output scale and bias in its store (output in the caller's dtype). The
backward applies the scale to ``do`` on load, stores dq, dk, dv in the gradients' dtypes (one
V-tile: directly; several: fp32 partials of dq, dk, summed here) and writes the decay gradients'
terms (q·dq, −k·dk; o·do, −v·dv) into fp32 slices that ``core`` reverse-cumsums.
"""
import torch

from ...tiles import cdiv, pow2
from ..common.chunks import ChunkPlan, empty, fp32_state, packed, tile
from .cumsums import slices_sum
from .kernels import recurrent as _rc


def default_config(K, V) -> dict:
    BK = tile(K, 1 << 30)                         # the whole K extent is one register tile
    BV = tile(V, max(16, min(64, 4096 // BK)))
    return {"BK": BK, "BV": BV, "num_warps": 4 if BK * BV >= 2048 else 2, "num_stages": 1}


def _gk_mode(gk, gk_scale):
    """The kernels' USE_GK: 0 no key-side decay, 1 gk per key, 2 gk = u·a (u per token)."""
    return 0 if gk is None else 1 if gk_scale is None else 2


def _contiguous(x):
    return None if x is None else x.contiguous()


def _tiles(K, V, cfg):
    """(BK, BV): the whole K extent and the config's V-tile, each no larger than its head size's
    power of two - the kernels use no tl.dot, so a vector state (K or V = 1: Mamba-1, HGRN) holds
    a [K, 1] / [1, V] tile, not one padded to 16 (15/16 of its registers and FMAs idle)."""
    return pow2(K), min(pow2(V), tile(V, cfg["BV"]))


def recurrent_forward(q, k, v, g, gk, gv, h0, cu_seqlens, cfg, output_final_state, scale,
                      out_dtype, bias, gk_scale=None, o_scale=None):
    """(o = o_scale · scale · core + bias in ``out_dtype`` [B, T, H, V], hT fp32 [N, H, K, V] or
    None). ``gk_scale`` a [H, K]: the key-side log-decay is gk·a, gk a per-token factor [B, T, H];
    ``o_scale`` e [B, T, H]: a per-token output scale."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = ChunkPlan(q, cu_seqlens, None)
    N = plan.N
    h0 = fp32_state(h0, N, H, K, V)
    BK, BV = _tiles(K, V, cfg)
    o = empty(plan.T_total, H, V, device=q.device, dtype=out_dtype)
    hT = empty(N, H, K, V, device=q.device) if output_final_state else None
    f32 = torch.float32
    if N > 0:
        _rc.recurrent_gla_fwd[(N * H, cdiv(V, BV))](
            packed(q), packed(k), packed(v), packed(g, f32), packed(gk, f32), packed(gv, f32),
            _contiguous(gk_scale), h0, o, hT, packed(bias), packed(o_scale, f32), plan.cu, H, K,
            V, float(scale), USE_G=g is not None, USE_GK=_gk_mode(gk, gk_scale),
            USE_GV=gv is not None, USE_H0=h0 is not None, STORE_HT=output_final_state,
            USE_BIAS=bias is not None, USE_OS=o_scale is not None, BK=BK, BV=BV,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o.view(B, T, H, V), hT


def recurrent_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, cfg, scale, grad_dtype,
                       dv_dtype, gk_scale=None, o_scale=None):
    """The gradients at scale·do (times ``o_scale`` e) in one launch: (dq, dk in ``grad_dtype``
    and dv in ``dv_dtype``, packed [T_total, H, ·]; XK - [2 NV, T_total, H, K] with gk,
    [2 NV, T_total, H, 1] with only g, else None - and XV [2, T_total, H, V] or None, the decay
    gradients' terms whose slices sum to q·dq − k·dk and o·do − v·dv; hT fp32 when dhT and a
    decay are given, else None; dh0; plan; e's gradient fp32 [T_total, H] or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = ChunkPlan(q, cu_seqlens, None)
    N, TT, dev = plan.N, plan.T_total, q.device
    h0 = fp32_state(h0, N, H, K, V)
    dhT = fp32_state(dhT, N, H, K, V)
    BK, BV = _tiles(K, V, cfg)
    NV = cdiv(V, BV)
    # one V-tile: dq, dk are whole in the launch and stored in grad_dtype; more: fp32 partials
    part_dtype = grad_dtype if NV == 1 else torch.float32
    dq_p = empty(NV, TT, H, K, device=dev, dtype=part_dtype)
    dk_p = empty(NV, TT, H, K, device=dev, dtype=part_dtype)
    dv = empty(TT, H, V, device=dev, dtype=dv_dtype)
    dh0 = empty(N, H, K, V, device=dev) if h0 is not None else None
    xk_d = 2 if gk is not None else 1 if g is not None else 0
    XK = (empty(2 * NV, TT, H, K, device=dev) if xk_d == 2 else
          empty(2 * NV, TT, H, 1, device=dev) if xk_d == 1 else None)
    XV = empty(2, TT, H, V, device=dev) if gv is not None else None
    XE = empty(NV, TT, H, device=dev) if o_scale is not None else None
    need_hT = dhT is not None and xk_d + (gv is not None) > 0
    hT = empty(N, H, K, V, device=dev) if need_hT else None
    f32 = torch.float32
    if N > 0:
        _rc.recurrent_gla_bwd[(N * H, NV)](
            packed(q), packed(k), packed(v), packed(g, f32), packed(gk, f32), packed(gv, f32),
            _contiguous(gk_scale), h0, packed(do), dhT, packed(o_scale, f32), dq_p, dk_p, dv,
            dh0, XK, XV, XE, hT, plan.cu, TT, H, K, V, float(scale),
            USE_G=g is not None, USE_GK=_gk_mode(gk, gk_scale), USE_GV=gv is not None,
            USE_H0=h0 is not None, USE_DHT=dhT is not None, STORE_DH0=h0 is not None,
            STORE_HT=need_hT, XK_D=xk_d, USE_XV=gv is not None, USE_OS=o_scale is not None,
            BK=BK, BV=BV,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    dq, dk = (dq_p[0], dk_p[0]) if NV == 1 else (dq_p.sum(0), dk_p.sum(0))
    de = None if XE is None else slices_sum(XE)
    return dq.to(grad_dtype), dk.to(grad_dtype), dv, XK, XV, hT, dh0, plan, de
