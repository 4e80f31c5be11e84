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
space (``mixir.autotune.lti_space``) on GPUs, fixed large tiles in the interpreter.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import launch


KEYS = ("BN", "BL", "num_warps", "num_stages")


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cpu_config(N: int, L: int) -> dict:
    """The interpreter's fixed tiles (CPU tensors, no recording): few large NumPy blocks; warps and
    stages mean nothing there."""
    return {"BN": min(_pow2(N), 64), "BL": min(_pow2(max(L, 1)), 1024), "num_warps": 4,
            "num_stages": 1}


def launch_config(kind: str, R: int, Q: int, N: int, L: int, dtype, device, config=None) -> dict:
    """``{"BN", "BL", "num_warps", "num_stages"}`` of one launch of the ``kind`` ("vandermonde" |
    "cauchy") kernels on R rows (× Q vectors), N modes, length L. The first rule that applies:
    ``config`` with all four keys; CPU tensors outside a recording: ``cpu_config``; GPU launches
    (CUDA tensors, and CPU launches recorded for the AOT builder): the tuning database / the
    cost model of the LTI tuning space (``mixir.autotune.lti_space.gpu_config``) — the keys given
    in ``config`` override the chosen ones."""
    user = {k: int(v) for k, v in (config or {}).items() if k in KEYS}
    if len(user) == len(KEYS):
        return user
    if not launch.targets_gpu(device):
        return {**cpu_config(N, L), **user}
    from ..autotune import lti_space
    idx = -1
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
    dt = "fp64" if dtype == torch.float64 else "fp32"
    cfg = lti_space.gpu_config(int(idx), kind, dt, int(R), int(Q), int(N), int(L))
    return {**cfg, **user}


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
        rho = tl.load(RHO + r * N + offs_n, mask=mask_n, other=0.0)
        theta = tl.load(THETA + r * N + offs_n, mask=mask_n, other=0.0)
        vre = tl.load(VRE + r * N + offs_n, mask=mask_n, other=0.0)
        vim = tl.load(VIM + r * N + offs_n, mask=mask_n, other=0.0)
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
    rho = tl.load(RHO + r * N + offs_n, mask=mask_n, other=0.0)
    theta = tl.load(THETA + r * N + offs_n, mask=mask_n, other=0.0)
    s_re = tl.zeros([BLOCK_N], dtype=SRE.dtype.element_ty)
    s_im = tl.zeros([BLOCK_N], dtype=SRE.dtype.element_ty)
    p_re = tl.zeros([BLOCK_N], dtype=SRE.dtype.element_ty)
    p_im = tl.zeros([BLOCK_N], dtype=SRE.dtype.element_ty)
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
    tl.store(SRE + r * N + offs_n, s_re, mask=mask_n)
    tl.store(SIM + r * N + offs_n, s_im, mask=mask_n)
    if WITH_P:
        tl.store(PRE + r * N + offs_n, p_re, mask=mask_n)
        tl.store(PIM + r * N + offs_n, p_im, mask=mask_n)


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
    zre = tl.load(ZRE + offs_m, mask=mask_m, other=0.0)
    zim = tl.load(ZIM + offs_m, mask=mask_m, other=0.0)
    zim2 = 2.0 * zim
    acc_re = tl.zeros([BLOCK_L], dtype=ORE.dtype.element_ty)
    acc_im = tl.zeros([BLOCK_L], dtype=ORE.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        vre = tl.load(VRE + rq * N + offs_n, mask=mask_n, other=0.0)
        vim = tl.load(VIM + rq * N + offs_n, mask=mask_n, other=0.0)
        lre = tl.load(LRE + r * N + offs_n, mask=mask_n, other=0.0)
        lim = tl.load(LIM + r * N + offs_n, mask=mask_n, other=0.0)
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
    tl.store(ORE + rq * M + offs_m, acc_re, mask=mask_m)
    tl.store(OIM + rq * M + offs_m, acc_im, mask=mask_m)


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
    lre = tl.load(LRE + r * N + offs_n, mask=mask_n, other=0.0)
    lim = tl.load(LIM + r * N + offs_n, mask=mask_n, other=0.0)
    vre = tl.load(VRE + rq * N + offs_n, mask=mask_n, other=0.0)
    vim = tl.load(VIM + rq * N + offs_n, mask=mask_n, other=0.0)
    a1re = tl.zeros([BLOCK_N], dtype=DVRE.dtype.element_ty)
    a1im = tl.zeros([BLOCK_N], dtype=DVRE.dtype.element_ty)
    a2re = tl.zeros([BLOCK_N], dtype=DVRE.dtype.element_ty)
    a2im = tl.zeros([BLOCK_N], dtype=DVRE.dtype.element_ty)
    for m0 in range(0, M, BLOCK_L):
        offs_m = m0 + tl.arange(0, BLOCK_L)
        mask_m = offs_m < M
        zre = tl.load(ZRE + offs_m, mask=mask_m, other=0.0)
        zim = tl.load(ZIM + offs_m, mask=mask_m, other=0.0)
        gre = tl.load(GRE + rq * M + offs_m, mask=mask_m, other=0.0)
        gim = tl.load(GIM + rq * M + offs_m, mask=mask_m, other=0.0)
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
    tl.store(DVRE + rq * N + offs_n, a1re, mask=mask_n)
    tl.store(DVIM + rq * N + offs_n, a1im, mask=mask_n)
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
        zre = tl.load(Z0RE + bh * N + offs, mask=m, other=0.0)
        zim = tl.load(Z0IM + bh * N + offs, mask=m, other=0.0)
    else:
        zre = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
        zim = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    if RP > 0:
        ure, uim, vre, vim = _head_low_rank(URE, UIM, VRE, VIM, h, RANK, N, offs, m, RP)
    for t in range(T):
        if WRITE_CK:
            ck = (bh * NSEG + t // CHUNK) * N + offs
            first = (offs * 0 + t % CHUNK) == 0      # a vector: the interpreter refuses a scalar mask
            tl.store(CKRE + ck, zre, mask=m & first)
            tl.store(CKIM + ck, zim, mask=m & first)
        ut = tl.load(UIN + bh * T + t)
        y = 2.0 * tl.sum(cre * zre - cim * zim, axis=0) + feed * ut
        tl.store(Y + bh * T + t, y)
        nre = lre * zre - lim * zim + bre * ut
        nim = lre * zim + lim * zre + bim * ut
        if RP > 0:
            f = 2.0 * tl.sum(vre * zre[None, :] - vim * zim[None, :], axis=1)      # [RP]
            nre += tl.sum(ure * f[:, None], axis=0)
            nim += tl.sum(uim * f[:, None], axis=0)
        zre = nre
        zim = nim
    tl.store(ZTRE + bh * N + offs, zre, mask=m)
    tl.store(ZTIM + bh * N + offs, zim, mask=m)


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
    pre = tl.load(GZRE + bh * N + offs, mask=m, other=0.0)
    pim = tl.load(GZIM + bh * N + offs, mask=m, other=0.0)
    dlre = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dlim = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dbre = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dbim = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dcre = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dcim = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)
    dfeed = tl.zeros([BLOCK_N], dtype=LRE.dtype.element_ty)      # g·u in every lane, lane 0 kept
    if RP > 0:
        ure, uim, vre, vim = _head_low_rank(URE, UIM, VRE, VIM, h, RANK, N, offs, m, RP)
        dure = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        duim = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        dvre = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
        dvim = tl.zeros([RP, BLOCK_N], dtype=LRE.dtype.element_ty)
    for jj in range(NSEG):
        start = (NSEG - 1 - jj) * CHUNK
        ln = tl.minimum(T - start, CHUNK)
        sre = tl.load(CKRE + (bh * NSEG + NSEG - 1 - jj) * N + offs, mask=m, other=0.0)
        sim = tl.load(CKIM + (bh * NSEG + NSEG - 1 - jj) * N + offs, mask=m, other=0.0)
        tl.debug_barrier()          # the previous segment's reads of WS are done
        for i in range(ln):         # recompute s_start … s_{start+ln−1} into WS
            tl.store(WSRE + (bh * CHUNK + i) * N + offs, sre, mask=m)
            tl.store(WSIM + (bh * CHUNK + i) * N + offs, sim, mask=m)
            ut = tl.load(UIN + bh * T + start + i)
            nre = lre * sre - lim * sim + bre * ut
            nim = lre * sim + lim * sre + bim * ut
            if RP > 0:
                f = 2.0 * tl.sum(vre * sre[None, :] - vim * sim[None, :], axis=1)
                nre += tl.sum(ure * f[:, None], axis=0)
                nim += tl.sum(uim * f[:, None], axis=0)
            sre = nre
            sim = nim
        tl.debug_barrier()          # WS was written by other threads of this program
        for ii in range(ln):        # the adjoint, t = start + ln − 1 … start; p = p_{t+1}
            i = ln - 1 - ii
            t = start + i
            sre = tl.load(WSRE + (bh * CHUNK + i) * N + offs, mask=m, other=0.0)
            sim = tl.load(WSIM + (bh * CHUNK + i) * N + offs, mask=m, other=0.0)
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
    tl.store(DLRE + o, dlre, mask=m)
    tl.store(DLIM + o, dlim, mask=m)
    tl.store(DBRE + o, dbre, mask=m)
    tl.store(DBIM + o, dbim, mask=m)
    tl.store(DCRE + o, dcre, mask=m)
    tl.store(DCIM + o, dcim, mask=m)
    tl.store(DZRE + o, pre, mask=m)
    tl.store(DZIM + o, pim, mask=m)
    tl.store(DFEED + bh + offs, dfeed, mask=offs == 0)
    if RP > 0:
        offs_k = tl.arange(0, RP)
        mk = (offs_k[:, None] < RANK) & m[None, :]
        okn = bh * RANK * N + offs_k[:, None] * N + offs[None, :]
        tl.store(DURE + okn, dure, mask=mk)
        tl.store(DUIM + okn, duim, mask=mk)
        tl.store(DVRE + okn, dvre, mask=mk)
        tl.store(DVIM + okn, dvim, mask=mk)


VANDERMONDE_FWD = launch.Kernel(lti_vandermonde_fwd)
VANDERMONDE_RED = launch.Kernel(lti_vandermonde_red)
CAUCHY_FWD = launch.Kernel(lti_cauchy_fwd)
CAUCHY_BWD = launch.Kernel(lti_cauchy_bwd)
RECURRENT_FWD = launch.Kernel(lti_recurrent_fwd)
RECURRENT_BWD = launch.Kernel(lti_recurrent_bwd)
KERNELS = (VANDERMONDE_FWD, VANDERMONDE_RED, CAUCHY_FWD, CAUCHY_BWD, RECURRENT_FWD, RECURRENT_BWD)


def _c(x, dtype):
    return x.detach().to(dtype).contiguous()


def _real_dtype(*xs):
    return torch.float64 if any(x.dtype in (torch.float64, torch.complex128) for x in xs) else torch.float32


# --------------------------------------------------------------------------- raw launches

def _opts(cfg):
    return {"BLOCK_N": cfg["BN"], "BLOCK_L": cfg["BL"], "num_warps": cfg["num_warps"],
            "num_stages": cfg["num_stages"]}


def vandermonde_fwd_raw(rho, theta, v_re, v_im, L: int, config=None):
    R, N = rho.shape
    dt = _real_dtype(rho, v_re)
    out = torch.empty((R, L), dtype=dt, device=rho.device)
    if R == 0 or L == 0:
        return out.zero_()
    cfg = launch_config("vandermonde", R, 1, N, L, dt, rho.device, config)
    VANDERMONDE_FWD[(R, triton.cdiv(L, cfg["BL"]))](_c(rho, dt), _c(theta, dt), _c(v_re, dt),
                                                  _c(v_im, dt), out, N, L, **_opts(cfg))
    return out


def vandermonde_red_raw(rho, theta, w, with_p: bool, config=None):
    R, N = rho.shape
    L = w.shape[-1]
    dt = _real_dtype(rho, w)
    outs = [torch.empty((R, N), dtype=dt, device=rho.device) for _ in range(4 if with_p else 2)]
    if L == 0 or R == 0:
        return [o.zero_() for o in outs]
    cfg = launch_config("vandermonde", R, 1, N, L, dt, rho.device, config)
    pre, pim = (outs[2], outs[3]) if with_p else (outs[0], outs[1])
    VANDERMONDE_RED[(R, triton.cdiv(N, cfg["BN"]))](_c(rho, dt), _c(theta, dt), _c(w, dt), outs[0],
                                                  outs[1], pre, pim, N, L, WITH_P=with_p, **_opts(cfg))
    return outs


def cauchy_fwd_pairs(v_re, v_im, l_re, l_im, z_re, z_im, config=None):
    """``cauchy_fwd_raw`` on (re, im) pairs: v [R, Q, N], λ [R, N], z [M] → (o_re, o_im) [R, Q, M]."""
    R, Q, N = v_re.shape
    M = z_re.shape[0]
    dt = _real_dtype(v_re, l_re)
    o_re = torch.zeros((R, Q, M), dtype=dt, device=v_re.device)
    o_im = torch.zeros((R, Q, M), dtype=dt, device=v_re.device)
    if R * Q and M:
        cfg = launch_config("cauchy", R, Q, N, M, dt, v_re.device, config)
        CAUCHY_FWD[(R * Q, triton.cdiv(M, cfg["BL"]))](
            _c(v_re, dt), _c(v_im, dt), _c(l_re, dt), _c(l_im, dt), _c(z_re, dt), _c(z_im, dt),
            o_re, o_im, Q, N, M, **_opts(cfg))
    return o_re, o_im


def cauchy_fwd_raw(v, lam, z, config=None):
    """v [R, Q, N] complex, lam [R, N] complex, z [M] complex -> [R, Q, M] complex:
    ``Σ_n v/(z − λ) + conj(v)/(z − conj λ)`` (the conjugate-symmetric system of 2N poles)."""
    return torch.complex(*cauchy_fwd_pairs(v.real, v.imag, lam.real, lam.imag, z.real, z.imag, config))


def cauchy_bwd_pairs(g_re, g_im, v_re, v_im, l_re, l_im, z_re, z_im, config=None):
    """The adjoint of ``cauchy_fwd_pairs``: (dv_re, dv_im) [R, Q, N], (dλ_re, dλ_im) [R, N]."""
    R, Q, N = v_re.shape
    M = z_re.shape[0]
    dt = _real_dtype(v_re, l_re)
    outs = [torch.zeros((R, Q, N), dtype=dt, device=v_re.device) for _ in range(4)]
    if R * Q and N and M:
        cfg = launch_config("cauchy", R, Q, N, M, dt, v_re.device, config)
        CAUCHY_BWD[(R * Q, triton.cdiv(N, cfg["BN"]))](
            _c(g_re, dt), _c(g_im, dt), _c(v_re, dt), _c(v_im, dt), _c(l_re, dt), _c(l_im, dt),
            _c(z_re, dt), _c(z_im, dt), *outs, Q, N, M, **_opts(cfg))
    return outs[0], outs[1], outs[2].sum(1), outs[3].sum(1)


def cauchy_bwd_raw(g, v, lam, z, config=None):
    dv_re, dv_im, dl_re, dl_im = cauchy_bwd_pairs(g.real, g.imag, v.real, v.imag, lam.real, lam.imag,
                                                  z.real, z.imag, config)
    return torch.complex(dv_re, dv_im), torch.complex(dl_re, dl_im)


def recurrent_chunk(T: int) -> int:
    """The checkpoint interval of the training recurrence: ⌈√T⌉, which minimises the checkpoints
    (⌈T/C⌉ states) plus the backward's scratch (C states) per (sequence, channel)."""
    return max(1, math.isqrt(max(int(T), 1) - 1) + 1)


def _recurrent_launch_opts(N: int, r: int) -> dict:
    BN = _pow2(N)
    return {"RP": _pow2(r) if r else 0, "BLOCK_N": BN,
            "num_warps": 1 if BN * max(1, _pow2(r)) <= 256 else 4, "num_stages": 1}


def recurrent_fwd_pairs(u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im,
                        z0_re=None, z0_im=None, chunk: int = 0):
    """``recurrent_fwd_raw`` on (re, im) pairs → (y [B, H, T], z_T re, z_T im [B, H, N]); with
    ``chunk`` > 0 also the checkpoints (ck re, ck im) [B, H, ⌈T/chunk⌉, N], ck[:, :, j] = the state
    before token j·chunk (for ``recurrent_bwd_pairs``)."""
    B, H, T = u.shape
    N = l_re.shape[-1]
    r = u_re.shape[1]
    dt = _real_dtype(l_re)
    dev = u.device
    y = torch.empty((B, H, T), dtype=dt, device=dev)
    zt_re = torch.empty((B, H, N), dtype=dt, device=dev)
    zt_im = torch.empty((B, H, N), dtype=dt, device=dev)
    nseg = -(-T // chunk) if chunk > 0 else 0
    ck = [torch.zeros((B, H, nseg, N), dtype=dt, device=dev) for _ in range(2)]
    outs = (y, zt_re, zt_im) + ((ck[0], ck[1]) if chunk > 0 else ())
    if B * H == 0:
        return outs
    has_z0 = z0_re is not None
    z0re, z0im = (_c(z0_re, dt), _c(z0_im, dt)) if has_z0 else (zt_re, zt_im)
    ckre, ckim = (ck[0], ck[1]) if chunk > 0 else (zt_re, zt_im)
    RECURRENT_FWD[(B * H,)](_c(u, dt), _c(l_re, dt), _c(l_im, dt), _c(b_re, dt), _c(b_im, dt),
                            _c(c_re, dt), _c(c_im, dt), _c(feed, dt), _c(u_re, dt), _c(u_im, dt),
                            _c(v_re, dt), _c(v_im, dt), z0re, z0im, y, zt_re, zt_im, ckre, ckim,
                            H, T, N, r, max(chunk, 1), max(nseg, 1),
                            HAS_Z0=has_z0, WRITE_CK=chunk > 0, **_recurrent_launch_opts(N, r))
    return outs


def recurrent_bwd_pairs(gy, gz_re, gz_im, u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im,
                        v_re, v_im, ck_re, ck_im, chunk: int):
    """The adjoint of the recurrence (``lti_recurrent_bwd``): gy [B, H, T], gz [B, H, N] (the final
    state's gradient), ck from ``recurrent_fwd_pairs(…, chunk)`` → du [B, H, T], (dλ, dβ, dc) re/im
    [H, N], dD' [H], (dU, dV) re/im [H, r, N], dz0 re/im [B, H, N] (batch sums in torch)."""
    B, H, T = u.shape
    N = l_re.shape[-1]
    r = u_re.shape[1]
    dt = _real_dtype(l_re)
    dev = u.device
    nseg = ck_re.shape[2]
    du = torch.zeros((B, H, T), dtype=dt, device=dev)
    vec = [torch.zeros((B, H, N), dtype=dt, device=dev) for _ in range(8)]   # dλ, dβ, dc, dz0
    dfeed = torch.zeros((B, H), dtype=dt, device=dev)
    low = [torch.zeros((B, H, r, N), dtype=dt, device=dev) for _ in range(4)]
    if B * H and T:
        ws = [torch.empty((B, H, chunk, N), dtype=dt, device=dev) for _ in range(2)]
        RECURRENT_BWD[(B * H,)](
            _c(u, dt), _c(gy, dt), _c(gz_re, dt), _c(gz_im, dt), _c(l_re, dt), _c(l_im, dt),
            _c(b_re, dt), _c(b_im, dt), _c(c_re, dt), _c(c_im, dt), _c(feed, dt), _c(u_re, dt),
            _c(u_im, dt), _c(v_re, dt), _c(v_im, dt), _c(ck_re, dt), _c(ck_im, dt), ws[0], ws[1],
            du, *vec[:6], dfeed, *low, vec[6], vec[7], H, T, N, r, chunk, nseg,
            **_recurrent_launch_opts(N, r))
    elif B * H:                     # T = 0: the final state is the initial state
        vec[6].copy_(gz_re)
        vec[7].copy_(gz_im)
    sums = [x.sum(0) for x in vec[:6]]
    return (du, *sums, dfeed.sum(0), *(x.sum(0) for x in low), vec[6], vec[7])


def recurrent_fwd_raw(u, lam, beta, c, feed, U, V, z0):
    """The recurrence (no autograd: decoding / inference). u [B, H, T] real; λ, β, c [H, N]
    complex; D' [H]; U, V [H, r, N] complex; z0 [B, H, N] complex or None →
    (y [B, H, T], z_T [B, H, N] complex), computed in the dtype of λ's real part."""
    y, zt_re, zt_im = recurrent_fwd_pairs(
        u, lam.real, lam.imag, beta.real, beta.imag, c.real, c.imag, feed, U.real, U.imag, V.real,
        V.imag, None if z0 is None else z0.real, None if z0 is None else z0.imag)
    return y, torch.complex(zt_re, zt_im)


# --------------------------------------------------------------------------- autograd

# The differentiable entry points are torch custom ops (``mixir::lti_*``, lti_ops.py), so that the
# compiled mixers trace under ``torch.compile``; lti_ops imports this module's launches above.
from .lti_ops import cauchy, recurrent, recurrent_train, vandermonde, vandermonde_reduce  # noqa: E402,F401
