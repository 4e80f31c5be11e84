"""Torch-level entry points of the Householder (delta-rule) core, both strategies.

Per sequence and head, state S ∈ R^{K×V} (fp32):
    S_t = exp(g_t) S_{t−1} + k_t (v_t − β_t exp(g_t) S_{t−1}ᵀ k_t)ᵀ,    o_t = S_tᵀ q_t
(fla's delta rule has v_t = β_t v_fla). Layouts: q, k [B, T, H, K]; v [B, T, H, V]; beta, g
[B, T, H]; h0 / hT [N, H, K, V] with N = B, or N = len(cu_seqlens) − 1 (then B == 1).

Pieces applied on load (``direct.py``): every entry point takes ``q_scale`` (the core's q is
``q_scale · q``) and ``v_beta`` (its v is ``β ⊙ v``); the gradients are then those of the q, v and
β passed in (dq = q_scale·dq', dv = β·dv', dβ += Σ_V v·dv'). The chunked kernels apply both on
chip; the recurrent strategy in torch. β and g are read in their own dtype by the chunked kernels.

``delta_forward`` → (o [B, T, H, V] in ``out_dtype`` (fp32 by default), hT fp32 [N, H, K, V]);
``delta_backward`` → (dq, dk, dv, dbeta, dg or None, dh0 or None), fp32 but the chunked dq, dk, dv
of 16-bit inputs (input dtype: ``grads_in_input_dtype``) and the chunked dβ, dg (β's and g's
dtype).

Strategies: "recurrent" (kernels/recurrent.py: a fused token loop, also the decode path)
and "chunked" (kernels/chunked.py, chunked_grads.py, wy.py: the WY/UT representation,
docs/delta_rule.md; 64-token chunks with 16-bit operands and 16-bit intermediates for 16-bit
inputs). The chunked backward recomputes the forward's chunk states instead of keeping them from
the forward (one extra pass of the two forward kernels, the prep pass also storing A⁻¹; no
K×V-per-chunk tensor lives between the passes).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ...tiles import cdiv, pow2
from ..common.chunks import LOG_FLOOR, ChunkPlan, empty, packed, tile
from ..common.launch import targets_gpu
from .kernels import chunked as _ck
from .kernels import chunked_grads as _cg
from .kernels import recurrent as _rc

STRATEGIES = ("recurrent", "chunked")
MAX_HEAD_K = 256         # the chunked kernels' sequential passes hold the whole K extent in one tile

#: ``DOT`` codes of the chunked kernels (``kernels/wy.py``)
DOT_FP32, DOT_BF16, DOT_FP16, DOT_BF16_EMULATED = 0, 1, 2, 3


def default_config(strategy, K, V, dtype) -> dict:
    """Launch parameters: chunked — BT (chunk), BK (whole K, power of two: the sequential passes'
    state tile), BV (V-tile), BKT (the K-tile of the loops over K); recurrent — the recurrent
    template's own defaults.

    The chunked defaults build without register spills for sm_90 at K = V = 64 and 128
    (tests/test_householder_aot.py). 16-bit inputs: 64-token chunks with 16-bit dot operands
    (fla's design: 64-row tiles, warpgroup MMA on sm_90; on sm_8x the tuning model picks BT ≤ 32);
    the loops over K and V keep two iterations or more. fp32 inputs: tf32x3 dots (three
    tensor-core passes, about fp32 accuracy) need twice the operand registers, hence 16-token
    chunks (also spill-free for sm_80)."""
    if strategy == "chunked":
        BK = tile(K, MAX_HEAD_K)
        if dtype == torch.float32:
            BT, BV, BKT = 16, (32 if BK <= 64 else 16), (32 if BK <= 64 else 16)      # space_chunked
        elif BK >= 64 and tile(V, 256) >= 64:
            # the loops over K and V keep ≥ 2 iterations (one-pass loops spill in grads)
            BT, BV, BKT = 64, min(64, tile(V, 256) // 2), min(64, BK // 2)
        else:
            BT, BV, BKT = 32, 32, 32
        return {"BT": BT, "BK": BK, "BV": tile(V, BV), "BKT": min(BK, BKT), "num_warps": 8,
                "num_stages": 1}
    if strategy == "recurrent":
        return dict(_rc.default_config(K, V, dtype))
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def _on_gpu(x) -> bool:
    return x.device.type == "cuda" or targets_gpu(x.device)


def _inverse_prec(x) -> str:
    """The dots of the triangular inverse's block merges (``wy.unit_lower_inverse``): about fp32
    for every input dtype (its error compounds). fp32 inputs: "tf32x3" on NVIDIA GPUs, else exact
    ("ieee"); 16-bit inputs: "bf16x3" (hi/lo bf16 parts, three passes, half the registers of
    tf32x3), emulated off the GPU ("bf16x3e")."""
    gpu = _on_gpu(x) and not torch.version.hip
    if x.dtype == torch.float32:
        return "tf32x3" if gpu else "ieee"
    return "bf16x3" if gpu else "bf16x3e"


def _dot_mode(x):
    """(DOT, PREC) of the chunked kernels' dots for inputs like x (``kernels/wy.py``).

    16-bit inputs: operands in the input dtype, fp32 accumulation (tensor cores, as fla); off the
    GPU fp16 runs so in the interpreter too, bf16 is emulated (rounded to nearest bf16, multiplied
    in fp32: the interpreter mishandles bf16 dots). fp32 inputs: fp32 operands — "tf32x3" on
    NVIDIA GPUs (three tf32 passes, about fp32 accuracy), else "ieee"."""
    gpu = _on_gpu(x)
    if x.dtype == torch.float16:
        return DOT_FP16, "tf32" if gpu else "ieee"
    if x.dtype == torch.bfloat16:
        return (DOT_BF16, "tf32") if gpu else (DOT_BF16_EMULATED, "ieee")
    if not gpu or torch.version.hip:
        return DOT_FP32, "ieee"
    return DOT_FP32, "tf32x3"


class _Call:
    """The bookkeeping of one chunked call: packed tensors, chunk tables, launch parameters."""

    def __init__(self, q, k, v, beta, g, cu_seqlens, config, q_scale=1.0, v_beta=False):
        B, T, H, K = q.shape
        if g is not None and g.dim() == 4:
            raise ValueError("the chunked delta kernels take scalar gates [B, T, H]; a key-diagonal "
                             "gate [B, T, H, K] runs the recurrent strategy")
        V = v.shape[-1]
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        if K > MAX_HEAD_K:
            raise ValueError(f"the chunked delta kernels hold K in one tile: K = {K} > {MAX_HEAD_K}")
        self.cfg = dict(default_config("chunked", K, V, q.dtype), **(config or {}))
        self.plan = ChunkPlan(q, cu_seqlens, self.cfg["BT"])
        self.q, self.k, self.v = packed(q), packed(k), packed(v)
        self.beta, self.g = packed(beta), packed(g)         # read in their own dtype
        self.q_scale, self.v_beta = float(q_scale), bool(v_beta)
        self.dot, self.prec = _dot_mode(q)
        self.iprec = _inverse_prec(q)
        # W, Ũ, u, the per-chunk states and du: stored in the input dtype
        self.sdt = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
        self.device = q.device

    def tiles(self):
        """(BT, BK, BV, BKT) as the kernels take them: BK the whole K (power of two), BV ≤ padded
        V, BKT ≤ BK."""
        c = self.cfg
        BK = tile(self.K, MAX_HEAD_K)
        return c["BT"], BK, tile(self.V, c["BV"]), min(BK, tile(self.K, c.get("BKT", 32)))

    def common(self):
        c = self.cfg
        return dict(USE_G=self.g is not None, LOG_FLOOR=LOG_FLOOR, PREC=self.prec, DOT=self.dot,
                    num_warps=c["num_warps"], num_stages=c["num_stages"])

    def forward_states(self, h0, store_ht, store_a=False):
        """prep + states: (HS [NT, H, K, V], u [T_total, H, V], hT or None, W [T_total, H, K],
        A⁻¹ [T_total, H, BT] or None)."""
        p, H, K, V, dev, sdt = self.plan, self.H, self.K, self.V, self.device, self.sdt
        BT, BK, BV, BKT = self.tiles()
        W = empty(p.T_total, H, K, device=dev, dtype=sdt)
        U = empty(p.T_total, H, V, device=dev, dtype=sdt)
        Ai = empty(p.T_total, H, BT, device=dev, dtype=sdt) if store_a else None
        if p.NT > 0:
            _ck.delta_chunk_prep[(p.NT, H)](self.k, self.v, self.beta, self.g, W, U, Ai, p.cu,
                                           p.chunk_tbl, H, K, V, BT=BT, BV=BV, BKT=BKT,
                                           IPREC=self.iprec, STORE_A=store_a, V_BETA=self.v_beta,
                                           **self.common())
        HS = empty(max(p.NT, 1), H, K, V, device=dev, dtype=sdt)
        Unew = empty(p.T_total, H, V, device=dev, dtype=sdt)
        hT = empty(p.N, H, K, V, device=dev) if store_ht else None
        if p.N > 0:
            _ck.delta_chunk_states[(p.N * H, cdiv(V, BV))](
                self.k, W, U, self.g, h0, hT, HS, Unew, p.cu, p.chunk_off, H, K, V,
                USE_H0=h0 is not None, STORE_HT=store_ht, BT=BT, BK=BK, BV=BV, **self.common())
        return HS, Unew, hT, W, Ai


def _state_arg(x, N, H, K, V, name):
    if x is None:
        return None
    if tuple(x.shape) != (N, H, K, V):
        raise ValueError(f"{name} must have shape {(N, H, K, V)}, got {tuple(x.shape)}")
    return x.to(torch.float32).contiguous()


def _quiet(x):
    """Recording launches for a GPU on CPU tensors (the AOT recorder) runs the GPU's 16-bit dots
    in the interpreter, which mishandles bf16 dots: the numbers are meaningless there (only the
    launches are kept), so numpy's overflow warnings are silenced."""
    if x.device.type != "cuda" and targets_gpu(x.device):
        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config=None, n_h=1, out_dtype=torch.float32,
                    q_scale=1.0, v_beta=False):
    with _quiet(q):
        return _chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config, n_h, out_dtype, q_scale,
                                v_beta)


def chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config=None, q_scale=1.0,
                     v_beta=False):
    """(dq, dk, dv, dβ, dg or None, dh0 or None): dq, dk, dv in the input dtype for 16-bit inputs
    (``grads_in_input_dtype``), dβ and dg in β's and g's dtype, dh0 fp32."""
    with _quiet(q):
        return _chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config, q_scale, v_beta)


def _chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config, n_h, out_dtype, q_scale, v_beta):
    """``n_h`` > 1 (DeltaProduct): k, v, beta, g and ``cu_seqlens`` are on the T·n_h sub-step
    sequence, ``q`` [B, T, H, K] is compact, and o [B, T, H, V] is each token's last sub-step.
    o is written in ``out_dtype``."""
    # the bookkeeping is on the sub-step sequence: k stands in for q's shape there (q is read by
    # the output kernel only, from its compact tensor)
    c = _Call(q if n_h == 1 else k, k, v, beta, g, cu_seqlens, config, q_scale, v_beta)
    p, H, K, V = c.plan, c.H, c.K, c.V
    h0 = _state_arg(h0, p.N, H, K, V, "h0")
    HS, Unew, hT, _, _ = c.forward_states(h0, True)
    B, T = q.shape[:2]
    O = empty(B * T, H, V, device=c.device, dtype=out_dtype)
    BT, BK, BV, BKT = c.tiles()
    if p.NT > 0:
        BR = BT if n_h == 1 else max(16, pow2(-(-BT // n_h)))
        _ck.delta_chunk_output[(p.NT, H)](
            packed(q), c.k, c.g, HS, Unew, O, p.cu, p.chunk_tbl, H, c.q_scale, K, V, BT=BT, BV=BV, BKT=BKT,
            NH=n_h, BR=BR, **c.common())
    return O.view(B, T, H, V), hT


def grads_in_input_dtype(dtype) -> bool:
    """Whether ``chunked_backward`` returns dq, dk, dv in the input dtype (16-bit inputs)."""
    return dtype in (torch.float16, torch.bfloat16)


def _chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config, q_scale, v_beta):
    c = _Call(q, k, v, beta, g, cu_seqlens, config, q_scale, v_beta)
    p, H, K, V, dev = c.plan, c.H, c.K, c.V, c.device
    h0 = _state_arg(h0, p.N, H, K, V, "h0")
    dhT = _state_arg(dhT, p.N, H, K, V, "dhT")
    HS, Unew, _, W, Ai = c.forward_states(h0, False, store_a=True)
    BT, BK, BV, BKT = c.tiles()
    dO = packed(do, c.sdt)      # the kernels round dO to the operand dtype anyway: same numbers
    DHS = empty(max(p.NT, 1), H, K, V, device=dev, dtype=c.sdt)
    DU = empty(p.T_total, H, V, device=dev, dtype=c.sdt)
    dh0 = empty(p.N, H, K, V, device=dev) if h0 is not None else None
    if p.N > 0:
        _ck.delta_chunk_dstates[(p.N * H, cdiv(V, BV))](
            c.q, c.k, W, c.g, dO, dhT, DHS, DU, dh0, p.cu, p.chunk_off, H, c.q_scale, K, V,
            USE_DHT=dhT is not None, STORE_DH0=h0 is not None, BT=BT, BK=BK, BV=BV, BKT=BKT,
            **c.common())
    gdt = q.dtype if grads_in_input_dtype(q.dtype) else torch.float32
    dq = empty(p.T_total, H, K, device=dev, dtype=gdt)
    dk = empty(p.T_total, H, K, device=dev, dtype=gdt)
    dv = empty(p.T_total, H, V, device=dev, dtype=gdt)
    db = empty(p.T_total, H, device=dev, dtype=beta.dtype)
    dg = empty(p.T_total, H, device=dev, dtype=g.dtype) if g is not None else None
    if p.NT > 0:
        _cg.delta_chunk_grads[(p.NT, H)](
            c.q, c.k, c.v, c.beta, c.g, Ai, HS, DHS, Unew, DU, dO, dq, dk, dv, db, dg,
            p.cu, p.chunk_tbl, H, c.q_scale, K, V, BT=BT, BV=BV, BKT=BKT, V_BETA=c.v_beta,
            **c.common())
    B, T = c.B, c.T
    return (dq.view(B, T, H, K), dk.view(B, T, H, K), dv.view(B, T, H, V), db.view(B, T, H),
            None if dg is None else dg.view(B, T, H), dh0)


def _expand_steps(x, n_h):
    """[B, T, ...] → [B, T·n_h, ...]: x at each token's last sub-step, zeros before it."""
    B, T = x.shape[:2]
    out = x.new_zeros((B, T, n_h) + tuple(x.shape[2:]))
    out[:, :, n_h - 1] = x
    return out.reshape((B, T * n_h) + tuple(x.shape[2:]))


def _as_packed_call(q, cu_seqlens):
    """The recurrent template takes one packed row and explicit offsets."""
    B, T = q.shape[:2]
    if cu_seqlens is None:
        return torch.arange(0, B * T + 1, T, device=q.device, dtype=torch.int32) if T else \
            torch.zeros(B + 1, device=q.device, dtype=torch.int32)
    return cu_seqlens


def _flat(x):
    return None if x is None else x.reshape((1, x.shape[0] * x.shape[1]) + tuple(x.shape[2:]))


def delta_forward(q, k, v, beta, g, h0, cu_seqlens, strategy="chunked", config=None, n_h=1,
                  out_dtype=torch.float32, q_scale=1.0, v_beta=False):
    """``n_h`` > 1 (DeltaProduct): q and o are per token [B, T, ·]; k, v, beta, g and
    ``cu_seqlens`` are on the T·n_h sub-step sequence (the read-out is each token's last step).
    o in ``out_dtype`` (the chunked kernels write it so; the recurrent output is converted).
    ``q_scale``, ``v_beta``: the pieces applied on load (module docstring)."""
    if strategy == "chunked":
        return chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config, n_h, out_dtype, q_scale,
                               v_beta)
    q, v = _on_load(q, v, beta, q_scale, v_beta)
    o, hT = _recurrent_forward(q, k, v, beta.float(), _f32(g), h0, cu_seqlens, strategy, config, n_h)
    return o.to(out_dtype), hT


def _f32(x):
    return None if x is None else x.float()


def _on_load(q, v, beta, q_scale, v_beta):
    """(q_scale·q, β⊙v or v) in q's and v's dtypes (the recurrent strategy applies them in torch)."""
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(q.dtype)
    if v_beta:
        v = (v.float() * beta.float()[..., None]).to(v.dtype)
    return q, v


def _recurrent_forward(q, k, v, beta, g, h0, cu_seqlens, strategy, config, n_h):
    if n_h > 1:
        o, hT = delta_forward(_expand_steps(q, n_h), k, v, beta, g, h0, cu_seqlens, strategy, config)
        B, T = q.shape[:2]
        return o.reshape(B, T, n_h, *o.shape[2:])[:, :, n_h - 1], hT
    if strategy == "recurrent":
        B, T, H, _ = q.shape
        cu = _as_packed_call(q, cu_seqlens)
        cfg = dict(default_config("recurrent", q.shape[-1], v.shape[-1], q.dtype), **(config or {}))
        o, hT, _ = _rc.delta_recurrent_forward(_flat(q), _flat(k), _flat(v), _flat(beta), _flat(g),
                                               h0, cu, config=cfg, output_final_state=True,
                                               save_for_backward=False)
        return o.reshape(B, T, H, v.shape[-1]), hT
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def delta_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy="chunked", config=None, n_h=1,
                   q_scale=1.0, v_beta=False):
    """The adjoint of ``delta_forward`` (same ``n_h``, ``q_scale`` and ``v_beta`` conventions). For
    n_h > 1 the backward runs on the sub-step sequence with q and do zero at the sub-steps that are
    not read out."""
    if n_h > 1:
        B, T = q.shape[:2]
        dq, *rest = delta_backward(_expand_steps(q, n_h), k, v, beta, g, h0, cu_seqlens,
                                   _expand_steps(do, n_h), dhT, strategy, config, 1, q_scale, v_beta)
        return (dq.reshape(B, T, n_h, *dq.shape[2:])[:, :, n_h - 1].contiguous(), *rest)
    if strategy == "chunked":
        return chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config, q_scale, v_beta)
    qs, vs = _on_load(q, v, beta, q_scale, v_beta)
    dq, dk, dv, db, dg, dh0 = _recurrent_backward(qs, k, vs, beta.float(), _f32(g), h0, cu_seqlens,
                                                  do, dhT, strategy, config)
    if q_scale != 1.0:
        dq = dq * q_scale
    if v_beta:
        db = db + (dv * v.float()).sum(-1)
        dv = dv * beta.float()[..., None]
    return dq, dk, dv, db, dg, dh0


def _recurrent_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy, config):
    if strategy == "recurrent":
        B, T, H, K = q.shape
        V = v.shape[-1]
        cu = _as_packed_call(q, cu_seqlens)
        cfg = dict(default_config("recurrent", K, V, q.dtype), **(config or {}))
        # saved=None: the template recomputes its state checkpoints (a forward pass without o)
        dq, dk, dv, db, dg, dh0 = _rc.delta_recurrent_backward(
            _flat(q), _flat(k), _flat(v), _flat(beta), _flat(g), h0, cu, _flat(do), dhT, None, config=cfg)
        return (dq.reshape(B, T, H, K), dk.reshape(B, T, H, K), dv.reshape(B, T, H, V),
                db.reshape(B, T, H), None if dg is None else dg.reshape(g.shape), dh0)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
