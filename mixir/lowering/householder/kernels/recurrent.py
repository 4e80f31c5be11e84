"""Fused token-by-token kernels of the Householder (delta-rule) family: forward and backward.

Canonical recurrence per packed sequence n and head h, state S in R^{K x V} (fp32):

    S_t = alpha_t S_{t-1} + k_t (v_t - beta_t alpha_t S_{t-1}^T k_t)^T,      alpha_t = exp(g_t)
        = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + k_t v_t^T,                o_t = S_t^T q_t.

With a key-diagonal gate (``GATE_K``: g [T, H, K], Kimi Delta Attention) the gate applies first,
``S_t = (I - beta_t k_t k_t^T) Diag(exp g_t) S_{t-1} + k_t v_t^T``: the kernels gate the state
tile row-wise and run the ungated step on it; in the backward, with Sg = Diag(exp g_t) S_{t-1}
and dSg = Sh_t - beta_t k_t b_t^T: dg_t = rowsum(dSg ⊙ Sg) (per V-tile partial sums, like dk),
dS_{t-1} = Diag(exp g_t) dSg, and dk, dbeta as below with alpha = 1 and Sg for S_{t-1}.

(fla's delta rule is this with v_t = beta_t * v_fla,t.) Nothing is assumed about k (not
normalised), beta (any real; [0, 2] gives transition eigenvalues in [-1, 1]) or g (any real;
absent means alpha_t = 1).

Layout: packed [T_total, H, D] contiguous tensors, sequences given by ``cu_seqlens`` (N + 1
offsets, int32 or int64; length-0 sequences allowed: hT = h0 and dh0 = dhT for them). One program
per (n * H + h, V-tile); the whole K extent is one register tile [BK, BV]. The read-out S^T k
only reduces over K, so every V-tile evolves independently: V-tiling is exact for the state.
DK and DV are compile-time constants (one specialisation per head size: constant strides let the
compiler vectorise the tile loads and keep the register count down).

Forward (``delta_recurrent_fwd``), per token: a = S^T k [BV]; S <- alpha S + k (v - alpha beta a)^T;
o = S^T q. Optionally stores a checkpoint of the state every C tokens of a sequence (before
tokens bos, bos + C, ...): CKPT[(CK_OFF[n] + j) * H + h] = S_{bos + jC - 1} (the state entering
token bos + jC), with CK_OFF[n] = sum_{m < n} ceil(len_m / C).

Backward (backpropagation through time, ``delta_recurrent_bwd``). With Sh_t the total gradient
reaching S_t, Sh_t = dS_t (from t + 1) + q_t do_t^T, a_t = S_{t-1}^T k_t, b_t = Sh_t^T k_t:

    dS_{t-1} = alpha_t (I - beta_t k_t k_t^T) Sh_t      (the transition is symmetric)
    dq_t     = S_t do_t
    dv_t     = b_t
    dk_t     = Sh_t v_t - alpha_t beta_t (Sh_t a_t + S_{t-1} b_t)
    dbeta_t  = -alpha_t a_t . b_t
    dg_t     = alpha_t (<Sh_t, S_{t-1}>_F - beta_t a_t . b_t)
    dh0      = dS_0.

The transition is never inverted (alpha can underflow and I - beta k k^T is singular at
beta |k|^2 = 1). The sequence is walked segment by segment in reverse (a segment is the C tokens
after one checkpoint): the program reloads the segment's checkpoint, recomputes its C states
forward (writing dq_t on the way) into a per-program scratch slab SCRATCH[n * H + h] of shape
[C, K, V], then walks the segment backwards reading S_{t-1} from the slab.

Cost (per head, T tokens in N sequences, 4-byte floats):
* forward: one state update per token (two K x V multiply-adds and a K-reduction, plus the
  read-out); checkpoints (T / C + N) * K * V * 4 bytes, allocated for the bound
  floor((T + N (C - 1)) / C) so that no host sync is needed (``save_for_backward=False``: none);
* backward: the recompute (one state update) and the reverse step (about three K x V passes) per
  token, plus one K x V store and one K x V load through the scratch slab (written and re-read
  within C tokens, so mostly L2 traffic); scratch N * C * K * V * 4 bytes. No O(C) recomputation
  per token;
* K-side quantities (dq, dk, dbeta, dg) reduce over V, so with NV = cdiv(V, BV) V-tiles the
  kernel writes per-tile partial sums ([NV, T, H, K] / [NV, T, H] fp32) that the launcher sums in
  torch: NV times the memory of dq and dk (NV = 4 at K = V = 64 and 8 at K = V = 128 with the
  default backward tile).
"""
import dataclasses

import torch
import triton
import triton.language as tl

from ....tiles import cdiv
from mixir.errors import InputError
from mixir.lowering.common.chunks import empty, packed, tile
from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import load_state, sequence_head, state_offsets, store_state

_SUM = tl.standard._sum_combine    # tl.reduce(x, axis, _SUM): tl.sum is slow in the interpreter


@triton.jit
def _gate_rows(G, t, i_h, H, DK: tl.constexpr, o_k, m_k):
    """exp(g_t) of a key-diagonal gate: one factor per row of the state tile."""
    return tl.exp(tl.load(G + (t * H + i_h) * DK + o_k, mask=m_k, other=0.).to(tl.float32))


@triton.jit
def _step(S, K_, V_, BETA, G, t, i_h, H, DK: tl.constexpr, DV: tl.constexpr, o_k, o_v, m_k, m_v,
          USE_G: tl.constexpr, GATE_K: tl.constexpr):
    """One token: S_t = alpha S_{t-1} + k (v - alpha beta S_{t-1}^T k)^T; a key-diagonal gate
    (GATE_K) applies first, S <- Diag(exp g_t) S_{t-1}, with alpha = 1."""
    k = tl.load(K_ + (t * H + i_h) * DK + o_k, mask=m_k, other=0.).to(tl.float32)
    v = tl.load(V_ + (t * H + i_h) * DV + o_v, mask=m_v, other=0.).to(tl.float32)
    beta = tl.load(BETA + t * H + i_h).to(tl.float32)
    alpha = 1.0
    if USE_G:
        if GATE_K:
            S = S * _gate_rows(G, t, i_h, H, DK, o_k, m_k)[:, None]
        else:
            alpha = tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
    a = tl.reduce(S * k[:, None], 0, _SUM)
    return alpha * S + k[:, None] * (v - alpha * beta * a)[None, :]


@kernel
def delta_recurrent_fwd(Q, K_, V_, BETA, G, H0, O, HT, CKPT, CK_OFF, cu_seqlens, H,
                        DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
                        USE_G: tl.constexpr, USE_H0: tl.constexpr,
                        STORE_O: tl.constexpr, STORE_HT: tl.constexpr, STORE_CKPT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, GATE_K: tl.constexpr = False):
    # grid: (N * H, cdiv(DV, BV))
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(0), H)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    S = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0)
    ck_base = 0
    if STORE_CKPT:
        ck_base = tl.load(CK_OFF + i_n).to(tl.int64)
    n_seg = (eos - bos + C - 1) // C
    for j in range(0, n_seg):
        s0 = bos + j * C
        if STORE_CKPT:
            tl.store(CKPT + ((ck_base + j) * H + i_h) * DK * DV + o_kv, S, mask=m_kv)
        for t in range(s0, tl.minimum(s0 + C, eos)):
            S = _step(S, K_, V_, BETA, G, t, i_h, H, DK, DV, o_k, o_v, m_k, m_v, USE_G, GATE_K)
            if STORE_O:
                q = tl.load(Q + (t * H + i_h) * DK + o_k, mask=m_k, other=0.).to(tl.float32)
                o = tl.reduce(S * q[:, None], 0, _SUM)
                tl.store(O + (t * H + i_h) * DV + o_v, o, mask=m_v)
    if STORE_HT:
        store_state(HT, S, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def delta_recurrent_bwd(Q, K_, V_, BETA, G, DO, DHT, CKPT, CK_OFF, SCRATCH,
                        DQ, DK_, DV_, DBETA, DG, DH0, cu_seqlens, T_total, H,
                        DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
                        USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                        STORE_DH0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        GATE_K: tl.constexpr = False):
    # grid: (N * H, cdiv(DV, BV)). DQ, DK_: [NV, T_total, H, DK] and DBETA, DG: [NV, T_total, H]
    # per-V-tile partial sums; DV_ [T_total, H, DV] is exact per tile. SCRATCH: [N * H, C, DK, DV].
    i_nh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, i_nh, H)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, i_v, DK, DV, BK, BV)
    part_k = i_v.to(tl.int64) * T_total * H * DK
    part_s = i_v.to(tl.int64) * T_total * H
    scratch = SCRATCH + i_nh.to(tl.int64) * C * DK * DV
    ck_base = tl.load(CK_OFF + i_n).to(tl.int64)

    dS = load_state(DHT, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_DHT)
    n_seg = (eos - bos + C - 1) // C
    for jr in range(0, n_seg):
        j = n_seg - 1 - jr
        s0 = bos + j * C
        s1 = tl.minimum(s0 + C, eos)
        # recompute the segment's states forward from its checkpoint; S_{t-1} -> scratch[t - s0]
        S = tl.load(CKPT + ((ck_base + j) * H + i_h) * DK * DV + o_kv, mask=m_kv, other=0.)
        for t in range(s0, s1):
            tl.store(scratch + (t - s0) * DK * DV + o_kv, S, mask=m_kv)
            S = _step(S, K_, V_, BETA, G, t, i_h, H, DK, DV, o_k, o_v, m_k, m_v, USE_G, GATE_K)
            do = tl.load(DO + (t * H + i_h) * DV + o_v, mask=m_v, other=0.).to(tl.float32)
            dq = tl.reduce(S * do[None, :], 1, _SUM)                  # dq_t = S_t do_t
            tl.store(DQ + part_k + (t * H + i_h) * DK + o_k, dq, mask=m_k)
        tl.debug_barrier()  # the slab was written by other threads of this program
        # walk the segment backwards
        for tr in range(s0, s1):
            t = s1 - 1 - (tr - s0)
            Sp = tl.load(scratch + (t - s0) * DK * DV + o_kv, mask=m_kv, other=0.)
            k = tl.load(K_ + (t * H + i_h) * DK + o_k, mask=m_k, other=0.).to(tl.float32)
            v = tl.load(V_ + (t * H + i_h) * DV + o_v, mask=m_v, other=0.).to(tl.float32)
            beta = tl.load(BETA + t * H + i_h).to(tl.float32)
            alpha = 1.0
            if USE_G:
                if GATE_K:     # from here on Sp is the gated state Diag(exp g_t) S_{t-1}
                    Sp = Sp * _gate_rows(G, t, i_h, H, DK, o_k, m_k)[:, None]
                else:
                    alpha = tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
            q = tl.load(Q + (t * H + i_h) * DK + o_k, mask=m_k, other=0.).to(tl.float32)
            do = tl.load(DO + (t * H + i_h) * DV + o_v, mask=m_v, other=0.).to(tl.float32)
            dS += q[:, None] * do[None, :]
            a = tl.reduce(Sp * k[:, None], 0, _SUM)
            b = tl.reduce(dS * k[:, None], 0, _SUM)
            tl.store(DV_ + (t * H + i_h) * DV + o_v, b, mask=m_v)
            ab = alpha * beta
            dk = tl.reduce(dS * (v - ab * a)[None, :] - ab * Sp * b[None, :], 1, _SUM)
            tl.store(DK_ + part_k + (t * H + i_h) * DK + o_k, dk, mask=m_k)
            a_dot_b = tl.reduce(a * b, 0, _SUM)
            tl.store(DBETA + part_s + t * H + i_h, -alpha * a_dot_b)
            dSg = dS - beta * k[:, None] * b[None, :]       # the gradient reaching the gated state
            if USE_G:
                if GATE_K:     # dg_t = rowsum(dSg ⊙ Diag(α) S_{t-1}); dS_{t-1} = Diag(α) dSg
                    tl.store(DG + part_k + (t * H + i_h) * DK + o_k, tl.reduce(dSg * Sp, 1, _SUM), mask=m_k)
                    dSg = dSg * _gate_rows(G, t, i_h, H, DK, o_k, m_k)[:, None]
                else:
                    tl.store(DG + part_s + t * H + i_h,
                             alpha * (tl.reduce(tl.reduce(dS * Sp, 1, _SUM), 0, _SUM) - beta * a_dot_b))
            dS = alpha * dSg
        tl.debug_barrier()  # the next segment overwrites the slab
    if STORE_DH0:
        store_state(DH0, dS, i_n, i_h, H, DK, DV, o_kv, m_kv)


KERNELS = (delta_recurrent_fwd, delta_recurrent_bwd)


# ---------------------------------------------------------------------------------- launchers

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class RecurrentSaved:
    """What the forward keeps for the backward: state checkpoints every ``interval`` tokens of each
    sequence, ``states`` [>= sum_n ceil(len_n / interval), H, K, V] fp32, and ``offsets`` [N + 1]
    (int64, on the device): sequence n's checkpoints start at row ``offsets[n]``."""
    states: torch.Tensor
    offsets: torch.Tensor
    interval: int


def default_config(K, V, dtype) -> dict:
    """Launch parameters (ints): BK (the whole K extent, power of two >= 16), BV (the forward's
    V-tile), bwd_BV (the backward's V-tile), num_warps, num_stages, and ``checkpoint_every`` (C:
    tokens between saved states, also the depth of the backward's scratch slab).

    The forward keeps one state tile of BK * BV <= 4096 fp32 live (32 per thread at 4 warps); the
    backward keeps two (dS and S_{t-1}) plus temporaries, so its tile is <= 1024 fp32 where BV = 16
    allows (2048 at K = 128). A 2048 tile at K = 64 left ptxas spilling 40 bytes on sm_80 with bf16
    inputs. Checked with ptxas for K = V = 64 and 128 (fp32 and bf16 inputs, sm_80 and sm_90), see
    tests/test_delta_recurrent_core.py: no spills. ``dtype`` does not matter: inputs are converted
    to fp32 on load.
    """
    del dtype
    BK = tile(K, 1 << 30)
    BV = tile(V, max(16, min(64, 4096 // BK)))
    bwd_BV = tile(V, max(16, min(64, 1024 // BK)))
    return {"BK": BK, "BV": BV, "bwd_BV": bwd_BV, "num_warps": 4 if BK * BV >= 2048 else 2,
            "num_stages": 1, "checkpoint_every": 16}


def _check(q, k, v, beta, g, h0, cu_seqlens):
    if q.dim() != 4 or q.shape[0] != 1:
        raise InputError(f"q must be [1, T, H, K] (packed), got {tuple(q.shape)}")
    _, T, H, K = q.shape
    if k.shape != q.shape:
        raise InputError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise InputError(f"v must be [1, {T}, {H}, V], got {tuple(v.shape)}")
    if q.dtype not in _FLOAT_INPUTS or k.dtype != q.dtype or v.dtype != q.dtype:
        raise InputError(f"q, k, v must share one of {_FLOAT_INPUTS}, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    for name, x in (("beta", beta), ("g", g)):
        shapes = ((1, T, H), (1, T, H, K)) if name == "g" else ((1, T, H),)
        if x is not None and (tuple(x.shape) not in shapes or not x.is_floating_point()):
            raise InputError(f"{name} must be a float tensor "
                             + " or ".join(str(list(s_)) for s_ in shapes)
                             + f", got {tuple(x.shape)} {x.dtype}")
    if beta is None:
        raise InputError("beta is required")
    if cu_seqlens is None or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise InputError("cu_seqlens must be an int32/int64 tensor [N + 1]")
    if cu_seqlens.device.type == "cpu":      # checked where it costs no device sync
        c = cu_seqlens.to(torch.int64)
        if int(c[0]) != 0 or int(c[-1]) != T or bool((c[1:] < c[:-1]).any()):
            raise InputError(f"cu_seqlens must rise from 0 to T = {T}, got {c.tolist()}")
    N, V = cu_seqlens.numel() - 1, v.shape[-1]
    if h0 is not None and tuple(h0.shape) != (N, H, K, V):
        raise InputError(f"h0 must be [{N}, {H}, {K}, {V}], got {tuple(h0.shape)}")
    return T, H, K, V, N


def _state(x):
    return None if x is None else x.to(torch.float32).contiguous()


def _config(K, V, dtype, config):
    """(config, BK, forward BV, backward BV, C); BK is always the whole K extent."""
    cfg = dict(default_config(K, V, dtype), **(config or {}))
    BK = tile(K, 1 << 30)
    BV, bwd_BV = tile(V, cfg["BV"]), tile(V, cfg["bwd_BV"])
    C = int(cfg["checkpoint_every"])
    if C < 1:
        raise InputError(f"checkpoint_every must be >= 1, got {C}")
    return cfg, BK, BV, bwd_BV, C


def _launch_forward(qp, kp, vp, bp, gp, h0, cu, T, H, K, V, N, cfg, BK, BV, C,
                    store_o, store_ht, store_ckpt):
    device = qp.device
    o = empty(T, H, V, device=device) if store_o else None
    hT = empty(N, H, K, V, device=device) if store_ht else None
    saved = None
    if store_ckpt:
        lens = cu[1:].to(torch.int64) - cu[:-1].to(torch.int64)
        offsets = torch.zeros(N + 1, dtype=torch.int64, device=device)
        offsets[1:] = torch.cumsum(torch.div(lens + (C - 1), C, rounding_mode="floor"), 0)
        rows = max(1, (T + N * (C - 1)) // C)   # >= sum_n ceil(len_n / C), known without a sync
        saved = RecurrentSaved(empty(rows, H, K, V, device=device), offsets, C)
    delta_recurrent_fwd[(N * H, cdiv(V, BV))](
        qp, kp, vp, bp, gp, h0, o, hT, None if saved is None else saved.states,
        None if saved is None else saved.offsets, cu, H, K, V,
        C=C, USE_G=gp is not None, USE_H0=h0 is not None, STORE_O=store_o, STORE_HT=store_ht,
        STORE_CKPT=store_ckpt, BK=BK, BV=BV, GATE_K=gp is not None and gp.dim() == 3,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o, hT, saved


def delta_recurrent_forward(q, k, v, beta, g, h0, cu_seqlens, config=None,
                            output_final_state=True, *, save_for_backward=True):
    """q, k [1, T, H, K]; v [1, T, H, V]; beta [1, T, H]; g [1, T, H] or None; h0 [N, H, K, V] or
    None; cu_seqlens int32/int64 [N + 1]. Inputs fp32/fp16/bf16 (q, k, v one dtype; beta, g any
    float). Returns (o fp32 [1, T, H, V], hT fp32 [N, H, K, V] or None, saved), where ``saved`` is
    a ``RecurrentSaved`` (state checkpoints) or None with ``save_for_backward=False`` (inference:
    no checkpoint memory; the backward then recomputes them)."""
    T, H, K, V, N = _check(q, k, v, beta, g, h0, cu_seqlens)
    cfg, BK, BV, _, C = _config(K, V, q.dtype, config)
    qp, kp, vp = packed(q), packed(k), packed(v)
    o, hT, saved = _launch_forward(qp, kp, vp, packed(beta), packed(g), _state(h0),
                                   cu_seqlens.contiguous(), T, H, K, V, N, cfg, BK, BV, C,
                                   True, output_final_state, save_for_backward)
    return o.view(1, T, H, V), hT, saved


def delta_recurrent_backward(q, k, v, beta, g, h0, cu_seqlens, do, dhT, saved, config=None):
    """do [1, T, H, V] (any float dtype); dhT [N, H, K, V] or None; ``saved`` from the forward (or
    None: the checkpoints are recomputed). Returns fp32 (dq, dk, dv, dbeta, dg, dh0), dg None
    without g and dh0 None without h0. The checkpoint interval is the one ``saved`` was made
    with."""
    T, H, K, V, N = _check(q, k, v, beta, g, h0, cu_seqlens)
    cfg, BK, fwd_BV, BV, C = _config(K, V, q.dtype, config)
    if dhT is not None and tuple(dhT.shape) != (N, H, K, V):
        raise InputError(f"dhT must be [{N}, {H}, {K}, {V}], got {tuple(dhT.shape)}")
    if tuple(do.shape) != (1, T, H, V):
        raise InputError(f"do must be [1, {T}, {H}, {V}], got {tuple(do.shape)}")
    device = q.device
    qp, kp, vp, bp, gp = packed(q), packed(k), packed(v), packed(beta), packed(g)
    h0, dhT, cu = _state(h0), _state(dhT), cu_seqlens.contiguous()
    if saved is None:
        _, _, saved = _launch_forward(qp, kp, vp, bp, gp, h0, cu, T, H, K, V, N, cfg, BK, fwd_BV, C,
                                      False, False, True)
    C = saved.interval
    NV = cdiv(V, BV)
    dq_p = empty(NV, T, H, K, device=device)
    dk_p = empty(NV, T, H, K, device=device)
    dv = empty(T, H, V, device=device)
    dbeta_p = empty(NV, T, H, device=device)
    gate_k = g is not None and g.dim() == 4
    dg_p = None if g is None else empty(*((NV, T, H, K) if gate_k else (NV, T, H)), device=device)
    dh0 = empty(N, H, K, V, device=device) if h0 is not None else None
    scratch = empty(N * H, C, K, V, device=device)
    delta_recurrent_bwd[(N * H, NV)](
        qp, kp, vp, bp, gp, packed(do), dhT, saved.states, saved.offsets, scratch,
        dq_p, dk_p, dv, dbeta_p, dg_p, dh0, cu, T, H, K, V,
        C=C, USE_G=g is not None, USE_DHT=dhT is not None, STORE_DH0=h0 is not None,
        BK=BK, BV=BV, GATE_K=gate_k, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    total = (lambda x: x[0]) if NV == 1 else (lambda x: x.sum(0))
    dq, dk, dbeta = total(dq_p), total(dk_p), total(dbeta_p)
    dg = None if dg_p is None else total(dg_p).view(g.shape)
    return (dq.view(1, T, H, K), dk.view(1, T, H, K), dv.view(1, T, H, V), dbeta.view(1, T, H),
            dg, dh0)
