"""The max-plus scan of a stabiliser state (``analysis.MaxPlusForm``: mLSTM's m), by blocks.

Per sequence, head and state element: m_t = max(m_{t-1} + a_t, b_t) from m_0. Layout: packed
[T_total, H, D] tensors (D: the state's elements, 1 for a scalar stabiliser), sequences given by
``cu_seqlens``; one program per (sequence * head, D-tile) walks the sequence in blocks of BT
tokens, so its serial depth is T / BT steps, not T. Within a block each token is the max-plus
affine map x -> max(x + a_t, b_t); maps compose associatively,
    (A1, B1) then (A2, B2) = (A1 + A2, max(B1 + A2, B2)),
so ``tl.associative_scan`` gives every prefix (A_t, B_t) and m_t = max(m_in + A_t, B_t).

``maxplus_fwd`` stores m, and per token which branch attained the maximum (C: 1 where the carried
m_{t-1} + a_t did, ties included; 0 where b_t did), and the final m (m_0 for an empty sequence).
``maxplus_bwd`` runs the subgradient that follows the attaining branch backwards:
    g_t = dm_t + C_{t+1} g_{t+1}   (g at the last token: dm + dfinal),
da_t = C_t g_t, db_t = (1 - C_t) g_t, dm_0 = C at the first token times its g (dfinal for an empty
sequence) - a linear recurrence, scanned by blocks in reverse the same way.
"""
import triton
import triton.language as tl

from mixir.lowering.common.launch import kernel
from mixir.lowering.common.packed_tiles import sequence_head


@triton.jit
def _program(cu_seqlens, H, D, BD: tl.constexpr):
    """(bos, eos, i_h, o_d, m_d, p_s): the program's sequence rows, head, state elements (and
    their mask), and their offsets in the [N, H, D] initial / final tensors."""
    i_n, i_h, bos, eos = sequence_head(cu_seqlens, tl.program_id(0), H)
    o_d = tl.program_id(1) * BD + tl.arange(0, BD)
    return bos, eos, i_h, o_d, o_d < D, (i_n * H + i_h) * D + o_d


@triton.jit
def _maxplus_compose(a1, b1, a2, b2):
    return a1 + a2, tl.maximum(b1 + a2, b2)


@triton.jit
def _linear_compose(u1, v1, u2, v2):
    # y -> v + u y applied as (u1, v1) then (u2, v2): y -> v2 + u2 (v1 + u1 y)
    return u1 * u2, v2 + u2 * v1


@kernel
def maxplus_fwd(A, B_, M0, M, C, FIN, cu_seqlens, H, D, BT: tl.constexpr, BD: tl.constexpr):
    # grid: (N * H, cdiv(D, BD)). A, B_, M [T_total, H, D] (M in A's dtype); C int8 like M;
    # M0, FIN [N, H, D].
    bos, eos, i_h, o_d, m_d, p_s = _program(cu_seqlens, H, D, BD)
    o_t = tl.arange(0, BT)
    m_in = tl.load(M0 + p_s, mask=m_d, other=0.).to(A.dtype.element_ty)
    for cs in range(bos, eos, BT):
        L = tl.minimum(eos - cs, BT)
        m_t = o_t < L
        p = ((cs + o_t)[:, None] * H + i_h) * D + o_d[None, :]
        msk = m_t[:, None] & m_d[None, :]
        # tokens past the sequence's end are the identity map (0, -inf)
        a = tl.load(A + p, mask=msk, other=0.)
        b = tl.load(B_ + p, mask=msk, other=float("-inf")).to(a.dtype)
        pa, pb = tl.associative_scan((a, b), 0, _maxplus_compose)
        m = tl.maximum(m_in[None, :] + pa, pb)
        # m_{t-1} per row (m_in for the block's first token): which branch attained m_t
        prev = tl.gather(m, tl.broadcast_to(tl.maximum(o_t - 1, 0)[:, None], (BT, BD)), 0)
        prev = tl.where((o_t == 0)[:, None], m_in[None, :], prev)
        take = prev + a >= b
        tl.store(M + p, m, mask=msk)
        tl.store(C + p, take.to(tl.int8), mask=msk)
        m_in = tl.sum(tl.where((o_t == L - 1)[:, None], m, 0.), 0)
    tl.store(FIN + p_s, m_in, mask=m_d)


@kernel
def maxplus_bwd(C, DM, DFIN, DA, DB, DM0, cu_seqlens, H, D,
                USE_DM: tl.constexpr, USE_DFIN: tl.constexpr, BT: tl.constexpr,
                BD: tl.constexpr):
    # grid: (N * H, cdiv(D, BD)). C, DM, DA, DB [T_total, H, D]; DFIN, DM0 [N, H, D] (the sums in
    # DA's dtype). Blocks from the sequence's end; row j of a block is token ce - 1 - j.
    bos, eos, i_h, o_d, m_d, p_s = _program(cu_seqlens, H, D, BD)
    o_j = tl.arange(0, BT)
    # h: C times g of the token after the block (what flows into its last token)
    if USE_DFIN:
        h = tl.load(DFIN + p_s, mask=m_d, other=0.).to(DA.dtype.element_ty)
    else:
        h = tl.zeros([BD], dtype=DA.dtype.element_ty)
    for it in range(bos, eos, BT):
        ce = eos - (it - bos)               # the block is tokens max(ce - BT, bos) .. ce - 1
        L = tl.minimum(ce - bos, BT)
        m_j = o_j < L
        p = ((ce - 1 - o_j)[:, None] * H + i_h) * D + o_d[None, :]
        msk = m_j[:, None] & m_d[None, :]
        c = tl.load(C + p, mask=msk, other=0).to(h.dtype)
        if USE_DM:
            v = tl.load(DM + p, mask=msk, other=0.).to(h.dtype)
        else:
            v = tl.zeros([BT, BD], dtype=h.dtype)
        # g_t = dm_t + C_{t+1} g_{t+1}: row j's coefficient is C of row j - 1 (the later token);
        # row 0 starts from the carry h
        u = tl.gather(c, tl.broadcast_to(tl.maximum(o_j - 1, 0)[:, None], (BT, BD)), 0)
        v = tl.where((o_j == 0)[:, None], v + h[None, :], v)
        u = tl.where((o_j == 0)[:, None], 0., u)
        _, g = tl.associative_scan((u, v), 0, _linear_compose)
        tl.store(DA + p, c * g, mask=msk)
        tl.store(DB + p, (1. - c) * g, mask=msk)
        h = tl.sum(tl.where((o_j == L - 1)[:, None], c * g, 0.), 0)
    tl.store(DM0 + p_s, h, mask=m_d)


KERNELS = (maxplus_fwd, maxplus_bwd)
