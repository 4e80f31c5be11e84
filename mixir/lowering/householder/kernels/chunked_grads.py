"""The chunk-parallel part of the chunked delta backward (docs/delta_rule.md, "Chunked backward"):
one program per (chunk, head) computes dq, dk, dv, dβ and dg of its chunk from the forward's
recomputed per-chunk states h (HS), writes u (Unew) and A⁻¹ (AI, stored by the backward's
``delta_chunk_prep`` as the dots take it: fla's design — the inverse and its registers stay out of
this kernel), and the reverse pass's adjoints dh (DHS) and du (DU). Every sum over V or K is
formed in the program: no other scratch tensor.

  1. A⁻¹ [BT, BT] loaded.
  2. A loop over V-tiles: dP = dO uᵀ and M = du (V − diag(βγ) K h)ᵀ ([BT, BT] sums over V; the
     second is du Vᵀ + (dW Kᵀ) diag(βγ) with dW = −du hᵀ, without a K-sized tile), and
     dv = A⁻ᵀ du, stored tile by tile.
  3. dA = −A⁻ᵀ M A⁻ᵀ (strictly lower), F = dA ⊙ β ⊙ D, dP ⊙ D, and their contributions to dβ, dG.
  4. A loop over K-tiles, each with three loops over V-tiles for the K-tile's sums over V, one
     [BT, BKT] accumulator at a time (dQa = dO hᵀ, dW = −du hᵀ, dKb = u dhᵀ and ⟨h, dh⟩), then
     dq and dk of the K-tile:
       dq = dQa ⊙ γ + (dP ⊙ D) K
       dk = (dP ⊙ D)ᵀ Q + dKb ⊙ γ_L/γ + βγ ⊙ (A⁻ᵀ dW) + (F + Fᵀ) K
  5. dβ, and dg as the chunk-local reverse cumsum of dG.

Pieces applied on load (``chunked.py``): with ``QS`` the q-terms use QS·q and dq is stored as
QS·dq'; with ``V_BETA`` v' = β ⊙ v, dv is stored as β ⊙ dv' and Σ_V v ⊙ dv' joins dβ. dβ and dg
are stored in their tensors' dtype.
"""
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import chunk_program, load_rows, load_scalars, store_rows
from .wy import gates, gram, op, st


@kernel
def delta_chunk_grads(Q, K_, V_, B_, Gin, AI, HS, DHS, Unew, DU, DO, DQ, DK, DV, DB, DG,
                      cu_seqlens, chunk_tbl, H, QS, DK_: tl.constexpr, DV_: tl.constexpr,
                      USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr, BT: tl.constexpr,
                      BV: tl.constexpr, BKT: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr,
                      V_BETA: tl.constexpr = False):
    # grid: (num chunks, H)
    i_c, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    causal = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    valid = o_t < L
    beta = load_scalars(B_, cs, L, i_h, H, o_t)
    G, G_last = gates(Gin, cs, L, i_h, H, o_t, USE_G, LOG_FLOOR)
    gam = tl.exp(G)
    bg = beta * gam
    ratio = tl.where(valid, tl.exp(G_last - G), 0.)
    AT = tl.trans(op(load_rows(AI, cs, L, i_h, H, BT, o_t, o_t), DOT))
    base_h = (i_c * H + i_h).to(tl.int64) * DK_ * DV_
    # 2. the [BT, BT] sums over V, and dv
    dP = tl.zeros([BT, BT], dtype=tl.float32)
    M = tl.zeros([BT, BT], dtype=tl.float32)
    dbv = tl.zeros([BT], dtype=tl.float32)         # Σ_V v ⊙ dv' (V_BETA)
    for v0 in range(0, DV_, BV):
        o_v = v0 + tl.arange(0, BV)
        du = op(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), DOT)
        dP += tl.dot(op(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), DOT),
                     tl.trans(op(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), DOT)), input_precision=PREC)
        KH = tl.zeros([BT, BV], dtype=tl.float32)
        for k0 in range(0, DK_, BKT):
            o_k = k0 + tl.arange(0, BKT)
            h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :],
                        mask=(o_k < DK_)[:, None] & (o_v < DV_)[None, :], other=0.).to(tl.float32)
            KH += tl.dot(op(load_rows(K_, cs, L, i_h, H, DK_, o_t, o_k), DOT), op(h, DOT), input_precision=PREC)
        Vr = load_rows(V_, cs, L, i_h, H, DV_, o_t, o_v)
        dv = tl.dot(AT, du, input_precision=PREC)
        if V_BETA:
            dbv += tl.sum(dv * Vr, 1)
            dv = dv * beta[:, None]
            Vr = Vr * beta[:, None]
        M += tl.dot(du, tl.trans(op(Vr - KH * bg[:, None], DOT)), input_precision=PREC)
        store_rows(DV, dv, cs, L, i_h, H, DV_, o_t, o_v)
    # 3. the [BT, BT] adjoints (K Kᵀ ⊙ D and D recomputed: fewer live tiles across step 2)
    dA = tl.where(strict, -tl.dot(op(tl.dot(AT, op(M, DOT), input_precision=PREC), DOT), AT,
                                  input_precision=PREC), 0.)
    Dm = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    X2 = dA * tl.where(strict, gram(K_, K_, cs, L, i_h, H, DK_, o_t, BKT, PREC, DOT) * Dm, 0.)
    dbeta = tl.sum(X2, 1)
    dG = beta * dbeta - tl.sum(X2 * beta[:, None], 0)
    F = dA * beta[:, None] * Dm
    F = op(F + tl.trans(F), DOT)
    T1 = dP * tl.where(causal, gram(Q, K_, cs, L, i_h, H, DK_, o_t, BKT, PREC, DOT) * (Dm * QS), 0.)
    dG += tl.sum(T1, 1) - tl.sum(T1, 0)
    dPm = op(tl.where(causal, dP * Dm, 0.), DOT)
    # 4. per K-tile: its sums over V, then dq and dk
    kdx = tl.zeros([BT], dtype=tl.float32)
    cend = tl.zeros([BT], dtype=tl.float32)
    hdh = tl.zeros([BKT], dtype=tl.float32)
    for k0 in range(0, DK_, BKT):
        o_k = k0 + tl.arange(0, BKT)
        m_k = (o_k < DK_)[:, None]
        Kt = load_rows(K_, cs, L, i_h, H, DK_, o_t, o_k)
        Qt = load_rows(Q, cs, L, i_h, H, DK_, o_t, o_k) * QS
        # one [BT, BKT] sum over V at a time (fewer live tiles): dQa, then dW, then dKb
        dQa = tl.zeros([BT, BKT], dtype=tl.float32)
        for v0 in range(0, DV_, BV):
            o_v = v0 + tl.arange(0, BV)
            h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_k & (o_v < DV_)[None, :], other=0.)
            dQa += tl.dot(op(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), DOT), tl.trans(op(h.to(tl.float32), DOT)),
                          input_precision=PREC)
        dG += gam * tl.sum(dQa * Qt, 1)
        store_rows(DQ, (dQa * gam[:, None] + tl.dot(dPm, op(Kt, DOT), input_precision=PREC)) * QS,
                   cs, L, i_h, H, DK_, o_t, o_k)
        dK = tl.dot(tl.trans(dPm), op(Qt, DOT), input_precision=PREC) + tl.dot(F, op(Kt, DOT), input_precision=PREC)
        dW = tl.zeros([BT, BKT], dtype=tl.float32)
        for v0 in range(0, DV_, BV):
            o_v = v0 + tl.arange(0, BV)
            h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_k & (o_v < DV_)[None, :], other=0.)
            dW -= tl.dot(op(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), DOT), tl.trans(op(h.to(tl.float32), DOT)),
                         input_precision=PREC)
        dX = tl.dot(AT, op(dW, DOT), input_precision=PREC)
        kdx += tl.sum(dX * Kt, 1)
        dK += bg[:, None] * dX
        dKb = tl.zeros([BT, BKT], dtype=tl.float32)
        for v0 in range(0, DV_, BV):
            o_v = v0 + tl.arange(0, BV)
            m_kv = m_k & (o_v < DV_)[None, :]
            h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
            dh = tl.load(DHS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
            dKb += tl.dot(op(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), DOT), tl.trans(op(dh, DOT)),
                          input_precision=PREC)
            hdh += tl.sum(h * dh, 1)
        cend += tl.sum(dKb * Kt, 1)
        store_rows(DK, dK + dKb * ratio[:, None], cs, L, i_h, H, DK_, o_t, o_k)
    # 5. dβ, dg
    cend = ratio * cend
    dG += bg * kdx - cend
    dbeta += gam * kdx + dbv          # (dG above takes the canonical β's part only)
    dG_L = tl.sum(cend, 0) + tl.exp(G_last) * tl.sum(hdh, 0)
    dG = tl.where(o_t == L - 1, dG + dG_L, dG)
    dG = tl.where(valid, dG, 0.)
    dg = tl.sum(dG, 0) - tl.cumsum(dG, 0) + dG
    if USE_G:
        graw = load_scalars(Gin, cs, L, i_h, H, o_t)
        dg = tl.where(graw < LOG_FLOOR, 0., dg)           # NaN gates keep their NaN gradient
    if DB.dtype.element_ty != tl.float32:
        dbeta = st(dbeta, DOT)
    tl.store(DB + (cs + o_t) * H + i_h, dbeta, mask=valid)
    if USE_G:
        if DG.dtype.element_ty != tl.float32:
            dg = st(dg, DOT)
        tl.store(DG + (cs + o_t) * H + i_h, dg, mask=valid)
