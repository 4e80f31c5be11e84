"""Selective state-space models (Mamba-1, Mamba-2), declared in the DSL, with wrappers.

Mamba-1's channels become heads (``H = D``, a state ``[N]`` per channel, the input ``u`` a scalar per
head and token); Mamba-2 is per head with a state ``[N, P]``. The wrappers adapt mamba_ssm's
layouts (B/C shared across channels or groups) to the declared per-head ones.
"""
from __future__ import annotations

from ..dsl import ops as mx
from ..dsl.mixer import In, Param, State, trace
from ..errors import InputError
from .registry import call, register

# ---- Mamba-1: selective scan -------------------------------------------------------------------
#
# selective_scan_ref's optional arguments:
#   D = None           → D = 0 in the wrapper (y + 0·u is y: same function)
#   delta_bias = None  → delta_bias = 0 in the wrapper (same function)
#   z = None           → a variant declared without z (no neutral value of silu(z) exists)
#   delta_softplus     → two variants, with and without softplus on delta + delta_bias
# so four declared mixers: mamba, mamba_softplus, mamba_z, mamba_z_softplus.


def _mamba_step(u, delta, A, B, C, D, delta_bias, h, softplus):
    dt = delta + delta_bias
    if softplus:
        dt = mx.softplus(dt)
    h = mx.exp(dt * A) * h + (dt * u) * B
    return C @ h + D * u, h


def _mamba_variant(gated: bool, softplus: bool):
    if gated:
        def step(u: In[()], delta: In[()], A: Param["N"], B: In["N"], C: In["N"], D: Param[()],
                 z: In[()], delta_bias: Param[()], h: State["N"]):
            y, h = _mamba_step(u, delta, A, B, C, D, delta_bias, h, softplus)
            return y * mx.silu(z), h
    else:
        def step(u: In[()], delta: In[()], A: Param["N"], B: In["N"], C: In["N"], D: Param[()],
                 delta_bias: Param[()], h: State["N"]):
            return _mamba_step(u, delta, A, B, C, D, delta_bias, h, softplus)
    dt = "softplus(delta + delta_bias)" if softplus else "delta + delta_bias"
    step.__doc__ = (f"Mamba-1 selective scan per channel: dt = {dt}, h_t = exp(dt·A) ⊙ h_{{t-1}} + "
                    f"dt·u_t·B_t, y_t = C_t·h_t + D·u_t" + (", out = y·silu(z)" if gated else ""))
    name = "mamba" + ("_z" if gated else "") + ("_softplus" if softplus else "")
    return trace(step, name)


MAMBA_VARIANTS = {(gated, softplus): _mamba_variant(gated, softplus)
                  for gated in (False, True) for softplus in (False, True)}
mamba_mixer = MAMBA_VARIANTS[(False, False)]
mamba_softplus_mixer = MAMBA_VARIANTS[(False, True)]
mamba_z_mixer = MAMBA_VARIANTS[(True, False)]
mamba_z_softplus_mixer = MAMBA_VARIANTS[(True, True)]


# ---- Mamba-2: SSD ------------------------------------------------------------------------------


def _mamba2_step(x: In["P"], dt: In[()], A: Param[()], B: In["N"], C: In["N"], D: Param[()],
                 h: State["N", "P"]):
    """Mamba-2 SSD per head: h_t = exp(dt_t·A) h_{t-1} + dt_t·B_t x_tᵀ, y_t = C_t @ h_t + D·x_t."""
    h = mx.exp(dt * A) * h + mx.outer(dt * B, x)
    return C @ h + D * x, h


mamba2_mixer = trace(_mamba2_step, "mamba2")


# ---- layout helpers ----------------------------------------------------------------------------


def _per_head(t, Bsz, T, H, name, fn):
    """``[B, T, N]`` (shared) or ``[B, T, G, N]`` (G groups, G | H) → ``[B, T, H, N]``.

    Shared or single-group tensors are broadcast with ``expand`` (a stride-0 view, no copy); with
    1 < G < H the repeat cannot be one strided view, so ``reshape`` copies.
    """
    if t.ndim == 3:
        t = t.unsqueeze(2)
    if t.ndim != 4 or tuple(t.shape[:2]) != (Bsz, T):
        raise InputError(f"{fn}: {name} must be [B, T, N] or [B, T, G, N] with B = {Bsz}, T = {T}, "
                         f"got shape {tuple(t.shape)}")
    G, N = int(t.shape[2]), int(t.shape[3])
    if G == H:
        return t
    if G == 0 or H % G:
        raise InputError(f"{fn}: {name} has {G} groups, which must divide the {H} heads/channels")
    if G == 1:
        return t.expand(Bsz, T, H, N)
    return t.unsqueeze(3).expand(Bsz, T, G, H // G, N).reshape(Bsz, T, H, N)


# ---- wrappers ----------------------------------------------------------------------------------


def mamba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
          initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None):
    """Mamba-1 selective scan: mamba_ssm's ``selective_scan_ref`` in layout ``[B, T, D]``.

    u, delta, z: ``[B, T, D]``; A: ``[D, N]`` (real, negative); B, C: ``[B, T, N]`` or grouped
    ``[B, T, G, N]`` (G | D); D, delta_bias: ``[D]`` or None (→ 0); ``initial_state``: ``[N_seq, D, N]``
    (an extension: selective_scan_ref starts from zero). Returns ``out`` ``[B, T, D]`` (and the
    last state ``[N_seq, D, N]``, selective_scan_ref's ``return_last_state``).
    """
    if getattr(u, "ndim", None) != 3:
        raise InputError(f"mamba: u must be [B, T, D], got shape {tuple(getattr(u, 'shape', ()))}")
    Bsz, T, Dch = (int(x) for x in u.shape)
    if getattr(A, "ndim", None) != 2 or int(A.shape[0]) != Dch:
        raise InputError(f"mamba: A must be [D, N] with D = {Dch}, got shape {tuple(getattr(A, 'shape', ()))}")
    if A.is_complex():
        raise InputError("mamba: complex A is not supported (declare the real and imaginary parts)")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and tuple(t.shape) != (Bsz, T, Dch):
            raise InputError(f"mamba: {name} must be [B, T, D] = {(Bsz, T, Dch)}, got {tuple(t.shape)}")
    Bh = _per_head(B, Bsz, T, Dch, "B", "mamba")
    Ch = _per_head(C, Bsz, T, Dch, "C", "mamba")
    if D is None:
        D = u.new_zeros(Dch)
    if delta_bias is None:
        delta_bias = u.new_zeros(Dch)
    mixer = MAMBA_VARIANTS[(z is not None, bool(delta_softplus))]
    arrays = (u, delta, A, Bh, Ch, D) + ((z,) if z is not None else ()) + (delta_bias,)
    return call(mixer, arrays, initial_state=initial_state, output_final_state=output_final_state,
                cu_seqlens=cu_seqlens, strategy=strategy)


def mamba2(x, dt, A, B, C, D=None, *, initial_state=None, output_final_state=False, cu_seqlens=None,
           strategy=None):
    """Mamba-2 SSD (ssd_minimal_discrete semantics with dt applied, plus the D skip).

    x: ``[B, T, H, P]``; dt: ``[B, T, H]`` (positive: softplus and bias already applied);
    A: ``[H]`` (negative); B, C: ``[B, T, H, N]`` or ``[B, T, G, N]`` (G | H, groups repeated);
    D: ``[H]`` or None (→ 0); ``initial_state``: ``[N_seq, H, N, P]`` (mamba_ssm stores
    ``[.., P, N]``: transpose the last two dims). Returns ``y`` ``[B, T, H, P]`` (and the state).
    """
    if getattr(x, "ndim", None) != 4:
        raise InputError(f"mamba2: x must be [B, T, H, P], got shape {tuple(getattr(x, 'shape', ()))}")
    Bsz, T, H, _ = (int(s) for s in x.shape)
    Bh = _per_head(B, Bsz, T, H, "B", "mamba2")
    Ch = _per_head(C, Bsz, T, H, "C", "mamba2")
    if D is None:
        D = x.new_zeros(H)
    return call(mamba2_mixer, (x, dt, A, Bh, Ch, D), initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy)


# ---- registry ----------------------------------------------------------------------------------

_MAMBA_PAPER = "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (arXiv:2312.00752)"
for (_gated, _softplus), _m in MAMBA_VARIANTS.items():
    register(_m, mamba, dims={"N": "K"}, paper=_MAMBA_PAPER,
             samplers={"A": "negative", "delta": "normal" if _softplus else "time_step",
                       "delta_bias": "uniform" if _softplus else "time_step"},
             description="Mamba-1 selective scan, channels as heads"
                         + (", dt = softplus(delta + delta_bias)" if _softplus else ", dt = delta + delta_bias")
                         + (", gated by silu(z)" if _gated else ""))
register(mamba2_mixer, mamba2, dims={"N": "K", "P": "V"}, samplers={"dt": "time_step", "A": "negative"},
         description="Mamba-2 SSD: scalar decay exp(dt·A) per head, state [N, P], D skip",
         paper="Dao & Gu 2024, Transformers are SSMs (arXiv:2405.21060)")
