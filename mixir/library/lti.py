"""Linear time-invariant state-space mixers (S4D, S4, LSSL, LMU), declared in the DSL, with wrappers.

Each channel is a head (``H`` = channels), ``u`` a scalar per token and channel, the state a vector
of complex modes over ``N`` kept as a (re, im) pair of real states. The declarations are the exact
discretised recurrences; ``mixir.compile`` recognises them as LTI (``lowering/lti_analysis``) and
runs them as FFT convolutions with Vandermonde (diagonal) or Cauchy (diagonal plus low rank)
kernels, or token by token. docs/lti.md has the formulas, initialisers and citations.

- ``s4d``  — diagonal A, zero-order hold:   ``λ = e^{ΔA}``, ``B̄ = (e^{ΔA} − 1)/A · B``;
- ``s4``   — A = Λ − P P* (DPLR, the HiPPO-LegS normal-plus-low-rank form), bilinear;
- ``s4d_bilinear`` — diagonal A, bilinear: ``λ = (2/Δ + Λ)/(2/Δ − Λ)``, ``B̄ = 2B/(2/Δ − Λ)``;
- ``lssl`` and ``lmu`` — the dense HiPPO-LegS / LMU (Legendre) matrices, diagonalised once in
  float64 by the wrapper (``A = W Γ W⁻¹``, ``B̃ = W⁻¹B``, ``C̃ = C W``) and run as ``s4d_bilinear``.
In every case ``y_t = 2 Re(Σ_n C_n x_t[n]) + D u_t``: the N complex modes stand for a real system
of size 2N (the conjugate modes are implied).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..dsl import ops as mx
from ..dsl.mixer import In, Param, State, trace
from ..errors import InputError
from ..lowering.common.call import check_tensors
from .registry import LibraryEntry, call, register_entry


def _cmul(a, b):
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _cdiv(a, b):
    den = b[0] * b[0] + b[1] * b[1]
    return (a[0] * b[0] + a[1] * b[1]) / den, (a[1] * b[0] - a[0] * b[1]) / den


def _readout(C_re, C_im, x, D, u):
    """``2 Re(Σ_n C_n x_n) + D u``."""
    return 2.0 * mx.sum_(C_re * x[0] - C_im * x[1], "N") + D * u


# ---- S4D: diagonal, zero-order hold -----------------------------------------------------------

def _s4d_step(u: In[()], log_dt: Param[()], A_re: Param["N"], A_im: Param["N"], B_re: Param["N"],
              B_im: Param["N"], C_re: Param["N"], C_im: Param["N"], D: Param[()],
              x_re: State["N"], x_im: State["N"]):
    """S4D (ZOH): Δ = exp(log_dt), λ = exp(ΔA), B̄ = (λ − 1)/A · B, x_t = λ x_{t−1} + B̄ u_t,
    y_t = 2 Re(C·x_t) + D u_t."""
    dt = mx.exp(log_dt)
    mag = mx.exp(dt * A_re)
    lam = (mag * mx.cos(dt * A_im), mag * mx.sin(dt * A_im))
    Bbar = _cmul(_cdiv((lam[0] - 1.0, lam[1]), (A_re, A_im)), (B_re, B_im))
    x = (lam[0] * x_re - lam[1] * x_im + Bbar[0] * u, lam[1] * x_re + lam[0] * x_im + Bbar[1] * u)
    return _readout(C_re, C_im, x, D, u), x[0], x[1]


# ---- diagonal, bilinear (LSSL / LMU after diagonalisation) ------------------------------------

def _s4d_bilinear_step(u: In[()], log_dt: Param[()], L_re: Param["N"], L_im: Param["N"],
                       B_re: Param["N"], B_im: Param["N"], C_re: Param["N"], C_im: Param["N"],
                       D: Param[()], x_re: State["N"], x_im: State["N"]):
    """Diagonal SSM, bilinear: d = 1/(2/Δ − Λ), λ = d (2/Δ + Λ), B̄ = 2 d B,
    x_t = λ x_{t−1} + B̄ u_t, y_t = 2 Re(C·x_t) + D u_t."""
    g = 2.0 * mx.exp(-log_dt)
    d = _cdiv((1.0, 0.0 * L_im), (g - L_re, -L_im))
    lam = _cmul(d, (g + L_re, L_im))
    Bbar = _cmul(d, (2.0 * B_re, 2.0 * B_im))
    x = (lam[0] * x_re - lam[1] * x_im + Bbar[0] * u, lam[1] * x_re + lam[0] * x_im + Bbar[1] * u)
    return _readout(C_re, C_im, x, D, u), x[0], x[1]


# ---- S4: diagonal plus low rank, bilinear -----------------------------------------------------

def _s4_step(u: In[()], log_dt: Param[()], L_re: Param["N"], L_im: Param["N"], P_re: Param["N"],
             P_im: Param["N"], B_re: Param["N"], B_im: Param["N"], C_re: Param["N"],
             C_im: Param["N"], D: Param[()], x_re: State["N"], x_im: State["N"]):
    """S4 (DPLR A = Λ − P P* over the 2N conjugate-symmetric modes, bilinear):
    (2/Δ − A) x_t = (2/Δ + A) x_{t−1} + 2 B u_t, solved by Woodbury with d = 1/(2/Δ − Λ):
    w = (2/Δ + Λ) x − P s + 2 B u, s = 2 Re(P*·x);  x_t = d w − d P · 2 Re(P*·d w) / (1 + 2 Re(P*·d P));
    y_t = 2 Re(C·x_t) + D u_t."""
    g = 2.0 * mx.exp(-log_dt)
    d = _cdiv((1.0, 0.0 * L_im), (g - L_re, -L_im))
    s = 2.0 * mx.sum_(P_re * x_re + P_im * x_im, "N")
    w = ((g + L_re) * x_re - L_im * x_im - P_re * s + 2.0 * B_re * u,
         L_im * x_re + (g + L_re) * x_im - P_im * s + 2.0 * B_im * u)
    dw = _cmul(d, w)
    dp = _cmul(d, (P_re, P_im))
    s2 = 2.0 * mx.sum_(P_re * dw[0] + P_im * dw[1], "N")
    den = 1.0 + 2.0 * mx.sum_(P_re * dp[0] + P_im * dp[1], "N")
    r = s2 / den
    x = (dw[0] - dp[0] * r, dw[1] - dp[1] * r)
    return _readout(C_re, C_im, x, D, u), x[0], x[1]


s4d_mixer = trace(_s4d_step, "s4d")
s4d_bilinear_mixer = trace(_s4d_bilinear_step, "s4d_bilinear")
s4_mixer = trace(_s4_step, "s4")


# ---- initialisers -----------------------------------------------------------------------------

def _log_dt(rng, H, dt_min=1e-3, dt_max=1e-1):
    return rng.uniform(math.log(dt_min), math.log(dt_max), H)


def s4d_lin_init(H: int, N: int, seed: int = 0, dt_min=1e-3, dt_max=1e-1):
    """S4D-Lin: A_n = −1/2 + iπn (n < N modes), B_n = 1, C ~ CN(0, 1), D ~ N(0, 1), log Δ ~
    U[log dt_min, log dt_max]. Returns a dict of the ``s4d`` wrapper's arguments (torch, fp32)."""
    rng = np.random.default_rng(seed)
    n = np.arange(N)
    return _as_torch(dict(log_dt=_log_dt(rng, H, dt_min, dt_max), A_re=np.full((H, N), -0.5),
                          A_im=np.tile(math.pi * n, (H, 1)), B=np.ones((H, N), complex),
                          C=(rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) / math.sqrt(2),
                          D=rng.standard_normal(H)))


def s4d_inv_init(H: int, N: int, seed: int = 0, dt_min=1e-3, dt_max=1e-1):
    """S4D-Inv: A_n = −1/2 + i (2N/π) (2N/(2n+1) − 1) (state size 2N), otherwise as S4D-Lin."""
    p = s4d_lin_init(H, N, seed, dt_min, dt_max)
    n = np.arange(N)
    p["A_im"] = torch.tensor(np.tile(2 * N / math.pi * (2 * N / (2 * n + 1) - 1), (H, 1)), dtype=torch.float32)
    return p


def hippo_legs(N: int):
    """HiPPO-LegS: A_nk = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k); B_n = √(2n+1)."""
    q = np.arange(N, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    A = -np.where(q[:, None] > q[None, :], r[:, None] * r[None, :], np.diag(q + 1))
    return A, r.copy()


def lmu_matrices(d: int):
    """LMU (Voelker et al. 2019), θ = 1: A_ij = (2i+1)·(−1 if i < j else (−1)^{i−j+1}),
    B_i = (2i+1)(−1)^i; the system for a window θ is (A/θ, B/θ)."""
    i = np.arange(d, dtype=np.float64)
    ii, jj = np.meshgrid(i, i, indexing="ij")
    A = (2 * ii + 1) * np.where(ii < jj, -1.0, (-1.0) ** (ii - jj + 1))
    B = (2 * i + 1) * (-1.0) ** i
    return A, B


@functools.lru_cache(maxsize=None)
def hippo_legs_dplr(N: int):
    """The DPLR form of HiPPO-LegS of size 2N: A = V (Λ − P̃ P̃*) V*, with A + P Pᵀ (P_n = √(n + 1/2))
    normal (= −1/2 + a skew-symmetric matrix), V unitary. Returns the N modes with Im Λ > 0:
    (Λ, P̃, B̃ = V* B, V [2N, N]) in complex128, so that ``C̃ = C V`` for a real read-out C."""
    A, B = hippo_legs(2 * N)
    P = np.sqrt(np.arange(2 * N) + 0.5)
    S = A + np.outer(P, P)                         # −1/2 I + skew
    w, V = np.linalg.eig(S - (-0.5) * np.eye(2 * N))   # skew part: eigenvalues i·ω
    # orthonormalise (eigenvectors of a normal matrix with distinct eigenvalues are orthogonal)
    V = V / np.linalg.norm(V, axis=0, keepdims=True)
    idx = np.argsort(-w.imag)[:N]
    lam = -0.5 + 1j * w.imag[idx]
    V = V[:, idx]
    return lam, V.conj().T @ P, V.conj().T @ B, V


@functools.lru_cache(maxsize=None)
def _diagonalised(kind: str, N: int):
    """(Γ, W⁻¹ rows, W columns, C weight, B) of the dense real ``A = W Γ W⁻¹`` (HiPPO-LegS or LMU),
    keeping the modes with Im Γ > 0 and the real ones; a real mode gets weight 1/2 on C̃, since the
    read-out counts every kept mode twice through 2 Re (a complex mode stands for its conjugate)."""
    A, B = hippo_legs(N) if kind == "legs" else lmu_matrices(N)
    g, W = np.linalg.eig(A)
    Winv = np.linalg.inv(W)
    tol = 1e-9 * max(1.0, np.abs(g).max())
    idx = np.nonzero(g.imag > tol)[0].tolist() + np.nonzero(np.abs(g.imag) <= tol)[0].tolist()
    weight = np.where(np.abs(g[idx].imag) <= tol, 0.5, 1.0)
    return g[idx], Winv[idx], W[:, idx], weight, B


def _as_torch(d):
    out = {}
    for k, v in d.items():
        v = np.asarray(v)
        out[k] = torch.tensor(v, dtype=torch.complex64 if np.iscomplexobj(v) else torch.float32)
    return out


# ---- wrappers ---------------------------------------------------------------------------------

def _split(name, t, H, N, fn):
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{fn}: {name} must be a torch.Tensor [H, N], got {type(t).__name__}")
    if t.ndim != 2 or tuple(t.shape) != (H, N):
        raise InputError(f"{fn}: {name} must be [H, N] = {(H, N)} (H channels, N modes), got "
                         f"shape {tuple(t.shape)}")
    if t.is_complex():
        return t.real, t.imag
    return t, torch.zeros_like(t)


def _check_u(u, fn):
    if not isinstance(u, torch.Tensor) or u.ndim != 3:
        raise InputError(f"{fn}: u must be a torch.Tensor [B, T, H], got "
                         + (f"shape {tuple(u.shape)}" if hasattr(u, "shape") else type(u).__name__))
    return int(u.shape[2])


_COMPLEX_OK = ("A_im", "Lambda_im", "P", "B", "C")      # the wrappers split these into (re, im)


def _check_args(fn, u, **named):
    """The shared dtype/device rule (``check_tensors``; float64 accepted: the LTI family computes
    in it) on the public tensors, before any value check reads them; complex B, C, P count by
    their real parts (the wrapper splits them), numbers are left to ``_per_channel``."""
    check_tensors(fn, [("u", u, True)], float64=True)
    for name, t in named.items():
        if isinstance(t, torch.Tensor):
            split = t.is_complex() and name in _COMPLEX_OK
            check_tensors(fn, [("u", u, True), (name, t.real if split else t, False)], float64=True)


def _u_hint(u, t) -> str:
    """A hint when a parameter's H (its first size, ``t``'s) is u's T and not its H: u looks laid
    out [B, H, T]."""
    h = int(t.shape[0]) if isinstance(t, torch.Tensor) and t.ndim >= 1 else None
    if h is not None and h == int(u.shape[1]) and h != int(u.shape[2]):
        return (f"; it has the H = {h} that u holds in its T position: is u laid out [B, H, T]? "
                f"mixir takes u as [B, T, H] (u.transpose(1, 2))")
    return ""


def _per_channel(name, t, H, fn, like):
    if not isinstance(t, torch.Tensor):
        t = torch.full((H,), float(t), dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(H)
    if tuple(t.shape) != (H,):
        raise InputError(f"{fn}: {name} must be [H] = ({H},) or a number, got shape {tuple(t.shape)}"
                         + _u_hint(like, t))
    return t


def _state_in(initial_state, fn):
    """The declaration's (re, im) pair of states from the public ``initial_state``: a complex
    tensor [N_seq, H, N] or a (re, im) pair of real ones (the real parts keep their precision:
    complex128 gives float64 states, which the float64 LTI path computes in)."""
    if initial_state is None or isinstance(initial_state, (tuple, list)):
        return initial_state
    if isinstance(initial_state, torch.Tensor) and initial_state.is_complex():
        return (initial_state.real, initial_state.imag)
    got = (f"a real {initial_state.dtype} tensor of shape {tuple(initial_state.shape)}"
           if isinstance(initial_state, torch.Tensor) else type(initial_state).__name__)
    raise InputError(f"{fn}: initial_state must be a complex tensor [N_seq, H, N] or a (re, im) pair of "
                     f"real tensors, got {got}")


def _run(mixer, arrays, initial_state, output_final_state, cu_seqlens, strategy, fn, group=None):
    res = call(mixer, arrays, initial_state=_state_in(initial_state, fn),
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy,
               group=group)
    if not output_final_state:
        return res
    o, (re, im) = res
    return o, torch.complex(re, im)


def s4d(u, log_dt, A_re, A_im, B, C, D, *, initial_state=None, output_final_state=False,
        cu_seqlens=None, strategy=None, group=None):
    """S4D (zero-order hold): u ``[B, T, H]``; log_dt, D ``[H]``; A_re (< 0), A_im ``[H, N]``; B, C
    ``[H, N]`` complex (or real). Returns y ``[B, T, H]`` (and the final state ``[N_seq, H, N]``,
    complex; ``initial_state`` likewise, complex or a (re, im) pair)."""
    H = _check_u(u, "s4d")
    _check_args("s4d", u, log_dt=log_dt, A_re=A_re, A_im=A_im, B=B, C=C, D=D)
    if not isinstance(A_re, torch.Tensor) or A_re.ndim != 2 or int(A_re.shape[0]) != H:
        raise InputError(f"s4d: A_re must be [H, N] with H = {H}, got shape {tuple(getattr(A_re, 'shape', ()))}"
                         + _u_hint(u, A_re))
    N = int(A_re.shape[1])
    if bool((A_re >= 0).any()):
        raise InputError(f"s4d: A_re must be < 0 everywhere (a stable continuous-time A), got max "
                         f"{float(A_re.max()):.4g}")
    A_im = _split("A_im", A_im, H, N, "s4d")[0]
    (B_re, B_im), (C_re, C_im) = _split("B", B, H, N, "s4d"), _split("C", C, H, N, "s4d")
    arrays = (u, _per_channel("log_dt", log_dt, H, "s4d", u), A_re, A_im, B_re, B_im, C_re, C_im,
              _per_channel("D", D, H, "s4d", u))
    return _run(s4d_mixer, arrays, initial_state, output_final_state, cu_seqlens, strategy, "s4d",
                group=group)


def s4(u, log_dt, Lambda_re, Lambda_im, P, B, C, D, *, initial_state=None, output_final_state=False,
       cu_seqlens=None, strategy=None, group=None):
    """S4 (DPLR A = Λ − P P*, bilinear): u ``[B, T, H]``; log_dt, D ``[H]``; Λ_re (< 0), Λ_im
    ``[H, N]``; P, B, C ``[H, N]`` complex. ``s4_legs_init`` gives the HiPPO-LegS values."""
    H = _check_u(u, "s4")
    _check_args("s4", u, log_dt=log_dt, Lambda_re=Lambda_re, Lambda_im=Lambda_im, P=P, B=B, C=C, D=D)
    if not isinstance(Lambda_re, torch.Tensor) or Lambda_re.ndim != 2 or int(Lambda_re.shape[0]) != H:
        raise InputError(f"s4: Lambda_re must be [H, N] with H = {H}, got shape "
                         f"{tuple(getattr(Lambda_re, 'shape', ()))}" + _u_hint(u, Lambda_re))
    N = int(Lambda_re.shape[1])
    if bool((Lambda_re >= 0).any()):
        raise InputError(f"s4: Lambda_re must be < 0 everywhere, got max {float(Lambda_re.max()):.4g}")
    L_im = _split("Lambda_im", Lambda_im, H, N, "s4")[0]
    (P_re, P_im), (B_re, B_im), (C_re, C_im) = (_split(n, t, H, N, "s4") for n, t in
                                                (("P", P), ("B", B), ("C", C)))
    arrays = (u, _per_channel("log_dt", log_dt, H, "s4", u), Lambda_re, L_im, P_re, P_im, B_re, B_im,
              C_re, C_im, _per_channel("D", D, H, "s4", u))
    return _run(s4_mixer, arrays, initial_state, output_final_state, cu_seqlens, strategy, "s4", group=group)


def s4_legs_init(H: int, N: int, seed: int = 0, dt_min=1e-3, dt_max=1e-1):
    """S4 with HiPPO-LegS (state size 2N, N modes): Λ, P̃ = V*P, B̃ = V*B from ``hippo_legs_dplr``,
    C ~ CN(0, 1), D ~ N(0, 1), log Δ ~ U[log dt_min, log dt_max]. The ``s4`` wrapper's arguments."""
    rng = np.random.default_rng(seed)
    lam, P, B, _ = hippo_legs_dplr(N)
    rep = lambda x: np.tile(x, (H, 1))        # noqa: E731
    return _as_torch(dict(log_dt=_log_dt(rng, H, dt_min, dt_max), Lambda_re=rep(lam.real),
                          Lambda_im=rep(lam.imag), P=rep(P), B=rep(B),
                          C=(rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) / math.sqrt(2),
                          D=rng.standard_normal(H)))


def _discretization(name, value):
    if value not in ("bilinear", "zoh"):
        raise InputError(f"{name}: discretization must be 'bilinear' or 'zoh', got {value!r}")
    return value


def _dense_lti(kind, u, log_dt, B, C, D, scale, N, initial_state, output_final_state,
               cu_seqlens, strategy, discretization="bilinear"):
    """Run the dense real system (A·scale, B or the default B·scale, C, D) through its modes:
    bilinear as ``s4d_bilinear``, zero-order hold as ``s4d`` (λ = exp(Δγ), B̄ = (λ − 1)/γ · B̃ per
    mode γ: the modal form of ``x_t = e^{ΔA} x_{t−1} + A⁻¹(e^{ΔA} − I) B u_t``)."""
    g, Winv, W, weight, B0 = _diagonalised(kind, N)
    dev, cd = u.device, (torch.complex128 if u.dtype == torch.float64 else torch.complex64)
    rd = torch.float64 if u.dtype == torch.float64 else torch.float32
    lam = torch.tensor(g, dtype=cd, device=dev)[None] * scale[:, None].to(rd)          # [H, M]
    Winv_t = torch.tensor(Winv, dtype=cd, device=dev)
    if B is None:
        Bm = (Winv_t @ torch.tensor(B0, dtype=cd, device=dev))[None] * scale[:, None].to(rd)
    else:
        Bm = B.to(cd) @ Winv_t.T
    Cm = (C.to(cd) @ torch.tensor(W, dtype=cd, device=dev)) * torch.tensor(weight, dtype=rd, device=dev)
    arrays = (u, log_dt.to(rd), lam.real, lam.imag, Bm.real, Bm.imag, Cm.real, Cm.imag, D.to(rd))
    m = s4d_mixer if discretization == "zoh" else s4d_bilinear_mixer
    return _run(m, arrays, initial_state, output_final_state, cu_seqlens, strategy, kind if kind == "lmu" else "lssl")


def lssl(u, dt, B, C, D, *, initial_state=None, output_final_state=False, cu_seqlens=None,
         strategy=None, discretization="bilinear"):
    """LSSL with the HiPPO-LegS A (fixed, size N) and a trainable step Δ: u ``[B, T, H]``;
    dt (> 0), D ``[H]``; B, C ``[H, N]`` real. The dense system is diagonalised once in float64
    (``A = W Γ W⁻¹``) and run as ``s4d_bilinear`` (``discretization="bilinear"``, the LSSL
    paper's generalized bilinear transform with α = 1/2) or ``s4d`` (``"zoh"``); the state is the
    modal state ``W⁻¹ x``."""
    _discretization("lssl", discretization)
    H = _check_u(u, "lssl")
    _check_args("lssl", u, dt=dt, B=B, C=C, D=D)
    dt = _per_channel("dt", dt, H, "lssl", u)
    if bool((dt <= 0).any()):
        raise InputError(f"lssl: the step dt must be > 0 in every channel, got min {float(dt.min()):.4g}")
    if not isinstance(C, torch.Tensor) or C.ndim != 2 or int(C.shape[0]) != H:
        raise InputError(f"lssl: C must be [H, N] with H = {H}, got shape {tuple(getattr(C, 'shape', ()))}"
                         + _u_hint(u, C))
    N = int(C.shape[1])
    if not isinstance(B, torch.Tensor) or tuple(B.shape) != (H, N):
        raise InputError(f"lssl: B must be [H, N] = {(H, N)} like C, got shape {tuple(getattr(B, 'shape', ()))}")
    one = torch.ones(H, dtype=torch.float32, device=u.device)
    return _dense_lti("legs", u, torch.log(dt), B, C, _per_channel("D", D, H, "lssl", u), one,
                      N, initial_state, output_final_state, cu_seqlens, strategy, discretization)


def lmu(u, theta, C, D, *, initial_state=None, output_final_state=False, cu_seqlens=None,
        strategy=None, discretization="zoh"):
    """Legendre Memory Unit memory (A/θ, B/θ of ``lmu_matrices``, Δ = 1 token) with a linear
    read-out: u ``[B, T, H]``; theta (> 0, the window in tokens), D ``[H]``; C ``[H, d]``.
    ``discretization="zoh"`` (zero-order hold, as the LMU paper discretises the memory) or
    ``"bilinear"``."""
    _discretization("lmu", discretization)
    H = _check_u(u, "lmu")
    _check_args("lmu", u, theta=theta, C=C, D=D)
    theta = _per_channel("theta", theta, H, "lmu", u)
    if bool((theta <= 0).any()):
        raise InputError(f"lmu: the window theta must be > 0 in every channel, got min {float(theta.min()):.4g}")
    if not isinstance(C, torch.Tensor) or C.ndim != 2 or int(C.shape[0]) != H:
        raise InputError(f"lmu: C must be [H, d] with H = {H}, got shape {tuple(getattr(C, 'shape', ()))}"
                         + _u_hint(u, C))
    N = int(C.shape[1])
    log_dt = torch.zeros(H, dtype=u.dtype if u.dtype == torch.float64 else torch.float32, device=u.device)
    return _dense_lti("lmu", u, log_dt, None, C, _per_channel("D", D, H, "lmu", u),
                      1.0 / theta, N, initial_state, output_final_state, cu_seqlens, strategy,
                      discretization)


# ---- entries (not in the shared MIXERS registry: see docs/lti.md) -----------------------------

_S4D = "Gu, Gupta, Goel, Ré 2022, On the Parameterization and Initialization of Diagonal State Space Models (arXiv:2206.11893)"
_S4 = "Gu, Goel, Ré 2022, Efficiently Modeling Long Sequences with Structured State Spaces (arXiv:2111.00396)"
_SAMPLERS = {"log_dt": "log_time_step", "A_re": "negative", "L_re": "negative"}
LTI_ENTRIES = {
    "s4d": LibraryEntry("s4d", s4d_mixer, s4d, "lti", "S4D: diagonal complex A, zero-order hold",
                        _S4D, {"N": "K"}, _SAMPLERS),
    "s4d_bilinear": LibraryEntry("s4d_bilinear", s4d_bilinear_mixer, lssl, "lti",
                                 "diagonal complex A, bilinear (LSSL / LMU after diagonalisation)",
                                 _S4D, {"N": "K"}, _SAMPLERS),
    "s4": LibraryEntry("s4", s4_mixer, s4, "lti", "S4: A = Λ − PP* (DPLR), bilinear", _S4,
                       {"N": "K"}, _SAMPLERS),
}

for _entry in LTI_ENTRIES.values():      # the shared registry holds every family
    register_entry(_entry)
