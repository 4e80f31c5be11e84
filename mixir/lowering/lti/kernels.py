"""Triton kernels of the LTI family: the Vandermonde and Cauchy products, forward and backward.

Complex numbers are (re, im) pairs of real tensors; every kernel accumulates in the dtype of its
tensors (fp32 for fp32/bf16/fp16 models, fp64 when called with fp64), and is blocked over the
state dim N and the length L (or the number of points M), so nothing of size N × L is ever stored:
memory is O(R·(N + L)) for R rows (heads, or batch·heads).

- **Vandermonde** (diagonal transitions, S4D): with ``λ_n = exp(ρ_n + i θ_n)``,

      K[r, l] = Re Σ_n v[r, n] λ[r, n]^l = Σ_n e^{lρ} (v_re cos lθ − v_im sin lθ).

  Its adjoint is the *reduction* ``S[r, n] = Σ_l w[r, l] λ^l`` (and ``P = Σ_l l w_l λ^l``):
  for an upstream gradient G of K, ``dv_re = Re S``, ``dv_im = −Im S``, ``dρ = Re(vP)``,
  ``dθ = −Im(vP)`` with ``w = G``. The reduction also gives a final state
  ``x_T = λ^T x_0 + B̄ Σ_j λ^j u_{T−1−j}``; its own adjoint is the Vandermonde product again.
- **Cauchy** (diagonal-plus-low-rank transitions, S4), over the 2N poles of a conjugate-symmetric
  system given by its N poles of one half (the conjugate pairs are halved, as in S4):

      out[r, q, j] = Σ_n v/(z_j − λ_n) + conj(v)/(z_j − conj λ_n)
                   = Σ_n (v (z_j − λ̄_n) + v̄ (z_j − λ_n)) / ((z_j − λ_n)(z_j − λ̄_n)),

  one complex division per pair (the denominator from the differences, not expanded as
  ``z² − 2 Re(λ) z + |λ|²``, which cancels near the poles: 100× the fp32 error, measured). With torch's convention for complex gradients (``g = ∂L/∂Re +
  i ∂L/∂Im``) and ``w_jn = 1/(z_j − λ_n)``, ``u_jn = 1/(z̄_j − λ_n)``:
  ``dv[r, q, n] = Σ_j g_j conj(w_jn) + conj(g_j u_jn)`` and
  ``dλ[r, n] = Σ_q conj(v_qn) Σ_j g_j conj(w_jn²) + conj(g_j u_jn²)``: the same kind of blocked
  sum, over j instead of n.

- **Recurrence** (the ``recurrent`` strategy): ``lti_recurrent_fwd`` token by token (optionally
  writing a state checkpoint every C tokens), and its adjoint ``lti_recurrent_bwd`` (time reversed,
  the states recomputed per segment from the checkpoints; derivation in docs/lti.md §2).

Tiles: ``launch_config`` — BN over N, BL over L (or M), num_warps, num_stages; from the LTI tuning
space (``mixir.lowering.lti.space``) on GPUs, fixed large tiles in the interpreter.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ...tiles import pow2
from ..common import launch


KEYS = ("BN", "BL", "num_warps", "num_stages")


def cpu_config(N: int, L: int) -> dict:
    """The interpreter's fixed tiles (CPU tensors, no recording): few large NumPy blocks; warps and
    stages mean nothing there."""
    return {"BN": min(pow2(N), 64), "BL": min(pow2(max(L, 1)), 1024), "num_warps": 4,
            "num_stages": 1}


def launch_config(kind: str, R: int, Q: int, N: int, L: int, dtype, device, config=None) -> dict:
    """``{"BN", "BL", "num_warps", "num_stages"}`` of one launch of the ``kind`` ("vandermonde" |
    "cauchy") kernels on R rows (× Q vectors), N modes, length L. The first rule that applies:
    ``config`` with all four keys; CPU tensors outside a recording: ``cpu_config``; GPU launches
    (CUDA tensors, and CPU launches recorded for the AOT builder): the tuning database / the
    cost model of the LTI tuning space (``mixir.lowering.lti.space.gpu_config``) — the keys given
    in ``config`` override the chosen ones."""
    user = {k: int(v) for k, v in (config or {}).items() if k in KEYS}
    if len(user) == len(KEYS):
        return user
    if not launch.targets_gpu(device):
        return {**cpu_config(N, L), **user}
    from . import space as lti_space
    idx = -1
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
    dt = "fp64" if dtype == torch.float64 else "fp32"
    cfg = lti_space.gpu_config(int(idx), kind, dt, int(R), int(Q), int(N), int(L))
    return {**cfg, **user}


# --------------------------------------------------------------------------- complex pairs

@triton.jit
def _load_c(RE, IM, offs, mask):
    """The complex vector at RE + offs, IM + offs as its (re, im) pair of real tensors (zeros where
    ``mask`` is false); callers pass RE, IM already moved to their row."""
    return tl.load(RE + offs, mask=mask, other=0.0), tl.load(IM + offs, mask=mask, other=0.0)


@triton.jit
def _zeros_c(BLOCK: tl.constexpr, dtype: tl.constexpr):
    """A zero complex vector of BLOCK lanes, (re, im): an accumulator."""
    return tl.zeros([BLOCK], dtype=dtype), tl.zeros([BLOCK], dtype=dtype)


@triton.jit
def _store_c(RE, IM, offs, re, im, mask):
    """Store the complex vector (re, im) at RE + offs, IM + offs (where ``mask``)."""
    tl.store(RE + offs, re, mask=mask)
    tl.store(IM + offs, im, mask=mask)


# --------------------------------------------------------------------------- Vandermonde

def lti_vandermonde_fwd(RHO, THETA, VRE, VIM, OUT, N, L,
                        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """OUT[r, l] = Σ_n e^{l ρ[r,n]} (VRE cos(l θ) − VIM sin(l θ)); grid (R, cdiv(L, BLOCK_L))."""
    r = tl.program_id(0).to(tl.int64)
    lb = tl.program_id(1)
    offs_l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    lf = offs_l.to(OUT.dtype.element_ty)
    acc = tl.zeros([BLOCK_L], dtype=OUT.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rho, theta = _load_c(RHO + r * N, THETA + r * N, offs_n, mask_n)
        vre, vim = _load_c(VRE + r * N, VIM + r * N, offs_n, mask_n)
        mag = tl.exp(lf[None, :] * rho[:, None])
        ang = lf[None, :] * theta[:, None]
        term = mag * (vre[:, None] * tl.cos(ang) - vim[:, None] * tl.sin(ang))
        acc += tl.sum(tl.where(mask_n[:, None], term, 0.0), axis=0)
    tl.store(OUT + r * L + offs_l, acc, mask=mask_l)


def lti_vandermonde_red(RHO, THETA, W, SRE, SIM, PRE, PIM, N, L,
                        WITH_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """S[r, n] = Σ_l W[r, l] λ^l and (WITH_P) P[r, n] = Σ_l l W[r, l] λ^l; grid (R, cdiv(N, BLOCK_N))."""
    r = tl.program_id(0).to(tl.int64)
    nb = tl.program_id(1)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rho, theta = _load_c(RHO + r * N, THETA + r * N, offs_n, mask_n)
    s_re, s_im = _zeros_c(BLOCK_N, SRE.dtype.element_ty)
    p_re, p_im = _zeros_c(BLOCK_N, SRE.dtype.element_ty)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        lf = offs_l.to(SRE.dtype.element_ty)
        w = tl.load(W + r * L + offs_l, mask=mask_l, other=0.0)
        mag = tl.exp(lf[None, :] * rho[:, None])
        ang = lf[None, :] * theta[:, None]
        c = tl.where(mask_l[None, :], mag * tl.cos(ang), 0.0)
        s = tl.where(mask_l[None, :], mag * tl.sin(ang), 0.0)
        s_re += tl.sum(c * w[None, :], axis=1)
        s_im += tl.sum(s * w[None, :], axis=1)
        if WITH_P:
            wl = w * lf
            p_re += tl.sum(c * wl[None, :], axis=1)
            p_im += tl.sum(s * wl[None, :], axis=1)
    _store_c(SRE + r * N, SIM + r * N, offs_n, s_re, s_im, mask_n)
    if WITH_P:
        _store_c(PRE + r * N, PIM + r * N, offs_n, p_re, p_im, mask_n)


# --------------------------------------------------------------------------- Cauchy

def lti_cauchy_fwd(VRE, VIM, LRE, LIM, ZRE, ZIM, ORE, OIM, Q, N, M,
                   BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """O[r, q, j] = Σ_n V/(Z_j − Λ_n) + conj(V)/(Z_j − conj Λ_n) over the N poles of one half of
    a conjugate-symmetric system, one fraction per pair:
    ``(v (z − λ̄) + v̄ (z − λ)) / ((z − λ)(z − λ̄))``; grid (R·Q, cdiv(M, BLOCK_L))."""
    rq = tl.program_id(0).to(tl.int64)
    r = rq // Q
    mb = tl.program_id(1)
    offs_m = mb * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_m = offs_m < M
    zre, zim = _load_c(ZRE, ZIM, offs_m, mask_m)
    zim2 = 2.0 * zim
    acc_re, acc_im = _zeros_c(BLOCK_L, ORE.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        vre, vim = _load_c(VRE + rq * N, VIM + rq * N, offs_n, mask_n)
        lre, lim = _load_c(LRE + r * N, LIM + r * N, offs_n, mask_n)
        # (z − λ)(z − λ̄) from the differences (the expanded z² − 2 Re(λ) z + |λ|² cancels
        # catastrophically near the poles in fp32); numerator v (z − λ̄) + v̄ (z − λ)
        dre = zre[None, :] - lre[:, None]
        dim1 = zim[None, :] - lim[:, None]
        dim2 = zim[None, :] + lim[:, None]
        den_re = dre * dre - dim1 * dim2
        den_im = dre * zim2[None, :]
        a = 2.0 * vre
        num_re = a[:, None] * dre - (2.0 * vim * lim)[:, None]
        num_im = a[:, None] * zim[None, :]
        ok = mask_n[:, None] & mask_m[None, :]
        inv = 1.0 / tl.where(ok, den_re * den_re + den_im * den_im, 1.0)
        t_re = (num_re * den_re + num_im * den_im) * inv
        t_im = (num_im * den_re - num_re * den_im) * inv
        acc_re += tl.sum(tl.where(ok, t_re, 0.0), axis=0)
        acc_im += tl.sum(tl.where(ok, t_im, 0.0), axis=0)
    _store_c(ORE + rq * M, OIM + rq * M, offs_m, acc_re, acc_im, mask_m)


def lti_cauchy_bwd(GRE, GIM, VRE, VIM, LRE, LIM, ZRE, ZIM, DVRE, DVIM, DLRE, DLIM, Q, N, M,
                   BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """The adjoint of ``lti_cauchy_fwd``, with ``w = 1/(Z_j − Λ_n)``, ``u = 1/(conj Z_j − Λ_n)``:
    DV[r,q,n] = Σ_j g conj(w) + conj(g u), DL[r,q,n] = conj(V) Σ_j g conj(w²) + conj(g u²);
    grid (R·Q, cdiv(N, BLOCK_N)). The caller sums DL over q."""
    rq = tl.program_id(0).to(tl.int64)
    r = rq // Q
    nb = tl.program_id(1)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    lre, lim = _load_c(LRE + r * N, LIM + r * N, offs_n, mask_n)
    vre, vim = _load_c(VRE + rq * N, VIM + rq * N, offs_n, mask_n)
    a1re, a1im = _zeros_c(BLOCK_N, DVRE.dtype.element_ty)
    a2re, a2im = _zeros_c(BLOCK_N, DVRE.dtype.element_ty)
    for m0 in range(0, M, BLOCK_L):
        offs_m = m0 + tl.arange(0, BLOCK_L)
        mask_m = offs_m < M
        zre, zim = _load_c(ZRE, ZIM, offs_m, mask_m)
        gre, gim = _load_c(GRE + rq * M, GIM + rq * M, offs_m, mask_m)
        ok = mask_n[:, None] & mask_m[None, :]
        dre = zre[None, :] - lre[:, None]               # z − λ and conj(z) − λ share Re
        dim = zim[None, :] - lim[:, None]
        eim = -zim[None, :] - lim[:, None]
        dre2 = dre * dre
        inv_w = 1.0 / tl.where(ok, dre2 + dim * dim, 1.0)
        inv_u = 1.0 / tl.where(ok, dre2 + eim * eim, 1.0)
        wre = tl.where(ok, dre * inv_w, 0.0)            # w = conj(z − λ) / |z − λ|²
        wim = tl.where(ok, -dim * inv_w, 0.0)
        ure = tl.where(ok, dre * inv_u, 0.0)            # u = conj(z̄ − λ) / |z̄ − λ|²
        uim = tl.where(ok, -eim * inv_u, 0.0)
        g_re = gre[None, :]
        g_im = gim[None, :]
        # g conj(w) + conj(g u)
        a1re += tl.sum(g_re * wre + g_im * wim + (g_re * ure - g_im * uim), axis=1)
        a1im += tl.sum(g_im * wre - g_re * wim - (g_re * uim + g_im * ure), axis=1)
        # g conj(w²) + conj(g u²)
        w2re = wre * wre - wim * wim
        w2im = 2.0 * wre * wim
        u2re = ure * ure - uim * uim
        u2im = 2.0 * ure * uim
        a2re += tl.sum(g_re * w2re + g_im * w2im + (g_re * u2re - g_im * u2im), axis=1)
        a2im += tl.sum(g_im * w2re - g_re * w2im - (g_re * u2im + g_im * u2re), axis=1)
    _store_c(DVRE + rq * N, DVIM + rq * N, offs_n, a1re, a1im, mask_n)
    tl.store(DLRE + rq * N + offs_n, vre * a2re + vim * a2im, mask=mask_n)
    tl.store(DLIM + rq * N + offs_n, vre * a2im - vim * a2re, mask=mask_n)


# --------------------------------------------------------------------------- recurrence (decoding)

@triton.jit
def _head_system(LRE, LIM, BRE, BIM, CRE, CIM, FEED, h, N, offs, m):
    """Head h's diagonal system: λ, β, c (re, im) [BLOCK_N] and D'."""
    return (tl.load(LRE + h * N + offs, mask=m, other=0.0), tl.load(LIM + h * N + offs, mask=m, other=0.0),
            tl.load(BRE + h * N + offs, mask=m, other=0.0), tl.load(BIM + h * N + offs, mask=m, other=0.0),
            tl.load(CRE + h * N + offs, mask=m, other=0.0), tl.load(CIM + h * N + offs, mask=m, other=0.0),
            tl.load(FEED + h))


@triton.jit
def _head_low_rank(URE, UIM, VRE, VIM, h, RANK, N, offs, m, RP: tl.constexpr):
    """Head h's low-rank factors U, V (re, im) [RP, BLOCK_N], rows ≥ RANK zero."""
    offs_k = tl.arange(0, RP)
    mk = (offs_k[:, None] < RANK) & m[None, :]
    kn = h * RANK * N + offs_k[:, None] * N + offs[None, :]
    return (tl.load(URE + kn, mask=mk, other=0.0), tl.load(UIM + kn, mask=mk, other=0.0),
            tl.load(VRE + kn, mask=mk, other=0.0), tl.load(VIM + kn, mask=mk, other=0.0))


@triton.jit
def _advance(zre, zim, ut, lre, lim, bre, bim, ure, uim, vre, vim, RP: tl.constexpr):
    """One token of the recurrence: ``λ z + Σ_k U_k · 2 Re(V_k·z) + β u`` (U, V unused when
    RP = 0: no low-rank term)."""
    nre = lre * zre - lim * zim + bre * ut
    nim = lre * zim + lim * zre + bim * ut
    if RP > 0:
        f = 2.0 * tl.sum(vre * zre[None, :] - vim * zim[None, :], axis=1)      # [RP]
        nre += tl.sum(ure * f[:, None], axis=0)
        nim += tl.sum(uim * f[:, None], axis=0)
    return nre, nim


def lti_recurrent_fwd(UIN, LRE, LIM, BRE, BIM, CRE, CIM, FEED, URE, UIM, VRE, VIM, Z0RE, Z0IM,
                      Y, ZTRE, ZTIM, CKRE, CKIM, H, T, N, RANK, CHUNK, NSEG,
                      HAS_Z0: tl.constexpr, WRITE_CK: tl.constexpr, RP: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """Token by token, one program per (sequence b, head h), the whole state in registers:
    ``y_t = 2 Re(c·z) + D' u_t``, ``z ← λ z + Σ_k U_k · 2 Re(V_k·z) + β u_t`` (z = z_{t−1} on the
    right). UIN, Y [B·H, T]; λ, β, c [H, N]; U, V [H, RANK, N] (RP = pow2 ≥ RANK, 0 for r = 0);
    Z0, ZT [B·H, N]. With WRITE_CK (training: the backward ``lti_recurrent_bwd`` recomputes from
    these), the checkpoints ``CK[bh, j] = z before token j·CHUNK``, j < NSEG = ⌈T/CHUNK⌉:
    CK [B·H, NSEG, N]. Grid (B·H,)."""
    bh = tl.program_id(0).to(tl.int64)
    h = bh % H
    offs = tl.arange(0, BLOCK_N)
    m = offs < N
    lre, lim, bre, bim, cre, cim, feed = _head_system(LRE, LIM, BRE, BIM, CRE, CIM, FEED, h, N, offs, m)
    if HAS_Z0:
        zre, zim = _load_c(Z0RE + bh * N, Z0IM + bh * N, offs, m)
    else:
        zre, zim = _zeros_c(BLOCK_N, LRE.dtype.element_ty)
    if RP > 0:
        ure, uim, vre, vim = _head_low_rank(URE, UIM, VRE, VIM, h, RANK, N, offs, m, RP)
    else:                           # placeholders (no low-rank term)
        ure, uim, vre, vim = lre, lim, lre, lim
    for t in range(T):
        if WRITE_CK:
            ck = (bh * NSEG + t // CHUNK) * N + offs
            first = (offs * 0 + t % CHUNK) == 0      # a vector: the interpreter refuses a scalar mask
            _store_c(CKRE, CKIM, ck, zre, zim, m & first)
        ut = tl.load(UIN + bh * T + t)
        y = 2.0 * tl.sum(cre * zre - cim * zim, axis=0) + feed * ut
        tl.store(Y + bh * T + t, y)
        zre, zim = _advance(zre, zim, ut, lre, lim, bre, bim, ure, uim, vre, vim, RP)
    _store_c(ZTRE + bh * N, ZTIM + bh * N, offs, zre, zim, m)


def lti_recurrent_bwd(UIN, GY, GZRE, GZIM, LRE, LIM, BRE, BIM, CRE, CIM, FEED, URE, UIM, VRE, VIM,
                      CKRE, CKIM, WSRE, WSIM,
                      DU, DLRE, DLIM, DBRE, DBIM, DCRE, DCIM, DFEED, DURE, DUIM, DVRE, DVIM,
                      DZRE, DZIM, H, T, N, RANK, CHUNK, NSEG,
                      RP: tl.constexpr, BLOCK_N: tl.constexpr):
    """The adjoint of ``lti_recurrent_fwd``, time reversed, one program per (sequence b, head h).

    With ``s_t`` the state before token t (``s_0 = z0``) and ``p_t = ∂L/∂s_t`` (torch's complex
    convention ``∂L/∂Re + i ∂L/∂Im``), ``p_T = GZ`` (the final state's gradient), g_t = GY[t]:

        f_k = 2 Re(V_k·s_t),  φ_k = Re Σ_n conj(U_kn) p_{t+1,n}
        p_t = conj(λ) p_{t+1} + Σ_k 2 φ_k conj(V_k) + 2 g_t conj(c)
        du_t = Re Σ_n conj(β) p_{t+1} + D' g_t
        dλ += p_{t+1} conj(s_t), dβ += p_{t+1} u_t, dU_k += p_{t+1} f_k, dV_k += 2 φ_k conj(s_t),
        dc += 2 g_t conj(s_t), dD' += g_t u_t;  dz0 = p_0.

    The states are recomputed forward, segment by segment from the last: ``CK[bh, j]`` = s_{j·CHUNK}
    (written by the forward), the segment's states into the scratch ``WS [B·H, CHUNK, N]``, then
    the adjoint runs back through it (Λ is never inverted). Outputs per program (summed over the
    batch by the caller): DU [B·H, T]; dλ, dβ, dc, dz0 [B·H, N]; dU, dV [B·H, RANK, N];
    dD' [B·H]. Grid (B·H,)."""
    bh = tl.program_id(0).to(tl.int64)
    h = bh % H
    offs = tl.arange(0, BLOCK_N)
    m = offs < N
    lre, lim, bre, bim, cre, cim, feed = _head_system(LRE, LIM, BRE, BIM, CRE, CIM, FEED, h, N, offs, m)
    pre, pim = _load_c(GZRE + bh * N, GZIM + bh * N, offs, m)
    dlre, dlim = _zeros_c(BLOCK_N, LRE.dtype.element_ty)
    dbre, dbim = _zeros_c(BLOCK_N, LRE.dtype.element_ty)
    dcre, dcim = _zeros_c(BLOCK_N, LRE.dtype.element_ty)
    dfeed = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)      # g·u in every lane, lane 0 kept
    if RP > 0:
        ure, uim, vre, vim = _head_low_rank(URE, UIM, VRE, VIM, h, RANK, N, offs, m, RP)
        dure = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        duim = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        dvre = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        dvim = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
    else:                           # placeholders (no low-rank term)
        ure, uim, vre, vim = lre, lim, lre, lim
    for jj in range(NSEG):
        start = (NSEG - 1 - jj) * CHUNK
        ln = tl.minimum(T - start, CHUNK)
        ck = (bh * NSEG + NSEG - 1 - jj) * N
        sre, sim = _load_c(CKRE + ck, CKIM + ck, offs, m)
        tl.debug_barrier()          # the previous segment's reads of WS are done
        for i in range(ln):         # recompute s_start … s_{start+ln−1} into WS
            ws = (bh * CHUNK + i) * N
            _store_c(WSRE + ws, WSIM + ws, offs, sre, sim, m)
            ut = tl.load(UIN + bh * T + start + i)
            sre, sim = _advance(sre, sim, ut, lre, lim, bre, bim, ure, uim, vre, vim, RP)
        tl.debug_barrier()          # WS was written by other threads of this program
        for ii in range(ln):        # the adjoint, t = start + ln − 1 … start; p = p_{t+1}
            i = ln - 1 - ii
            t = start + i
            ws = (bh * CHUNK + i) * N
            sre, sim = _load_c(WSRE + ws, WSIM + ws, offs, m)
            ut = tl.load(UIN + bh * T + t)
            g = tl.load(GY + bh * T + t)
            dlre += pre * sre + pim * sim
            dlim += pim * sre - pre * sim
            dbre += pre * ut
            dbim += pim * ut
            dcre += 2.0 * g * sre
            dcim -= 2.0 * g * sim
            dfeed += g * ut
            tl.store(DU + bh * T + t, tl.sum(bre * pre + bim * pim, axis=0) + feed * g)
            npre = lre * pre + lim * pim + 2.0 * g * cre
            npim = lre * pim - lim * pre - 2.0 * g * cim
            if RP > 0:
                f = 2.0 * tl.sum(vre * sre[None, :] - vim * sim[None, :], axis=1)     # [RP]
                phi = tl.sum(ure * pre[None, :] + uim * pim[None, :], axis=1)         # [RP]
                dure += pre[None, :] * f[:, None]
                duim += pim[None, :] * f[:, None]
                dvre += 2.0 * phi[:, None] * sre[None, :]
                dvim -= 2.0 * phi[:, None] * sim[None, :]
                npre += 2.0 * tl.sum(phi[:, None] * vre, axis=0)
                npim -= 2.0 * tl.sum(phi[:, None] * vim, axis=0)
            pre = npre
            pim = npim
    o = bh * N + offs
    _store_c(DLRE, DLIM, o, dlre, dlim, m)
    _store_c(DBRE, DBIM, o, dbre, dbim, m)
    _store_c(DCRE, DCIM, o, dcre, dcim, m)
    _store_c(DZRE, DZIM, o, pre, pim, m)
    tl.store(DFEED + bh + offs, dfeed, mask=offs == 0)
    if RP > 0:
        offs_k = tl.arange(0, RP)
        mk = (offs_k[:, None] < RANK) & m[None, :]
        okn = bh * RANK * N + offs_k[:, None] * N + offs[None, :]
        _store_c(DURE, DUIM, okn, dure, duim, mk)
        _store_c(DVRE, DVIM, okn, dvre, dvim, mk)


VANDERMONDE_FWD = launch.Kernel(lti_vandermonde_fwd)
VANDERMONDE_RED = launch.Kernel(lti_vandermonde_red)
CAUCHY_FWD = launch.Kernel(lti_cauchy_fwd)
CAUCHY_BWD = launch.Kernel(lti_cauchy_bwd)
RECURRENT_FWD = launch.Kernel(lti_recurrent_fwd)
RECURRENT_BWD = launch.Kernel(lti_recurrent_bwd)
KERNELS = (VANDERMONDE_FWD, VANDERMONDE_RED, CAUCHY_FWD, CAUCHY_BWD, RECURRENT_FWD, RECURRENT_BWD)
