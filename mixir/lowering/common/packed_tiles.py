"""``@triton.jit`` helpers of the kernels that walk packed sequences (the gated-linear and
Householder templates): where a program's sequence and chunk lie, and the masked tiles it loads and
stores. Triton inlines them, so a kernel that calls them compiles to the code it would with the
lines written out.

Layouts (as built by ``common.chunks``):

* a sequence tensor is packed as [T_total, H, D] (contiguous); ``cu_seqlens`` [N + 1] holds the
  sequence offsets; chunk c of the packed problem is chunk ``chunk_tbl[c, 1]`` of sequence
  ``chunk_tbl[c, 0]`` (``chunk_tbl`` [NT, 2] int32);
* a state is [N, H, DK, DV] fp32, row-major, one [DK, DV] matrix per sequence and head; a
  program holds a [BK, BV] tile of it.

Helpers: ``sequence_head`` (the sequence and head of a program n * H + h, and the sequence's
bounds), ``sequence_chunks`` (the same and the sequence's chunks), ``chunk_bounds`` (first row and
length of a chunk), ``chunk_program`` (the same for a program of a chunk-parallel grid),
``state_offsets`` / ``load_state`` / ``store_state`` (a state tile), ``load_rows`` / ``store_rows``
/ ``load_scalars`` (the rows of a chunk in a packed tensor, zeros outside the chunk and the feature
extent).
"""
import triton
import triton.language as tl


@triton.jit
def sequence_head(cu_seqlens, i_nh, H):
    """(i_n, i_h, bos, eos): sequence n and head h of program ``i_nh = n * H + h``, and the
    sequence's rows bos .. eos - 1 of the packed tensors (int64)."""
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    return i_n, i_h, bos, eos


@triton.jit
def sequence_chunks(cu_seqlens, chunk_off, i_nh, H, BT: tl.constexpr):
    """(i_n, i_h, bos, eos, co, nt) of program ``i_nh = n * H + h`` of a sequential pass over the
    chunks of sequence n: ``sequence_head``'s, the sequence's first chunk ``co`` in the chunk
    tables (``chunk_off[n]``) and its number of chunks ``nt``."""
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, i_nh, H)
    nt = (eos - bos + BT - 1) // BT
    co = tl.load(chunk_off + i_n).to(tl.int64)
    return i_n, i_h, bos, eos, co, nt


@triton.jit
def chunk_bounds(cu_seqlens, chunk_tbl, i_c, BT: tl.constexpr):
    """(cs, L): the first packed row of chunk ``i_c`` and its length (<= BT, the sequence's end)."""
    i_n = tl.load(chunk_tbl + i_c * 2)
    i_tc = tl.load(chunk_tbl + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    cs = bos + i_tc * BT
    L = tl.minimum(eos - cs, BT)
    return cs, L


@triton.jit
def chunk_program(cu_seqlens, chunk_tbl, BT: tl.constexpr):
    """(i_c, cs, L, o_t) of a program parallel over chunks (program axis 0 is the chunk): the
    chunk, ``chunk_bounds`` and the row indices 0 .. BT - 1."""
    i_c = tl.program_id(0)
    cs, L = chunk_bounds(cu_seqlens, chunk_tbl, i_c, BT)
    return i_c, cs, L, tl.arange(0, BT)


@triton.jit
def state_offsets(i_k, i_v, DK, DV, BK: tl.constexpr, BV: tl.constexpr):
    """(o_k, o_v, m_k, m_v, m_kv, o_kv) of the (i_k, i_v) [BK, BV] tile of a [DK, DV] matrix:
    row and column indices, their masks, the tile's mask and its offsets within the matrix."""
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < DK
    m_v = o_v < DV
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * DV + o_v[None, :]
    return o_k, o_v, m_k, m_v, m_kv, o_kv


@triton.jit
def load_state(P, i_n, i_h, H, DK, DV, o_kv, m_kv, BK: tl.constexpr, BV: tl.constexpr,
               USE: tl.constexpr):
    """The program's [BK, BV] fp32 tile of the [N, H, DK, DV] state P (zeros when USE is false)."""
    h = tl.full([BK, BV], 0., tl.float32)
    if USE:
        h += tl.load(P + (i_n * H + i_h).to(tl.int64) * DK * DV + o_kv, mask=m_kv, other=0.).to(tl.float32)
    return h


@triton.jit
def store_state(P, val, i_n, i_h, H, DK, DV, o_kv, m_kv):
    """Store the program's tile ``val`` of the [N, H, DK, DV] state P."""
    tl.store(P + (i_n * H + i_h).to(tl.int64) * DK * DV + o_kv, val, mask=m_kv)


@triton.jit
def load_rows(X, cs, L, i_h, H, D, o_t, o_d):
    """[BT, BD] fp32 tile of a packed [T_total, H, D] tensor: rows cs + o_t (o_t < L), columns
    o_d (< D) of head i_h; zeros outside."""
    m = (o_t < L)[:, None] & (o_d < D)[None, :]
    offs = ((cs + o_t)[:, None] * H + i_h) * D + o_d[None, :]
    return tl.load(X + offs, mask=m, other=0.).to(tl.float32)


@triton.jit
def store_rows(X, val, cs, L, i_h, H, D, o_t, o_d):
    """Store ``val`` [BT, BD] into the tile of ``load_rows``."""
    m = (o_t < L)[:, None] & (o_d < D)[None, :]
    offs = ((cs + o_t)[:, None] * H + i_h) * D + o_d[None, :]
    tl.store(X + offs, val, mask=m)


@triton.jit
def load_scalars(X, cs, L, i_h, H, o_t):
    """[BT] fp32 of a packed [T_total, H] tensor: rows cs + o_t (o_t < L) of head i_h; zeros outside."""
    return tl.load(X + (cs + o_t) * H + i_h, mask=o_t < L, other=0.).to(tl.float32)


@triton.jit
def scores_dot(A, z, dt: tl.constexpr, PREC: tl.constexpr):
    """``A @ z`` with the fp32 score tile ``A`` [M, N] rounded to ``dt`` for the dot. In fp16 each
    row of ``A`` is first scaled by a power of two that brings its largest magnitude to at most
    2^15 (undone on the fp32 result, exactly): scores beyond fp16's range (65504) would otherwise
    round to inf although the output they produce is representable. A non-finite row stays
    non-finite (its scale is NaN or 0, so the row becomes NaN): a NaN is never hidden."""
    if dt == tl.float16:
        e = tl.maximum(tl.ceil(tl.log2(tl.max(tl.abs(A), 1) * (1.0 / 32768.0))), 0.)
        out = tl.dot((A * tl.exp2(-e)[:, None]).to(dt), z.to(dt), input_precision=PREC)
        out = out * tl.exp2(e)[:, None]
    else:
        out = tl.dot(A.to(dt), z.to(dt), input_precision=PREC)
    return out
