"""Chunked kernels of the Householder (delta-rule) family through the WY/UT representation.

Canonical recurrence per (sequence, head), state S ∈ R^{K×V} (docs/delta_rule.md):
    S_t = α_t S_{t−1} + k_t (v_t − β_t α_t S_{t−1}ᵀ k_t)ᵀ,   α_t = exp(g_t),   o_t = S_tᵀ q_t.
Within a chunk (tokens i = 0 … L−1, G the chunk-local inclusive cumsum of g, γ = exp(G),
D_ij = exp(G_i − G_j), h the state before the chunk):
    A   = I + tril(diag(β) (K Kᵀ ⊙ D), −1)            (unit lower triangular)
    Ũ   = A⁻¹ V,    W = A⁻¹ diag(β γ) K              (the UT transform)
    u   = Ũ − W h                                    (the per-token "delta" writes)
    O   = (Q ⊙ γ) h + (tril(Q Kᵀ ⊙ D)) u
    h'  = γ_L h + (K ⊙ γ_L/γ)ᵀ u
A⁻¹ is computed inside the kernels by forward substitution on the BT × BT register tile
(``unit_lower_inverse``); nothing dense leaves the chip.

Layout: packed [T_total, H, D] contiguous tensors; chunk tables as in ``common.chunks``.
Kernels (launched from ``mixir.lowering.householder.core``):
  delta_chunk_prep     parallel over chunks: G, W, Ũ
  delta_chunk_states   sequential over chunks per (sequence, head, V-tile): h per chunk, u, hT
  delta_chunk_output   parallel over chunks: O
  delta_chunk_dstates  sequential, reverse: dh per chunk end, du, dh0
  delta_chunk_grads    parallel over chunks: dq, dk, dv, dβ, dg (chunk-local reverse cumsum)
"""
import triton
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import (chunk_program, load_rows, load_scalars, load_state,
                                                sequence_chunks, state_offsets, store_rows, store_state)


@triton.jit
def _gates(Gin, cs, L, i_h, H, o_t, USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr):
    """Chunk-local inclusive cumsum G of the log-gates (0 without gates); rows ≥ L repeat G_{L−1}."""
    if USE_G:
        g = tl.maximum(load_scalars(Gin, cs, L, i_h, H, o_t), LOG_FLOOR)
        g = tl.where(o_t < L, g, 0.)
        G = tl.cumsum(g, 0)
    else:
        G = tl.zeros([o_t.shape[0]], dtype=tl.float32)
    G_last = tl.sum(tl.where(o_t == L - 1, G, 0.), 0)
    return G, G_last


@triton.jit
def unit_lower_inverse(Nmat, BT: tl.constexpr, BB: tl.constexpr, PREC: tl.constexpr):
    """(I + N)⁻¹ for a strictly lower triangular [BT, BT] tile N, blockwise with BB × BB blocks:

    1. the diagonal blocks by forward substitution, all blocks at once — step i sets row i of
       every block: inv_r = e_r − Σ_{j<r} N_rj inv_j (BB − 1 steps, one [BT, BT] dot each);
    2. the off-diagonal blocks O: (I + N)⁻¹ = (I + X)⁻¹ D⁻¹ with X = D⁻¹ O strictly block-lower,
       so X^(BT/BB) = 0 and (I + X)⁻¹ = Σ_{p < BT/BB} (−X)^p (BT/BB − 1 more dots each way).
    """
    rows = tl.arange(0, BT)
    eye = tl.where(rows[:, None] == rows[None, :], 1., 0.)
    same = (rows[:, None] // BB) == (rows[None, :] // BB)
    Nd = tl.where(same, Nmat, 0.)
    inv = eye
    for i in range(1, BB):
        sel = (rows % BB) == i
        R = tl.dot(tl.where(sel[:, None], Nd, 0.), inv, input_precision=PREC)
        inv = tl.where(sel[:, None], eye - R, inv)
    if BT > BB:
        X = tl.dot(inv, tl.where(same, 0., Nmat), input_precision=PREC)
        term = inv
        acc = inv
        for _ in tl.static_range(1, BT // BB):
            term = -tl.dot(X, term, input_precision=PREC)
            acc += term
        inv = acc
    return inv


@triton.jit
def _gram(X, Y, cs, L, i_h, H, D: tl.constexpr, o_t, BKT: tl.constexpr, PREC: tl.constexpr):
    """X Yᵀ [BT, BT] of two packed [T, H, D] tensors' chunk rows, as a loop over K-tiles of loads
    (no full-D operand tile in registers: what keeps the fp32 kernels free of spills)."""
    acc = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    for k0 in range(0, D, BKT):
        o_k = k0 + tl.arange(0, BKT)
        acc += tl.dot(load_rows(X, cs, L, i_h, H, D, o_t, o_k),
                      tl.trans(load_rows(Y, cs, L, i_h, H, D, o_t, o_k)), input_precision=PREC)
    return acc


@triton.jit
def _wy_matrix(KK, beta, G, o_t, IPREC: tl.constexpr):
    """(KKᵀ ⊙ D masked strictly lower, D masked lower incl. diagonal, A⁻¹) from KK = K Kᵀ; the
    inverse's dots run at IPREC (fp32-like: "ieee" off the GPU, "tf32x3" on it)."""
    causal = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    Dm = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    KKD = tl.where(strict, KK * Dm, 0.)
    Ainv = unit_lower_inverse(beta[:, None] * KKD, o_t.shape[0], 16, IPREC)
    return KKD, Dm, Ainv


@kernel
def delta_chunk_prep(K_, V_, B_, Gin, W, U, cu_seqlens, chunk_tbl, H, DK: tl.constexpr, DV: tl.constexpr,
                     USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr, IPREC: tl.constexpr):
    # grid: (num chunks, H). W = A⁻¹ diag(βγ) K [T, H, DK], U = A⁻¹ V [T, H, DV] (fp32)
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    o_k = tl.arange(0, BK)
    beta = load_scalars(B_, cs, L, i_h, H, o_t)
    G, G_last = _gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
    KKD, Dm, Ainv = _wy_matrix(_gram(K_, K_, cs, L, i_h, H, DK, o_t, BKT, PREC), beta, G, o_t, IPREC)
    Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_k)
    Wt = tl.dot(Ainv, Kt * (beta * tl.exp(G))[:, None], input_precision=PREC)
    store_rows(W, Wt, cs, L, i_h, H, DK, o_t, o_k)
    for v0 in range(0, DV, BV):
        o_v = v0 + tl.arange(0, BV)
        Vt = load_rows(V_, cs, L, i_h, H, DV, o_t, o_v)
        store_rows(U, tl.dot(Ainv, Vt, input_precision=PREC), cs, L, i_h, H, DV, o_t, o_v)


@kernel
def delta_chunk_states(K_, W, U, Gin, H0, HT, HS, Unew, cu_seqlens, chunk_off, H, DK: tl.constexpr, DV: tl.constexpr,
                       USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                       LOG_FLOOR: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, PREC: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)). For each chunk: HS[c] = h; u = U − W h; h = γ_L h + (K γ_L/γ)ᵀ u
    i_n, i_h, bos, eos, co, nt = sequence_chunks(cu_seqlens, chunk_off, tl.program_id(0), H, BT)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    o_t = tl.arange(0, BT)
    h = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0)
    for c in range(0, nt):
        cs = bos + c * BT
        L = tl.minimum(eos - cs, BT)
        tl.store(HS + ((co + c) * H + i_h) * DK * DV + o_kv, h, mask=m_kv)
        Wt = load_rows(W, cs, L, i_h, H, DK, o_t, o_k)
        u = load_rows(U, cs, L, i_h, H, DV, o_t, o_v) - tl.dot(Wt, h, input_precision=PREC)
        store_rows(Unew, u, cs, L, i_h, H, DV, o_t, o_v)
        G, G_last = _gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
        Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_k)
        Kd = Kt * tl.where(o_t < L, tl.exp(G_last - G), 0.)[:, None]
        h = tl.exp(G_last) * h + tl.dot(tl.trans(Kd), u, input_precision=PREC)
    if STORE_HT:
        store_state(HT, h, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def delta_chunk_output(Q, K_, Gin, HS, Unew, O, cu_seqlens, chunk_tbl, H, DK: tl.constexpr, DV: tl.constexpr,
                       USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr,
                       NH: tl.constexpr = 1, BR: tl.constexpr = 0):
    # grid: (num chunks, cdiv(DV, BV), H). O = (Q ⊙ γ) h + tril(QKᵀ ⊙ D) u, the K-sums as a loop
    # over K-tiles of BKT (no full-K operand tile in registers).
    # NH > 1 (DeltaProduct): the sequence is T·NH sub-steps and only each token's last sub-step
    # is read out, so the program takes the BR (≥ ⌈BT/NH⌉) rows p ≡ NH − 1 (mod NH) of its chunk,
    # reads Q and writes O at token p // NH of the compact [T, H, ·] tensors: 1/NH of the work.
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    o_v = i_v * BV + tl.arange(0, BV)
    G, G_last = _gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
    if NH == 1:
        o_r = o_t
        row_ok = o_t < L
        tok = cs + o_t
        Gr = G
    else:
        first = (NH - 1 - cs % NH) % NH
        o_r = first + tl.arange(0, BR) * NH
        row_ok = o_r < L
        tok = (cs + o_r) // NH
        Gr = tl.sum(tl.where(o_r[:, None] == o_t[None, :], G[None, :], 0.), 1)
    base_h = (i_c * H + i_h).to(tl.int64) * DK * DV
    QK = tl.zeros([o_r.shape[0], BT], dtype=tl.float32)
    o = tl.zeros([o_r.shape[0], BV], dtype=tl.float32)
    for k0 in range(0, DK, BKT):
        o_k = k0 + tl.arange(0, BKT)
        Qt = tl.load(Q + (tok[:, None] * H + i_h) * DK + o_k[None, :],
                     mask=row_ok[:, None] & (o_k < DK)[None, :], other=0.).to(tl.float32)
        QK += tl.dot(Qt, tl.trans(load_rows(K_, cs, L, i_h, H, DK, o_t, o_k)), input_precision=PREC)
        h = tl.load(HS + base_h + o_k[:, None] * DV + o_v[None, :],
                    mask=(o_k < DK)[:, None] & (o_v < DV)[None, :], other=0.)
        o += tl.dot(Qt, h, input_precision=PREC)
    causal = o_r[:, None] >= o_t[None, :]
    P = tl.where(causal, QK * tl.exp(tl.where(causal, Gr[:, None] - G[None, :], float("-inf"))), 0.)
    u = load_rows(Unew, cs, L, i_h, H, DV, o_t, o_v)
    o = o * tl.exp(Gr)[:, None] + tl.dot(P, u, input_precision=PREC)
    tl.store(O + (tok[:, None] * H + i_h) * DV + o_v[None, :], o,
             mask=row_ok[:, None] & (o_v < DV)[None, :])


@kernel
def delta_chunk_dstates(Q, K_, W, Gin, DO, DHT, DHS, DU, DH0, cu_seqlens, chunk_off, H, DK: tl.constexpr,
                        DV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                        STORE_DH0: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)). Reverse over chunks, dh = adjoint of the chunk-end state:
    #   DHS[c] = dh;  du = tril(QKᵀ⊙D)ᵀ dO + (K γ_L/γ) dh;  dh ← γ_L dh + (Q γ)ᵀ dO − Wᵀ du
    i_n, i_h, bos, eos, co, nt = sequence_chunks(cu_seqlens, chunk_off, tl.program_id(0), H, BT)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    o_t = tl.arange(0, BT)
    dh = load_state(DHT, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_DHT)
    causal = o_t[:, None] >= o_t[None, :]
    for cr in range(0, nt):
        c = nt - 1 - cr
        cs = bos + c * BT
        L = tl.minimum(eos - cs, BT)
        base_c = ((co + c) * H + i_h) * DK * DV
        tl.store(DHS + base_c + o_kv, dh, mask=m_kv)
        tl.debug_barrier()          # DHS[c] is read back below by other threads, K-tile by K-tile
        G, G_last = _gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
        ratio = tl.where(o_t < L, tl.exp(G_last - G), 0.)
        QK = tl.zeros([BT, BT], dtype=tl.float32)
        Kdh = tl.zeros([BT, BV], dtype=tl.float32)
        for k0 in range(0, DK, BKT):
            o_kt = k0 + tl.arange(0, BKT)
            Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_kt)
            QK += tl.dot(load_rows(Q, cs, L, i_h, H, DK, o_t, o_kt), tl.trans(Kt), input_precision=PREC)
            dh_t = tl.load(DHS + base_c + o_kt[:, None] * DV + o_v[None, :],
                           mask=(o_kt < DK)[:, None] & (o_v < DV)[None, :], other=0.)
            Kdh += tl.dot(Kt, dh_t, input_precision=PREC)
        P = tl.where(causal, QK * tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf"))), 0.)
        dO = load_rows(DO, cs, L, i_h, H, DV, o_t, o_v)
        du = tl.dot(tl.trans(P), dO, input_precision=PREC) + Kdh * ratio[:, None]
        store_rows(DU, du, cs, L, i_h, H, DV, o_t, o_v)
        Qt = load_rows(Q, cs, L, i_h, H, DK, o_t, o_k)
        Wt = load_rows(W, cs, L, i_h, H, DK, o_t, o_k)
        dh = (tl.exp(G_last) * dh + tl.dot(tl.trans(Qt * tl.exp(G)[:, None]), dO, input_precision=PREC)
              - tl.dot(tl.trans(Wt), du, input_precision=PREC))
        tl.debug_barrier()          # every read of DHS[c] is done before the next chunk's store
    if STORE_DH0:
        store_state(DH0, dh, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def delta_chunk_grads_v(HS, DHS, Unew, DU, DO, DQA, DWA, DKB, HDH,
                        cu_seqlens, chunk_tbl, H, NT, DK_: tl.constexpr, DV_: tl.constexpr,
                        BT: tl.constexpr, BKT: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    # grid: (num chunks, H, cdiv(DK, BKT)). The K-sized sums over V of the chunk's backward, one
    # K-tile per program (exact: no sum over K), a loop over V-tiles, written to fp32 scratch:
    #   dQa = dO hᵀ;  dWa = −du hᵀ;  dKb = u dhᵀ;  HDH[i_k] = ⟨h, dh⟩ over the K-tile.
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    i_k = tl.program_id(2)
    o_k = i_k * BKT + tl.arange(0, BKT)
    dQa = tl.zeros([BT, BKT], dtype=tl.float32)
    dWa = tl.zeros([BT, BKT], dtype=tl.float32)
    dKb = tl.zeros([BT, BKT], dtype=tl.float32)
    hdh = tl.zeros([BKT], dtype=tl.float32)
    base_h = (i_c * H + i_h).to(tl.int64) * DK_ * DV_
    for v0 in range(0, DV_, BV):
        o_v = v0 + tl.arange(0, BV)
        m_kv = (o_k < DK_)[:, None] & (o_v < DV_)[None, :]
        o_kv = o_k[:, None] * DV_ + o_v[None, :]
        h = tl.load(HS + base_h + o_kv, mask=m_kv, other=0.)
        dh = tl.load(DHS + base_h + o_kv, mask=m_kv, other=0.)
        dQa += tl.dot(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(h), input_precision=PREC)
        dWa -= tl.dot(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(h), input_precision=PREC)
        dKb += tl.dot(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(dh), input_precision=PREC)
        hdh += tl.sum(h * dh, 1)
    store_rows(DQA, dQa, cs, L, i_h, H, DK_, o_t, o_k)
    store_rows(DWA, dWa, cs, L, i_h, H, DK_, o_t, o_k)
    store_rows(DKB, dKb, cs, L, i_h, H, DK_, o_t, o_k)
    tl.store(HDH + (i_k * NT + i_c) * H + i_h, tl.sum(hdh, 0))


@kernel
def delta_chunk_grads_p(V_, Unew, DU, DO, DP, DM, cu_seqlens, chunk_tbl, H, DV_: tl.constexpr,
                        BT: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    # grid: (num chunks, H). The [BT, BT] sums over V: dP = dO uᵀ, M = du Vᵀ (fp32 scratch).
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    dP = tl.zeros([BT, BT], dtype=tl.float32)
    dM = tl.zeros([BT, BT], dtype=tl.float32)
    for v0 in range(0, DV_, BV):
        o_v = v0 + tl.arange(0, BV)
        du = load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v)
        dP += tl.dot(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v),
                     tl.trans(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v)), input_precision=PREC)
        dM += tl.dot(du, tl.trans(load_rows(V_, cs, L, i_h, H, DV_, o_t, o_v)), input_precision=PREC)
    store_rows(DP, dP, cs, L, i_h, H, BT, o_t, o_t)
    store_rows(DM, dM, cs, L, i_h, H, BT, o_t, o_t)


@kernel
def delta_chunk_dv(AINV, DU, DV, cu_seqlens, chunk_tbl, H, DV_: tl.constexpr, BT: tl.constexpr,
                   BV: tl.constexpr, PREC: tl.constexpr):
    # grid: (num chunks, cdiv(DV, BV), H). dv = A⁻ᵀ du (A⁻¹ from delta_chunk_grads_k's scratch)
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    o_v = i_v * BV + tl.arange(0, BV)
    Ainv = load_rows(AINV, cs, L, i_h, H, BT, o_t, o_t)
    du = load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v)
    store_rows(DV, tl.dot(tl.trans(Ainv), du, input_precision=PREC), cs, L, i_h, H, DV_, o_t, o_v)


@kernel
def delta_chunk_grads_k(Q, K_, B_, Gin, DQA, DWA, DKB, DP, DM, HDH, AINV, DQ, DK, DB, DG,
                        cu_seqlens, chunk_tbl, H, NT, NK, DK_: tl.constexpr, NKP: tl.constexpr,
                        USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr,
                        IPREC: tl.constexpr):
    # grid: (num chunks, H). The K-sized rest of the chunk's backward (docs/delta_rule.md).
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    o_k = tl.arange(0, BK)
    # ordered so that each loaded or computed tile dies early (fewer live registers)
    causal = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    valid = o_t < L
    beta = load_scalars(B_, cs, L, i_h, H, o_t)
    G, G_last = _gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
    KKD, Dm, Ainv = _wy_matrix(_gram(K_, K_, cs, L, i_h, H, DK_, o_t, BKT, PREC), beta, G, o_t, IPREC)
    store_rows(AINV, Ainv, cs, L, i_h, H, BT, o_t, o_t)
    gam = tl.exp(G)
    ratio = tl.where(valid, tl.exp(G_last - G), 0.)
    # the output's intra-chunk term P = tril(QKᵀ ⊙ D) and the inter-chunk term (Q ⊙ γ) h
    dP = load_rows(DP, cs, L, i_h, H, BT, o_t, o_t)
    T1 = dP * tl.where(causal, _gram(Q, K_, cs, L, i_h, H, DK_, o_t, BKT, PREC) * Dm, 0.)
    dG = tl.sum(T1, 1) - tl.sum(T1, 0)
    dPm = tl.where(causal, dP * Dm, 0.)
    Kt = load_rows(K_, cs, L, i_h, H, DK_, o_t, o_k)
    Qt = load_rows(Q, cs, L, i_h, H, DK_, o_t, o_k)
    dQa = load_rows(DQA, cs, L, i_h, H, DK_, o_t, o_k)
    dG += gam * tl.sum(dQa * Qt, 1)
    dQ = dQa * gam[:, None] + tl.dot(dPm, Kt, input_precision=PREC)
    store_rows(DQ, dQ, cs, L, i_h, H, DK_, o_t, o_k)
    dK = tl.dot(tl.trans(dPm), Qt, input_precision=PREC)
    # the chunk-end state h' = γ_L h + (K γ_L/γ)ᵀ u
    dKb = load_rows(DKB, cs, L, i_h, H, DK_, o_t, o_k)
    dK += dKb * ratio[:, None]
    cend = ratio * tl.sum(dKb * Kt, 1)
    dG -= cend
    # u = Ũ − W h with Ũ = A⁻¹ V, W = A⁻¹ diag(βγ) K
    AinvT = tl.trans(Ainv)
    dX = tl.dot(AinvT, load_rows(DWA, cs, L, i_h, H, DK_, o_t, o_k), input_precision=PREC)
    # dv Ũᵀ + dX Wᵀ = A⁻ᵀ (M + (dWa Kᵀ) diag(βγ)) A⁻ᵀ with M = du Vᵀ (both from scratch)
    Mx = (load_rows(DM, cs, L, i_h, H, BT, o_t, o_t)
          + _gram(DWA, K_, cs, L, i_h, H, DK_, o_t, BKT, PREC) * (beta * gam)[None, :])
    dA = tl.where(strict, -tl.dot(tl.dot(AinvT, Mx, input_precision=PREC), AinvT, input_precision=PREC), 0.)
    kdx = tl.sum(dX * Kt, 1)
    dK += (beta * gam)[:, None] * dX
    dG += beta * gam * kdx
    # A = I + tril(diag(β) (K Kᵀ ⊙ D), −1)
    dbeta = gam * kdx + tl.sum(dA * KKD, 1)
    Fm = dA * beta[:, None] * Dm
    dK += tl.dot(Fm, Kt, input_precision=PREC) + tl.dot(tl.trans(Fm), Kt, input_precision=PREC)
    store_rows(DK, dK, cs, L, i_h, H, DK_, o_t, o_k)
    T2 = dA * beta[:, None] * KKD
    dG += tl.sum(T2, 1) - tl.sum(T2, 0)
    o_nk = tl.arange(0, NKP)
    hdh = tl.sum(tl.load(HDH + (o_nk * NT + i_c) * H + i_h, mask=o_nk < NK, other=0.), 0)
    dG_L = tl.sum(cend, 0) + tl.exp(G_last) * hdh
    dG = tl.where(o_t == L - 1, dG + dG_L, dG)
    dG = tl.where(valid, dG, 0.)
    dg = tl.sum(dG, 0) - tl.cumsum(dG, 0) + dG
    if USE_G:
        graw = load_scalars(Gin, cs, L, i_h, H, o_t)
        dg = tl.where(graw >= LOG_FLOOR, dg, 0.)
    tl.store(DB + (cs + o_t) * H + i_h, dbeta, mask=valid)
    if USE_G:
        tl.store(DG + (cs + o_t) * H + i_h, dg, mask=valid)
