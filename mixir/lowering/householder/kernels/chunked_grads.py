"""The chunk-parallel part of the chunked delta backward (docs/delta_rule.md, "Chunked backward"):
one program per (chunk, head) computes dq, dk, dv, dβ and dg of its chunk from the forward's
recomputed per-chunk states h (HS), writes u (Unew) and A⁻¹ (AI, stored by the backward's
``delta_chunk_prep`` as the dots take it: fla's design — the inverse and its registers stay out of
this kernel), and the reverse pass's adjoints dh (DHS) and du (DU). Every sum over V or K is
formed in the program: no other scratch tensor.

  1. A⁻¹ [BT, BT] loaded.
  2. A loop over V-tiles: dP = dO uᵀ, dv = A⁻ᵀ du (stored tile by tile) and dA = −dv uᵀ ([BT, BT]
     sums over V). With dW = −du hᵀ and X = diag(βγ) K the adjoint of A is
     −A⁻ᵀ (du Vᵀ + dW Xᵀ) A⁻ᵀ = −A⁻ᵀ du (V − X h)ᵀ A⁻ᵀ, and V − X h = A u (the forward's u), so
     dA = −(A⁻ᵀ du) uᵀ: no K-sized tile, no [BT, BT] product with A⁻ᵀ.
  3. K Kᵀ and Q Kᵀ in one loop over K-tiles; dA (strictly lower), F = dA ⊙ β ⊙ D, dP ⊙ D, and
     their contributions to dβ, dG.
  4. A loop over K-tiles, each with one loop over V-tiles for the K-tile's sums over V (three
     [BT, BKT] accumulators: dQa = dO hᵀ, dW = −du hᵀ, dKb = u dhᵀ, and ⟨h, dh⟩; each V-tile of
     dO, du, u, h and dh loaded once per K-tile), then dq and dk of the K-tile:
       dq = dQa ⊙ γ + (dP ⊙ D) K
       dk = (dP ⊙ D)ᵀ Q + dKb ⊙ γ_L/γ + βγ ⊙ (A⁻ᵀ dW) + (F + Fᵀ) K
  5. dβ, and dg as the chunk-local reverse cumsum of dG.

Loads per (chunk, head): A⁻¹; dO, du, u (v with ``V_BETA``) in step 2; Q, K in step 3; per K-tile
Q, K, dO, du, u and that K-tile's rows of h and dh (``space_chunked``'s ``bytes_moved``).

Pieces applied on load (``chunked.py``): with ``QS`` the q-terms use QS·q and dq is stored as
QS·dq'; with ``V_BETA`` v' = β ⊙ v, dv is stored as β ⊙ dv' and Σ_V v ⊙ dv' joins dβ. dβ and dg
are stored in their tensors' dtype.
"""
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import chunk_program, load_rows, load_scalars, store_rows
from .wy import gates, grams_kq, op, st


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
    # 2. over V-tiles: dP = dO uᵀ, dv = A⁻ᵀ du and dA = −dv uᵀ (V − diag(βγ) K h = A u, so
    #    −A⁻ᵀ du (A u)ᵀ A⁻ᵀ = −(A⁻ᵀ du) uᵀ: no K-sized tile, no [BT, BT] product with A⁻ᵀ)
    dP = tl.zeros([BT, BT], dtype=tl.float32)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    dbv = tl.zeros([BT], dtype=tl.float32)         # Σ_V v ⊙ dv' (V_BETA)
    for v0 in range(0, DV_, BV):
        o_v = v0 + tl.arange(0, BV)
        u = op(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), DOT)
        dP += tl.dot(op(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), DOT), tl.trans(u), input_precision=PREC)
        dv = tl.dot(AT, op(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), DOT), input_precision=PREC)
        dA -= tl.dot(op(dv, DOT), tl.trans(u), input_precision=PREC)
        if V_BETA:
            dbv += tl.sum(dv * load_rows(V_, cs, L, i_h, H, DV_, o_t, o_v), 1)
            dv = dv * beta[:, None]
        store_rows(DV, dv, cs, L, i_h, H, DV_, o_t, o_v)
    # 3. the [BT, BT] adjoints (K Kᵀ, Q Kᵀ in one loop over K; D recomputed: fewer live tiles)
    dA = tl.where(strict, dA, 0.)
    Dm = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    KK, QK = grams_kq(K_, Q, cs, L, i_h, H, DK_, o_t, BKT, PREC, DOT)
    X2 = dA * tl.where(strict, KK * Dm, 0.)
    dbeta = tl.sum(X2, 1)
    dG = beta * dbeta - tl.sum(X2 * beta[:, None], 0)
    F = dA * beta[:, None] * Dm
    F = op(F + tl.trans(F), DOT)
    T1 = dP * tl.where(causal, QK * (Dm * QS), 0.)
    dG += tl.sum(T1, 1) - tl.sum(T1, 0)
    dPm = op(tl.where(causal, dP * Dm, 0.), DOT)
    # 4. per K-tile: its sums over V in one loop (each V-tile of dO, du, u, h, dh loaded once per
    #    K-tile: dQa = dO hᵀ, dW = −du hᵀ, dKb = u dhᵀ and ⟨h, dh⟩), then dq and dk
    kdx = tl.zeros([BT], dtype=tl.float32)
    cend = tl.zeros([BT], dtype=tl.float32)
    hdh = tl.zeros([BKT], dtype=tl.float32)
    for k0 in range(0, DK_, BKT):
        o_k = k0 + tl.arange(0, BKT)
        m_k = (o_k < DK_)[:, None]
        dQa = tl.zeros([BT, BKT], dtype=tl.float32)
        dW = tl.zeros([BT, BKT], dtype=tl.float32)
        dKb = tl.zeros([BT, BKT], dtype=tl.float32)
        if DOT == 0:
            # fp32 operands (tf32x3: three passes, twice the operand registers): one accumulator
            # at a time (three accumulators spilled at BT = 16, BV = BKT = 32 on sm_90)
            for v0 in range(0, DV_, BV):
                o_v = v0 + tl.arange(0, BV)
                h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_k & (o_v < DV_)[None, :], other=0.)
                dQa += tl.dot(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(h.to(tl.float32)),
                              input_precision=PREC)
            for v0 in range(0, DV_, BV):
                o_v = v0 + tl.arange(0, BV)
                h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_k & (o_v < DV_)[None, :], other=0.)
                dW -= tl.dot(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(h.to(tl.float32)),
                             input_precision=PREC)
            for v0 in range(0, DV_, BV):
                o_v = v0 + tl.arange(0, BV)
                m_kv = m_k & (o_v < DV_)[None, :]
                h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
                dh = tl.load(DHS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
                dKb += tl.dot(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), tl.trans(dh), input_precision=PREC)
                hdh += tl.sum(h * dh, 1)
        else:
            for v0 in range(0, DV_, BV):
                o_v = v0 + tl.arange(0, BV)
                m_kv = m_k & (o_v < DV_)[None, :]
                h = tl.load(HS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
                dh = tl.load(DHS + base_h + o_k[:, None] * DV_ + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
                hT = tl.trans(op(h, DOT))
                dQa += tl.dot(op(load_rows(DO, cs, L, i_h, H, DV_, o_t, o_v), DOT), hT, input_precision=PREC)
                dW -= tl.dot(op(load_rows(DU, cs, L, i_h, H, DV_, o_t, o_v), DOT), hT, input_precision=PREC)
                dKb += tl.dot(op(load_rows(Unew, cs, L, i_h, H, DV_, o_t, o_v), DOT), tl.trans(op(dh, DOT)),
                              input_precision=PREC)
                hdh += tl.sum(h * dh, 1)
        Kt = load_rows(K_, cs, L, i_h, H, DK_, o_t, o_k)
        Qt = load_rows(Q, cs, L, i_h, H, DK_, o_t, o_k) * QS
        dG += gam * tl.sum(dQa * Qt, 1)
        store_rows(DQ, (dQa * gam[:, None] + tl.dot(dPm, op(Kt, DOT), input_precision=PREC)) * QS,
                   cs, L, i_h, H, DK_, o_t, o_k)
        dX = tl.dot(AT, op(dW, DOT), input_precision=PREC)
        kdx += tl.sum(dX * Kt, 1)
        cend += tl.sum(dKb * Kt, 1)
        dK = (tl.dot(tl.trans(dPm), op(Qt, DOT), input_precision=PREC) + tl.dot(F, op(Kt, DOT), input_precision=PREC)
              + bg[:, None] * dX + dKb * ratio[:, None])
        store_rows(DK, dK, cs, L, i_h, H, DK_, o_t, o_k)
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
