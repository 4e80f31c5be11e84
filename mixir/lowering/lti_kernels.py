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
- **Cauchy** (diagonal-plus-low-rank transitions, S4):

      out[r, q, j] = Σ_n v[r, q, n] / (z_j − λ[r, n])

  (holomorphic in v and λ). With torch's convention for complex gradients (``g = ∂L/∂Re +
  i ∂L/∂Im``), ``dv[r, q, n] = Σ_j g_j conj(w_jn)`` and ``dλ[r, n] = Σ_q conj(v_qn) Σ_j g_j
  conj(w_jn²)`` with ``w_jn = 1/(z_j − λ_n)``: the same kind of blocked sum, over j instead of n.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _blocks(N: int, L: int, device) -> tuple:
    """(BLOCK_N, BLOCK_L): small tiles for GPUs (registers), large ones for the interpreter."""
    if launch.targets_gpu(device):
        return min(_pow2(N), 32), 128
    return min(_pow2(N), 64), min(_pow2(max(L, 1)), 1024)


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
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """O[r, q, j] = Σ_n V[r, q, n] / (Z[j] − Λ[r, n]); grid (R·Q, cdiv(M, BLOCK_M))."""
    rq = tl.program_id(0).to(tl.int64)
    r = rq // Q
    mb = tl.program_id(1)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    zre = tl.load(ZRE + offs_m, mask=mask_m, other=0.0)
    zim = tl.load(ZIM + offs_m, mask=mask_m, other=0.0)
    acc_re = tl.zeros([BLOCK_M], dtype=ORE.dtype.element_ty)
    acc_im = tl.zeros([BLOCK_M], dtype=ORE.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        vre = tl.load(VRE + rq * N + offs_n, mask=mask_n, other=0.0)
        vim = tl.load(VIM + rq * N + offs_n, mask=mask_n, other=0.0)
        lre = tl.load(LRE + r * N + offs_n, mask=mask_n, other=0.0)
        lim = tl.load(LIM + r * N + offs_n, mask=mask_n, other=0.0)
        dre = zre[None, :] - lre[:, None]
        dim = zim[None, :] - lim[:, None]
        ok = mask_n[:, None] & mask_m[None, :]
        inv = 1.0 / tl.where(ok, dre * dre + dim * dim, 1.0)
        t_re = (vre[:, None] * dre + vim[:, None] * dim) * inv
        t_im = (vim[:, None] * dre - vre[:, None] * dim) * inv
        acc_re += tl.sum(tl.where(ok, t_re, 0.0), axis=0)
        acc_im += tl.sum(tl.where(ok, t_im, 0.0), axis=0)
    tl.store(ORE + rq * M + offs_m, acc_re, mask=mask_m)
    tl.store(OIM + rq * M + offs_m, acc_im, mask=mask_m)


def lti_cauchy_bwd(GRE, GIM, VRE, VIM, LRE, LIM, ZRE, ZIM, DVRE, DVIM, DLRE, DLIM, Q, N, M,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """DV[r,q,n] = Σ_j G conj(w), DL[r,q,n] = conj(V) Σ_j G conj(w²), w = 1/(Z_j − Λ_n);
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
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        zre = tl.load(ZRE + offs_m, mask=mask_m, other=0.0)
        zim = tl.load(ZIM + offs_m, mask=mask_m, other=0.0)
        gre = tl.load(GRE + rq * M + offs_m, mask=mask_m, other=0.0)
        gim = tl.load(GIM + rq * M + offs_m, mask=mask_m, other=0.0)
        dre = zre[None, :] - lre[:, None]
        dim = zim[None, :] - lim[:, None]
        ok = mask_n[:, None] & mask_m[None, :]
        inv = 1.0 / tl.where(ok, dre * dre + dim * dim, 1.0)
        wre = tl.where(ok, dre * inv, 0.0)          # w = conj(d) / |d|²
        wim = tl.where(ok, -dim * inv, 0.0)
        # g · conj(w)
        a1re += tl.sum(gre[None, :] * wre + gim[None, :] * wim, axis=1)
        a1im += tl.sum(gim[None, :] * wre - gre[None, :] * wim, axis=1)
        # g · conj(w²)
        w2re = wre * wre - wim * wim
        w2im = 2.0 * wre * wim
        a2re += tl.sum(gre[None, :] * w2re + gim[None, :] * w2im, axis=1)
        a2im += tl.sum(gim[None, :] * w2re - gre[None, :] * w2im, axis=1)
    tl.store(DVRE + rq * N + offs_n, a1re, mask=mask_n)
    tl.store(DVIM + rq * N + offs_n, a1im, mask=mask_n)
    tl.store(DLRE + rq * N + offs_n, vre * a2re + vim * a2im, mask=mask_n)
    tl.store(DLIM + rq * N + offs_n, vre * a2im - vim * a2re, mask=mask_n)


VANDERMONDE_FWD = launch.Kernel(lti_vandermonde_fwd)
VANDERMONDE_RED = launch.Kernel(lti_vandermonde_red)
CAUCHY_FWD = launch.Kernel(lti_cauchy_fwd)
CAUCHY_BWD = launch.Kernel(lti_cauchy_bwd)
KERNELS = (VANDERMONDE_FWD, VANDERMONDE_RED, CAUCHY_FWD, CAUCHY_BWD)


def _c(x, dtype):
    return x.detach().to(dtype).contiguous()


def _real_dtype(*xs):
    return torch.float64 if any(x.dtype in (torch.float64, torch.complex128) for x in xs) else torch.float32


# --------------------------------------------------------------------------- raw launches

def vandermonde_fwd_raw(rho, theta, v_re, v_im, L: int):
    R, N = rho.shape
    dt = _real_dtype(rho, v_re)
    out = torch.empty((R, L), dtype=dt, device=rho.device)
    if R == 0 or L == 0:
        return out.zero_()
    BN, BL = _blocks(N, L, rho.device)
    VANDERMONDE_FWD[(R, triton.cdiv(L, BL))](_c(rho, dt), _c(theta, dt), _c(v_re, dt), _c(v_im, dt),
                                           out, N, L, BLOCK_N=BN, BLOCK_L=BL)
    return out


def vandermonde_red_raw(rho, theta, w, with_p: bool):
    R, N = rho.shape
    L = w.shape[-1]
    dt = _real_dtype(rho, w)
    outs = [torch.empty((R, N), dtype=dt, device=rho.device) for _ in range(4 if with_p else 2)]
    if L == 0 or R == 0:
        return [o.zero_() for o in outs]
    BN, BL = _blocks(N, L, rho.device)
    pre, pim = (outs[2], outs[3]) if with_p else (outs[0], outs[1])
    VANDERMONDE_RED[(R, triton.cdiv(N, BN))](_c(rho, dt), _c(theta, dt), _c(w, dt), outs[0], outs[1],
                                           pre, pim, N, L, WITH_P=with_p, BLOCK_N=BN, BLOCK_L=BL)
    return outs


def cauchy_fwd_raw(v, lam, z):
    """v [R, Q, N] complex, lam [R, N] complex, z [M] complex -> [R, Q, M] complex."""
    R, Q, N = v.shape
    M = z.shape[0]
    dt = _real_dtype(v, lam)
    o_re = torch.empty((R, Q, M), dtype=dt, device=v.device)
    o_im = torch.empty((R, Q, M), dtype=dt, device=v.device)
    if R * Q and M:
        BN, BM = _blocks(N, M, v.device)
        CAUCHY_FWD[(R * Q, triton.cdiv(M, BM))](
            _c(v.real, dt), _c(v.imag, dt), _c(lam.real, dt), _c(lam.imag, dt), _c(z.real, dt),
            _c(z.imag, dt), o_re, o_im, Q, N, M, BLOCK_N=BN, BLOCK_M=BM)
    return torch.complex(o_re, o_im)


def cauchy_bwd_raw(g, v, lam, z):
    R, Q, N = v.shape
    M = z.shape[0]
    dt = _real_dtype(v, lam)
    outs = [torch.empty((R, Q, N), dtype=dt, device=v.device) for _ in range(4)]
    if R * Q and N:
        BN, BM = _blocks(N, M, v.device)
        CAUCHY_BWD[(R * Q, triton.cdiv(N, BN))](
            _c(g.real, dt), _c(g.imag, dt), _c(v.real, dt), _c(v.imag, dt), _c(lam.real, dt),
            _c(lam.imag, dt), _c(z.real, dt), _c(z.imag, dt), *outs, Q, N, M, BLOCK_N=BN, BLOCK_M=BM)
    dv = torch.complex(outs[0], outs[1])
    dlam = torch.complex(outs[2], outs[3]).sum(1)
    return dv, dlam


# --------------------------------------------------------------------------- autograd

class _Vandermonde(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rho, theta, v_re, v_im, L):
        ctx.save_for_backward(rho, theta, v_re, v_im)
        return vandermonde_fwd_raw(rho, theta, v_re, v_im, L)

    @staticmethod
    def backward(ctx, G):
        rho, theta, v_re, v_im = ctx.saved_tensors
        need_lam = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        outs = vandermonde_red_raw(rho, theta, G, with_p=need_lam)
        s_re, s_im = outs[0], outs[1]
        d_rho = d_theta = None
        if need_lam:
            p_re, p_im = outs[2], outs[3]
            vp_re = v_re * p_re - v_im * p_im
            vp_im = v_re * p_im + v_im * p_re
            d_rho, d_theta = vp_re.to(rho.dtype), (-vp_im).to(theta.dtype)
        return d_rho, d_theta, s_re.to(v_re.dtype), (-s_im).to(v_im.dtype), None


class _VandermondeReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rho, theta, w):
        ctx.save_for_backward(rho, theta, w)
        s_re, s_im = vandermonde_red_raw(rho, theta, w, with_p=False)
        return s_re, s_im

    @staticmethod
    def backward(ctx, g_re, g_im):
        rho, theta, w = ctx.saved_tensors
        g_re = torch.zeros_like(rho) if g_re is None else g_re
        g_im = torch.zeros_like(rho) if g_im is None else g_im
        # v = g_re − i g_im: dW = Re Σ_n v λ^l; dρ = Re(v P), dθ = −Im(v P), P = Σ_l l w_l λ^l
        dw = vandermonde_fwd_raw(rho, theta, g_re, -g_im, w.shape[-1]).to(w.dtype)
        _, _, p_re, p_im = vandermonde_red_raw(rho, theta, w, with_p=True)
        vp_re = g_re * p_re + g_im * p_im
        vp_im = g_re * p_im - g_im * p_re
        return vp_re.to(rho.dtype), (-vp_im).to(theta.dtype), dw


class _Cauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, lam, z):
        ctx.save_for_backward(v, lam, z)
        return cauchy_fwd_raw(v, lam, z).to(v.dtype)

    @staticmethod
    def backward(ctx, g):
        v, lam, z = ctx.saved_tensors
        dv, dlam = cauchy_bwd_raw(g, v, lam, z)
        return dv.to(v.dtype), dlam.to(lam.dtype), None


def vandermonde(rho, theta, v_re, v_im, L: int):
    """``K[r, l] = Re Σ_n (v_re + i v_im) exp((ρ + iθ) l)``, l < L, differentiable: [R, L]."""
    return _Vandermonde.apply(rho, theta, v_re, v_im, int(L))


def vandermonde_reduce(rho, theta, w):
    """``S[r, n] = Σ_l w[r, l] exp((ρ + iθ) l)`` as (re, im), differentiable: 2 × [R, N]."""
    return _VandermondeReduce.apply(rho, theta, w)


def cauchy(v, lam, z):
    """``out[r, q, j] = Σ_n v[r, q, n] / (z_j − λ[r, n])`` (complex, differentiable in v, λ)."""
    return _Cauchy.apply(v, lam, z)
