"""Torch-level entry points of the canonical gated-linear-attention core.

Per batch element (or packed sequence) and head, with state S in R^{K x V} (fp32):
    S_t = exp(g_t + gk_t[:, None] + gv_t[None, :]) * S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t.

``gla_forward`` returns (o fp32 [B, T, H, V], hT fp32 [N, H, K, V] or None);
``gla_backward`` returns (dq, dk, dv, dg, dgk, dgv, dh0), all fp32 (None where the matching input
is None). Three strategies: "recurrent" (fused token loop), "chunked" (fla-style chunks) and
"fused" (scalar decays: the chunk state kept on chip, ``fused.py``).
Layouts: q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H]; gk [B, T, H, K]; gv [B, T, H, V];
h0 / hT / dhT / dh0 [N, H, K, V] with N = B, or N = len(cu_seqlens) - 1 (then B == 1).

Setting the environment variable ``MIXIR_POISON`` (to anything but "" / "0") fills every output
and intermediate buffer with NaN before the kernels run, so an element a kernel forgets to write
shows up in tests.

Decay gradients use the identity (docs/gla_math.md): with G_t the inclusive time-cumsum of gk,
    dL/dG_t = q_t * dq_t - k_t * dk_t  (+ sum_V S_T * dS_T at t = T),
and dgk = reverse cumsum over the sequence; gv uses o * do - v * dv, g uses the K-sum of the gk one.

Notes: inputs are made contiguous here (non-contiguous / expanded views are fine); ``cu_seqlens``
is read on the host (one device sync per call, like fla) to build the chunk tables; the chunked
backward rounds ``do`` to the input dtype; the chunked strategy floors per-step log-decays at
``LOG_FLOOR`` (``common.chunks``: exp(-100) is 0 in fp32 terms) before their chunk-local
cumsums, the recurrent one uses them as given.
"""
import torch

from ...tiles import cdiv
from ..common.chunks import ChunkPlan, empty, fp32_state, packed, tile
from . import fused as _fused
from . import recurrent as _recurrent
from . import scaled as _scaled
from .cumsums import local_cumsums, rev_cumsum, slices_sum
from .precision import dot_mode, grad_dtype_of, state_dtype
from .kernels import chunked as _ck

STRATEGIES = ("recurrent", "chunked", "fused")
#: the strategies whose kernels form the scaled pieces (g = u·a, v' = u v, the value bias c v)
_SCALED_IN_KERNEL = ("chunked", "fused")

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)


def default_config(strategy, K, V, dtype) -> dict:
    """Launch parameters for one strategy, head sizes K, V and input dtype (all values are ints).

    chunked: BT chunk length, BC sub-chunk length (BT % BC == 0, BC >= 16), BK / BV tile caps,
    BKS x BVS the tile of the sequential state passes (default BK x BV: they run one program per
    (K-tile, V-tile), so a small BKS rereads v once per K-tile) - scalar decays' fused dq/dk
    kernel takes K-tiles of BKS too, and its contraction over V in BK-tiles,
    optional "dot_fp32" / "bwd_dot_fp32" (see ``precision.dot_mode``), "BKD" (16) and "BV_DIAG" (32).
    "bwd_dot_fp32" defaults to 1 for 16-bit inputs: the decay gradients come from sums of terms
    that cancel (q*dq - k*dk), and 16-bit dot operands in the backward make that cancellation noise
    large next to gradients of nearly closed gates. Set it to 0 for fla-like speed.
    recurrent: BK (the whole K extent), BV.
    """
    if strategy == "chunked":
        BK, BV = tile(K, 64), tile(V, 64)
        # 64 x 64 fp32 tiles spill registers at 4 warps on sm_90 (checked with ptxas): use 8
        return {"BT": 64, "BC": 16, "BK": BK, "BKS": BK, "BV": BV, "BVS": BV,
                "bwd_dot_fp32": int(dtype in (torch.float16, torch.bfloat16)),
                "num_warps": 8 if BK * BV >= 4096 else 4, "num_stages": 2}
    if strategy == "recurrent":
        return _recurrent.default_config(K, V)
    if strategy == "fused":
        return _fused.default_config(K, V, dtype)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def _check(q, k, v, g, gk, gv, strategy, gk_scale=None):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    assert q.dtype in _FLOAT_INPUTS and k.dtype == q.dtype
    # v is in q's dtype, or fp32 when it is a per-token scalar (V = 1: runtime._narrow_pieces)
    assert v.dtype == q.dtype or (v.dtype == torch.float32 and v.shape[-1] == 1)
    assert q.dim() == 4 and k.shape == q.shape and v.shape[:3] == q.shape[:3]
    B, T, H, K = q.shape
    V = v.shape[-1]
    if g is not None:
        assert g.shape == (B, T, H)
    if gk is not None:     # with gk_scale a [H, K]: gk is the per-token factor u [B, T, H]
        assert gk.shape == ((B, T, H, K) if gk_scale is None else (B, T, H))
        assert gk_scale is None or gk_scale.shape == (H, K)
    if gv is not None:
        assert gv.shape == (B, T, H, V)
    return B, T, H, K, V


# --------------------------------------------------------------------------------------- chunked

def _states(plan, kx, vx, F, Gl, h_in, store_out, reverse, K, V, cfg, dot, hs_dtype=torch.float32,
            h_scale=1.0, vs=None):
    """Sequential chunk pass; returns (per-chunk matrices [NT, H, K, V] in ``hs_dtype``, final
    matrix fp32 or None). ``h_scale`` s: from h_in / s, returns s * final; ``vs``: vx's row scales."""
    N, H = plan.N, plan.H
    HS = empty(max(plan.NT, 1), H, K, V, device=kx.device, dtype=hs_dtype)
    out = empty(N, H, K, V, device=kx.device) if store_out else None
    BK, BV = tile(K, cfg.get("BKS", cfg["BK"])), tile(V, cfg.get("BVS", cfg["BV"]))  # the states tile
    if N > 0:
        _ck.chunk_gla_states[(N * H, cdiv(K, BK), cdiv(V, BV))](
            kx, vx, vs, F[0], F[1], F[2], Gl[0], Gl[1], Gl[2], h_in, out, HS, plan.cu,
            plan.chunk_off, H, K, V, 1.0 / h_scale, float(h_scale), USE_VS=vs is not None,
            USE_A=F[0] is not None, USE_B=F[1] is not None, USE_C=F[2] is not None,
            USE_H0=h_in is not None, STORE_HT=store_out, REVERSE=reverse,
            BT=cfg["BT"], BK=BK, BV=BV, PREC=dot[1], DOT_F32=dot[0],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return HS, out


def _output(plan, X, Y, Z, F, HS, DK, DV, transposed, reverse, cfg, dot, *,
            out_dtype=torch.float32, scale=1.0, xp=None, bias=None, zs=None, os=None, bs=None,
            xb=None):
    """out = scale * (inter(X, HS) + intra(X, Y, Z)) (+ ``bias`` [T, H, DV], times ``bs`` [H])
    with decays F = (FA, FB over DK, FC over DV), stored in ``out_dtype``. ``xp`` = (W, XP, mode,
    accumulate, sign): also store sign * W * out (fp32) into XP - mode 1 elementwise [T, H, DV],
    mode 2 summed over each program's BV channels into [cdiv(DV, BV), T, H] (``_xp_buffer``).
    Per-token [T, H]: ``zs`` scales Z's (or Y's: the same) rows, ``os`` = (scalars, mode) the
    output rows before (1) / after (2) the XP terms; ``xb`` = (W, XB): W * bias row sums, mode 2."""
    H = plan.H
    O = empty(plan.T_total, H, DV, device=X.device, dtype=out_dtype)
    BT, BC = cfg["BT"], cfg["BC"]
    assert BT % BC == 0 and BC >= 16
    BK = tile(DK, cfg["BK"])
    BV = _output_bv(DV, F[2] is not None, cfg)
    s_hk, s_hv = (1, DK) if transposed else (DV, 1)
    W, XP, mode, accum, sign = xp if xp is not None else (None, None, 0, False, 1.0)
    XB = None if xb is None else xb[1]
    W = W if xb is None else xb[0]
    if plan.NT > 0:
        _ck.chunk_gla_output[(plan.NT * (BT // BC), cdiv(DV, BV), H)](
            X, Y, Z, F[0], F[1], F[2], HS, O, W, XP, bias, zs, None if os is None else os[0], bs,
            XB, plan.cu, plan.chunk_tbl, H, DK, DV, s_hk, s_hv, plan.T_total, float(scale),
            float(sign), USE_ZS=zs is not None, OS_MODE=0 if os is None else os[1],
            USE_BS=bs is not None, USE_XB=XB is not None,
            USE_A=F[0] is not None, USE_B=F[1] is not None, USE_C=F[2] is not None,
            REVERSE=reverse, XP_MODE=mode, XP_ACCUM=accum, USE_BIAS=bias is not None,
            BT=BT, BC=BC, BK=BK, BV=BV, BKD=cfg.get("BKD", 16), PREC=dot[1],
            DOT_F32=dot[0],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return O


def _output_bv(DV, use_c, cfg):
    # the exact diagonal-block V factors live on a [BC, BC, BV] tile: keep it small
    return tile(DV, cfg["BV"] if not use_c else min(cfg["BV"], cfg.get("BV_DIAG", 32)))


def _xp_buffer(plan, D, elementwise, cfg, device):
    """The decay-gradient buffer the dq and dk output launches fill (fp32): [T, H, D] when the
    per-channel terms are needed, else the per-tile row sums [cdiv(D, BV), T, H]."""
    if elementwise:
        return empty(plan.T_total, plan.H, D, device=device), 1
    return empty(cdiv(D, _output_bv(D, False, cfg)), plan.T_total, plan.H, device=device), 2


def _dqk(plan, c, do, HS, DHS, scale, grad_dtype, use_xp):
    """dq, dk of scalar decays (``chunk_gla_dqk``: whole chunks), with ``use_xp`` the
    decay-gradient row sums q*dq - k*dk per K-tile [cdiv(K, BKS), T, H] (fp32), and with an output
    scale e (``c.os``: do's rows are e·do) the gradient of e, the per-K-tile row sums of q·dq at
    do as given (XQ, like XP; else None). It walks the state tiles as the state passes do: K-tiles
    of BKS (default BK); the contraction over V runs in BK-tiles (the output kernel's contraction
    tile)."""
    cfg, H, K, V = c.cfg, plan.H, c.K, c.V
    BK, BV = tile(K, cfg.get("BKS", cfg["BK"])), tile(V, cfg["BK"])
    dq = empty(plan.T_total, H, K, device=do.device, dtype=grad_dtype)
    dk = empty(plan.T_total, H, K, device=do.device, dtype=grad_dtype)
    XP = empty(cdiv(K, BK), plan.T_total, H, device=do.device) if use_xp else None
    XQ = empty(cdiv(K, BK), plan.T_total, H, device=do.device) if c.os is not None else None
    if plan.NT > 0:
        _ck.chunk_gla_dqk[(plan.NT, cdiv(K, BK), H)](
            c.q, c.k, c.v, c.vs, do, c.os, c.Ga, c.Ra, HS, DHS, dq, dk, XP, XQ, plan.cu,
            plan.chunk_tbl, H, K, V, plan.T_total, float(scale), USE_VS=c.vs is not None,
            USE_DS=c.os is not None, USE_A=c.Ga is not None, USE_XP=use_xp,
            BT=cfg["BT"], BK=BK, BV=BV, PREC=c.dot[1], DOT_F32=c.dot[0],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return dq, dk, XP, XQ


class _Chunked:
    def __init__(self, q, k, v, g, gk, gv, cu_seqlens, config, backward=False, v_scale=None,
                 v_bias=None, g_scale=None, gk_scale=None, o_scale=None):
        B, T, H, K, V = _check(q, k, v, g, gk, gv, "chunked", gk_scale)
        assert (v_scale is None or v_scale.shape == (B, T, H)) and (v_bias is None or gv is None)
        # a per-token output scale e [B, T, H]: scalar decays, no bias (``gla_forward``)
        assert o_scale is None or (o_scale.shape == (B, T, H) and gk is None and gv is None
                                   and v_bias is None)
        self.os = packed(o_scale)       # o = e * core: the output rows, do's rows in the backward
        self.cfg = dict(default_config("chunked", K, V, q.dtype), **(config or {}))
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        self.plan = ChunkPlan(q, cu_seqlens, self.cfg["BT"])
        self.dot = dot_mode(q, self.cfg, backward)
        self.hs_dtype = state_dtype(q, self.dot)
        self.q, self.k, self.v = packed(q), packed(k), packed(v)
        self.vs = packed(v_scale)       # v' = vs * v, formed on load (fp32 on chip)
        self.vb = None if v_bias is None else v_bias.contiguous()   # o += vb_h * v
        # gates are read in their own dtype (fp32 on chip)
        # g = u·a with ``g_scale`` a [H]: u is g, the product is formed by the cumsum launch
        self.gu = packed(g)
        self.gs = None if g_scale is None else g_scale.contiguous()
        assert self.gs is None or (g is not None and self.gs.shape == (H,))
        self.Ga, self.Ra = local_cumsums(self.plan, self.gu, self.cfg, self.gs)
        # gk = u·a with ``gk_scale`` a [H, K]: gk is u [B, T, H], the cumsum launch forms it
        self.gku = packed(gk)
        self.gks = None if gk_scale is None else gk_scale.contiguous()
        self.Gb, self.Rb = local_cumsums(self.plan, self.gku, self.cfg, self.gks)
        self.Gc, self.Rc = local_cumsums(self.plan, packed(gv), self.cfg)

    def states(self, h0, store_final):
        return _states(self.plan, self.k, self.v, (self.Ra, self.Rb, self.Rc),
                       (self.Ga, self.Gb, self.Gc), h0, store_final, False, self.K, self.V,
                       self.cfg, self.dot, self.hs_dtype, vs=self.vs)

    def output(self, HS, out_dtype=torch.float32, scale=1.0, bias=None, xp=None):
        return _output(self.plan, self.q, self.k, self.v, (self.Ga, self.Gb, self.Gc), HS,
                       self.K, self.V, False, False, self.cfg, self.dot, out_dtype=out_dtype,
                       scale=scale, bias=self.v if self.vb is not None else packed(bias),
                       zs=self.vs, bs=self.vb, xp=xp,
                       os=None if self.os is None else (self.os, 1))


def _chunked_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state, scale,
                     out_dtype, bias, v_scale=None, v_bias=None, g_scale=None, gk_scale=None,
                     o_scale=None):
    c = _Chunked(q, k, v, g, gk, gv, cu_seqlens, config, v_scale=v_scale, v_bias=v_bias,
                 g_scale=g_scale, gk_scale=gk_scale, o_scale=o_scale)
    h0 = fp32_state(h0, c.plan.N, c.H, c.K, c.V)
    HS, hT = c.states(h0, output_final_state)
    o = c.output(HS, out_dtype, scale, bias)
    return o.view(c.B, c.T, c.H, c.V), hT


def _chunked_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config, scale, grad_dtype,
                      v_scale=None, v_bias=None, g_scale=None, gk_scale=None, o_scale=None):
    """The chunked backward. With an output scale s (o = s * core(q, k, v)) the gradients are those
    of the core at s * do: every launch computes them at (do, dhT / s) and scales its result by s.
    The decay gradients q*dq - k*dk come from the dq and dk launches' epilogues (fp32, before the
    gradients are rounded to ``grad_dtype``) and one reverse-cumsum launch. ``v_scale`` u
    (v' = u v): every launch scales v's rows on load, the dk launch (X = v) its output rows, the
    dv launch writes dv = u dv' and du = sum_V v dv' (epilogue); ``v_bias`` c (o += c_h v): the
    dv launch adds c do and sums v do for dc; ``g_scale`` a (g = u a): the reverse-cumsum launch
    turns dg into du = a dg and da = sum u dg (``gk_scale``: the same for gk = u a, a [H, K]).
    ``o_scale`` e (o = e * core, scalar decays): the gradients are the core's at e·do - the
    adjoint state pass and the dv launch scale do's rows on load, the dq/dk launch its rows of dq
    and of the score tile - and de = core · do comes from the dq/dk launch's epilogue.
    Returns (grads, du [B, T, H], dc [H], da [H], dak [H, K], de [B, T, H]) (fp32; with g_scale /
    gk_scale the grads' dg / dgk are their factors')."""
    c = _Chunked(q, k, v, g, gk, gv, cu_seqlens, config, backward=True, v_scale=v_scale,
                 v_bias=v_bias, g_scale=g_scale, gk_scale=gk_scale, o_scale=o_scale)
    plan, K, V, cfg, dot = c.plan, c.K, c.V, c.cfg, c.dot
    N, H = plan.N, c.H
    h0 = fp32_state(h0, N, H, K, V)
    dhT = fp32_state(dhT, N, H, K, V)
    do = packed(do).to(q.dtype)
    need_hT = dhT is not None and (g is not None or gk is not None or gv is not None)
    HS, hT = c.states(h0, need_hT)
    DHS, dh0 = _states(plan, c.q, do, (c.Ga, c.Gb, c.Gc), (c.Ga, c.Gb, c.Gc), dhT,
                       h0 is not None, True, K, V, cfg, dot, c.hs_dtype, scale, vs=c.os)
    use_k = g is not None or gk is not None
    XQ = None
    if gk is None and gv is None:      # scalar decays: dq and dk in one launch
        dq, dk, XP, XQ = _dqk(plan, c, do, HS, DHS, scale, grad_dtype, use_k)
        mode = 2
    else:
        xq = xk = None
        if use_k:
            XP, mode = _xp_buffer(plan, K, gk is not None, cfg, q.device)
            xq, xk = (c.q, XP, mode, False, 1.0), (c.k, XP, mode, True, -1.0)
        dq = _output(plan, do, c.v, c.k, (c.Ga, c.Gc, c.Gb), HS, V, K, True, False, cfg, dot,
                     out_dtype=grad_dtype, scale=scale, xp=xq, zs=c.vs)
        dk = _output(plan, c.v, do, c.q, (c.Ra, c.Rc, c.Rb), DHS, V, K, True, True, cfg, dot,
                     out_dtype=grad_dtype, scale=scale, xp=xk,
                     os=None if c.vs is None else (c.vs, 1))
    # du = sum_V v dv' and dc = sum_V v do (per V-tile row sums); dv = u dv' + c do
    xs = None if c.vs is None else _xp_buffer(plan, V, False, cfg, q.device)[0]
    xb = None if c.vb is None else _xp_buffer(plan, V, False, cfg, q.device)[0]
    xdv = None if xs is None else (c.v, xs, 2, False, 1.0)
    if gv is not None:
        # the value-side decay gradient's terms o*do - v*dv (fp32, elementwise): o*do from a
        # recomputation of o (its output is not used: stored in the input dtype), -v*dv added by
        # the dv launch (scaled pieces - xs, xb - are not formed with value-side decays)
        XV = empty(plan.T_total, H, V, device=q.device)
        c.output(HS, q.dtype, scale, xp=(do, XV, 1, False, 1.0))
        xdv = (c.v, XV, 1, True, -1.0)
    dv = _output(plan, c.k, c.q, do, (c.Ra, c.Rb, c.Rc), DHS, K, V, False, True, cfg, dot,
                 out_dtype=grad_dtype_of(v, grad_dtype), scale=scale, xp=xdv,
                 os=None if c.vs is None else (c.vs, 2), bias=None if xb is None else do, bs=c.vb,
                 xb=None if xb is None else (c.v, xb), zs=c.os)
    fin = None if (dhT is None or hT is None) else hT * dhT      # [N, H, K, V]
    dg = dgk = dgv = dgs = dgks = None
    if use_k:
        if mode == 2:
            XP = XP.view(XP.shape[0], plan.T_total, H, 1)
        if gk is not None:
            dgk, dgks = rev_cumsum(plan, XP, None if fin is None else fin.sum(-1), cfg,
                                   out_dtype=gk.dtype,
                                   scaled=None if c.gks is None else (c.gku, c.gks))
        if g is not None:
            dg, dgs = rev_cumsum(plan, XP, None if fin is None else fin.sum((-1, -2)), cfg,
                                 sum_d=True, out_dtype=g.dtype,
                                 scaled=None if c.gs is None else (c.gu, c.gs))
    if gv is not None:
        dgv, _ = rev_cumsum(plan, XV, None if fin is None else fin.sum(-2), cfg,
                            out_dtype=gv.dtype)
    du = None if xs is None else slices_sum(xs).view(c.B, c.T, H)
    dc = None if xb is None else xb.sum((0, 1))
    de = None if XQ is None else slices_sum(XQ).view(c.B, c.T, H)
    return _finish(c.B, c.T, H, K, V, dq, dk, dv, dg, dgk, dgv,
                   None if dh0 is None else dh0), du, dc, dgs, dgks, de


def _fused_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config, scale, grad_dtype,
                    g_scale=None, v_scale=None, v_bias=None, o_scale=None):
    """(the 7 gradients, du, dc, da, de): the fused sweeps and the decay gradient's reverse cumsum
    (with ``g_scale`` a its u-part as dg and da [H]); du, dc of ``v_scale`` / ``v_bias``, de of
    ``o_scale``."""
    B, T, H, K, V = _check(q, k, v, g, gk, gv, "fused")
    _fused.check_form(K, V, gk, gv)
    cfg = dict(default_config("fused", K, V, q.dtype), **(config or {}))
    dq, dk, dv, XP, hT, dh0, du, dc, de = _fused.fused_backward(
        q, k, v, g, h0, cu_seqlens, do, dhT, cfg, scale, grad_dtype, dot_mode(q, cfg, True),
        g_scale, v_scale, v_bias, o_scale)
    dg = da = None
    if XP is not None:
        plan = ChunkPlan(q, cu_seqlens, None)
        fin = None if hT is None else (hT * fp32_state(dhT, plan.N, H, K, V)).sum((-1, -2))
        dg, da = rev_cumsum(plan, XP, fin, cfg, sum_d=True, out_dtype=g.dtype,
                            scaled=None if g_scale is None else (packed(g), g_scale.contiguous()))
        dg = dg.view(B, T, H)
    return (dq, dk, dv, dg, None, None, dh0), du, dc, da, de


def _recurrent_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config, scale, grad_dtype,
                        gk_scale=None, o_scale=None):
    """``recurrent.recurrent_backward`` and the decay gradients' reverse cumsums (fp32) of its
    terms, with the final-state term sum(hT · dhT). Returns (grads, dgks, de): with ``gk_scale`` a
    (gk = u·a) the grads' dgk is u's and dgks a's [H, K], else None; with ``o_scale`` e's gradient
    [B, T, H], else None."""
    B, T, H, K, V = _check(q, k, v, g, gk, gv, "recurrent", gk_scale)
    cfg = dict(default_config("recurrent", K, V, q.dtype), **(config or {}))
    dq, dk, dv, XK, XV, hT, dh0, plan, de = _recurrent.recurrent_backward(
        q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, cfg, scale, grad_dtype,
        grad_dtype_of(v, grad_dtype), gk_scale, o_scale)
    fin = None if hT is None else hT * fp32_state(dhT, plan.N, H, K, V)      # [N, H, K, V]
    dg = dgk = dgv = dgks = None
    if gk is not None:
        dgk, dgks = rev_cumsum(plan, XK, None if fin is None else fin.sum(-1), cfg,
                               scaled=None if gk_scale is None else (packed(gk),
                                                                     gk_scale.contiguous()))
    if g is not None:
        dg, _ = rev_cumsum(plan, XK, None if fin is None else fin.sum((-1, -2)), cfg, sum_d=True)
    if gv is not None:
        dgv, _ = rev_cumsum(plan, XV, None if fin is None else fin.sum(-2), cfg)
    return (_finish(B, T, H, K, V, dq, dk, dv, dg, dgk, dgv, dh0), dgks,
            None if de is None else de.view(B, T, H))


# ------------------------------------------------------------------------------------------ shared

def _finish(B, T, H, K, V, dq, dk, dv, dg, dgk, dgv, dh0):
    dq = dq.view(B, T, H, K)
    dk = dk.view(B, T, H, K)
    dv = dv.view(B, T, H, V)
    dg = None if dg is None else dg.view(B, T, H)
    dgk = None if dgk is None else dgk.view(B, T, H, *dgk.shape[2:])   # [.., K], or a factor's
    dgv = None if dgv is None else dgv.view(B, T, H, V)
    return dq, dk, dv, dg, dgk, dgv, dh0


def gla_forward(q, k, v, g=None, gk=None, gv=None, h0=None, cu_seqlens=None, *,
                strategy="chunked", config=None, output_final_state=True, scale=1.0,
                out_dtype=torch.float32, bias=None, v_scale=None, v_bias=None, g_scale=None,
                gk_scale=None, o_scale=None):
    """Returns (o [B, T, H, V] in ``out_dtype``, hT fp32 [N, H, K, V] or None), with
    o = scale * core(q, k, v') + bias (an output scale and bias [B, T, H, V] folded into the
    kernels' stores; the gradient of the bias is do). No gv: ``v_scale`` u [B, T, H] (v' = u v)
    and ``v_bias`` c [H] (bias c_h v): chunked and fused apply them on load / in epilogues.
    ``g_scale`` a [H]: the scalar log-decay is g·a (g a per-token factor, e.g. mamba2's dt·A),
    formed by the chunked strategy's cumsum launch and the fused sweeps, in torch for the others.
    ``gk_scale`` a [H, K]: the key-side log-decay is gk·a with gk a per-token factor [B, T, H]
    (Mamba-1's dt·A), formed by the chunked cumsum launch and by the recurrent kernel per step. ``o_scale`` e
    [B, T, H] (scalar decays, or recurrent; no bias): o = e * scale * core, scaled in the output
    store (mLSTM's normaliser)."""
    assert o_scale is None or bias is None
    if g_scale is not None and strategy not in _SCALED_IN_KERNEL:
        g, g_scale = _scaled.decay(g, g_scale), None
    if gk_scale is not None and strategy not in ("chunked", "recurrent"):
        gk, gk_scale = _scaled.decay(gk, gk_scale), None
    if strategy == "chunked":
        return _chunked_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state,
                                scale, out_dtype, bias, v_scale, v_bias, g_scale, gk_scale,
                                o_scale)
    if strategy == "fused":
        B, T, H, K, V = _check(q, k, v, g, gk, gv, strategy)
        _fused.check_form(K, V, gk, gv)
        cfg = dict(default_config("fused", K, V, q.dtype), **(config or {}))
        return _fused.fused_forward(q, k, v, g, h0, cu_seqlens, cfg, output_final_state, scale,
                                    out_dtype, bias, dot_mode(q, cfg), g_scale, v_scale, v_bias,
                                    o_scale)
    v, bias = _scaled.materialise(v, bias, v_scale, v_bias)
    if strategy == "recurrent":
        B, T, H, K, V = _check(q, k, v, g, gk, gv, strategy, gk_scale)
        cfg = dict(default_config(strategy, K, V, q.dtype), **(config or {}))
        return _recurrent.recurrent_forward(q, k, v, g, gk, gv, h0, cu_seqlens, cfg,
                                            output_final_state, scale, out_dtype, bias, gk_scale,
                                            o_scale)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def gla_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, *, strategy="chunked", config=None,
                 scale=1.0, grad_dtype=torch.float32, v_scale=None, v_bias=None, g_scale=None,
                 gk_scale=None, o_scale=None):
    """Returns (dq, dk, dv, dg, dgk, dgv, dh0) of ``gla_forward`` with the same ``scale``: dq, dk,
    dv in ``grad_dtype``, the rest fp32 (the chunked strategy's dg / dgk / dgv in their gates'
    dtype); None for absent g / gk / gv / h0. With ``v_scale`` or ``v_bias``: dv is v's, and the
    gradients of u (fp32 [B, T, H]) and c (fp32 [H]) follow (None where absent); with
    ``g_scale`` / ``gk_scale`` a: dg / dgk are the factors' and the gradient of a follows (fp32
    [H] / [H, K]), in that order; with ``o_scale`` e, the gradient of e last (fp32 [B, T, H])."""
    grads, ex = _backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, strategy, config, scale,
                          grad_dtype, v_scale, v_bias, g_scale, gk_scale, o_scale)
    out = tuple(grads)
    if v_scale is not None or v_bias is not None:
        out += (ex.get("du"), ex.get("dc"))
    if g_scale is not None:
        out += (ex["da"],)
    if gk_scale is not None:
        out += (ex["dak"],)
    if o_scale is not None:
        out += (ex["de"],)
    return out


def _backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, strategy, config, scale, grad_dtype,
              v_scale, v_bias, g_scale, gk_scale, o_scale=None):
    """(the 7 gradients as a list, {"du", "dc", "da", "dak", "de": the extra inputs'
    gradients})."""
    args = (q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, strategy, config, scale, grad_dtype)
    if g_scale is not None and (strategy not in _SCALED_IN_KERNEL or scale == 0.0):
        # the product in torch, then the chain rule
        grads, ex = _backward(q, k, v, _scaled.decay(g, g_scale), *args[4:], v_scale, v_bias,
                              None, gk_scale, o_scale)
        grads[3], ex["da"] = _scaled.decay_grads(grads[3], g, g_scale)
        return grads, ex
    if gk_scale is not None and not (strategy == "recurrent"
                                     or (strategy == "chunked" and scale != 0.0)):
        grads, ex = _backward(*args[:4], _scaled.decay(gk, gk_scale), *args[5:], v_scale,
                              v_bias, g_scale, None, o_scale)
        grads[4], ex["dak"] = _scaled.decay_grads(grads[4], gk, gk_scale)
        return grads, ex
    if (v_scale is not None or v_bias is not None) and (strategy not in _SCALED_IN_KERNEL
                                                        or scale == 0.0):
        # the core at v' = u v, then the chain rule (the bias's do is not scaled)
        v1, _ = _scaled.materialise(v, None, v_scale, None)
        grads, ex = _backward(q, k, v1, *args[3:13], torch.float32, None, None, g_scale,
                              gk_scale, o_scale)
        full = _scaled.chain(tuple(grads), v, do, v_scale, v_bias, grad_dtype)
        ex.update(du=full[7], dc=full[8])
        return list(full[:7]), ex
    if strategy in ("chunked", "fused") and scale == 0.0:
        # the kernels scale by s and 1/s: a zero scale is the zero output
        do = torch.zeros_like(do)
        scale = 1.0
    if strategy == "chunked":
        grads, du, dc, da, dak, de = _chunked_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do,
                                                       dhT, config, scale, grad_dtype, v_scale,
                                                       v_bias, g_scale, gk_scale, o_scale)
        return list(grads), dict(du=du, dc=dc, da=da, dak=dak, de=de)
    if strategy == "fused":
        grads, du, dc, da, de = _fused_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT,
                                                config, scale, grad_dtype, g_scale, v_scale,
                                                v_bias, o_scale)
        return list(grads), dict(du=du, dc=dc, da=da, de=de)
    if strategy == "recurrent":
        grads, dak, de = _recurrent_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config,
                                             scale, grad_dtype, gk_scale, o_scale)
        return list(grads), dict(dak=dak, de=de)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
