"""Chunked kernels of the Householder (delta-rule) family through the WY/UT representation:
the forward (prep, states, output) and the backward's reverse state pass (dstates); the backward's
chunk-parallel gradients are in ``chunked_grads.py``, the shared helpers in ``wy.py``.

Canonical recurrence per (sequence, head), state S ∈ R^{K×V} (docs/delta_rule.md):
    S_t = α_t S_{t−1} + k_t (v_t − β_t α_t S_{t−1}ᵀ k_t)ᵀ,   α_t = exp(g_t),   o_t = S_tᵀ q_t.
Within a chunk (tokens i = 0 … L−1, G the chunk-local inclusive cumsum of g, γ = exp(G),
D_ij = exp(G_i − G_j), h the state before the chunk):
    A   = I + tril(diag(β) (K Kᵀ ⊙ D), −1)            (unit lower triangular)
    Ũ   = A⁻¹ V,    W = A⁻¹ diag(β γ) K              (the UT transform)
    u   = Ũ − W h                                    (the per-token "delta" writes, v_new)
    O   = (Q ⊙ γ) h + (tril(Q Kᵀ ⊙ D)) u
    h'  = γ_L h + Kᵀ (u ⊙ γ_L/γ)
A⁻¹ is computed in fp32 inside the kernels (``wy.unit_lower_inverse``); no BT × BT matrix leaves
the chip.

Precision (``DOT``, ``wy`` docstring): the tiles are fp32 in registers (accumulators, the running
state, A⁻¹); the dot operands are rounded to the input dtype for 16-bit inputs; the intermediates
W, Ũ, u, the per-chunk states HS / DHS and du are stored in the dtype of the tensors the caller
allocates (``core``: the input dtype). Final states, h0 and dh0 are fp32.

Pieces applied on load (``householder/direct.py``): the kernels read the call's q and v with
``QS`` (q' = QS·q: the terms in q are scaled, fp32 on chip) and ``V_BETA`` (v' = β ⊙ v); β and g
are read in their own dtype.

Layout: packed [T_total, H, D] contiguous tensors; per-chunk states [NT, H, DK, DV]; chunk tables
as in ``common.chunks``.
  delta_chunk_prep     parallel over chunks: W, Ũ (and A⁻¹ for the backward)
  delta_chunk_states   sequential over chunks per (sequence, head, V-tile): h per chunk, u, hT
  delta_chunk_output   parallel over chunks: O
  delta_chunk_dstates  sequential, reverse: dh per chunk end, du, dh0
"""
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import (chunk_program, load_rows, load_scalars, load_state,
                                                sequence_chunks, state_offsets, store_rows, store_state)
from .wy import gates, gram, gram_self, op, st, wy_matrix


@kernel
def delta_chunk_prep(K_, V_, B_, Gin, W, U, AI, cu_seqlens, chunk_tbl, H, DK: tl.constexpr, DV: tl.constexpr,
                     USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                     BKT: tl.constexpr, PREC: tl.constexpr, IPREC: tl.constexpr, DOT: tl.constexpr,
                     STORE_A: tl.constexpr, V_BETA: tl.constexpr = False):
    # grid: (num chunks, H). W = A⁻¹ diag(βγ) K [T, H, DK], Ũ = A⁻¹ V [T, H, DV], tile by tile;
    # STORE_A (the backward): A⁻¹ [T, H, BT] too, as the dots take it (for delta_chunk_grads)
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    beta = load_scalars(B_, cs, L, i_h, H, o_t)
    G, G_last = gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
    KKD, Dm, Ainv = wy_matrix(gram_self(K_, cs, L, i_h, H, DK, o_t, BKT, PREC, DOT), beta, G, o_t, IPREC)
    A = op(Ainv, DOT)
    if STORE_A:
        store_rows(AI, st(A.to(tl.float32), DOT), cs, L, i_h, H, BT, o_t, o_t)
    bg = beta * tl.exp(G)
    for k0 in range(0, DK, BKT):
        o_k = k0 + tl.arange(0, BKT)
        Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_k) * bg[:, None]
        store_rows(W, st(tl.dot(A, op(Kt, DOT), input_precision=PREC), DOT), cs, L, i_h, H, DK, o_t, o_k)
    for v0 in range(0, DV, BV):
        o_v = v0 + tl.arange(0, BV)
        Vt = load_rows(V_, cs, L, i_h, H, DV, o_t, o_v)
        if V_BETA:
            Vt = Vt * beta[:, None]
        store_rows(U, st(tl.dot(A, op(Vt, DOT), input_precision=PREC), DOT), cs, L, i_h, H, DV, o_t, o_v)


@kernel
def delta_chunk_states(K_, W, U, Gin, H0, HT, HS, Unew, cu_seqlens, chunk_off, H, DK: tl.constexpr, DV: tl.constexpr,
                       USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                       LOG_FLOOR: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)). For each chunk: HS[c] = h; u = Ũ − W h; h = γ_L h + Kᵀ (u γ_L/γ)
    i_n, i_h, bos, eos, co, nt = sequence_chunks(cu_seqlens, chunk_off, tl.program_id(0), H, BT)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    o_t = tl.arange(0, BT)
    h = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0)
    for c in range(0, nt):
        cs = bos + c * BT
        L = tl.minimum(eos - cs, BT)
        tl.store(HS + ((co + c) * H + i_h).to(tl.int64) * DK * DV + o_kv, st(h, DOT), mask=m_kv)
        Wt = load_rows(W, cs, L, i_h, H, DK, o_t, o_k)
        u = load_rows(U, cs, L, i_h, H, DV, o_t, o_v) - tl.dot(op(Wt, DOT), op(h, DOT), input_precision=PREC)
        store_rows(Unew, st(u, DOT), cs, L, i_h, H, DV, o_t, o_v)
        G, G_last = gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
        ratio = tl.where(o_t < L, tl.exp(G_last - G), 0.)
        Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_k)
        h = tl.exp(G_last) * h + tl.dot(tl.trans(op(Kt, DOT)), op(u * ratio[:, None], DOT), input_precision=PREC)
    if STORE_HT:
        store_state(HT, h, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def delta_chunk_output(Q, K_, Gin, HS, Unew, O, cu_seqlens, chunk_tbl, H, QS, DK: tl.constexpr, DV: tl.constexpr,
                       USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                       BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr,
                       NH: tl.constexpr = 1, BR: tl.constexpr = 0):
    # grid: (num chunks, H). O = (Q ⊙ γ) h + tril(QKᵀ ⊙ D) u: P = tril(QKᵀ ⊙ D) once, then per
    # V-tile the K-sum (Q γ) h as a loop over K-tiles of BKT (Q, K read once per chunk).
    # NH > 1 (DeltaProduct): the sequence is T·NH sub-steps and only each token's last sub-step
    # is read out, so the program takes the BR (≥ ⌈BT/NH⌉) rows p ≡ NH − 1 (mod NH) of its chunk,
    # reads Q and writes O at token p // NH of the compact [T, H, ·] tensors: 1/NH of the work.
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    G, G_last = gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
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
    for k0 in range(0, DK, BKT):
        o_k = k0 + tl.arange(0, BKT)
        Qt = tl.load(Q + (tok[:, None] * H + i_h) * DK + o_k[None, :],
                     mask=row_ok[:, None] & (o_k < DK)[None, :], other=0.).to(tl.float32)
        QK += tl.dot(op(Qt, DOT), tl.trans(op(load_rows(K_, cs, L, i_h, H, DK, o_t, o_k), DOT)),
                     input_precision=PREC)
    causal = o_r[:, None] >= o_t[None, :]
    P = op(tl.where(causal, QK * tl.exp(tl.where(causal, Gr[:, None] - G[None, :], float("-inf"))), 0.), DOT)
    gq = tl.exp(Gr)
    for v0 in range(0, DV, BV):
        o_v = v0 + tl.arange(0, BV)
        o = tl.zeros([o_r.shape[0], BV], dtype=tl.float32)
        for k0 in range(0, DK, BKT):
            o_k = k0 + tl.arange(0, BKT)
            Qt = tl.load(Q + (tok[:, None] * H + i_h) * DK + o_k[None, :],
                         mask=row_ok[:, None] & (o_k < DK)[None, :], other=0.).to(tl.float32)
            h = tl.load(HS + base_h + o_k[:, None] * DV + o_v[None, :],
                        mask=(o_k < DK)[:, None] & (o_v < DV)[None, :], other=0.).to(tl.float32)
            o += tl.dot(op(Qt, DOT), op(h, DOT), input_precision=PREC)
        u = load_rows(Unew, cs, L, i_h, H, DV, o_t, o_v)
        o = (o * gq[:, None] + tl.dot(P, op(u, DOT), input_precision=PREC)) * QS
        if O.dtype.element_ty != tl.float32:
            o = st(o, DOT)
        tl.store(O + (tok[:, None] * H + i_h) * DV + o_v[None, :], o,
                 mask=row_ok[:, None] & (o_v < DV)[None, :])


@kernel
def delta_chunk_dstates(Q, K_, W, Gin, DO, DHT, DHS, DU, DH0, cu_seqlens, chunk_off, H, QS, DK: tl.constexpr,
                        DV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                        STORE_DH0: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr,
                        DOT: tl.constexpr):
    # grid: (N * H, cdiv(DV, BV)). Reverse over chunks, dh = adjoint of the chunk-end state:
    #   DHS[c] = dh;  du = tril(QKᵀ⊙D)ᵀ dO + (K dh) ⊙ γ_L/γ;  dh ← γ_L dh + (Q γ)ᵀ dO − Wᵀ du
    i_n, i_h, bos, eos, co, nt = sequence_chunks(cu_seqlens, chunk_off, tl.program_id(0), H, BT)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(0, tl.program_id(1), DK, DV, BK, BV)
    o_t = tl.arange(0, BT)
    dh = load_state(DHT, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_DHT)
    causal = o_t[:, None] >= o_t[None, :]
    for cr in range(0, nt):
        c = nt - 1 - cr
        cs = bos + c * BT
        L = tl.minimum(eos - cs, BT)
        tl.store(DHS + ((co + c) * H + i_h).to(tl.int64) * DK * DV + o_kv, st(dh, DOT), mask=m_kv)
        G, G_last = gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
        ratio = tl.where(o_t < L, tl.exp(G_last - G), 0.)
        QK = gram(Q, K_, cs, L, i_h, H, DK, o_t, BKT, PREC, DOT) * QS
        P = tl.where(causal, QK * tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf"))), 0.)
        dO = op(load_rows(DO, cs, L, i_h, H, DV, o_t, o_v), DOT)
        Kt = load_rows(K_, cs, L, i_h, H, DK, o_t, o_k)
        du = (tl.dot(tl.trans(op(P, DOT)), dO, input_precision=PREC)
              + tl.dot(op(Kt, DOT), op(dh, DOT), input_precision=PREC) * ratio[:, None])
        store_rows(DU, st(du, DOT), cs, L, i_h, H, DV, o_t, o_v)
        Qt = load_rows(Q, cs, L, i_h, H, DK, o_t, o_k) * (tl.exp(G) * QS)[:, None]
        Wt = load_rows(W, cs, L, i_h, H, DK, o_t, o_k)
        dh = (tl.exp(G_last) * dh + tl.dot(tl.trans(op(Qt, DOT)), dO, input_precision=PREC)
              - tl.dot(tl.trans(op(Wt, DOT)), op(du, DOT), input_precision=PREC))
    if STORE_DH0:
        store_state(DH0, dh, i_n, i_h, H, DK, DV, o_kv, m_kv)
