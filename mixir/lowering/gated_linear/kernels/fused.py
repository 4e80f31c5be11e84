"""The gated-linear "fused" strategy's kernel: the chunk state stays on chip (scalar decays).

Canonical recurrence per (sequence, head), state S in R^{K x V}, scalar log-decays g (<= 0):
    S_t = exp(g_t) S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t.
The chunked strategy stores every chunk-boundary state in HBM (one sequential pass) and reads it
back in a parallel output pass. Here one program walks the chunks of one sequence in order and
keeps its tile of the state in registers: the boundary states never leave the chip, so a
training step reads each input and writes each output once per tile of the other head dimension
(docs/gla_math.md, "Fused strategy").

``fused_gla_sweep`` is generic over the roles of its operands (as ``chunk_gla_output``):
  forward  (REVERSE=False): out_i = exp(G_i) X_i S + sum_{j <= i} (X_i . Y_j) exp(G_i - G_j) Z_j,
                            then S <- exp(G_L) S + sum_j exp(G_L - G_j) Y_j Z_j^T;
  reverse  (REVERSE=True):  out_j = exp(R_j) X_j S + sum_{i >= j} (X_j . Y_i) exp(G_i - G_j) Z_i,
                            then S <- exp(G_L) S + sum_i exp(G_i) Y_i Z_i^T,
with G the chunk-local inclusive cumsum of g (computed here, floored at LOG_FLOOR like the chunked
strategy's) and R = G_L - G. The four launches of a training step:
  o  = forward (q, k, v), S = h [K, BZ-tile of V];     dq = forward (do, v, k), S = h^T [V, K-tile];
  dv = reverse (k, q, do), S = dh [K, V-tile];          dk = reverse (v, do, q), S = dh^T [V, K-tile].
The contracted dimension (X's, Y's) is one register tile; the other (Z's, the output's) is tiled
over the grid, so no partial sums are needed.

Scaled pieces (mamba2's): a factored log-decay g = u·a (USE_GS: G holds u, GS a [H]); scaled
values v' = s v with s [T_total, H] (RS, RS_MODE: where v sits in the sweep - 1 Z (o) or Y (dq):
the score tile's columns and the rows entering the state carry s, 2 X (dk): the output rows,
3 the output (dv: the row sums sum_b W dv' with W = v go to XP as ds, then dv = s dv')); the
value bias c_h v (USE_CB, CB [H]: o adds c Z's rows (v), dv adds c do (Z)); STORE_XB: the dk
sweep's first program per head stores the diagonal of its score tile, v·do per token, to XB [T_total,
H] (dc's row sums). A per-token output scale o = e·core (mLSTM's normaliser; OS [T_total, H],
OS_MODE): the backward is the core's at e·do - 1 where do is Y (dk) or Z (dv): the score columns
and the rows entering the state carry e; 2 where the output's rows do (o; dq, whose X is do:
with STORE_XE the row sums de = q·dq0, W = q, go to XE [K-tiles, T_total, H] and the decay
gradient's q·dq = e·de to XP).
"""
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import scores_dot, sequence_head


@kernel
def fused_gla_sweep(X, Y, Z, G, S0, SN, O, W, XP, BIAS, GS, RS, CB, XB, OS, XE, cu_seqlens,
                    H, DX, DZ, T_total, s_a, s_b, s0_scale, sn_scale, scale, xp_sign, xp_off,
                    USE_G: tl.constexpr, USE_S0: tl.constexpr, STORE_SN: tl.constexpr,
                    REVERSE: tl.constexpr, USE_XP: tl.constexpr, USE_BIAS: tl.constexpr,
                    USE_GS: tl.constexpr, RS_MODE: tl.constexpr, USE_CB: tl.constexpr,
                    STORE_XB: tl.constexpr, OS_MODE: tl.constexpr, STORE_XE: tl.constexpr,
                    LOG_FLOOR: tl.constexpr, BT: tl.constexpr, BX: tl.constexpr,
                    BZ: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    # grid: (cdiv(DZ, BZ), N * H). X, Y [T_total, H, DX]; Z, O, W [T_total, H, DZ]; G [T_total, H].
    # The state tile S [BX, BZ] is element (a, b) of S0 / SN at ((n * H + h) * DX * DZ) + a * s_a
    # + b * s_b (the canonical [K, V] layout, transposed for dq / dk); it starts at s0_scale * S0
    # and SN receives sn_scale * S. Epilogue: O = scale * out (+ BIAS); with USE_XP the row sums
    # xp_sign * sum_b W * O (fp32) go to XP [slices, T_total, H] at slice xp_off + program_id(0).
    i_z = tl.program_id(0)
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(1), H)
    o_a = tl.arange(0, BX)
    m_a = o_a < DX
    o_b = i_z * BZ + tl.arange(0, BZ)
    m_b = o_b < DZ
    s_base = (i_n * H + i_h).to(tl.int64) * DX * DZ
    if DOT_F32:
        dt = tl.float32
    else:
        dt = X.dtype.element_ty
    # at: the score tile X Y^T's operand dtype. It multiplies the inputs' own values: with 16-bit
    # X and Y their products are exact in a 16-bit dot (fp32 accumulation), and fp32 operands
    # would only cost registers (the dq sweep spills with them at K = V = 128). Not for bf16 in
    # Triton's interpreter ("ieee" off CUDA): it mishandles bf16 dots.
    if DOT_F32 and X.dtype.element_ty == Y.dtype.element_ty and (
            PREC != "ieee" or X.dtype.element_ty == tl.float16):
        at = X.dtype.element_ty
    else:
        at = dt
    S = tl.full([BX, BZ], 0., tl.float32)
    if USE_S0:
        S += tl.load(S0 + s_base + o_a[:, None] * s_a + o_b[None, :] * s_b,
                     mask=m_a[:, None] & m_b[None, :], other=0.) * s0_scale
    o_t = tl.arange(0, BT)
    nt = (eos - bos + BT - 1) // BT
    for it in range(0, nt):
        if REVERSE:
            cs = bos + (nt - 1 - it) * BT
        else:
            cs = bos + it * BT
        L = tl.minimum(eos - cs, BT)
        m_t = o_t < L
        rows = cs + o_t
        p_x = (rows[:, None] * H + i_h) * DX + o_a[None, :]
        m_tx = m_t[:, None] & m_a[None, :]
        x = tl.load(X + p_x, mask=m_tx, other=0.)
        y = tl.load(Y + p_x, mask=m_tx, other=0.).to(at)
        p_z = (rows[:, None] * H + i_h) * DZ + o_b[None, :]
        m_tz = m_t[:, None] & m_b[None, :]
        z = tl.load(Z + p_z, mask=m_tz, other=0.).to(dt)
        if RS_MODE > 0:
            rs = tl.load(RS + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
        if OS_MODE > 0:
            es = tl.load(OS + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
        if REVERSE:
            pair = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]
        else:
            pair = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
        A = tl.dot(x.to(at), tl.trans(y), input_precision=PREC)
        if STORE_XB:           # the dk sweep (X = v, Y = do): dc's row sums v·do, A's diagonal
            if i_z == 0:
                tl.store(XB + rows * H + i_h,
                         tl.sum(tl.where(o_t[:, None] == o_t[None, :], A, 0.), 1), mask=m_t)
        acc = tl.dot(x.to(dt), S.to(dt), input_precision=PREC)
        if USE_G:
            # a select, not tl.maximum: a NaN log-decay stays NaN (as in the chunked kernels)
            gl = tl.load(G + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
            if USE_GS:
                gl = gl * tl.load(GS + i_h).to(tl.float32)
            gl = tl.where(gl < LOG_FLOOR, LOG_FLOOR, gl)
            gc = tl.associative_scan(gl, 0, tl.standard._sum_combine)
            g_last = tl.sum(tl.where(o_t == L - 1, gc, 0.), 0)
            # zd: each row's decay into the next chunk's state (applied to Z's rows, the smaller
            # tile, after the score dot has used them undecayed)
            if REVERSE:
                acc = acc * tl.exp(g_last - gc)[:, None]
                A = A * tl.exp(tl.where(pair, gc[None, :] - gc[:, None], 0.))
                zd = tl.exp(gc)
            else:
                acc = acc * tl.exp(gc)[:, None]
                A = A * tl.exp(tl.where(pair, gc[:, None] - gc[None, :], 0.))
                zd = tl.exp(g_last - gc)
            S = S * tl.exp(g_last)
        A = tl.where(pair, A, 0.)
        if RS_MODE == 1:       # Y's or Z's rows (the score tile's columns) are v's
            A = A * rs[None, :]
        if OS_MODE == 1:       # ... or do's (dk, dv)
            A = A * es[None, :]
        acc = (acc + scores_dot(A, z, dt, PREC)) * scale
        if RS_MODE == 2:       # X's rows are v's: so are the output's
            acc = acc * rs[:, None]
        if OS_MODE == 2:       # the output's rows carry e: o = e core (o), dq = e dq0 (X = do)
            if STORE_XE:       # de = q·dq0 (W is q), and q·dq = e de for the decay gradient
                wq = tl.sum(tl.load(W + p_z, mask=m_tz, other=0.).to(tl.float32) * acc, 1)
                tl.store(XE + (i_z.to(tl.int64) * T_total + rows) * H + i_h, wq, mask=m_t)
                if USE_XP:
                    p_r = ((xp_off + i_z).to(tl.int64) * T_total + rows) * H + i_h
                    tl.store(XP + p_r, wq * es * xp_sign, mask=m_t)
            acc = acc * es[:, None]
        if RS_MODE == 3:       # the output is dv' (W is v): ds = sum_b v dv', then dv = s dv'
            wt = tl.load(W + p_z, mask=m_tz, other=0.).to(tl.float32)
            p_r = ((xp_off + i_z).to(tl.int64) * T_total + rows) * H + i_h
            tl.store(XP + p_r, tl.sum(wt * acc, 1) * xp_sign, mask=m_t)
            acc = acc * rs[:, None]
        if USE_BIAS:
            acc += tl.load(BIAS + p_z, mask=m_tz, other=0.).to(tl.float32)
        if USE_CB:             # Z's raw rows: v (o) or do (dv)
            acc += z.to(tl.float32) * tl.load(CB + i_h).to(tl.float32)
        tl.store(O + p_z, acc, mask=m_tz)
        if USE_XP and RS_MODE != 3 and not STORE_XE:
            p = tl.load(W + p_z, mask=m_tz, other=0.).to(tl.float32) * acc
            p_r = ((xp_off + i_z).to(tl.int64) * T_total + rows) * H + i_h
            tl.store(XP + p_r, tl.sum(p, 1) * xp_sign, mask=m_t)
        # the state update last: the chunk's output and row sums are stored before it, so their
        # tiles are not live beside the update's operands (registers: docs/gla_math.md, section 5)
        if RS_MODE == 1:
            if USE_G:
                zd = zd * rs
            else:
                zd = rs
        if OS_MODE == 1:
            if USE_G or RS_MODE == 1:
                zd = zd * es
            else:
                zd = es
        if USE_G or RS_MODE == 1 or OS_MODE == 1:
            z = (z.to(tl.float32) * zd[:, None]).to(dt)
        S += tl.dot(tl.trans(y.to(dt)), z, input_precision=PREC)
    if STORE_SN:
        # the state tile's addresses are formed here, not kept live through the loop
        o_a2 = tl.arange(0, BX)
        o_b2 = i_z * BZ + tl.arange(0, BZ)
        tl.store(SN + s_base + o_a2[:, None] * s_a + o_b2[None, :] * s_b, S * sn_scale,
                 mask=(o_a2 < DX)[:, None] & (o_b2 < DZ)[None, :])


KERNELS = (fused_gla_sweep,)
