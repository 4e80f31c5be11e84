"""Raw launches of the LTI family's Triton kernels (``kernels.py``): torch tensors in, torch tensors
out, no autograd. The differentiable entry points are the custom ops in ``ops.py``, which call
these; tiles come from ``kernels.launch_config``."""
from __future__ import annotations

import math

import torch
import triton

from ...tiles import pow2
from .kernels import (CAUCHY_BWD, CAUCHY_FWD, RECURRENT_BWD, RECURRENT_FWD, VANDERMONDE_FWD,
                      VANDERMONDE_RED, launch_config)

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
    BN = pow2(N)
    return {"RP": pow2(r) if r else 0, "BLOCK_N": BN,
            "num_warps": 1 if BN * max(1, pow2(r)) <= 256 else 4, "num_stages": 1}


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
