"""``@triton.jit`` helpers of the chunked (WY/UT) delta kernels: gates, dot operands, the grams and
the unit lower triangular inverse (docs/delta_rule.md).

Dot operands (the ``DOT`` constexpr of every chunked kernel, chosen in ``core._dot_mode``):
  0  fp32 operands at the kernel's ``PREC`` (fp32 inputs: "tf32x3" on NVIDIA GPUs, "ieee" off them);
  1  bf16 operands, fp32 accumulation (bf16 inputs on the GPU: tensor cores, as fla);
  2  fp16 operands, fp32 accumulation (fp16 inputs, GPU and CPU);
  3  bf16 operands emulated in fp32 (bf16 inputs off the GPU: Triton's interpreter mishandles bf16
     dots, and it truncates fp32 → bf16 casts, so operands and 16-bit stores are rounded to
     nearest even here by bit arithmetic — what the GPU's conversions do).
"""
import triton
import triton.language as tl

from mixir.lowering.common.packed_tiles import load_rows, load_scalars

SUB = tl.constexpr(16)      # the diagonal blocks of the triangular inverse


@triton.jit
def rne_bf16(x):
    """x rounded to the nearest bf16 (ties to even), as fp32."""
    b = x.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.to(tl.float32, bitcast=True)


@triton.jit
def op(x, DOT: tl.constexpr):
    """A dot operand (see the module docstring)."""
    if DOT == 1:
        return x.to(tl.bfloat16)
    elif DOT == 2:
        return x.to(tl.float16)
    elif DOT == 3:
        return rne_bf16(x)
    else:
        return x


@triton.jit
def st(x, DOT: tl.constexpr):
    """A value about to be stored in a tensor of the input dtype (rounded here under DOT = 3)."""
    if DOT == 3:
        return rne_bf16(x)
    else:
        return x


@triton.jit
def gates(Gin, cs, L, i_h, H, o_t, USE_G: tl.constexpr, LOG_FLOOR: tl.constexpr):
    """Chunk-local inclusive cumsum G of the log-gates (0 without gates); rows ≥ L repeat G_{L−1}."""
    if USE_G:
        g = load_scalars(Gin, cs, L, i_h, H, o_t)
        g = tl.where(g < LOG_FLOOR, LOG_FLOOR, g)         # a select keeps a NaN gate NaN
        g = tl.where(o_t < L, g, 0.)
        G = tl.cumsum(g, 0)
    else:
        G = tl.zeros([o_t.shape[0]], dtype=tl.float32)
    G_last = tl.sum(tl.where(o_t == L - 1, G, 0.), 0)
    return G, G_last


@triton.jit
def gram(X, Y, cs, L, i_h, H, D: tl.constexpr, o_t, BKT: tl.constexpr, PREC: tl.constexpr,
         DOT: tl.constexpr):
    """X Yᵀ [BT, BT] (fp32) of two packed [T, H, D] tensors' chunk rows, a loop over K-tiles."""
    acc = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    for k0 in range(0, D, BKT):
        o_k = k0 + tl.arange(0, BKT)
        acc += tl.dot(op(load_rows(X, cs, L, i_h, H, D, o_t, o_k), DOT),
                      tl.trans(op(load_rows(Y, cs, L, i_h, H, D, o_t, o_k), DOT)), input_precision=PREC)
    return acc


@triton.jit
def gram_self(X, cs, L, i_h, H, D: tl.constexpr, o_t, BKT: tl.constexpr, PREC: tl.constexpr,
              DOT: tl.constexpr):
    """X Xᵀ [BT, BT] (fp32): ``gram(X, X, …)`` with each tile loaded once."""
    acc = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    for k0 in range(0, D, BKT):
        o_k = k0 + tl.arange(0, BKT)
        x = op(load_rows(X, cs, L, i_h, H, D, o_t, o_k), DOT)
        acc += tl.dot(x, tl.trans(x), input_precision=PREC)
    return acc


@triton.jit
def grams_kq(K_, Q, cs, L, i_h, H, D: tl.constexpr, o_t, BKT: tl.constexpr, PREC: tl.constexpr,
             DOT: tl.constexpr):
    """(K Kᵀ, Q Kᵀ) [BT, BT] (fp32) in one loop over K-tiles (each tile of K and Q loaded once)."""
    kk = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    qk = tl.zeros([o_t.shape[0], o_t.shape[0]], dtype=tl.float32)
    for k0 in range(0, D, BKT):
        o_k = k0 + tl.arange(0, BKT)
        kt = tl.trans(op(load_rows(K_, cs, L, i_h, H, D, o_t, o_k), DOT))
        kk += tl.dot(tl.trans(kt), kt, input_precision=PREC)
        qk += tl.dot(op(load_rows(Q, cs, L, i_h, H, D, o_t, o_k), DOT), kt, input_precision=PREC)
    return kk, qk


@triton.jit
def _split_dot(a, b, PREC: tl.constexpr):
    """a b in about fp32 accuracy for the inverse. "bf16x3": a = a_hi + a_lo with both parts bf16,
    a b ≈ a_hi b_hi + a_hi b_lo + a_lo b_hi (three bf16 tensor-core passes, fp32 accumulation;
    half the operand registers of "tf32x3"); "bf16x3e": the same emulated with fp32 dots (off the
    GPU); else ``tl.dot`` at input precision PREC."""
    if PREC == "bf16x3":
        ah = a.to(tl.bfloat16)
        bh = b.to(tl.bfloat16)
        al = (a - ah.to(tl.float32)).to(tl.bfloat16)
        bl = (b - bh.to(tl.float32)).to(tl.bfloat16)
        return tl.dot(ah, bh, tl.dot(ah, bl, tl.dot(al, bh)))
    elif PREC == "bf16x3e":
        ah = rne_bf16(a)
        bh = rne_bf16(b)
        al = rne_bf16(a - ah)
        bl = rne_bf16(b - bh)
        return tl.dot(ah, bh, tl.dot(ah, bl, tl.dot(al, bh, input_precision="ieee"),
                                     input_precision="ieee"), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def unit_lower_inverse(Nmat, BT: tl.constexpr, PREC: tl.constexpr):
    """(I + N)⁻¹ (fp32) for a strictly lower triangular [BT, BT] tile N (BT a multiple of 16):

    1. the 16 × 16 diagonal blocks, all at once as a [BT/16, 16, 16] tile, by forward
       substitution on the CUDA cores (exact fp32, no dot): row i of every block is
       e_i − Σ_{j<i} N_ij inv_j (15 steps of two small reductions);
    2. merges of neighbouring diagonal blocks, 16 → 32 → 64: with D⁻¹ the inverse of the
       block-diagonal part of width w/2 and O the off-diagonal blocks inside the blocks of width w,
       X = D⁻¹ O has X² = 0, so the inverse at width w is (I − X) D⁻¹ = D⁻¹ − X D⁻¹: two [BT, BT]
       dots per level (``_split_dot`` at PREC: about fp32 accuracy).
    """
    NB: tl.constexpr = BT // SUB
    r = tl.arange(0, SUB)
    b = tl.arange(0, NB)
    same = (b[:, None, None, None] == b[None, None, :, None])           # [NB, 1, NB, 1]
    Nd = tl.sum(tl.where(same, tl.reshape(Nmat, [NB, SUB, NB, SUB]), 0.), 2)   # [NB, 16, 16]
    ri = r[None, :, None]
    eye = tl.where(ri == r[None, None, :], 1., 0.)
    inv = eye + tl.zeros([NB, SUB, SUB], dtype=tl.float32)
    for i in range(1, SUB):
        row = tl.sum(tl.where(ri == i, Nd, 0.), 1)                     # [NB, 16]: N[b, i, :]
        R = tl.sum(row[:, :, None] * inv, 1)                           # Σ_j N[b, i, j] inv[b, j, :]
        inv = tl.where(ri == i, eye - R[:, None, :], inv)
    Dinv = tl.reshape(tl.where(same, inv[:, :, None, :], 0.), [BT, BT])
    rows = tl.arange(0, BT)
    for j in tl.static_range(1, NB):
        if (j & (j - 1)) == 0:              # the levels: half-widths 16 j = 16, 32, ...
            blk = (((rows[:, None] // (2 * SUB * j)) == (rows[None, :] // (2 * SUB * j)))
                   & ((rows[:, None] // (SUB * j)) != (rows[None, :] // (SUB * j))))
            X = _split_dot(Dinv, tl.where(blk, Nmat, 0.), PREC)
            Dinv = Dinv - _split_dot(X, Dinv, PREC)
    return Dinv


@triton.jit
def wy_matrix(KK, beta, G, o_t, IPREC: tl.constexpr):
    """(K Kᵀ ⊙ D strictly lower, D = exp(G_i − G_j) lower incl. the diagonal, A⁻¹) from KK = K Kᵀ."""
    causal = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    Dm = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    KKD = tl.where(strict, KK * Dm, 0.)
    Ainv = unit_lower_inverse(beta[:, None] * KKD, o_t.shape[0], IPREC)
    return KKD, Dm, Ainv
