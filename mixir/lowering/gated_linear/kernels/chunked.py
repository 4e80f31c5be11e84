"""Chunked gated-linear-attention kernels (fla-style), generic over the decay combination.

Canonical recurrence per (sequence, head), state S in R^{K x V}:
    S_t = exp(g_t + gk_t[:, None] + gv_t[None, :]) * S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t.
See docs/gla_math.md for the derivations. All decay arithmetic is done in log space with
*chunk-local* cumulative sums, so every exponent is a difference of cumulative sums over a
range of at most one chunk, which is <= 0 for non-positive log-decays.

Layout: every sequence tensor is packed as [T_total, H, D] (contiguous); sequences are given
by ``cu_seqlens`` (int32, N + 1 offsets). Chunks never cross a sequence boundary: chunk ``c``
of the packed problem is chunk ``chunk_tbl[c, 1]`` of sequence ``chunk_tbl[c, 0]``; sequence
``n`` owns the chunks ``chunk_off[n] .. chunk_off[n + 1] - 1``.

Kernels (all launched from ``mixir.lowering.gated_linear.core``):
  chunk_gla_cumsum       chunk-local inclusive cumsum G and reverse-exclusive cumsum R = G_last - G
  chunk_gla_states       sequential pass over chunks: chunk-boundary states (forward) or
                         chunk-boundary state adjoints (backward, REVERSE=True)
  chunk_gla_output       per-(sub-chunk) output: inter-chunk term through the boundary state plus
                         the intra-chunk term; computes o and dq (causal) and dk, dv (REVERSE)
                         by swapping the roles of its operands
  chunk_gla_dqk          the backward's dq and dk of scalar decays in one launch: whole chunks, one
                         score tile shared by both (fla's dqkwg)
  chunk_gla_rev_cumsum   segmented reverse cumsum with an initial carry (decay gradients)

These are plain functions turned into ``Kernel`` objects by ``@kernel``; the bookkeeping of packed
sequences (chunk bounds, row and state tiles) is ``common.packed_tiles``'s ``@triton.jit`` helpers.
"""
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import (chunk_bounds, chunk_program, load_rows, load_state,
                                                scores_dot, sequence_chunks, sequence_head, state_offsets,
                                                store_rows, store_state)


@kernel
def chunk_gla_cumsum(X, XS, G, R, cu_seqlens, chunk_tbl, H, D, USE_XS: tl.constexpr,
                     LOG_FLOOR: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    # grid: (num chunks, H, cdiv(D, BD)); X, G, R: [T_total, H, D]. The log-decay formed here
    # in fp32: USE_XS = 1: X times the per-head scalar XS[h] (mamba2's g = dt·A); USE_XS = 2:
    # X [T_total, H] a per-token scalar u times the head's row XS[h, :D] (Mamba-1's gk = dt·A).
    _, cs, L, o_t = chunk_program(cu_seqlens, chunk_tbl, BT)
    i_h = tl.program_id(1)
    o_d = tl.program_id(2) * BD + tl.arange(0, BD)
    if USE_XS == 2:
        u = tl.load(X + (cs + o_t) * H + i_h, mask=o_t < L, other=0.).to(tl.float32)
        x = u[:, None] * tl.load(XS + i_h * D + o_d, mask=o_d < D, other=0.).to(tl.float32)[None, :]
    else:
        x = load_rows(X, cs, L, i_h, H, D, o_t, o_d)
        if USE_XS == 1:
            x = x * tl.load(XS + i_h).to(tl.float32)
    # Floor each step's log-decay: exp(LOG_FLOOR) is already 0 in fp32 terms, and keeping the
    # cumulative sums small (|G| <= BT * |LOG_FLOOR|) keeps their differences accurate. Written as
    # a select, not tl.maximum, so that a NaN log-decay stays NaN (and poisons what follows it, as
    # in the recurrence) instead of becoming a closed gate.
    x = tl.where(x < LOG_FLOOR, LOG_FLOOR, x)
    g = tl.associative_scan(x, 0, tl.standard._sum_combine)
    g_last = tl.reduce(tl.where((o_t == L - 1)[:, None], g, 0.), 0, tl.standard._sum_combine)
    store_rows(G, g, cs, L, i_h, H, D, o_t, o_d)
    store_rows(R, g_last[None, :] - g, cs, L, i_h, H, D, o_t, o_d)


@kernel
def chunk_gla_states(KX, VX, VS, FA, FB, FC, GA, GB, GC, H0, HT, HS, cu_seqlens, chunk_off,
                     H, DK, DV, h0_scale, ht_scale,
                     USE_VS: tl.constexpr,
                     USE_A: tl.constexpr, USE_B: tl.constexpr, USE_C: tl.constexpr,
                     USE_H0: tl.constexpr, STORE_HT: tl.constexpr, REVERSE: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                     DOT_F32: tl.constexpr):
    # grid: (N * H, cdiv(DK, BK), cdiv(DV, BV)).
    # For each chunk c of the sequence (ascending, or descending if REVERSE), store the running
    # matrix into HS[c] and then update it:
    #     h <- exp(GA_L) exp(GB_L)[:, None] exp(GC_L)[None, :] * h
    #          + (KX * exp(FA)[:, None] * exp(FB))^T (VX * exp(FC))
    # where *_L are the inclusive chunk-local cumsums at the chunk's last row.
    # forward: KX=k, VX=v, F* = reverse-exclusive cumsums R -> HS[c] = state before chunk c.
    # backward: KX=q, VX=do, F* = inclusive cumsums G, REVERSE -> HS[c] = adjoint after chunk c.
    # USE_VS: the rows of VX times a per-token scalar VS [T_total, H] (fp32 on chip: v' = s v).
    # HS is stored in its own dtype (the input dtype for 16-bit inputs); h starts at
    # h0_scale * H0 and HT receives ht_scale * h (the backward of an output scale s: 1/s and s).
    i_n, i_h, bos, eos, co, nt = sequence_chunks(cu_seqlens, chunk_off, tl.program_id(0), H, BT)
    o_k, o_v, m_k, m_v, m_kv, o_kv = state_offsets(tl.program_id(1), tl.program_id(2), DK, DV, BK, BV)
    o_t = tl.arange(0, BT)
    if DOT_F32:
        dt = tl.float32
    else:
        dt = KX.dtype.element_ty

    h = load_state(H0, i_n, i_h, H, DK, DV, o_kv, m_kv, BK, BV, USE_H0) * h0_scale
    for it in range(0, nt):
        if REVERSE:
            tc = nt - 1 - it
        else:
            tc = it
        tl.store(HS + ((co + tc) * H + i_h) * DK * DV + o_kv, h, mask=m_kv)
        cs = bos + tc * BT
        L = tl.minimum(eos - cs, BT)
        last = cs + L - 1
        m_t = o_t < L
        rows = cs + o_t
        # loads written out, not load_rows: its address arithmetic cost this kernel up to 12 more
        # registers (ptxas, sm_90)
        kx = tl.load(KX + (rows[:, None] * H + i_h) * DK + o_k[None, :],
                     mask=m_t[:, None] & m_k[None, :], other=0.)
        vx = tl.load(VX + (rows[:, None] * H + i_h) * DV + o_v[None, :],
                     mask=m_t[:, None] & m_v[None, :], other=0.)
        kx = kx.to(tl.float32)
        vx = vx.to(tl.float32)
        if USE_VS:
            vx = vx * tl.load(VS + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)[:, None]
        # decay of the whole chunk: exp(GA_L + GB_L + GC_L) as a product of factors <= 1
        if USE_A:
            fa = tl.load(FA + rows * H + i_h, mask=m_t, other=0.)
            kx = kx * tl.exp(fa)[:, None]
            h = h * tl.exp(tl.load(GA + last * H + i_h))
        if USE_B:
            fb = tl.load(FB + (rows[:, None] * H + i_h) * DK + o_k[None, :],
                         mask=m_t[:, None] & m_k[None, :], other=0.)
            kx = kx * tl.exp(fb)
            h = h * tl.exp(tl.load(GB + (last * H + i_h) * DK + o_k, mask=m_k, other=0.))[:, None]
        if USE_C:
            fc = tl.load(FC + (rows[:, None] * H + i_h) * DV + o_v[None, :],
                         mask=m_t[:, None] & m_v[None, :], other=0.)
            vx = vx * tl.exp(fc)
            h = h * tl.exp(tl.load(GC + (last * H + i_h) * DV + o_v, mask=m_v, other=0.))[None, :]
        h += tl.dot(tl.trans(kx.to(dt)), vx.to(dt), input_precision=PREC)
    if STORE_HT:
        store_state(HT, h * ht_scale, i_n, i_h, H, DK, DV, o_kv, m_kv)


@kernel
def chunk_gla_output(X, Y, Z, FA, FB, FC, HS, O, W, XP, BIAS, ZS, OS, BS, XB, cu_seqlens,
                     chunk_tbl, H, DK, DV, s_hk, s_hv, T_total, scale, xp_sign,
                     USE_ZS: tl.constexpr, OS_MODE: tl.constexpr, USE_BS: tl.constexpr,
                     USE_XB: tl.constexpr,
                     USE_A: tl.constexpr, USE_B: tl.constexpr, USE_C: tl.constexpr,
                     REVERSE: tl.constexpr, XP_MODE: tl.constexpr, XP_ACCUM: tl.constexpr,
                     USE_BIAS: tl.constexpr,
                     BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     BKD: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    # grid: (num chunks * BT // BC, cdiv(DV, BV), H). One program: BC rows (a sub-chunk) i of one
    # chunk c, a BV-tile of the output channels:
    #   O_i = exp(FA_i + FC_i) * ((X_i * exp(FB_i)) @ HS[c])                       (inter)
    #       + sum_{j <= i (j >= i if REVERSE), same chunk}
    #             exp(FA_i - FA_j) * (sum_k X_i Y_j exp(FB_i - FB_j)) * exp(FC_i - FC_j) * Z_j
    # HS[c][a, b] is read at HS + (c * H + h) * DK * DV + a * s_hk + b * s_hv (transposed views).
    # Off-diagonal sub-chunk pairs use a reference row r between i and j so that both factors
    # exp(F_i - F_r) and exp(F_r - F_j) are <= 1 (tensor-core dots); on the diagonal sub-chunk the
    # pairwise factors of a channel decay (FB / FC) are formed exactly on [BC, BC, BKD] / [BC, BC, BV]
    # tiles (the host keeps BV <= 32 when FC is used).
    # Epilogue: O = scale * out (+ BIAS, laid out like O), stored in O's dtype. With XP_MODE the decay-gradient terms
    # p = xp_sign * W * (scale * out) (W laid out like O, fp32 products) are stored too:
    # XP_MODE 1 elementwise into XP [T_total, H, DV], XP_MODE 2 as sums over this program's BV
    # channels into XP [cdiv(DV, BV), T_total, H]; XP_ACCUM adds to what XP holds.
    # Per-token scalars [T_total, H] (fp32 on chip; a scalar on the rows of Y is one on Z's):
    # USE_ZS: Z's rows times ZS; OS_MODE 1 / 2: the output rows times OS before / after the XP
    # terms are formed; USE_BS: BIAS times a per-head factor BS [H]; USE_XB: the row sums of
    # W * BIAS over this program's BV channels into XB [cdiv(DV, BV), T_total, H] (before BS).
    i_s = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    NC: tl.constexpr = BT // BC
    i_c = i_s // NC
    i_i = i_s % NC
    cs, L = chunk_bounds(cu_seqlens, chunk_tbl, i_c, BT)
    if i_i * BC >= L:
        return
    i0 = cs + i_i * BC
    o_i = tl.arange(0, BC)
    m_i = (i_i * BC + o_i) < L
    rows = i0 + o_i
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    m_iv = m_i[:, None] & m_v[None, :]
    NK = (DK + BK - 1) // BK
    hs_base = (i_c.to(tl.int64) * H + i_h) * DK * DV
    if DOT_F32:
        dt = tl.float32
    else:
        dt = X.dtype.element_ty

    if USE_A:
        fa_i = tl.load(FA + rows * H + i_h, mask=m_i, other=0.)
    if USE_C:
        fc_i = tl.load(FC + (rows[:, None] * H + i_h) * DV + o_v[None, :], mask=m_iv, other=0.)

    # ---- inter-chunk term through the chunk-boundary matrix; without a per-key decay the
    # diagonal sub-chunk's scores X_i Y_i^T take the same x tiles (one read of X, not two)
    acc = tl.full([BC, BV], 0., tl.float32)
    A_diag = tl.full([BC, BC], 0., tl.float32)
    for i_k in range(0, NK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DK
        m_ik = m_i[:, None] & m_k[None, :]
        x = tl.load(X + (rows[:, None] * H + i_h) * DK + o_k[None, :], mask=m_ik, other=0.)
        if USE_B:
            fb_i = tl.load(FB + (rows[:, None] * H + i_h) * DK + o_k[None, :], mask=m_ik, other=0.)
            x = x.to(tl.float32) * tl.exp(fb_i)
        else:
            y = tl.load(Y + (rows[:, None] * H + i_h) * DK + o_k[None, :], mask=m_ik, other=0.)
            A_diag += tl.dot(x.to(dt), tl.trans(y.to(dt)), input_precision=PREC)
        hs = tl.load(HS + hs_base + o_k[:, None] * s_hk + o_v[None, :] * s_hv,
                     mask=m_k[:, None] & m_v[None, :], other=0.)
        acc += tl.dot(x.to(dt), hs.to(dt), input_precision=PREC)
    if USE_A:
        acc = acc * tl.exp(fa_i)[:, None]
    if USE_C:
        acc = acc * tl.exp(fc_i)

    # ---- off-diagonal sub-chunks of the same chunk
    nsub = (L + BC - 1) // BC
    if REVERSE:
        j_lo = i_i + 1
        j_hi = nsub
        r = tl.minimum(i0 + BC - 1, cs + L - 1)
    else:
        j_lo = i_i * 0
        j_hi = i_i
        r = i0
    acc_o = tl.full([BC, BV], 0., tl.float32)
    for i_j in range(j_lo, j_hi):
        rows_j = cs + i_j * BC + o_i
        m_j = (i_j * BC + o_i) < L
        A = tl.full([BC, BC], 0., tl.float32)
        for i_k in range(0, NK):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < DK
            x = tl.load(X + (rows[:, None] * H + i_h) * DK + o_k[None, :],
                        mask=m_i[:, None] & m_k[None, :], other=0.)
            y = tl.load(Y + (rows_j[:, None] * H + i_h) * DK + o_k[None, :],
                        mask=m_j[:, None] & m_k[None, :], other=0.)
            if USE_B:
                fb_r = tl.load(FB + (r * H + i_h) * DK + o_k, mask=m_k, other=0.)
                fb_i = tl.load(FB + (rows[:, None] * H + i_h) * DK + o_k[None, :],
                               mask=m_i[:, None] & m_k[None, :], other=0.)
                fb_j = tl.load(FB + (rows_j[:, None] * H + i_h) * DK + o_k[None, :],
                               mask=m_j[:, None] & m_k[None, :], other=0.)
                x = x.to(tl.float32) * tl.exp(tl.where(m_i[:, None], fb_i - fb_r[None, :], 0.))
                y = y.to(tl.float32) * tl.exp(tl.where(m_j[:, None], fb_r[None, :] - fb_j, 0.))
            A += tl.dot(x.to(dt), tl.trans(y.to(dt)), input_precision=PREC)
        if USE_A:
            fa_j = tl.load(FA + rows_j * H + i_h, mask=m_j, other=0.)
            A = A * tl.exp(tl.where(m_i[:, None] & m_j[None, :], fa_i[:, None] - fa_j[None, :], 0.))
        z = tl.load(Z + (rows_j[:, None] * H + i_h) * DV + o_v[None, :],
                    mask=m_j[:, None] & m_v[None, :], other=0.)
        if USE_ZS:
            z = z.to(tl.float32) * tl.load(ZS + rows_j * H + i_h, mask=m_j, other=0.).to(tl.float32)[:, None]
        if USE_C:
            fc_r = tl.load(FC + (r * H + i_h) * DV + o_v, mask=m_v, other=0.)
            fc_j = tl.load(FC + (rows_j[:, None] * H + i_h) * DV + o_v[None, :],
                           mask=m_j[:, None] & m_v[None, :], other=0.)
            z = z.to(tl.float32) * tl.exp(tl.where(m_j[:, None], fc_r[None, :] - fc_j, 0.))
        acc_o += scores_dot(A, z, dt, PREC)
    if USE_C:
        fc_r = tl.load(FC + (r * H + i_h) * DV + o_v, mask=m_v, other=0.)
        acc_o = acc_o * tl.exp(tl.where(m_i[:, None], fc_i - fc_r[None, :], 0.))
    acc += acc_o

    # ---- diagonal sub-chunk (exact pairwise factors)
    if REVERSE:
        causal = (o_i[:, None] <= o_i[None, :]) & m_i[:, None] & m_i[None, :]
    else:
        causal = (o_i[:, None] >= o_i[None, :]) & m_i[:, None] & m_i[None, :]
    if USE_B:
        A = tl.full([BC, BC], 0., tl.float32)
        # exact pairwise K factors on a [BC, BC, BKD] tile, BKD key channels at a time
        for i_k in range(0, (DK + BKD - 1) // BKD):
            o_k = i_k * BKD + tl.arange(0, BKD)
            m_ik = m_i[:, None] & (o_k < DK)[None, :]
            p_ik = (rows[:, None] * H + i_h) * DK + o_k[None, :]
            x = tl.load(X + p_ik, mask=m_ik, other=0.).to(tl.float32)
            y = tl.load(Y + p_ik, mask=m_ik, other=0.).to(tl.float32)
            fb = tl.load(FB + p_ik, mask=m_ik, other=0.)
            e = tl.where(causal[:, :, None], fb[:, None, :] - fb[None, :, :], 0.)
            A += tl.reduce(x[:, None, :] * y[None, :, :] * tl.exp(e), 2, tl.standard._sum_combine)
    else:
        A = A_diag
    if USE_A:
        A = A * tl.exp(tl.where(causal, fa_i[:, None] - fa_i[None, :], 0.))
    A = tl.where(causal, A, 0.)
    z = tl.load(Z + (rows[:, None] * H + i_h) * DV + o_v[None, :], mask=m_iv, other=0.)
    if USE_ZS:
        z = z.to(tl.float32) * tl.load(ZS + rows * H + i_h, mask=m_i, other=0.).to(tl.float32)[:, None]
    if USE_C:
        # exact pairwise V factors on a [BC, BC, BV] tile
        e = tl.where(causal[:, :, None], fc_i[:, None, :] - fc_i[None, :, :], 0.)
        acc += tl.reduce(A[:, :, None] * tl.exp(e) * z.to(tl.float32)[None, :, :], 1,
                         tl.standard._sum_combine)
    else:
        acc += scores_dot(A, z, dt, PREC)
    acc = acc * scale
    p_iv = (rows[:, None] * H + i_h) * DV + o_v[None, :]
    if OS_MODE != 0:
        os_i = tl.load(OS + rows * H + i_h, mask=m_i, other=0.).to(tl.float32)
    if OS_MODE == 1:
        acc = acc * os_i[:, None]
    if XP_MODE != 0 or USE_XB:
        w = tl.load(W + p_iv, mask=m_iv, other=0.).to(tl.float32)
    if XP_MODE != 0:
        p = w * acc * xp_sign
        if XP_MODE == 1:
            if XP_ACCUM:
                p += tl.load(XP + p_iv, mask=m_iv, other=0.)
            tl.store(XP + p_iv, p, mask=m_iv)
        else:
            ps = tl.sum(p, 1)
            p_r = (i_v.to(tl.int64) * T_total + rows) * H + i_h
            if XP_ACCUM:
                ps += tl.load(XP + p_r, mask=m_i, other=0.)
            tl.store(XP + p_r, ps, mask=m_i)
    if OS_MODE == 2:
        acc = acc * os_i[:, None]
    if USE_BIAS:
        bias = tl.load(BIAS + p_iv, mask=m_iv, other=0.).to(tl.float32)
        if USE_XB:
            tl.store(XB + (i_v.to(tl.int64) * T_total + rows) * H + i_h, tl.sum(w * bias, 1),
                     mask=m_i)
        if USE_BS:
            bias = bias * tl.load(BS + i_h).to(tl.float32)
        acc += bias
    tl.store(O + p_iv, acc, mask=m_iv)


@kernel
def chunk_gla_dqk(Q, KK, VV, VS, DO, DS, GA, RA, HS, DHS, DQ, DK, XP, XQ, cu_seqlens, chunk_tbl,
                  H, DK_, DV_, T_total, scale,
                  USE_VS: tl.constexpr, USE_DS: tl.constexpr, USE_A: tl.constexpr,
                  USE_XP: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                  DOT_F32: tl.constexpr):
    # grid: (num chunks, cdiv(DK_, BK), H). The backward's dq and dk of one whole chunk and one
    # K-tile when every decay is scalar (GA / RA: the chunk-local cumsums G and R = G_last - G of
    # g, or none). Both share one score tile P_ij = (do_i . v_j) exp(G_i - G_j) [i >= j]:
    #     dq_i = scale * (exp(G_i) do_i @ HS[c]^T + sum_j P_ij k_j)
    #     dk_j = scale * (exp(R_j) v_j @ DHS[c]^T + sum_i P_ij q_i)
    # (HS[c]: the state before chunk c; DHS[c]: the adjoint after it, both [DK_, DV_]). The V
    # extent is walked in BV-tiles, each adding to the score tile and to both inter-chunk terms.
    # USE_XP: the decay-gradient terms sum_k (q dq - k dk) of this K-tile into XP[i_k, t, h].
    # USE_VS: v's rows times a per-token scalar VS [T_total, H] (fp32 on chip: v' = s v).
    # USE_DS: do's rows times a per-token scalar DS [T_total, H] (a per-token output scale e:
    # o = e * core): dq_i is linear in do_i alone, so the loop runs on do as given and its rows
    # are scaled at the end (dq_i = e_i dq0_i; P's rows for dk), and XQ[i_k, t, h] receives
    # sum_k q dq0 of this K-tile - the output scale's gradient (core output . do).
    i_c = tl.program_id(0)
    i_k = tl.program_id(1)
    i_h = tl.program_id(2)
    cs, L = chunk_bounds(cu_seqlens, chunk_tbl, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    rows = cs + o_t
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < DK_
    m_tk = m_t[:, None] & m_k[None, :]
    hs_base = (i_c.to(tl.int64) * H + i_h) * DK_ * DV_
    if DOT_F32:
        dt = tl.float32
    else:
        dt = Q.dtype.element_ty
    P = tl.full([BT, BT], 0., tl.float32)
    dq = tl.full([BT, BK], 0., tl.float32)
    dk = tl.full([BT, BK], 0., tl.float32)
    if USE_VS:
        vs = tl.load(VS + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    for i_v in range(0, (DV_ + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < DV_
        m_tv = m_t[:, None] & m_v[None, :]
        do = tl.load(DO + (rows[:, None] * H + i_h) * DV_ + o_v[None, :], mask=m_tv, other=0.)
        v = tl.load(VV + (rows[:, None] * H + i_h) * DV_ + o_v[None, :], mask=m_tv, other=0.)
        # the state tiles as [BV, BK] (HS is [DK_, DV_] row-major)
        p_s = hs_base + o_k[None, :] * DV_ + o_v[:, None]
        m_s = m_v[:, None] & m_k[None, :]
        hs = tl.load(HS + p_s, mask=m_s, other=0.)
        dhs = tl.load(DHS + p_s, mask=m_s, other=0.)
        do = do.to(dt)
        if USE_VS:
            v = v.to(tl.float32) * vs[:, None]
        v = v.to(dt)
        P += tl.dot(do, tl.trans(v), input_precision=PREC)
        dq += tl.dot(do, hs.to(dt), input_precision=PREC)
        dk += tl.dot(v, dhs.to(dt), input_precision=PREC)
    causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    if USE_A:
        ga = tl.load(GA + rows * H + i_h, mask=m_t, other=0.)
        ra = tl.load(RA + rows * H + i_h, mask=m_t, other=0.)
        dq = dq * tl.exp(ga)[:, None]
        dk = dk * tl.exp(ra)[:, None]
        P = P * tl.exp(tl.where(causal, ga[:, None] - ga[None, :], 0.))
    P = tl.where(causal, P, 0.)
    q = tl.load(Q + (rows[:, None] * H + i_h) * DK_ + o_k[None, :], mask=m_tk, other=0.)
    k = tl.load(KK + (rows[:, None] * H + i_h) * DK_ + o_k[None, :], mask=m_tk, other=0.)
    dq = (dq + scores_dot(P, k, dt, PREC)) * scale
    if USE_DS:
        ds = tl.load(DS + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
        tl.store(XQ + (i_k.to(tl.int64) * T_total + rows) * H + i_h,
                 tl.sum(q.to(tl.float32) * dq, 1), mask=m_t)
        dq = dq * ds[:, None]
        P = P * ds[:, None]
    dk = (dk + scores_dot(tl.trans(P), q, dt, PREC)) * scale
    p_tk = (rows[:, None] * H + i_h) * DK_ + o_k[None, :]
    tl.store(DQ + p_tk, dq, mask=m_tk)
    tl.store(DK + p_tk, dk, mask=m_tk)
    if USE_XP:
        ps = tl.sum(q.to(tl.float32) * dq - k.to(tl.float32) * dk, 1)
        tl.store(XP + (i_k.to(tl.int64) * T_total + rows) * H + i_h, ps, mask=m_t)


@kernel
def chunk_gla_rev_cumsum(X, INIT, OUT, XU, XS, DXS, cu_seqlens, T_total, H, D, NP, s_p,
                         USE_INIT: tl.constexpr, SUM_D: tl.constexpr, USE_XS: tl.constexpr,
                         BT: tl.constexpr, BD: tl.constexpr):
    # grid: (N * H, cdiv(D, BD)), or (N * H, 1) with SUM_D.
    # OUT_t = INIT[n] + sum_{s >= t, s in sequence n} x_s (fp32) of x = sum_p X[p] over the NP
    # slices [T_total, H, D] of X (s_p elements apart); with SUM_D, x is also summed over D and OUT is [T_total, H]
    # (then the whole D extent is one BD tile).
    # USE_XS: the result is the gradient of a log-decay u * a with u = XU [T_total, H] per token
    # (chunk_gla_cumsum's USE_XS), split into its parts: 1 (with SUM_D; a = XS [H]): OUT receives
    # OUT_t * a[h] and DXS[n, h] the sequence's sum_t OUT_t * u_t; 2 (a = XS [H, D]): OUT
    # [cdiv(D, BD), T_total, H] receives each D-tile's sum_d OUT_t,d * a[h, d] (summed by the
    # caller) and DXS [N, H, D] the sums over the sequence of OUT_t,d * u_t.
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(0), H)
    nt = (eos - bos + BT - 1) // BT
    o_d = tl.program_id(1) * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_t = tl.arange(0, BT)
    if SUM_D:
        carry = tl.full([1], 0., tl.float32)
        if USE_INIT:
            carry += tl.load(INIT + i_n * H + i_h).to(tl.float32)
        if USE_XS == 1:
            xs_h = tl.load(XS + i_h).to(tl.float32)
            dxs = tl.full([BT], 0., tl.float32)
    else:
        carry = tl.full([BD], 0., tl.float32)
        if USE_XS == 2:
            dxs = tl.full([BD], 0., tl.float32)
        if USE_INIT:
            carry += tl.load(INIT + (i_n * H + i_h).to(tl.int64) * D + o_d, mask=m_d, other=0.).to(tl.float32)
    for it in range(0, nt):
        cs = bos + (nt - 1 - it) * BT
        L = tl.minimum(eos - cs, BT)
        x = load_rows(X, cs, L, i_h, H, D, o_t, o_d)
        for i_p in range(1, NP):
            x += load_rows(X + i_p * s_p, cs, L, i_h, H, D, o_t, o_d)
        if SUM_D:
            xs = tl.sum(x, 1)
            tot = tl.sum(xs, 0)
            out = carry + (tot - tl.associative_scan(xs, 0, tl.standard._sum_combine) + xs)
            if USE_XS == 1:
                u = tl.load(XU + (cs + o_t) * H + i_h, mask=o_t < L, other=0.).to(tl.float32)
                dxs += tl.where(o_t < L, out * u, 0.)
                out = out * xs_h
            tl.store(OUT + (cs + o_t) * H + i_h, out, mask=o_t < L)
        else:
            tot = tl.reduce(x, 0, tl.standard._sum_combine)
            out = carry[None, :] + (tot[None, :] - tl.associative_scan(x, 0, tl.standard._sum_combine) + x)
            if USE_XS == 2:
                u = tl.load(XU + (cs + o_t) * H + i_h, mask=o_t < L, other=0.).to(tl.float32)
                a = tl.load(XS + i_h * D + o_d, mask=m_d, other=0.).to(tl.float32)
                p_u = (tl.program_id(1).to(tl.int64) * T_total + cs + o_t) * H + i_h
                tl.store(OUT + p_u, tl.sum(out * a[None, :], 1), mask=o_t < L)
                dxs += tl.sum(tl.where((o_t < L)[:, None], out * u[:, None], 0.), 0)
            else:
                store_rows(OUT, out, cs, L, i_h, H, D, o_t, o_d)
        carry += tot
    if SUM_D and USE_XS == 1:
        tl.store(DXS + i_n * H + i_h, tl.sum(dxs, 0))
    if USE_XS == 2:
        tl.store(DXS + (i_n * H + i_h).to(tl.int64) * D + o_d, dxs, mask=m_d)


KERNELS = (chunk_gla_cumsum, chunk_gla_states, chunk_gla_output, chunk_gla_dqk,
           chunk_gla_rev_cumsum)
