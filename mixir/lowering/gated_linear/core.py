"""Torch-level entry points of the canonical gated-linear-attention core.

Per batch element (or packed sequence) and head, with state S in R^{K x V} (fp32):
    S_t = exp(g_t + gk_t[:, None] + gv_t[None, :]) * S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t.

``gla_forward`` returns (o fp32 [B, T, H, V], hT fp32 [N, H, K, V] or None);
``gla_backward`` returns (dq, dk, dv, dg, dgk, dgv, dh0), all fp32 (None where the matching input
is None). Two strategies: "recurrent" (fused token loop) and "chunked" (fla-style chunks).
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
from ..common.chunks import LOG_FLOOR, ChunkPlan, empty, packed, tile
from ..common.launch import targets_gpu
from .kernels import chunked as _ck
from .kernels import recurrent as _rc

STRATEGIES = ("recurrent", "chunked")

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)


def default_config(strategy, K, V, dtype) -> dict:
    """Launch parameters for one strategy, head sizes K, V and input dtype (all values are ints).

    chunked: BT chunk length, BC sub-chunk length (BT % BC == 0, BC >= 16), BK / BV tile caps,
    optional "dot_fp32" / "bwd_dot_fp32" (see ``_dot_mode``), "BKD" (16) and "BV_DIAG" (32).
    "bwd_dot_fp32" defaults to 1 for 16-bit inputs: the decay gradients come from sums of terms
    that cancel (q*dq - k*dk), and 16-bit dot operands in the backward make that cancellation noise
    large next to gradients of nearly closed gates. Set it to 0 for fla-like speed.
    recurrent: BK (the whole K extent), BV.
    """
    if strategy == "chunked":
        BK, BV = tile(K, 64), tile(V, 64)
        # 64 x 64 fp32 tiles spill registers at 4 warps on sm_90 (checked with ptxas): use 8
        return {"BT": 64, "BC": 16, "BK": BK, "BV": BV,
                "bwd_dot_fp32": int(dtype in (torch.float16, torch.bfloat16)),
                "num_warps": 8 if BK * BV >= 4096 else 4, "num_stages": 2}
    if strategy == "recurrent":
        BK = tile(K, 1 << 30)                     # the whole K extent is one register tile
        BV = tile(V, max(16, min(64, 4096 // BK)))
        return {"BK": BK, "BV": BV, "num_warps": 4 if BK * BV >= 2048 else 2, "num_stages": 1}
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def _check(q, k, v, g, gk, gv, strategy):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    assert q.dtype in _FLOAT_INPUTS and k.dtype == q.dtype and v.dtype == q.dtype
    assert q.dim() == 4 and k.shape == q.shape and v.shape[:3] == q.shape[:3]
    B, T, H, K = q.shape
    V = v.shape[-1]
    if g is not None:
        assert g.shape == (B, T, H)
    if gk is not None:
        assert gk.shape == (B, T, H, K)
    if gv is not None:
        assert gv.shape == (B, T, H, V)
    return B, T, H, K, V


def _state(x, N, H, K, V):
    if x is None:
        return None
    assert x.shape == (N, H, K, V)
    return x.to(torch.float32).contiguous()


def _f32(x):
    return None if x is None else packed(x).to(torch.float32)


def _dot_mode(x, cfg, backward=False):
    """(DOT_F32, PREC) of the chunked kernels' tl.dot's for inputs like x.

    fp32 inputs: fp32 operands, "ieee". 16-bit inputs: operands rounded to the input dtype
    (tensor cores, fla-like), unless the config asks for fp32 operands with "dot_fp32" (everywhere)
    or "bwd_dot_fp32" (backward only); those run as "tf32x3" on NVIDIA GPUs (about fp32 accuracy on
    tensor cores). Off CUDA, bf16 always takes fp32 operands: Triton's interpreter mishandles bf16
    dots (fp16 dots are fine there, so CPU tests of fp16 exercise the 16-bit path).
    """
    if x.dtype == torch.float32:
        return True, "ieee"
    want = bool(cfg.get("dot_fp32", 0)) or (backward and bool(cfg.get("bwd_dot_fp32", 0)))
    if x.device.type != "cuda" and not targets_gpu(x.device):
        return want or x.dtype == torch.bfloat16, "ieee"
    if x.device.type != "cuda":  # recording on CPU for the AOT build: the GPU's choice
        return want, "ieee" if want else "tf32"
    if want:
        return True, "ieee" if torch.version.hip else "tf32x3"
    return False, "tf32"


# --------------------------------------------------------------------------------------- chunked

def _local_cumsums(plan, x, cfg):
    """Chunk-local inclusive cumsum G and reverse-exclusive cumsum R = G_last - G of x [T, H, D]."""
    if x is None:
        return None, None
    D = 1 if x.dim() == 2 else x.shape[-1]
    G = empty(*x.shape, device=x.device)
    R = empty(*x.shape, device=x.device)
    BD = tile(D, 64)
    if plan.NT > 0:
        _ck.chunk_gla_cumsum[(plan.NT, plan.H, cdiv(D, BD))](
            x, G, R, plan.cu, plan.chunk_tbl, plan.H, D, LOG_FLOOR=LOG_FLOOR, BT=cfg["BT"], BD=BD,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return G, R


def _states(plan, kx, vx, F, Gl, h_in, store_out, reverse, K, V, cfg, dot):
    """Sequential chunk pass; returns (per-chunk matrices [NT, H, K, V], final matrix or None)."""
    N, H = plan.N, plan.H
    HS = empty(max(plan.NT, 1), H, K, V, device=kx.device)
    out = empty(N, H, K, V, device=kx.device) if store_out else None
    BK, BV = tile(K, cfg["BK"]), tile(V, cfg["BV"])
    if N > 0:
        _ck.chunk_gla_states[(N * H, cdiv(K, BK), cdiv(V, BV))](
            kx, vx, F[0], F[1], F[2], Gl[0], Gl[1], Gl[2], h_in, out, HS, plan.cu, plan.chunk_off,
            H, K, V,
            USE_A=F[0] is not None, USE_B=F[1] is not None, USE_C=F[2] is not None,
            USE_H0=h_in is not None, STORE_HT=store_out, REVERSE=reverse,
            BT=cfg["BT"], BK=BK, BV=BV, PREC=dot[1], DOT_F32=dot[0],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return HS, out


def _output(plan, X, Y, Z, F, HS, DK, DV, transposed, reverse, cfg, dot):
    """out = inter(X, HS) + intra(X, Y, Z) with decays F = (FA, FB over DK, FC over DV)."""
    H = plan.H
    O = empty(plan.T_total, H, DV, device=X.device)
    BT, BC = cfg["BT"], cfg["BC"]
    assert BT % BC == 0 and BC >= 16
    BK = tile(DK, cfg["BK"])
    # the exact diagonal-block V factors live on a [BC, BC, BV] tile: keep it small
    BV = tile(DV, cfg["BV"] if F[2] is None else min(cfg["BV"], cfg.get("BV_DIAG", 32)))
    s_hk, s_hv = (1, DK) if transposed else (DV, 1)
    if plan.NT > 0:
        _ck.chunk_gla_output[(plan.NT * (BT // BC), cdiv(DV, BV), H)](
            X, Y, Z, F[0], F[1], F[2], HS, O, plan.cu, plan.chunk_tbl, H, DK, DV, s_hk, s_hv,
            USE_A=F[0] is not None, USE_B=F[1] is not None, USE_C=F[2] is not None,
            REVERSE=reverse, BT=BT, BC=BC, BK=BK, BV=BV, BKD=cfg.get("BKD", 16), PREC=dot[1],
            DOT_F32=dot[0],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return O


def _rev_cumsum(plan, x, init, cfg):
    """Per-sequence reverse cumsum of x [T, H(, D)] plus init [N, H(, D)] (fp32)."""
    D = 1 if x.dim() == 2 else x.shape[-1]
    x = x.to(torch.float32).contiguous()
    out = empty(*x.shape, device=x.device)
    BD = tile(D, 64)
    if plan.N > 0:
        _ck.chunk_gla_rev_cumsum[(plan.N * plan.H, cdiv(D, BD))](
            x, None if init is None else init.to(torch.float32).contiguous(), out, plan.cu,
            plan.H, D, USE_INIT=init is not None, BT=64, BD=BD,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


class _Chunked:
    def __init__(self, q, k, v, g, gk, gv, cu_seqlens, config, backward=False):
        B, T, H, K, V = _check(q, k, v, g, gk, gv, "chunked")
        self.cfg = dict(default_config("chunked", K, V, q.dtype), **(config or {}))
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        self.plan = ChunkPlan(q, cu_seqlens, self.cfg["BT"])
        self.dot = _dot_mode(q, self.cfg, backward)
        self.q, self.k, self.v = packed(q), packed(k), packed(v)
        self.Ga, self.Ra = _local_cumsums(self.plan, _f32(g), self.cfg)
        self.Gb, self.Rb = _local_cumsums(self.plan, _f32(gk), self.cfg)
        self.Gc, self.Rc = _local_cumsums(self.plan, _f32(gv), self.cfg)

    def states(self, h0, store_final):
        return _states(self.plan, self.k, self.v, (self.Ra, self.Rb, self.Rc),
                       (self.Ga, self.Gb, self.Gc), h0, store_final, False, self.K, self.V,
                       self.cfg, self.dot)

    def output(self, HS):
        return _output(self.plan, self.q, self.k, self.v, (self.Ga, self.Gb, self.Gc), HS,
                       self.K, self.V, False, False, self.cfg, self.dot)


def _chunked_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state):
    c = _Chunked(q, k, v, g, gk, gv, cu_seqlens, config)
    h0 = _state(h0, c.plan.N, c.H, c.K, c.V)
    HS, hT = c.states(h0, output_final_state)
    o = c.output(HS)
    return o.view(c.B, c.T, c.H, c.V), hT


def _chunked_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config):
    c = _Chunked(q, k, v, g, gk, gv, cu_seqlens, config, backward=True)
    plan, K, V, cfg, dot = c.plan, c.K, c.V, c.cfg, c.dot
    N, H = plan.N, c.H
    h0 = _state(h0, N, H, K, V)
    dhT = _state(dhT, N, H, K, V)
    do = packed(do).to(q.dtype)
    need_hT = dhT is not None and (g is not None or gk is not None or gv is not None)
    HS, hT = c.states(h0, need_hT)
    DHS, dh0 = _states(plan, c.q, do, (c.Ga, c.Gb, c.Gc), (c.Ga, c.Gb, c.Gc), dhT,
                       h0 is not None, True, K, V, cfg, dot)
    dq = _output(plan, do, c.v, c.k, (c.Ga, c.Gc, c.Gb), HS, V, K, True, False, cfg, dot)
    dk = _output(plan, c.v, do, c.q, (c.Ra, c.Rc, c.Rb), DHS, V, K, True, True, cfg, dot)
    dv = _output(plan, c.k, c.q, do, (c.Ra, c.Rb, c.Rc), DHS, K, V, False, True, cfg, dot)
    o = c.output(HS) if gv is not None else None
    dg, dgk, dgv = _decay_grads(plan, c.q, c.k, c.v, o, do, dq, dk, dv, hT, dhT,
                                g is not None, gk is not None, gv is not None, cfg)
    return _finish(c.B, c.T, H, K, V, dq, dk, dv, dg, dgk, dgv, dh0)


# ------------------------------------------------------------------------------------- recurrent

def _recurrent_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state):
    B, T, H, K, V = _check(q, k, v, g, gk, gv, "recurrent")
    cfg = dict(default_config("recurrent", K, V, q.dtype), **(config or {}))
    plan = ChunkPlan(q, cu_seqlens, None)
    N = plan.N
    h0 = _state(h0, N, H, K, V)
    BK, BV = tile(K, 1 << 30), tile(V, cfg["BV"])   # the whole K extent is one tile
    o = empty(plan.T_total, H, V, device=q.device)
    hT = empty(N, H, K, V, device=q.device) if output_final_state else None
    if N > 0:
        _rc.recurrent_gla_fwd[(N * H, cdiv(V, BV))](
            packed(q), packed(k), packed(v), _f32(g), _f32(gk), _f32(gv), h0, o, hT, plan.cu,
            H, K, V, USE_G=g is not None, USE_GK=gk is not None, USE_GV=gv is not None,
            USE_H0=h0 is not None, STORE_HT=output_final_state, BK=BK, BV=BV,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o.view(B, T, H, V), hT


def _recurrent_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config):
    B, T, H, K, V = _check(q, k, v, g, gk, gv, "recurrent")
    cfg = dict(default_config("recurrent", K, V, q.dtype), **(config or {}))
    plan = ChunkPlan(q, cu_seqlens, None)
    N, TT = plan.N, plan.T_total
    h0 = _state(h0, N, H, K, V)
    dhT = _state(dhT, N, H, K, V)
    BK, BV = tile(K, 1 << 30), tile(V, cfg["BV"])
    NV = cdiv(V, BV)
    qp, kp, vp, dop = packed(q), packed(k), packed(v), packed(do)
    dq_p = empty(NV, TT, H, K, device=q.device)
    dk_p = empty(NV, TT, H, K, device=q.device)
    dv = empty(TT, H, V, device=q.device)
    dh0 = empty(N, H, K, V, device=q.device) if h0 is not None else None
    o = empty(TT, H, V, device=q.device) if gv is not None else None
    hT = empty(N, H, K, V, device=q.device)
    if N > 0:
        _rc.recurrent_gla_bwd[(N * H, NV)](
            qp, kp, vp, _f32(g), _f32(gk), _f32(gv), h0, dop, dhT,
            dq_p, dk_p, dv, dh0, o, hT, plan.cu, TT, H, K, V,
            USE_G=g is not None, USE_GK=gk is not None, USE_GV=gv is not None,
            USE_H0=h0 is not None, USE_DHT=dhT is not None, STORE_DH0=h0 is not None,
            STORE_O=gv is not None, BK=BK, BV=BV,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    dq, dk = dq_p.sum(0), dk_p.sum(0)
    dg, dgk, dgv = _decay_grads(plan, qp, kp, vp, o, dop, dq, dk, dv, hT, dhT,
                                g is not None, gk is not None, gv is not None, cfg)
    return _finish(B, T, H, K, V, dq, dk, dv, dg, dgk, dgv, dh0)


# ------------------------------------------------------------------------------------------ shared

def _decay_grads(plan, q, k, v, o, do, dq, dk, dv, hT, dhT, use_g, use_gk, use_gv, cfg):
    """dG_t = q*dq - k*dk (K side) / o*do - v*dv (V side), reverse-cumsummed per sequence, plus
    the final-state term sum(S_T * dhT) that every position of the sequence receives."""
    dg = dgk = dgv = None
    fin = None if (dhT is None or hT is None) else hT * dhT      # [N, H, K, V]
    if use_g or use_gk:
        xk = q.float() * dq - k.float() * dk                       # [T, H, K]
        if use_gk:
            dgk = _rev_cumsum(plan, xk, None if fin is None else fin.sum(-1), cfg)
        if use_g:
            dg = _rev_cumsum(plan, xk.sum(-1), None if fin is None else fin.sum((-1, -2)), cfg)
    if use_gv:
        xv = o * do.float() - v.float() * dv                       # [T, H, V]
        dgv = _rev_cumsum(plan, xv, None if fin is None else fin.sum(-2), cfg)
    return dg, dgk, dgv


def _finish(B, T, H, K, V, dq, dk, dv, dg, dgk, dgv, dh0):
    dq = dq.view(B, T, H, K)
    dk = dk.view(B, T, H, K)
    dv = dv.view(B, T, H, V)
    dg = None if dg is None else dg.view(B, T, H)
    dgk = None if dgk is None else dgk.view(B, T, H, K)
    dgv = None if dgv is None else dgv.view(B, T, H, V)
    return dq, dk, dv, dg, dgk, dgv, dh0


def gla_forward(q, k, v, g=None, gk=None, gv=None, h0=None, cu_seqlens=None, *,
                strategy="chunked", config=None, output_final_state=True):
    """Returns (o fp32 [B, T, H, V], hT fp32 [N, H, K, V] or None)."""
    if strategy == "chunked":
        return _chunked_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state)
    if strategy == "recurrent":
        return _recurrent_forward(q, k, v, g, gk, gv, h0, cu_seqlens, config, output_final_state)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def gla_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, *, strategy="chunked", config=None):
    """Returns (dq, dk, dv, dg, dgk, dgv, dh0), fp32; None for absent g / gk / gv / h0."""
    if strategy == "chunked":
        return _chunked_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config)
    if strategy == "recurrent":
        return _recurrent_backward(q, k, v, g, gk, gv, h0, cu_seqlens, do, dhT, config)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
