"""The gated-linear core's "fused" strategy: scalar decays, the chunk state kept on chip.

``fused_forward`` / ``fused_backward`` have the contract of the chunked strategy's entry points in
``core`` (layouts, output scale and bias, dtypes, ``cu_seqlens``); they run
``kernels/fused.fused_gla_sweep`` four times per training step (o; dq, dk, dv) plus one reverse
cumsum for the decay gradient. Each launch is one program per (sequence, head, tile of the output
head dimension) walking the sequence's chunks in order, so its parallelism is N·H·tiles: it suits
large batches × heads (docs/gla_math.md, "Fused strategy"). A call that names no strategy runs it
on a GPU where ``suits`` (the runtime's ``default_strategy``), else the chunked strategy.

Config: ``BT`` chunk length; ``BV`` the V-tile of the o / dv sweeps (their state tile is
[K, BV]); ``BK`` the K-tile of the dq / dk sweeps (state tile [V, BK]); ``num_warps``,
``num_stages``; ``bwd_dot_fp32`` as the chunked strategy's (fp32 dot operands in the backward,
16-bit inputs; default 1). The contracted head dimension is one register tile: K and V up to
``MAX_HEAD``.
"""
import torch

from ...errors import InputError
from ...tiles import cdiv, pow2
from ..common.chunks import LOG_FLOOR, ChunkPlan, empty, fp32_state, packed, tile
from .cumsums import slices_sum
from .kernels import fused as _fk

#: the largest head size the fused sweeps hold in one register tile
MAX_HEAD = 256


#: the largest head sizes the runtime's default rule gives the fused strategy: its sm_90 builds
#: are checked spill-free up to K = V = 128, with scaled values (mamba2's dt·x) up to V = 64 - at
#: V = 128 their dq and dk sweeps spill 24 and 16 B (docs/gla_math.md, section 5)
DEFAULT_MAX_HEAD = 128
DEFAULT_MAX_SCALED_V = 64


def default_config(K, V, dtype) -> dict:
    # the contracted head dimension is one register tile: 16-token chunks, output tiles of 64 at
    # 8 warps (spill-free on sm_90 up to K = V = 128; docs/gla_math.md, section 5)
    return {"BT": 16, "BK": tile(K, 64), "BV": tile(V, 64),
            "bwd_dot_fp32": int(dtype in (torch.float16, torch.bfloat16)),
            "num_warps": 8, "num_stages": 2}


def suits(N, H, K, V, sms, scaled_values=False) -> bool:
    """Whether a call of ``N`` sequences, ``H`` heads and head sizes K, V suits the fused strategy
    on a GPU of ``sms`` multiprocessors: head sizes up to ``DEFAULT_MAX_HEAD`` (V up to
    ``DEFAULT_MAX_SCALED_V`` with ``scaled_values``), and programs
    (N·H·tiles of the output head dimension at the default tiles) for at least half the SMs. Its
    training step moves about half the chunked strategy's bytes (K = V = 128: 3.52 against 7.05 GB
    in the static model), but each program walks its sequence's chunks in order, one program per
    SM: with fewer programs than that, the idle SMs' share of the bandwidth outweighs the saving
    and the chunked strategy, which spreads a sequence's chunks over the GPU, is the better bet.
    (A model, not a measurement: the GPU timing is pending, docs/benchmarks.md.)"""
    if max(K, V) > DEFAULT_MAX_HEAD or (scaled_values and V > DEFAULT_MAX_SCALED_V):
        return False
    cfg = default_config(K, V, torch.bfloat16)
    return 2 * N * H * min(cdiv(V, cfg["BV"]), cdiv(K, cfg["BK"])) >= sms


def check_form(K, V, gk, gv):
    """An ``InputError`` unless the fused strategy runs this call."""
    if gk is not None or gv is not None:
        raise InputError("strategy='fused' takes scalar decays only; this mixer decays along a "
                         "head dimension (use strategy='chunked')")
    if max(K, V) > MAX_HEAD:
        raise InputError(f"strategy='fused' holds a head dimension in one register tile: K = {K}, "
                         f"V = {V}, at most {MAX_HEAD} (use strategy='chunked')")


class _Sweeps:
    """One call's bookkeeping: packed tensors, sequence offsets, launch parameters, and the scaled
    pieces (``g_scale`` a: g = u·a; ``v_scale`` s: v' = s v; ``v_bias`` c: o += c_h v)."""

    def __init__(self, q, k, v, g, cu_seqlens, config, dot, g_scale=None, v_scale=None,
                 v_bias=None, o_scale=None):
        B, T, H, K = q.shape
        V = v.shape[-1]
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        self.cfg = dict(default_config(K, V, q.dtype), **(config or {}))
        self.plan = ChunkPlan(q, cu_seqlens, None)
        self.q, self.k, self.v, self.g = packed(q), packed(k), packed(v), packed(g)
        self.gs = None if g_scale is None else g_scale.contiguous()
        self.rs = packed(v_scale)
        self.cb = None if v_bias is None else v_bias.contiguous()
        self.os = packed(o_scale)
        self.dot = dot

    def sweep(self, X, Y, Z, DX, DZ, reverse, *, s0=None, s0_scale=1.0, sn=None, sn_scale=1.0,
              transposed=False, out_dtype=torch.float32, scale=1.0, bias=None, xp=None,
              rs_mode=0, cb=False, xb=None, os_mode=0, xe=None):
        """One ``fused_gla_sweep`` launch: the output [T, H, DZ] (``xp`` = (W, XP, offset, sign):
        also the row sums into XP slices offset + tile; ``rs_mode`` / ``os_mode``: where v' = s v
        / the output scale e sits (kernels/fused.py); ``cb``: the value bias; ``xb``: the dk
        sweep's v·do per token, for the bias's gradient; ``xe``: the dq sweep's q·dq0, e's)."""
        p, cfg = self.plan, self.cfg
        O = empty(p.T_total, p.H, DZ, device=X.device, dtype=out_dtype)
        BZ = tile(DZ, cfg["BK"] if transposed else cfg["BV"])
        s_a, s_b = (1, DX) if transposed else (DZ, 1)
        W, XP, off, sign = xp if xp is not None else (None, None, 0, 1.0)
        if xe is not None and W is None:
            W = self.q
        if p.N > 0:
            _fk.fused_gla_sweep[(cdiv(DZ, BZ), p.N * p.H)](
                X, Y, Z, self.g, s0, sn, O, W, XP, bias, self.gs, self.rs if rs_mode else None,
                self.cb if cb else None, xb, self.os if os_mode else None, xe, p.cu, p.H, DX, DZ,
                p.T_total, s_a, s_b,
                float(s0_scale), float(sn_scale), float(scale), float(sign), int(off),
                USE_G=self.g is not None, USE_S0=s0 is not None, STORE_SN=sn is not None,
                REVERSE=reverse, USE_XP=xp is not None, USE_BIAS=bias is not None,
                USE_GS=self.gs is not None, RS_MODE=rs_mode, USE_CB=cb,
                STORE_XB=xb is not None, OS_MODE=os_mode, STORE_XE=xe is not None,
                LOG_FLOOR=LOG_FLOOR, BT=cfg["BT"], BX=pow2(max(DX, 16)), BZ=BZ,
                PREC=self.dot[1], DOT_F32=self.dot[0],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return O

    def tiles(self, D, transposed):
        """The number of output tiles of a sweep whose output head dimension is D."""
        return cdiv(D, tile(D, self.cfg["BK"] if transposed else self.cfg["BV"]))

    def slices(self, D, transposed):
        """An fp32 buffer of per-tile row sums [tiles of D, T, H]."""
        return empty(self.tiles(D, transposed), self.plan.T_total, self.H, device=self.q.device)


def fused_forward(q, k, v, g, h0, cu_seqlens, config, output_final_state, scale, out_dtype, bias,
                  dot, g_scale=None, v_scale=None, v_bias=None, o_scale=None):
    """(o [B, T, H, V] in ``out_dtype``, hT fp32 [N, H, K, V] or None); ``dot`` = (DOT_F32, PREC)
    of the forward's dots (``precision.dot_mode``); the scaled pieces as ``core.gla_forward``'s."""
    c = _Sweeps(q, k, v, g, cu_seqlens, config, dot, g_scale, v_scale, v_bias, o_scale)
    N, H, K, V = c.plan.N, c.H, c.K, c.V
    h0 = fp32_state(h0, N, H, K, V)
    hT = empty(N, H, K, V, device=q.device) if output_final_state else None
    o = c.sweep(c.q, c.k, c.v, K, V, False, s0=h0, sn=hT, out_dtype=out_dtype, scale=scale,
                bias=packed(bias), rs_mode=1 if c.rs is not None else 0, cb=c.cb is not None,
                os_mode=2 if c.os is not None else 0)
    return o.view(c.B, c.T, H, V), hT


def fused_backward(q, k, v, g, h0, cu_seqlens, do, dhT, config, scale, grad_dtype, dot,
                   g_scale=None, v_scale=None, v_bias=None, o_scale=None):
    """(dq, dk, dv, XP, hT, dh0, du, dc, de) of ``fused_forward`` with the same ``scale`` (the
    gradients of the core at scale·do: every launch computes them at (do, dhT / scale) and scales
    its result; a zero scale is the caller's, ``core.gla_backward``). With g: XP [slices, T, H, 1]
    holds the decay-gradient row sums q·dq and −k·dk whose sum, reverse-cumsummed per sequence
    with the final-state term sum(hT · dhT) (hT fp32 when dhT is given), is dg (``core``). With
    ``v_scale`` s: dv is v's (s dv') and du = sum_V v dv' [B, T, H]; with ``v_bias`` c: dv adds
    c do and dc = sum v do [H]; with ``o_scale`` e (o = e·core, no bias): the gradients are the
    core's at e·do and de = q·dq0 [B, T, H] (fp32; None where absent)."""
    c = _Sweeps(q, k, v, g, cu_seqlens, config, dot, g_scale, v_scale, v_bias, o_scale)
    p, N, H, K, V = c.plan, c.plan.N, c.H, c.K, c.V
    h0 = fp32_state(h0, N, H, K, V)
    dhT = fp32_state(dhT, N, H, K, V)
    do = packed(do).to(q.dtype)
    use_g = g is not None
    need_hT = use_g and dhT is not None
    NK = c.tiles(K, True)
    XP = empty(2 * NK, p.T_total, H, device=q.device) if use_g else None
    hT = empty(N, H, K, V, device=q.device) if need_hT else None
    dh0 = empty(N, H, K, V, device=q.device) if h0 is not None else None
    inv = 1.0 / scale
    scaled_v, scaled_o = c.rs is not None, c.os is not None
    XE = c.slices(K, True) if scaled_o else None
    dq = c.sweep(do, c.v, c.k, V, K, False, s0=h0, sn=hT, transposed=True, out_dtype=grad_dtype,
                 scale=scale, xp=(c.q, XP, 0, 1.0) if use_g else None,
                 rs_mode=1 if scaled_v else 0, os_mode=2 if scaled_o else 0, xe=XE)
    XB = empty(p.T_total, H, device=q.device) if c.cb is not None else None
    dk = c.sweep(c.v, do, c.q, V, K, True, s0=dhT, s0_scale=inv, transposed=True,
                 out_dtype=grad_dtype, scale=scale, xp=(c.k, XP, NK, -1.0) if use_g else None,
                 rs_mode=2 if scaled_v else 0, xb=XB, os_mode=1 if scaled_o else 0)
    XS = c.slices(V, False) if scaled_v else None
    dv = c.sweep(c.k, c.q, do, K, V, True, s0=dhT, s0_scale=inv, sn=dh0, sn_scale=scale,
                 out_dtype=torch.float32 if v.dtype == torch.float32 else grad_dtype, scale=scale,
                 xp=(c.v, XS, 0, 1.0) if scaled_v else None, rs_mode=3 if scaled_v else 0,
                 cb=c.cb is not None, os_mode=1 if scaled_o else 0)
    B, T = c.B, c.T
    du = None if XS is None else slices_sum(XS).view(B, T, H)
    dc = None if XB is None else XB.sum(0)
    de = None if XE is None else slices_sum(XE).view(B, T, H)
    return (dq.view(B, T, H, K), dk.view(B, T, H, K), dv.view(B, T, H, V),
            None if XP is None else XP.view(2 * NK, p.T_total, H, 1), hT, dh0, du, dc, de)
