"""Selective state-space models (Mamba-1, Mamba-2), declared in the DSL, with wrappers.

Mamba-1's channels become heads (``H = D``, a state ``[N]`` per channel, the input ``u`` a scalar per
head and token); Mamba-2 is per head with a state ``[N, P]``. The wrappers adapt mamba_ssm's
layouts (B/C shared across channels or groups) to the declared per-head ones.
"""
from __future__ import annotations

import torch

from ..dsl import ops as mx
from ..dsl.mixer import In, Param, State, trace
from ..errors import InputError
from ..lowering.common.call import check_tensors
from .registry import call, check_chunk_size, register

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


# per-(head, dim) steps: dt [P] per head, the decay exp(dt·A) per value column (a value-side gate)
def _mamba2_dtp_step(x: In["P"], dt: In["P"], A: Param[()], B: In["N"], C: In["N"], D: Param[()],
                     h: State["N", "P"]):
    """Mamba-2 SSD with a step per (head, dim): h_t = exp(dt_t·A) ⊙ h_{t-1} + B_t (dt_t ⊙ x_t)ᵀ
    (dt_t ∈ R^P scales column p of h), y_t = C_t @ h_t + D·x_t."""
    h = mx.exp(dt * A) * h + mx.outer(B, dt * x)
    return C @ h + D * x, h


mamba2_dtp_mixer = trace(_mamba2_dtp_step, "mamba2_dtp")


# ---- layout helpers ----------------------------------------------------------------------------


def _per_head(t, Bsz, T, H, name, fn):
    """``[B, T, N]`` (shared), ``[B, T, G, N]`` (G groups, G | H) or time-invariant ``[H, N]``
    (one per channel/head, the same at every step) → ``[B, T, H, N]``.

    Shared, single-group and time-invariant tensors are broadcast with ``expand`` (a stride-0
    view, no copy); with 1 < G < H the repeat cannot be one strided view, so ``reshape`` copies.
    """
    if t.ndim == 2:
        if int(t.shape[0]) != H:
            raise InputError(f"{fn}: a time-invariant {name} must be [D, N] with D = {H} (one row per "
                             f"channel), got shape {tuple(t.shape)}")
        return t.reshape(1, 1, H, t.shape[1]).expand(Bsz, T, H, t.shape[1])
    if t.ndim == 3:
        t = t.unsqueeze(2)
    if t.ndim != 4 or tuple(t.shape[:2]) != (Bsz, T):
        raise InputError(f"{fn}: {name} must be [B, T, N], [B, T, G, N] or [D, N] with B = {Bsz}, "
                         f"T = {T}, got shape {tuple(t.shape)}")
    G, N = int(t.shape[2]), int(t.shape[3])
    if G == H:
        return t
    if G == 0 or H % G:
        raise InputError(f"{fn}: {name} has {G} groups, which must divide the {H} heads/channels")
    if G == 1:
        return t.expand(Bsz, T, H, N)
    return t.unsqueeze(3).expand(Bsz, T, G, H // G, N).reshape(Bsz, T, H, N)


def _tensors(fn, named, torch_side=()):
    """The public arguments, named as the caller wrote them, through the one type/device rule
    (``check_tensors``). Those the declaration receives unchanged may be float64 here: the compiled
    mixer refuses float64 under the same name (and ``mixir.reference`` runs it); those computed in
    torch first (``torch_side``: dt_bias, z, D [H, P] of Mamba-2) are refused float64 here."""
    check_tensors(fn, [(n, t, False) for n, t in named if t is not None], float64=True)
    check_tensors(fn, [(n, t, False) for n, t in torch_side if t is not None])


# ---- wrappers ----------------------------------------------------------------------------------


def mamba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
          initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None, group=None):
    """Mamba-1 selective scan: mamba_ssm's ``selective_scan_ref`` in layout ``[B, T, D]``.

    u, delta, z: ``[B, T, D]``; A: ``[D, N]`` (real, negative); B, C: ``[B, T, N]``, grouped
    ``[B, T, G, N]`` (G | D) or time-invariant ``[D, N]``; D, delta_bias: ``[D]`` or None (→ 0);
    ``initial_state``: ``[N_seq, D, N]`` (an extension: selective_scan_ref starts from zero).
    Returns ``out`` ``[B, T, D]`` (and the last state ``[N_seq, D, N]``, selective_scan_ref's
    ``return_last_state``).
    """
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise InputError("mamba: complex A is not supported (declare the real and imaginary parts)")
    _tensors("mamba", [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                       ("delta_bias", delta_bias)])
    if u.ndim != 3:
        raise InputError(f"mamba: u must be [B, T, D], got shape {tuple(u.shape)}")
    Bsz, T, Dch = (int(x) for x in u.shape)
    if A.ndim != 2 or int(A.shape[0]) != Dch:
        raise InputError(f"mamba: A must be [D, N] with D = {Dch}, got shape {tuple(A.shape)}")
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
                cu_seqlens=cu_seqlens, strategy=strategy, group=group)


def mamba2(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None, *,
           initial_state=None, output_final_state=False, cu_seqlens=None, seq_idx=None,
           chunk_size=None, strategy=None, group=None):
    """Mamba-2 SSD (ssd_minimal_discrete semantics with dt applied, plus the D skip), with
    mamba_chunk_scan_combined's options.

    x: ``[B, T, H, P]``; dt: ``[B, T, H]``, or ``[B, T, H, P]`` (a step per head and dim: the
    ``mamba2_dtp`` declaration); A: ``[H]`` (negative); B, C: ``[B, T, H, N]`` or ``[B, T, G, N]``
    (G | H, groups repeated); D: ``[H]``, ``[H, P]`` or None (→ 0); z: ``[B, T, H, P]``
    (``y · silu(z)``); dt_bias ``[H]`` (``[H, P]`` with a per-dim dt), ``dt_softplus`` and
    ``dt_limit = (lo, hi)``: ``dt ← clamp(softplus(dt + dt_bias), lo, hi)`` in fp32 before the
    scan (each step only when given). ``seq_idx [B, T]``: a new sequence wherever it changes
    along a row (mamba_ssm's convention; the initial state feeds a row's first sequence when its
    id is 0, the final state is the state at the end of each row). ``chunk_size`` is advisory.
    ``initial_state``: ``[N_seq, H, N, P]`` (mamba_ssm stores ``[.., P, N]``: transpose the last
    two dims). Returns ``y`` ``[B, T, H, P]`` (and the final state).
    """
    y, final, _ = mamba2_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state,
                              cu_seqlens, seq_idx, chunk_size, strategy, "mamba2", group=group)
    return (y, final) if output_final_state else y


def mamba2_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, cu_seqlens,
                seq_idx, chunk_size, strategy, fn, group=None):
    """``mamba2``'s work: ``(y, final states, per-sequence final states or None)`` (the last for
    ``seq_idx``: one per sequence found; mixir.compat.mamba_ssm's varlen states)."""
    torch_side = [("z", z), ("dt_bias", dt_bias)] + ([("D", D)] if getattr(D, "ndim", 1) == 2 else [])
    _tensors(fn, [("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)]
             + ([("D", D)] if getattr(D, "ndim", 1) != 2 else []), torch_side)
    check_chunk_size(fn, chunk_size)
    if x.ndim != 4:
        raise InputError(f"{fn}: x must be [B, T, H, P], got shape {tuple(x.shape)}")
    Bsz, T, H, P = (int(s) for s in x.shape)
    if tuple(dt.shape) not in ((Bsz, T, H), (Bsz, T, H, P)):
        raise InputError(f"{fn}: dt must be [B, T, H] = {(Bsz, T, H)} or [B, T, H, P], got "
                         f"{tuple(dt.shape)}")
    if D is not None and tuple(D.shape) not in ((H,), (H, P)):
        raise InputError(f"{fn}: D must be [H] or [H, P] = {(H, P)}, got {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != tuple(x.shape):
        raise InputError(f"{fn}: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if dt_bias is not None or dt_softplus or dt_limit is not None:
        dt = _step(fn, dt, dt_bias, dt_softplus, dt_limit)
    Bh = _per_head(B, Bsz, T, H, "B", fn)
    Ch = _per_head(C, Bsz, T, H, "C", fn)
    D1 = D if D is not None and D.ndim == 1 else x.new_zeros(H)
    m = mamba2_dtp_mixer if dt.ndim == 4 else mamba2_mixer
    if seq_idx is None:
        y, final = call(m, (x, dt, A, Bh, Ch, D1), initial_state=initial_state, output_final_state=True,
                        cu_seqlens=cu_seqlens, strategy=strategy, group=group)
        per_seq = None
    else:
        if cu_seqlens is not None:
            raise InputError(f"{fn}: pass sequence boundaries once, as seq_idx or as cu_seqlens")
        if group is not None:
            raise InputError(f"{fn}: seq_idx with group= is not supported (seq_idx is per rank); pass "
                             f"the global cu_seqlens instead")
        cu, row, carries = seq_segments(fn, seq_idx, Bsz, T)
        init = None
        if initial_state is not None and bool(carries.any()):
            init = initial_state.new_zeros((cu.numel() - 1,) + tuple(initial_state.shape[1:]))
            init[carries] = initial_state[row[carries]]
        flat = [t.reshape((1, Bsz * T) + tuple(t.shape[2:])) for t in (x, dt, Bh, Ch)]
        y, per_seq = call(m, (flat[0], flat[1], A, flat[2], flat[3], D1), initial_state=init,
                          output_final_state=True, cu_seqlens=cu, strategy=strategy)
        y = y.reshape(Bsz, T, H, P)
        ends = torch.searchsorted(cu[1:], torch.arange(1, Bsz + 1, device=cu.device) * T)
        final = per_seq[ends]
    if D is not None and D.ndim == 2:
        y = y + x * D.to(x.dtype)
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, final, per_seq


def _step(fn, dt, dt_bias, dt_softplus, dt_limit):
    """mamba_ssm's step preprocessing in fp32: bias, softplus (linear above 20, as its kernel),
    then the clamp to ``dt_limit``."""
    x = dt.float()
    if dt_bias is not None:
        H = dt.shape[2]
        shapes = {(H,): (H,) + (1,) * (dt.ndim - 3)}
        if dt.ndim == 4:
            shapes[(H, dt.shape[3])] = (H, dt.shape[3])
        if tuple(dt_bias.shape) not in shapes:
            raise InputError(f"{fn}: dt_bias must be " + " or ".join(str(list(k)) for k in shapes)
                             + f" (H, P of x), got {tuple(dt_bias.shape)}")
        x = x + dt_bias.float().reshape(shapes[tuple(dt_bias.shape)])
    if dt_softplus:
        x = torch.nn.functional.softplus(x)
    if dt_limit is not None:
        lo, hi = (float(t) for t in dt_limit)
        x = x.clamp(min=lo, max=hi if hi != float("inf") else None)
    return x


def seq_segments(fn, seq_idx, b, L):
    """Offsets ``cu [S + 1]`` of the packed ``[1, b·L]`` call: a new sequence at every row start and
    wherever ``seq_idx`` changes; also each segment's row and whether it starts its row with id 0
    (mamba_ssm: only then does the row's initial state feed it)."""
    if not isinstance(seq_idx, torch.Tensor) or tuple(seq_idx.shape) != (b, L):
        raise InputError(f"{fn}: seq_idx must be [batch, seqlen] = {(b, L)}, got "
                         f"{tuple(getattr(seq_idx, 'shape', ())) or type(seq_idx).__name__}")
    s = seq_idx.long()
    step = s[:, 1:] - s[:, :-1]
    if bool((step < 0).any()):
        raise InputError(f"{fn}: seq_idx must be non-decreasing along the sequence (each sequence one "
                         "contiguous run of tokens); mamba_ssm's chunked kernels give a decreasing "
                         "seq_idx no consistent meaning")
    start = torch.ones((b, L), dtype=torch.bool, device=s.device)
    start[:, 1:] = step != 0
    pos = torch.nonzero(start.reshape(-1)).squeeze(1)
    cu = torch.cat([pos, pos.new_tensor([b * L])])
    return cu, pos // L, (pos % L == 0) & (s.reshape(-1)[pos] == 0)


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
