"""The LTI system of one call and its convolution kernel: the complex half-basis system (λ, β, c,
low-rank factors) per head, the kernel powers by the Vandermonde or Cauchy product, the final
state by Krylov blocks, and the FFT convolution (docs/lti.md)."""
from __future__ import annotations

import math

import torch

from . import ops

class System:
    """The complex half-basis system of one call (every tensor per head, differentiable)."""

    def __init__(self, lam, beta, U, V, c, feed):
        self.lam, self.beta, self.U, self.V, self.c, self.feed = lam, beta, U, V, c, feed

    @property
    def rank(self):
        return self.U.shape[1]

    def full_transition(self):
        """Ā in the full (z, z̄) basis: [H, 2N, 2N] (materialised: O(N²) per head)."""
        lam = torch.cat([self.lam, self.lam.conj()], -1)
        A = torch.diag_embed(lam)
        if self.rank:
            Uf = torch.cat([self.U, self.U.conj()], -1)
            Vf = torch.cat([self.V, self.V.conj()], -1)
            A = A + torch.einsum("hkn,hkm->hnm", Uf, Vf)
        return A


def _full(x):
    return torch.cat([x, x.conj()], -1)


#: The contour shift of the Cauchy path (``contour_shift``): when a pole comes within
#: ``|1 − λ^M| < SHIFT_WHEN`` of the truncation's degeneracy, the generating function is evaluated
#: on the circle |z| = 1/ρ with ``max |ρλ|^M ≤ e^{−SHIFT}`` for every such head; the taps are then
#: scaled back by ``ρ^{−m} ≤ e^{SHIFT}``.
SHIFT, SHIFT_WHEN = 1.0, 0.15


def contour_shift(lam, M: int):
    """``q = −log ρ ≥ 0``, a 0-dim tensor without gradient (the kernel does not depend on ρ): the
    radius ``1/ρ`` of the circle on which ``kernel_powers`` evaluates a diagonal-plus-low-rank
    generating function — one radius per call, since the Cauchy points are shared by every row.

    On the unit circle, ``c (I − Ā^M)(I − ωĀ)^{-1} b`` is a ratio of two near-singular factors when
    some pole has ``λ^M ≈ 1`` (short M, small Δ: Ā ≈ I + ΔA): ``c (I − Ā^M)`` is an O(MΔ)
    difference of O(1) numbers and the resolvent at the nearby root of unity is O(1/(Δ|A|)). In
    fp32 that cost the kernel ~eps/(MΔ|A|) relative, and its gradient in λ — two O(M/Δ) terms
    (through Ā^M and through the Cauchy sum) cancelling to O(M²) — ~eps/(MΔ|A|)²: 1e-3 at T = 20,
    Δ = 4e-3 with an initial state. At w = ρω, |w| = ρ, the same sum is ``Σ_m k_m ρ^m ω^m =
    c (I − ρ^M Ā^M)(I − wĀ)^{-1} b`` with ``|1 − (ρλ)^M| ≥ 1 − e^{−SHIFT}`` and resolvents ≤ O(M):
    no cancellation, at the price of ``ρ^{−m}`` on the taps. q = 0 when no head has such a pole:
    then every value and gradient is bit for bit the unit-circle computation (the long-sequence
    regime, where λ^M is small or far from 1)."""
    if lam.numel() == 0:
        return lam.real.new_zeros(())
    with torch.no_grad():
        near = (1 - lam ** M).abs().amin(-1) < SHIFT_WHEN                         # [H]
        q = torch.log(lam.abs().amax(-1)) + SHIFT / M                               # [H]
        return torch.where(near, q.clamp(min=0), torch.zeros_like(q)).amax()


def kernel_powers(system: System, b, M: int, groups: int = 1, config=None):
    """``k[r, m] = c_full Ā^m b_full`` for m < M (real), rows r = g·H + h; ``b`` [G·H, N] complex.
    ``config``: the kernels' tiles (``kernels.launch_config``), None for the default rule."""
    H, N = system.lam.shape
    R = b.shape[0]
    rdtype = system.lam.real.dtype
    if M == 0:
        return torch.zeros((R, 0), dtype=rdtype, device=b.device)
    rep = lambda x: x.repeat((groups,) + (1,) * (x.dim() - 1))      # noqa: E731
    if system.rank == 0:
        lam = rep(system.lam)
        v = 2 * rep(system.c) * b
        return ops.vandermonde(torch.log(lam.abs()).clamp(min=-1e4), torch.angle(lam),
                                       v.real, v.imag, M, config)
    # Cauchy + Woodbury at the M-th roots of unity: Σ_m k_m ω^m = c̃ (I − ωĀ)^{-1} b,
    # c̃ = c (I − Ā^M) (ω^M = 1); R(ω) = (I − ωΛ)^{-1} = z/(z − Λ), z = 1/ω. Every sum over the
    # 2N poles pairs conjugates (c̃, Ũ, Ṽ, b̃ are conjugate-symmetric): the Cauchy kernel takes
    # the N poles of one half. The points are z = 1/(ρω), ρ = e^{−q} (``contour_shift``: 1 unless
    # a pole has λ^M ≈ 1): Σ_m k_m ρ^m ω^m = c (I − ρ^M Ā^M)(I − ρωĀ)^{-1} b, scaled back at the end
    # (every power of ρ is of the one rounded 1/ρ = r that places the points, in float64: a
    # separately rounded ρ^{−m} would be off by m ulps against the points actually used)
    r = torch.exp(contour_shift(system.lam, M))                                     # 1/ρ, 0-dim
    r64 = r.to(torch.float64)
    A = system.full_transition()
    cf = _full(system.c)
    AM = torch.einsum("hn,hnm->hm", cf, torch.linalg.matrix_power(A, M))
    ct = (cf - (r64 ** -M).to(rdtype) * AM)[..., :N]                               # c (I − ρ^M Ā^M)
    U, V, poles = system.U, system.V, system.lam                                    # [H, r, N]
    # k is real, so its DFT is Hermitian: evaluate at the M//2 + 1 points z_j, j ≤ M/2, only
    j = torch.arange(M // 2 + 1, device=b.device, dtype=rdtype)
    z = torch.polar(r.expand_as(j), 2 * math.pi * j / M)                            # [M//2 + 1]
    r_ = system.rank
    # per head: c̃ R Ũ_k, Ṽ_k R Ũ_k'
    a_vecs = torch.cat([ct[:, None], V], 1)                                         # [H, 1+r, N]
    num_h = (a_vecs[:, :, None, :] * U[:, None, :, :]).reshape(H, (1 + r_) * r_, -1)
    kh = ops.cauchy(num_h, poles, z, config).reshape(H, 1 + r_, r_, -1) * z  # [H, 1+r, r, J]
    # per row: c̃ R b, Ṽ_k R b
    num_b = rep(a_vecs) * b[:, None, :]                                             # [R, 1+r, N]
    kb = ops.cauchy(num_b, rep(poles), z, config) * z                       # [R, 1+r, J]
    kh = rep(kh)
    k00, k10 = kb[:, 0], kb[:, 1:]                                                  # [R, J], [R, r, J]
    k01, k11 = kh[:, 0], kh[:, 1:]                                                  # [R, r, J], [R, r, r, J]
    cap = z[:, None, None] * torch.eye(r_, dtype=z.dtype, device=z.device) - k11.permute(0, 3, 1, 2)
    sol = torch.linalg.solve(cap, k10.permute(0, 2, 1)[..., None])[..., 0]          # [R, J, r]
    khat = k00 + (k01.permute(0, 2, 1) * sol).sum(-1)
    m = torch.arange(M, device=b.device, dtype=torch.float64)
    return torch.fft.irfft(khat, n=M, dim=-1) * (r64 ** m).to(rdtype)              # × ρ^{−m}


def kernel_materialised(system: System, b, M: int, groups: int = 1):
    """The naive kernel ``c_full Ā^m b_full`` by powers of the dense Ā: O(N·M) memory (tests,
    benchmarks)."""
    A = system.full_transition()
    rep = lambda x: x.repeat((groups,) + (1,) * (x.dim() - 1))      # noqa: E731
    A, cf, x = rep(A), rep(_full(system.c)), _full(b)
    out = []
    for _ in range(M):
        out.append((cf * x).sum(-1).real)
        x = torch.einsum("rnm,rm->rn", A, x)
    return torch.stack(out, -1) if out else torch.zeros((b.shape[0], 0), dtype=A.real.dtype)


def final_state_blocked(system: System, u, z0=None):
    """``z_T = Ā^T z_0 + Σ_{j<T} Ā^j B̄ u_{T−1−j}`` for a diagonal-plus-low-rank Ā in O(log T)
    dense steps (no token loop): u [B, H, T] real, z0 [B, H, N] complex or None → [B, H, N].

    With blocks of M ≈ √T tokens (u zero-padded at the front to a power-of-two number of
    blocks; leading zeros leave a zero state zero): the Krylov columns ``Ā^j B̄`` (j < M) by
    doubling, each block's local state ``s_b = Σ_j Ā^j B̄ u_{b, M−1−j}`` as one contraction, then
    a pairwise tree ``s ← Ā^{len} s_left + s_right`` with ``Ā^{M·2^k}`` by squaring. Works in
    the full (z, z̄) basis with the dense Ā the Cauchy path already forms (O(N²) per head)."""
    B, H, T = u.shape
    N = system.lam.shape[1]
    A = system.full_transition()                                               # [H, 2N, 2N]
    cd = A.dtype
    M = 1 << max(0, math.ceil(math.log2(max(T, 1)) / 2))
    nb = 1 << (-(-T // M) - 1).bit_length()
    kry, P = _full(system.beta)[..., None], A                                   # [H, 2N, 1]
    while kry.shape[-1] < M:
        kry = torch.cat([kry, P @ kry], -1)
        P = P @ P                                                               # Ā^(columns)
    w = torch.nn.functional.pad(u, (nb * M - T, 0)).reshape(B, H, nb, M).flip(-1)
    st = torch.einsum("hnj,bhkj->bhkn", kry, w.to(cd))                          # [B, H, nb, 2N]
    while st.shape[2] > 1:
        st = torch.einsum("hnm,bhkm->bhkn", P, st[:, :, 0::2]) + st[:, :, 1::2]
        P = P @ P
    x = st[:, :, 0]
    if z0 is not None:
        x = x + torch.einsum("hnm,bhm->bhn", torch.linalg.matrix_power(A, T), _full(z0))
    return x[..., :N]


def _conv(u, K, T):
    n = 2 * T
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :T]


def _corr(a, b, T):
    """``r[.., τ] = Σ_s a[.., s] b[.., s + τ]`` for τ < T (zero-padded, by FFTs of length 2T)."""
    n = 2 * T
    return torch.fft.irfft(torch.fft.rfft(a, n=n).conj() * torch.fft.rfft(b, n=n), n=n)[..., :T]


def _poison(x, bad):
    return torch.where(bad, torch.full_like(x, float("nan")), x)


def _from_first(bad):
    """True from the first True along the last dim on (a causal spread)."""
    return bad.cumsum(-1, dtype=torch.int32) > 0


class _CausalFFTConv(torch.autograd.Function):
    """The FFT convolution with non-finite values kept where the recurrence puts them. An FFT mixes
    every position into every other, so a NaN or Inf input at t would poison the outputs *before*
    t too; here non-finite inputs are convolved as 0 and the outputs from t on are NaN (forward: the
    recurrence's causal spread), a non-finite output gradient at t poisons the input gradients up to
    t (backward: the anti-causal spread), and the kernel's gradient at every lag that meets one."""

    @staticmethod
    def forward(ctx, u, K):
        T = u.shape[-1]
        bad = ~torch.isfinite(u)
        u0 = torch.where(bad, torch.zeros_like(u), u)
        ctx.save_for_backward(u0, K, bad)
        return _poison(_conv(u0, K, T), _from_first(bad))

    @staticmethod
    def backward(ctx, dy):
        u0, K, bad_u = ctx.saved_tensors
        T = dy.shape[-1]
        bad_dy = ~torch.isfinite(dy)
        dy0 = torch.where(bad_dy, torch.zeros_like(dy), dy)
        du = dK = None
        if ctx.needs_input_grad[0]:
            du = _poison(_corr(K.expand_as(dy0), dy0, T), _from_first(bad_dy.flip(-1)).flip(-1))
        if ctx.needs_input_grad[1]:
            # lag τ pairs u_s with dy_{s+τ}: it meets a non-finite u_s for τ ≤ T − 1 − s and a
            # non-finite dy_t for τ ≤ t
            lag = torch.arange(T, device=dy.device)
            last_dy = torch.where(bad_dy, lag, -1).amax(-1, keepdim=True)
            first_u = torch.where(bad_u, lag, T).amin(-1, keepdim=True)
            bad_lag = (lag <= last_dy) | (lag <= T - 1 - first_u)
            dK = _poison(_corr(u0, dy0, T), bad_lag).sum_to_size(K.shape)
        return du, dK


def fft_conv(u, K):
    """Causal convolution ``y[.., t] = Σ_{s≤t} K[.., t−s] u[.., s]`` by real FFTs of length 2T,
    with non-finite values spreading causally as in the recurrence (``_CausalFFTConv``)."""
    return _CausalFFTConv.apply(u, K)


# --------------------------------------------------------------------------- the compiled mixer
