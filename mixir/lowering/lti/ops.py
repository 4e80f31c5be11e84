"""The LTI family's Triton kernels as torch custom ops (``mixir::lti_*``), so that compiled LTI
mixers trace under ``torch.compile(fullgraph=True)``: Dynamo sees one opaque op per kernel launch,
with a fake (shape/dtype) function, and the backward kernels are registered as the ops' autograd.

Complex numbers cross the op boundary as (re, im) pairs of real tensors (the kernels' own
convention): the wrappers at the bottom (``vandermonde``, ``vandermonde_reduce``, ``cauchy``,
``recurrent``) take and give the complex tensors of the runtime, with torch's convention for complex
gradients (``g = ∂L/∂Re + i ∂L/∂Im``), which on a pair is just the pair of real gradients.

- ``lti_vandermonde``      K[r, l] = Re Σ_n v λ^l, λ = exp(ρ + iθ)          backward: ``lti_vandermonde_red``
- ``lti_vandermonde_red``  S = Σ_l w λ^l (and P = Σ_l l w λ^l)              backward: both again
- ``lti_cauchy``           Σ_n v/(z − λ) + conj(v)/(z − conj λ)              backward: ``lti_cauchy_bwd``
- ``lti_recurrent``        the token-by-token recurrence, no autograd (decoding, inference)
- ``lti_recurrent_train``  the same, writing state checkpoints every ``chunk`` tokens
                           backward: ``lti_recurrent_bwd`` (the adjoint recurrence)

Tiles travel as a config string (``common.launch.encode_config``; "" for the default rule).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..common.launch import decode_config, encode_config
from . import launches


def _cfg(config: str):
    return decode_config(config) or None


def _rdt(*xs):
    return launches._real_dtype(*xs)


# --------------------------------------------------------------------------- Vandermonde

@torch.library.custom_op("mixir::lti_vandermonde", mutates_args=())
def lti_vandermonde(rho: torch.Tensor, theta: torch.Tensor, v_re: torch.Tensor, v_im: torch.Tensor,
                    L: int, config: str) -> torch.Tensor:
    return launches.vandermonde_fwd_raw(rho, theta, v_re, v_im, L, _cfg(config))


@lti_vandermonde.register_fake
def _(rho, theta, v_re, v_im, L, config):
    return rho.new_empty((rho.shape[0], L), dtype=_rdt(rho, v_re))


@torch.library.custom_op("mixir::lti_vandermonde_red", mutates_args=())
def lti_vandermonde_red(rho: torch.Tensor, theta: torch.Tensor, w: torch.Tensor, with_p: bool,
                        config: str) -> list[torch.Tensor]:
    return list(launches.vandermonde_red_raw(rho, theta, w, with_p, _cfg(config)))


@lti_vandermonde_red.register_fake
def _(rho, theta, w, with_p, config):
    dt = _rdt(rho, w)
    return [rho.new_empty(rho.shape, dtype=dt) for _ in range(4 if with_p else 2)]


def _vandermonde_setup(ctx, inputs, output):
    rho, theta, v_re, v_im, L, config = inputs
    ctx.save_for_backward(rho, theta, v_re, v_im)
    ctx.config = config


def _vandermonde_backward(ctx, G):
    """dv_re = Re S, dv_im = −Im S, dρ = Re(vP), dθ = −Im(vP) with S, P the reductions of G."""
    rho, theta, v_re, v_im = ctx.saved_tensors
    need_lam = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
    outs = torch.ops.mixir.lti_vandermonde_red(rho, theta, G.contiguous(), need_lam, ctx.config)
    s_re, s_im = outs[0], outs[1]
    d_rho = d_theta = None
    if need_lam:
        p_re, p_im = outs[2], outs[3]
        vp_re = v_re * p_re - v_im * p_im
        vp_im = v_re * p_im + v_im * p_re
        d_rho, d_theta = vp_re.to(rho.dtype), (-vp_im).to(theta.dtype)
    return d_rho, d_theta, s_re.to(v_re.dtype), (-s_im).to(v_im.dtype), None, None


lti_vandermonde.register_autograd(_vandermonde_backward, setup_context=_vandermonde_setup)


@torch.library.custom_op("mixir::lti_vandermonde_reduce", mutates_args=())
def lti_vandermonde_reduce(rho: torch.Tensor, theta: torch.Tensor, w: torch.Tensor,
                           config: str) -> tuple[torch.Tensor, torch.Tensor]:
    s_re, s_im = launches.vandermonde_red_raw(rho, theta, w, False, _cfg(config))
    return s_re, s_im


@lti_vandermonde_reduce.register_fake
def _(rho, theta, w, config):
    dt = _rdt(rho, w)
    return rho.new_empty(rho.shape, dtype=dt), rho.new_empty(rho.shape, dtype=dt)


def _reduce_setup(ctx, inputs, output):
    rho, theta, w, config = inputs
    ctx.save_for_backward(rho, theta, w)
    ctx.config = config


def _reduce_backward(ctx, g_re, g_im):
    """With v = g_re − i g_im: dw = Re Σ_n v λ^l; dρ = Re(v P), dθ = −Im(v P), P = Σ_l l w_l λ^l."""
    rho, theta, w = ctx.saved_tensors
    g_re = torch.zeros_like(rho) if g_re is None else g_re
    g_im = torch.zeros_like(rho) if g_im is None else g_im
    dw = torch.ops.mixir.lti_vandermonde(rho, theta, g_re.contiguous(), (-g_im).contiguous(),
                                         w.shape[-1], ctx.config).to(w.dtype)
    _, _, p_re, p_im = torch.ops.mixir.lti_vandermonde_red(rho, theta, w, True, ctx.config)
    vp_re = g_re * p_re + g_im * p_im
    vp_im = g_re * p_im - g_im * p_re
    return vp_re.to(rho.dtype), (-vp_im).to(theta.dtype), dw, None


lti_vandermonde_reduce.register_autograd(_reduce_backward, setup_context=_reduce_setup)


# --------------------------------------------------------------------------- Cauchy

@torch.library.custom_op("mixir::lti_cauchy", mutates_args=())
def lti_cauchy(v_re: torch.Tensor, v_im: torch.Tensor, l_re: torch.Tensor, l_im: torch.Tensor,
               z_re: torch.Tensor, z_im: torch.Tensor, config: str) -> tuple[torch.Tensor, torch.Tensor]:
    return launches.cauchy_fwd_pairs(v_re, v_im, l_re, l_im, z_re, z_im, _cfg(config))


@lti_cauchy.register_fake
def _(v_re, v_im, l_re, l_im, z_re, z_im, config):
    R, Q, _ = v_re.shape
    shape = (R, Q, z_re.shape[0])
    dt = _rdt(v_re, l_re)
    return v_re.new_empty(shape, dtype=dt), v_re.new_empty(shape, dtype=dt)


@torch.library.custom_op("mixir::lti_cauchy_bwd", mutates_args=())
def lti_cauchy_bwd(g_re: torch.Tensor, g_im: torch.Tensor, v_re: torch.Tensor, v_im: torch.Tensor,
                   l_re: torch.Tensor, l_im: torch.Tensor, z_re: torch.Tensor, z_im: torch.Tensor,
                   config: str) -> list[torch.Tensor]:
    return list(launches.cauchy_bwd_pairs(g_re, g_im, v_re, v_im, l_re, l_im, z_re, z_im,
                                             _cfg(config)))


@lti_cauchy_bwd.register_fake
def _(g_re, g_im, v_re, v_im, l_re, l_im, z_re, z_im, config):
    dt = _rdt(v_re, l_re)
    return ([v_re.new_empty(v_re.shape, dtype=dt) for _ in range(2)]
            + [l_re.new_empty(l_re.shape, dtype=dt) for _ in range(2)])


def _cauchy_setup(ctx, inputs, output):
    *tensors, config = inputs
    ctx.save_for_backward(*tensors)
    ctx.config = config


def _cauchy_backward(ctx, g_re, g_im):
    v_re, v_im, l_re, l_im, z_re, z_im = ctx.saved_tensors
    g_re = torch.zeros_like(v_re[..., :1].expand(v_re.shape[:2] + z_re.shape)) if g_re is None else g_re
    g_im = torch.zeros_like(g_re) if g_im is None else g_im
    dv_re, dv_im, dl_re, dl_im = torch.ops.mixir.lti_cauchy_bwd(
        g_re, g_im, v_re, v_im, l_re, l_im, z_re, z_im, ctx.config)
    return (dv_re.to(v_re.dtype), dv_im.to(v_im.dtype), dl_re.to(l_re.dtype), dl_im.to(l_im.dtype),
            None, None, None)


lti_cauchy.register_autograd(_cauchy_backward, setup_context=_cauchy_setup)


# --------------------------------------------------------------------------- recurrence

@torch.library.custom_op("mixir::lti_recurrent", mutates_args=())
def lti_recurrent(u: torch.Tensor, l_re: torch.Tensor, l_im: torch.Tensor, b_re: torch.Tensor,
                  b_im: torch.Tensor, c_re: torch.Tensor, c_im: torch.Tensor, feed: torch.Tensor,
                  u_re: torch.Tensor, u_im: torch.Tensor, v_re: torch.Tensor, v_im: torch.Tensor,
                  z0_re: Optional[torch.Tensor], z0_im: Optional[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launches.recurrent_fwd_pairs(u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im,
                                           v_re, v_im, z0_re, z0_im)


@lti_recurrent.register_fake
def _(u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im, z0_re, z0_im):
    B, H, T = u.shape
    dt = _rdt(l_re)
    st = (B, H, l_re.shape[-1])
    return u.new_empty((B, H, T), dtype=dt), u.new_empty(st, dtype=dt), u.new_empty(st, dtype=dt)


_REC_IN = ("u", "l_re", "l_im", "b_re", "b_im", "c_re", "c_im", "feed", "u_re", "u_im", "v_re",
           "v_im", "z0_re", "z0_im")


@torch.library.custom_op("mixir::lti_recurrent_train", mutates_args=())
def lti_recurrent_train(u: torch.Tensor, l_re: torch.Tensor, l_im: torch.Tensor, b_re: torch.Tensor,
                        b_im: torch.Tensor, c_re: torch.Tensor, c_im: torch.Tensor,
                        feed: torch.Tensor, u_re: torch.Tensor, u_im: torch.Tensor,
                        v_re: torch.Tensor, v_im: torch.Tensor, z0_re: Optional[torch.Tensor],
                        z0_im: Optional[torch.Tensor], chunk: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence for training: (y, z_T re, z_T im, checkpoints re, im [B, H, ⌈T/chunk⌉, N])."""
    return launches.recurrent_fwd_pairs(u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im,
                                           v_re, v_im, z0_re, z0_im, chunk)


@lti_recurrent_train.register_fake
def _(u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im, z0_re, z0_im, chunk):
    B, H, T = u.shape
    N = l_re.shape[-1]
    dt = _rdt(l_re)
    ck = (B, H, -(-T // chunk), N)
    return (u.new_empty((B, H, T), dtype=dt), u.new_empty((B, H, N), dtype=dt),
            u.new_empty((B, H, N), dtype=dt), u.new_empty(ck, dtype=dt), u.new_empty(ck, dtype=dt))


@torch.library.custom_op("mixir::lti_recurrent_bwd", mutates_args=())
def lti_recurrent_bwd(gy: torch.Tensor, gz_re: torch.Tensor, gz_im: torch.Tensor, u: torch.Tensor,
                      l_re: torch.Tensor, l_im: torch.Tensor, b_re: torch.Tensor, b_im: torch.Tensor,
                      c_re: torch.Tensor, c_im: torch.Tensor, feed: torch.Tensor,
                      u_re: torch.Tensor, u_im: torch.Tensor, v_re: torch.Tensor, v_im: torch.Tensor,
                      ck_re: torch.Tensor, ck_im: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """The adjoint (``launches.recurrent_bwd_pairs``): du, dλ re/im, dβ re/im, dc re/im, dD',
    dU re/im, dV re/im, dz0 re/im."""
    return list(launches.recurrent_bwd_pairs(gy, gz_re, gz_im, u, l_re, l_im, b_re, b_im, c_re,
                                                c_im, feed, u_re, u_im, v_re, v_im, ck_re, ck_im,
                                                chunk))


@lti_recurrent_bwd.register_fake
def _(gy, gz_re, gz_im, u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im,
      ck_re, ck_im, chunk):
    dt = _rdt(l_re)
    B, H, T = u.shape
    e = lambda shape: u.new_empty(shape, dtype=dt)      # noqa: E731
    return ([e((B, H, T))] + [e(l_re.shape) for _ in range(6)] + [e(feed.shape)]
            + [e(u_re.shape) for _ in range(4)] + [e(gz_re.shape) for _ in range(2)])


def _recurrent_setup(ctx, inputs, output):
    *tensors, chunk = inputs
    ctx.has_z0 = tensors[12] is not None
    ctx.save_for_backward(*tensors[:12], output[3], output[4])
    ctx.chunk = chunk
    ctx.mark_non_differentiable(output[3], output[4])


def _recurrent_backward(ctx, gy, gz_re, gz_im, _gck_re, _gck_im):
    """The Triton adjoint recurrence, from the forward's checkpoints (recomputed per segment)."""
    u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im, ck_re, ck_im = ctx.saved_tensors
    B, H, T = u.shape
    dt = _rdt(l_re)
    gy = u.new_zeros((B, H, T), dtype=dt) if gy is None else gy
    gz_re = u.new_zeros((B, H, l_re.shape[-1]), dtype=dt) if gz_re is None else gz_re
    gz_im = torch.zeros_like(gz_re) if gz_im is None else gz_im
    grads = torch.ops.mixir.lti_recurrent_bwd(gy, gz_re, gz_im, u, l_re, l_im, b_re, b_im, c_re,
                                              c_im, feed, u_re, u_im, v_re, v_im, ck_re, ck_im,
                                              ctx.chunk)
    ins = (u, l_re, l_im, b_re, b_im, c_re, c_im, feed, u_re, u_im, v_re, v_im)
    out = [g.to(x.dtype) for g, x in zip(grads[:12], ins)]
    out += [grads[12], grads[13]] if ctx.has_z0 else [None, None]
    return (*out, None)


lti_recurrent_train.register_autograd(_recurrent_backward, setup_context=_recurrent_setup)


# --------------------------------------------------------------------------- complex wrappers

def vandermonde(rho, theta, v_re, v_im, L: int, config=None):
    """``K[r, l] = Re Σ_n (v_re + i v_im) exp((ρ + iθ) l)``, l < L, differentiable: [R, L].
    ``config``: tiles (``launches.launch_config``), None for the default rule."""
    return torch.ops.mixir.lti_vandermonde(rho, theta, v_re, v_im, int(L), encode_config(config or {}))


def vandermonde_reduce(rho, theta, w, config=None):
    """``S[r, n] = Σ_l w[r, l] exp((ρ + iθ) l)`` as (re, im), differentiable: 2 × [R, N]."""
    return torch.ops.mixir.lti_vandermonde_reduce(rho, theta, w, encode_config(config or {}))


def cauchy(v, lam, z, config=None):
    """``out[r, q, j] = Σ_n v[r,q,n]/(z_j − λ[r,n]) + conj(v[r,q,n])/(z_j − conj λ[r,n])``: the
    Cauchy sum over the 2N poles of a conjugate-symmetric system, given its N poles of one half
    (complex, differentiable in v and λ; not holomorphic — the conjugate terms follow torch's
    convention for complex gradients)."""
    o_re, o_im = torch.ops.mixir.lti_cauchy(v.real, v.imag, lam.real, lam.imag, z.real, z.imag,
                                            encode_config(config or {}))
    return torch.complex(o_re, o_im).to(v.dtype)


def recurrent(u, lam, beta, c, feed, U, V, z0):
    """The recurrence without autograd (decoding / inference), see ``launches.recurrent_fwd_raw``:
    (y [B, H, T], z_T [B, H, N] complex)."""
    y, zt_re, zt_im = torch.ops.mixir.lti_recurrent(
        u, lam.real, lam.imag, beta.real, beta.imag, c.real, c.imag, feed, U.real, U.imag, V.real,
        V.imag, None if z0 is None else z0.real, None if z0 is None else z0.imag)
    return y, torch.complex(zt_re, zt_im)


def recurrent_train(u, lam, beta, c, feed, U, V, z0, chunk: int = 0):
    """The recurrence with autograd (training): the Triton forward writing a checkpoint of the state
    every ``chunk`` tokens (0: ``launches.recurrent_chunk(T)`` = ⌈√T⌉), the Triton adjoint
    ``lti_recurrent_bwd`` as its backward. Same arguments and results as ``recurrent``."""
    chunk = int(chunk) or launches.recurrent_chunk(u.shape[-1])
    y, zt_re, zt_im, _, _ = torch.ops.mixir.lti_recurrent_train(
        u, lam.real, lam.imag, beta.real, beta.imag, c.real, c.imag, feed, U.real, U.imag, V.real,
        V.imag, None if z0 is None else z0.real, None if z0 is None else z0.imag, chunk)
    return y, torch.complex(zt_re, zt_im)

