"""Torch-level entry points of the Householder (delta-rule) core, both strategies.

Per sequence and head, state S ∈ R^{K×V} (fp32):
    S_t = exp(g_t) S_{t−1} + k_t (v_t − β_t exp(g_t) S_{t−1}ᵀ k_t)ᵀ,    o_t = S_tᵀ q_t
(fla's delta rule has v_t = β_t v_fla). Layouts: q, k [B, T, H, K]; v [B, T, H, V]; beta, g
[B, T, H]; h0 / hT [N, H, K, V] with N = B, or N = len(cu_seqlens) − 1 (then B == 1).

``delta_forward`` → (o fp32 [B, T, H, V], hT fp32 [N, H, K, V]);
``delta_backward`` → fp32 (dq, dk, dv, dbeta, dg or None, dh0 or None).

Strategies: "recurrent" (kernels/recurrent.py: a fused token loop, also the decode path)
and "chunked" (kernels/chunked.py: the WY/UT representation, docs/delta_rule.md). The
chunked backward recomputes the forward's chunk states instead of keeping them from the forward
(one extra pass of the two forward kernels; no K×V-per-chunk tensor lives between the passes).
"""
from __future__ import annotations

import torch

from ...tiles import cdiv, pow2
from ..common.chunks import LOG_FLOOR, ChunkPlan, empty, packed, tile
from ..common.launch import targets_gpu
from .kernels import chunked as _ck
from .kernels import recurrent as _rc

STRATEGIES = ("recurrent", "chunked")
MAX_HEAD_K = 256         # the chunked kernels hold the whole K extent in one register tile


def default_config(strategy, K, V, dtype) -> dict:
    """Launch parameters: chunked — BT (chunk), BK (whole K, power of two), BV (V-tile), BKT (the
    K-tile of the backward's K-sized sums); recurrent — the recurrent template's own defaults.

    The chunked defaults are the largest tiles that build without register spills for sm_80 and
    sm_90 (checked with ptxas in tests/test_householder_aot.py): the dots of 16-bit inputs run as
    tf32 (one tensor-core pass), those of fp32 inputs as tf32x3 (three passes, about fp32
    accuracy), which needs twice the operand registers, hence smaller tiles."""
    if strategy == "chunked":
        BK = tile(K, MAX_HEAD_K)
        if dtype == torch.float32:
            BT, BV = 16, (32 if BK <= 64 else 16)
        else:
            BT, BV = (32 if BK <= 64 else 16), 32
        return {"BT": BT, "BK": BK, "BV": tile(V, BV), "BKT": 32, "num_warps": 8, "num_stages": 1}
    if strategy == "recurrent":
        return dict(_rc.default_config(K, V, dtype))
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def _inverse_prec(x) -> str:
    """The triangular inverse's dots: fp32-like for every input dtype (its error compounds)."""
    if x.device.type != "cuda" and not targets_gpu(x.device):
        return "ieee"
    return "ieee" if torch.version.hip else "tf32x3"


def _prec(x) -> str:
    """tl.dot input precision. Every dot takes fp32 operands (the triangular inverse of the WY form
    is sensitive to operand rounding). Off the GPU: exact ("ieee"). On NVIDIA GPUs: "tf32" for
    16-bit inputs (a 10-bit mantissa: finer than the bf16 operands fla's kernels use) and "tf32x3"
    for fp32 inputs (three tf32 passes, about fp32 accuracy). An "ieee" dot would run on FMA units
    with operand layouts that need far more registers."""
    if x.device.type != "cuda" and not targets_gpu(x.device):
        return "ieee"
    if torch.version.hip:
        return "ieee"
    return "tf32x3" if x.dtype == torch.float32 else "tf32"


class _Call:
    """The bookkeeping of one chunked call: packed tensors, chunk tables, launch parameters."""

    def __init__(self, q, k, v, beta, g, cu_seqlens, config):
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
        self.beta = packed(beta, torch.float32)
        self.g = packed(g, torch.float32)
        self.prec, self.iprec = _prec(q), _inverse_prec(q)
        self.device = q.device

    def launch_opts(self):
        c = self.cfg
        BK = tile(self.K, c["BK"])
        return dict(USE_G=self.g is not None, LOG_FLOOR=LOG_FLOOR, BT=c["BT"], BK=BK,
                    BV=tile(self.V, c["BV"]), PREC=self.prec, num_warps=c["num_warps"],
                    num_stages=c["num_stages"])

    def bkt(self):
        """The K-tile of the K-sums that run as loops (at most BK, at least 16)."""
        return min(tile(self.K, self.cfg["BK"]), tile(self.K, self.cfg.get("BKT", 32)))

    def forward_states(self, h0, store_ht):
        """prep + states: (HS [NT, H, K, V], u [T_total, H, V], hT or None, W [T_total, H, K])."""
        p, H, K, V, dev = self.plan, self.H, self.K, self.V, self.device
        opts = self.launch_opts()
        W = empty(p.T_total, H, K, device=dev)
        U = empty(p.T_total, H, V, device=dev)
        if p.NT > 0:
            _ck.delta_chunk_prep[(p.NT, H)](self.k, self.v, self.beta, self.g, W, U, p.cu, p.chunk_tbl,
                                           H, K, V, BKT=self.bkt(), IPREC=self.iprec, **opts)
        HS = empty(max(p.NT, 1), H, K, V, device=dev)
        Unew = empty(p.T_total, H, V, device=dev)
        hT = empty(p.N, H, K, V, device=dev) if store_ht else None
        if p.N > 0:
            _ck.delta_chunk_states[(p.N * H, cdiv(V, opts["BV"]))](
                self.k, W, U, self.g, h0, hT, HS, Unew, p.cu, p.chunk_off, H, K, V,
                USE_H0=h0 is not None, STORE_HT=store_ht, **opts)
        return HS, Unew, hT, W


def _state_arg(x, N, H, K, V, name):
    if x is None:
        return None
    if tuple(x.shape) != (N, H, K, V):
        raise ValueError(f"{name} must have shape {(N, H, K, V)}, got {tuple(x.shape)}")
    return x.to(torch.float32).contiguous()


def chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config=None, n_h=1):
    """``n_h`` > 1 (DeltaProduct): k, v, beta, g and ``cu_seqlens`` are on the T·n_h sub-step
    sequence, ``q`` [B, T, H, K] is compact, and o [B, T, H, V] is each token's last sub-step."""
    # the bookkeeping is on the sub-step sequence: k stands in for q's shape there (q is read by
    # the output kernel only, from its compact tensor)
    c = _Call(q if n_h == 1 else k, k, v, beta, g, cu_seqlens, config)
    p, H, K, V = c.plan, c.H, c.K, c.V
    h0 = _state_arg(h0, p.N, H, K, V, "h0")
    HS, Unew, hT, _ = c.forward_states(h0, True)
    B, T = q.shape[:2]
    O = empty(B * T, H, V, device=c.device)
    opts = c.launch_opts()
    if p.NT > 0:
        BR = opts["BT"] if n_h == 1 else max(16, pow2(-(-opts["BT"] // n_h)))
        _ck.delta_chunk_output[(p.NT, cdiv(V, opts["BV"]), H)](
            packed(q), c.k, c.g, HS, Unew, O, p.cu, p.chunk_tbl, H, K, V, BKT=c.bkt(),
            NH=n_h, BR=BR, **opts)
    return O.view(B, T, H, V), hT


def _expand_steps(x, n_h):
    """[B, T, ...] → [B, T·n_h, ...]: x at each token's last sub-step, zeros before it."""
    B, T = x.shape[:2]
    out = x.new_zeros((B, T, n_h) + tuple(x.shape[2:]))
    out[:, :, n_h - 1] = x
    return out.reshape((B, T * n_h) + tuple(x.shape[2:]))


def chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config=None):
    c = _Call(q, k, v, beta, g, cu_seqlens, config)
    p, H, K, V, dev = c.plan, c.H, c.K, c.V, c.device
    h0 = _state_arg(h0, p.N, H, K, V, "h0")
    dhT = _state_arg(dhT, p.N, H, K, V, "dhT")
    HS, Unew, _, W = c.forward_states(h0, False)
    opts = c.launch_opts()
    dO = packed(do, torch.float32)
    DHS = empty(max(p.NT, 1), H, K, V, device=dev)
    DU = empty(p.T_total, H, V, device=dev)
    dh0 = empty(p.N, H, K, V, device=dev) if h0 is not None else None
    if p.N > 0:
        _ck.delta_chunk_dstates[(p.N * H, cdiv(V, opts["BV"]))](
            c.q, c.k, W, c.g, dO, dhT, DHS, DU, dh0, p.cu, p.chunk_off, H, K, V,
            USE_DHT=dhT is not None, STORE_DH0=h0 is not None, BKT=c.bkt(), **opts)
    dq = empty(p.T_total, H, K, device=dev)
    dk = empty(p.T_total, H, K, device=dev)
    dv = empty(p.T_total, H, V, device=dev)
    db = empty(p.T_total, H, device=dev)
    dg = empty(p.T_total, H, device=dev) if g is not None else None
    BT = opts["BT"]
    dQa, dWa, dKb = (empty(p.T_total, H, K, device=dev) for _ in range(3))
    dP, dM, Ainv = (empty(p.T_total, H, BT, device=dev) for _ in range(3))
    BKT = c.bkt()
    NK = cdiv(K, BKT)
    hdh = empty(NK, max(p.NT, 1), H, device=dev)
    if p.NT > 0:
        small = dict(PREC=opts["PREC"], num_warps=opts["num_warps"], num_stages=opts["num_stages"])
        _ck.delta_chunk_grads_v[(p.NT, H, NK)](
            HS, DHS, Unew, DU, dO, dQa, dWa, dKb, hdh, p.cu, p.chunk_tbl, H, p.NT, K, V,
            BT=BT, BKT=BKT, BV=opts["BV"], **small)
        _ck.delta_chunk_grads_p[(p.NT, H)](
            c.v, Unew, DU, dO, dP, dM, p.cu, p.chunk_tbl, H, V, BT=BT, BV=opts["BV"], **small)
        kopts = {k_: v_ for k_, v_ in opts.items() if k_ != "BV"}
        _ck.delta_chunk_grads_k[(p.NT, H)](
            c.q, c.k, c.beta, c.g, dQa, dWa, dKb, dP, dM, hdh, Ainv, dq, dk, db, dg,
            p.cu, p.chunk_tbl, H, p.NT, NK, K, NKP=pow2(NK), BKT=BKT, IPREC=c.iprec, **kopts)
        _ck.delta_chunk_dv[(p.NT, cdiv(V, opts["BV"]), H)](
            Ainv, DU, dv, p.cu, p.chunk_tbl, H, V, BT=BT, BV=opts["BV"], PREC=opts["PREC"],
            num_warps=opts["num_warps"], num_stages=opts["num_stages"])
    B, T = c.B, c.T
    return (dq.view(B, T, H, K), dk.view(B, T, H, K), dv.view(B, T, H, V), db.view(B, T, H),
            None if dg is None else dg.view(B, T, H), dh0)


def _as_packed_call(q, cu_seqlens):
    """The recurrent template takes one packed row and explicit offsets."""
    B, T = q.shape[:2]
    if cu_seqlens is None:
        return torch.arange(0, B * T + 1, T, device=q.device, dtype=torch.int32) if T else \
            torch.zeros(B + 1, device=q.device, dtype=torch.int32)
    return cu_seqlens


def _flat(x):
    return None if x is None else x.reshape((1, x.shape[0] * x.shape[1]) + tuple(x.shape[2:]))


def delta_forward(q, k, v, beta, g, h0, cu_seqlens, strategy="chunked", config=None, n_h=1):
    """``n_h`` > 1 (DeltaProduct): q and o are per token [B, T, ·]; k, v, beta, g and
    ``cu_seqlens`` are on the T·n_h sub-step sequence (the read-out is each token's last step)."""
    if strategy == "chunked":
        return chunked_forward(q, k, v, beta, g, h0, cu_seqlens, config, n_h)
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


def delta_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, strategy="chunked", config=None, n_h=1):
    """The adjoint of ``delta_forward`` (same ``n_h`` convention). For n_h > 1 the backward runs
    on the sub-step sequence with q and do zero at the sub-steps that are not read out."""
    if n_h > 1:
        B, T = q.shape[:2]
        dq, *rest = delta_backward(_expand_steps(q, n_h), k, v, beta, g, h0, cu_seqlens,
                                   _expand_steps(do, n_h), dhT, strategy, config)
        return (dq.reshape(B, T, n_h, *dq.shape[2:])[:, :, n_h - 1].contiguous(), *rest)
    if strategy == "chunked":
        return chunked_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, config)
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
