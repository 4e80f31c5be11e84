"""Fused token-by-token gated-linear-attention kernels (state tile kept in registers).

Canonical recurrence per (sequence, head), state S in R^{K x V}:
    S_t = exp(g_t + gk_t[:, None] + gv_t[None, :]) * S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t.
Layout: packed [T_total, H, D] contiguous tensors, sequences given by ``cu_seqlens`` (int32,
N + 1 offsets). One program per (sequence * head, V-tile); the whole K extent is one tile (BK).
The per-step gate is applied as exp(g) * exp(gk)[:, None] * exp(gv)[None, :] (single log-decays,
no cumulative sums, every factor <= 1 for non-positive log-decays).
"""
import triton
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import load_state, sequence_head, state_offsets, store_state


@triton.jit
def _decay(h, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v,
           USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr):
    """h * exp(g_t + gk_t[:, None] + gv_t[None, :]), one factor at a time (each <= 1 for
    non-positive log-decays). USE_GK = 1: gk_t is GK's row; 2: gk_t = u_t * gk_a with u = GK
    [T_total, H] a per-token scalar and gk_a the head's [BK] factor (``_gk_factor``)."""
    if USE_G:
        h = h * tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
    if USE_GK == 1:
        h = h * tl.exp(tl.load(GK + base_k + o_k, mask=m_k, other=0.).to(tl.float32))[:, None]
    if USE_GK == 2:
        h = h * tl.exp(tl.load(GK + t * H + i_h).to(tl.float32) * gk_a)[:, None]
    if USE_GV:
        h = h * tl.exp(tl.load(GV + base_v + o_v, mask=m_v, other=0.).to(tl.float32))[None, :]
    return h


@triton.jit
def _gk_factor(GKS, i_h, DK, o_k, m_k, USE_GK: tl.constexpr, BK: tl.constexpr):
    """The head's per-key factor a of a factored log-decay gk_t = u_t * a (GKS [H, DK])."""
    if USE_GK == 2:
        gk_a = tl.load(GKS + i_h * DK + o_k, mask=m_k, other=0.).to(tl.float32)
    else:
        gk_a = tl.zeros([BK], dtype=tl.float32)
    return gk_a


@triton.jit
def _step(h, K_, V_, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v,
          USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr):
    """One token: S_t = exp(g_t + gk_t[:, None] + gv_t[None, :]) * S_{t-1} + k_t v_t^T (row t of
    head i_h of the packed tensors starts at base_k / base_v)."""
    k = tl.load(K_ + base_k + o_k, mask=m_k, other=0.).to(tl.float32)
    v = tl.load(V_ + base_v + o_v, mask=m_v, other=0.).to(tl.float32)
    h = _decay(h, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v, USE_G, USE_GK,
               USE_GV)
    return h + k[:, None] * v[None, :]


@kernel
def recurrent_gla_fwd(Q, K_, V_, G, GK, GV, GKS, H0, O, HT, BIAS, OS, cu_seqlens, H, DK, DV, scale,
                      USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr,
                      USE_H0: tl.constexpr, STORE_HT: tl.constexpr, USE_BIAS: tl.constexpr,
                      USE_OS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)). O [T_total, H, DV] (its dtype) = scale * S_t^T q_t (+ BIAS);
    # USE_OS: times the per-token scalar OS [T_total, H] (before BIAS).
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(0), H)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    gk_a = _gk_factor(GKS, i_h, DK, o_k, m_k, USE_GK, BK)
    h = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0)
    for t in range(bos, eos):
        base_k = (t * H + i_h) * DK
        base_v = (t * H + i_h) * DV
        q = tl.load(Q + base_k + o_k, mask=m_k, other=0.).to(tl.float32)
        h = _step(h, K_, V_, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v, USE_G, USE_GK, USE_GV)
        o = tl.reduce(h * q[:, None], 0, tl.standard._sum_combine) * scale
        if USE_OS:
            o = o * tl.load(OS + t * H + i_h).to(tl.float32)
        if USE_BIAS:
            o += tl.load(BIAS + base_v + o_v, mask=m_v, other=0.).to(tl.float32)
        tl.store(O + base_v + o_v, o, mask=m_v)
    if STORE_HT:
        store_state(HT, h, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def recurrent_gla_bwd(Q, K_, V_, G, GK, GV, GKS, H0, DO, DHT, OS,
                      DQ, DK_, DV_, DH0, XK, XV, XE, HT, cu_seqlens, T_total, H, DK, DV, scale,
                      USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr,
                      USE_H0: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                      STORE_HT: tl.constexpr, XK_D: tl.constexpr, USE_XV: tl.constexpr,
                      USE_OS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)); the gradients of O = scale * S_t^T q_t at DO (dhT unscaled).
    # DQ, DK_ are per-V-tile partial sums [NV, T_total, H, DK] (summed by the caller when NV > 1;
    # stored in their dtype). The decay gradients' terms, before the caller's reverse cumsum:
    # XK_D = 2: XK [2 NV, T_total, H, DK] holds q*dq (slices 0..NV-1) and -k*dk (NV..2NV-1) of
    # each V-tile (fp32; their sum is q*dq - k*dk); XK_D = 1: their row sums, [2 NV, T_total, H];
    # USE_XV: XV [2, T_total, H, DV] holds o*do and -v*dv (o recomputed). Each pass writes its
    # own slices: nothing written in pass 1 is read back.
    # USE_OS (O times a per-token scalar e = OS [T_total, H]): the gradients are those at e * do;
    # dq_t depends on do_t alone, so pass 1 forms dq0 at do, stores this V-tile's q . dq0 (e's
    # gradient) into XE [NV, T_total, H] and scales dq0 by e; pass 2 scales do by e on load.
    # Pass 1 (forward in time): S_t, dq_t = S_t do_t, and S_T -> HT.
    # Pass 2 (reverse): D_t = A_{t+1} * D_{t+1} + q_t do_t^T (D_T = dhT + q_T do_T^T),
    #   dk_t = D_t v_t, dv_t = D_t^T k_t; finally dh0 = A_1 * D_1.
    i_v = tl.program_id(1)
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(0), H)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, i_v, DK, DV, BK, BV)
    gk_a = _gk_factor(GKS, i_h, DK, o_k, m_k, USE_GK, BK)
    part = i_v.to(tl.int64) * T_total * H * DK
    part_s = i_v.to(tl.int64) * T_total * H
    NV = tl.num_programs(1)
    part2 = (i_v + NV).to(tl.int64) * T_total * H * DK
    part2_s = (i_v + NV).to(tl.int64) * T_total * H
    part2_v = tl.cast(T_total, tl.int64) * H * DV

    h = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0)
    for t in range(bos, eos):
        base_k = (t * H + i_h) * DK
        base_v = (t * H + i_h) * DV
        h = _step(h, K_, V_, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v, USE_G, USE_GK, USE_GV)
        do = tl.load(DO + base_v + o_v, mask=m_v, other=0.).to(tl.float32) * scale
        dq = tl.reduce(h * do[None, :], 1, tl.standard._sum_combine)
        if XK_D > 0 or USE_XV or USE_OS:
            q = tl.load(Q + base_k + o_k, mask=m_k, other=0.).to(tl.float32)
        if USE_OS:
            e = tl.load(OS + t * H + i_h).to(tl.float32)
            tl.store(XE + part_s + t * H + i_h, tl.sum(q * dq, 0))
            dq = dq * e
            do = do * e
        tl.store(DQ + part + base_k + o_k, dq, mask=m_k)
        if XK_D == 2:
            tl.store(XK + part + base_k + o_k, q * dq, mask=m_k)
        if XK_D == 1:
            tl.store(XK + part_s + t * H + i_h, tl.sum(q * dq, 0))
        if USE_XV:
            o = tl.reduce(h * q[:, None], 0, tl.standard._sum_combine)
            tl.store(XV + base_v + o_v, o * do, mask=m_v)
    if STORE_HT:
        store_state(HT, h, i_n, i_h, H, DK, DV, o_kv, m_kv)

    dh = load_state(DHT, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_DHT)
    for it in range(bos, eos):
        t = eos - 1 - (it - bos)
        base_k = (t * H + i_h) * DK
        base_v = (t * H + i_h) * DV
        q = tl.load(Q + base_k + o_k, mask=m_k, other=0.).to(tl.float32)
        k = tl.load(K_ + base_k + o_k, mask=m_k, other=0.).to(tl.float32)
        v = tl.load(V_ + base_v + o_v, mask=m_v, other=0.).to(tl.float32)
        do = tl.load(DO + base_v + o_v, mask=m_v, other=0.).to(tl.float32) * scale
        if USE_OS:
            do = do * tl.load(OS + t * H + i_h).to(tl.float32)
        dh += q[:, None] * do[None, :]
        dk = tl.reduce(dh * v[None, :], 1, tl.standard._sum_combine)
        dv = tl.reduce(dh * k[:, None], 0, tl.standard._sum_combine)
        tl.store(DK_ + part + base_k + o_k, dk, mask=m_k)
        tl.store(DV_ + base_v + o_v, dv, mask=m_v)
        if XK_D == 2:
            tl.store(XK + part2 + base_k + o_k, -(k * dk), mask=m_k)
        if XK_D == 1:
            tl.store(XK + part2_s + t * H + i_h, -tl.sum(k * dk, 0))
        if USE_XV:
            tl.store(XV + part2_v + base_v + o_v, -(v * dv), mask=m_v)
        dh = _decay(dh, G, GK, GV, gk_a, t, i_h, H, base_k, base_v, o_k, o_v, m_k, m_v, USE_G, USE_GK, USE_GV)
    if STORE_DH0:
        store_state(DH0, dh, i_n, i_h, H, DK, DV, o_kv, m_kv)


KERNELS = (recurrent_gla_fwd, recurrent_gla_bwd)
