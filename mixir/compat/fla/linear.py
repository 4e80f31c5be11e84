"""fla 0.6's gated-linear ops (linear attention, retention, simple GLA, GLA, HGRN, LightNet) with
fla's names, signatures, layouts and results, over ``mixir.library``'s wrappers.

``chunk_*`` runs mixir's chunked strategy, ``fused_recurrent_*`` its recurrent one. Each returns
``(o, final_state)`` with ``final_state = None`` unless ``output_final_state`` (LightNet and the
normalised linear attention return fla's state pairs). docs/compat.md has the table.
"""
from __future__ import annotations

import torch

import mixir.compat.fla._common as c
import mixir.library as lib
from ...errors import InputError
from ...library.registry import call
from ._mixers import gla_gv_mixer, linear_attention_normalized_mixer

CHUNKED, RECURRENT = "chunked", "recurrent"

# ---- linear attention --------------------------------------------------------------------------


def chunk_linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                      initial_state: torch.Tensor | tuple | None = None, output_final_state: bool = False,
                      normalize: bool = True, cu_seqlens: torch.LongTensor | None = None):
    """fla's ``chunk_linear_attn``: ``o_t = q̂_t S_t`` (``q̂ = scale·q``, ``S_t = Σ_{s≤t} k_s v_sᵀ``),
    divided by ``q̂_t · z_t + 1e-10`` with ``z_t = Σ_{s≤t} k_s`` when ``normalize`` (fla's default
    here). ``initial_state``: ``S_0 [N, H, K, V]``, or with ``normalize`` a pair ``(S_0, z_0
    [N, 1, H, K])``. Returns ``(o, S_T)``, or ``(o, (S_T, z_T))`` when ``normalize`` (``S_T`` is
    ``None`` unless ``output_final_state``; ``z_T [N, 1, H, K]`` always)."""
    return _linear_attn("chunk_linear_attn", q, k, v, scale, initial_state, output_final_state,
                        normalize, cu_seqlens, False, CHUNKED)


def fused_recurrent_linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                scale: float | None = None,
                                initial_state: torch.Tensor | tuple | None = None,
                                output_final_state: bool = False, reverse: bool = False,
                                normalize: bool = False, cu_seqlens: torch.LongTensor | None = None):
    """fla's ``fused_recurrent_linear_attn`` (``normalize`` off by default, ``reverse`` supported):
    as ``chunk_linear_attn``, with mixir's recurrent strategy."""
    return _linear_attn("fused_recurrent_linear_attn", q, k, c.v_like_q(q, v), scale, initial_state,
                        output_final_state, normalize, cu_seqlens, reverse, RECURRENT)


def _linear_attn(name, q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens,
                 reverse, strategy):
    c.tensor(name, "q", q, 4)
    if normalize and isinstance(initial_state, (tuple, list)):
        if len(initial_state) != 2:
            raise InputError(f"{name}: with normalize, initial_state is (S_0 [N, H, K, V], "
                             f"z_0 [N, 1, H, K]), got {len(initial_state)} items")
        S0, z0 = initial_state
    else:
        S0, z0 = initial_state, None
    if S0 is not None and not isinstance(S0, torch.Tensor):
        raise InputError(f"{name}: initial_state must be a tensor [N, H, K, V] (a pair (S_0, z_0) "
                         f"only with normalize=True), got {type(S0).__name__}")
    c.check_varlen(name, q, S0, cu_seqlens)
    if not normalize:
        res = c.run(lib.linear_attention, dict(q=q, k=k, v=v), reverse, cu_seqlens,
                    output_final_state, scale=scale, initial_state=S0, strategy=strategy)
        return c.pair(res, output_final_state)
    B, T, H, K = q.shape
    N, V = c.n_sequences(q, cu_seqlens), v.shape[-1]
    if z0 is not None:
        if tuple(z0.shape) != (N, 1, H, K):
            raise InputError(f"{name}: the key-sum state z_0 must be [N, 1, H, K] = {(N, 1, H, K)}, "
                             f"got {tuple(z0.shape)}")
        z0 = z0.squeeze(1)
    if S0 is not None or z0 is not None:
        S0 = q.new_zeros((N, H, K, V), dtype=torch.float32) if S0 is None else S0
        z0 = q.new_zeros((N, H, K), dtype=torch.float32) if z0 is None else z0
        state = (S0, z0)
    else:
        state = None

    def normalized(q, k, v, **kw):
        return call(linear_attention_normalized_mixer, (q, k, v), **kw)

    o, (ST, zT) = c.run(normalized, dict(q=q, k=k, v=v), reverse, cu_seqlens, True, scale=scale,
                        initial_state=state, strategy=strategy)
    return o, (ST if output_final_state else None, zT.unsqueeze(1))


# ---- retention ---------------------------------------------------------------------------------


def chunk_retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                    cu_seqlens: torch.LongTensor | None = None, **kwargs):
    """fla's ``chunk_retention``: decay ``γ_h = 1 - 2^(-5-h)`` per head."""
    c.options("chunk_retention", kwargs)
    c.check_varlen("chunk_retention", q, initial_state, cu_seqlens)
    res = lib.retention(q, k, v, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=CHUNKED)
    return c.pair(res, output_final_state)


def fused_recurrent_retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              scale: float | None = None, initial_state: torch.Tensor | None = None,
                              output_final_state: bool = False, reverse: bool = False,
                              state_v_first: bool = False, cu_seqlens: torch.LongTensor | None = None,
                              **kwargs):
    """fla's ``fused_recurrent_retention`` (``reverse``, ``state_v_first`` supported)."""
    vf = c.options("fused_recurrent_retention", kwargs, state_v_first)
    c.check_varlen("fused_recurrent_retention", q, initial_state, cu_seqlens)
    res = c.run(lib.retention, dict(q=q, k=k, v=c.v_like_q(q, v)), reverse, cu_seqlens, output_final_state,
                scale=scale, initial_state=c.swap(initial_state) if vf else initial_state,
                strategy=RECURRENT)
    return c.pair(res, output_final_state, vf)


# ---- simple GLA --------------------------------------------------------------------------------


def chunk_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
                     g_gamma: torch.Tensor | None = None, scale: float | None = None,
                     initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                     state_v_first: bool = False, cu_seqlens: torch.LongTensor | None = None,
                     cu_seqlens_cpu: torch.LongTensor | None = None, **kwargs):
    """fla's ``chunk_simple_gla``: ``g [B, T, H]`` per-token log-decays and/or ``g_gamma [H]``
    constant per-head log-decays (their sum when both; none: no decay)."""
    return _simple_gla("chunk_simple_gla", q, k, v, g, g_gamma, scale, initial_state,
                       output_final_state, state_v_first, cu_seqlens, False, kwargs, CHUNKED)


def fused_recurrent_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               g: torch.Tensor | None = None, g_gamma: torch.Tensor | None = None,
                               scale: float | None = None, initial_state: torch.Tensor | None = None,
                               output_final_state: bool = False, reverse: bool = False,
                               state_v_first: bool = False, cu_seqlens: torch.LongTensor | None = None,
                               **kwargs):
    """fla's ``fused_recurrent_simple_gla`` (``reverse``, ``state_v_first`` supported)."""
    return _simple_gla("fused_recurrent_simple_gla", q, k, c.v_like_q(q, v), g, g_gamma, scale,
                       initial_state, output_final_state, state_v_first, cu_seqlens, reverse, kwargs,
                       RECURRENT)


def _simple_gla(name, q, k, v, g, g_gamma, scale, initial_state, output_final_state, state_v_first,
                cu_seqlens, reverse, kwargs, strategy):
    vf = c.options(name, kwargs, state_v_first)
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    res = c.run(lib.simple_gla, dict(q=q, k=k, v=v, g=g), reverse, cu_seqlens, output_final_state,
                g_gamma=g_gamma, scale=scale, initial_state=initial_state, state_v_first=vf,
                strategy=strategy)
    return c.pair(res, output_final_state)


# ---- GLA ---------------------------------------------------------------------------------------


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
              scale: int | None = None, initial_state: torch.Tensor = None,
              output_final_state: bool = False, state_v_first: bool = False,
              cu_seqlens: torch.LongTensor | None = None,
              cu_seqlens_cpu: torch.LongTensor | None = None):
    """fla's ``chunk_gla``: ``g [B, T, H, K]`` per-key-channel log-decays."""
    c.tensor("chunk_gla", "q", q, 4)
    c.check_varlen("chunk_gla", q, initial_state, cu_seqlens)
    if not isinstance(g, torch.Tensor) or g.shape != q.shape:
        raise InputError(f"chunk_gla: q, k, g must have the same shape, got q {tuple(q.shape)}, "
                         f"g {tuple(getattr(g, 'shape', ()))}")
    res = lib.gla(q, k, v, g=g, scale=scale, initial_state=initial_state, state_v_first=state_v_first,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=CHUNKED)
    return c.pair(res, output_final_state)


def fused_recurrent_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor | None = None,
                        gv: torch.Tensor | None = None, scale: int | None = None,
                        initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                        reverse: bool = False, state_v_first: bool = False,
                        cu_seqlens: torch.LongTensor | None = None, **kwargs):
    """fla's ``fused_recurrent_gla``: key-side ``gk [B, T, H, K]`` and/or value-side
    ``gv [B, T, H, V]`` log-decays (``gv`` runs the ``gla_gv`` mixer declared in ``_mixers``)."""
    name = "fused_recurrent_gla"
    vf = c.options(name, kwargs, state_v_first)
    v = c.v_like_q(q, v)
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    h0 = c.swap(initial_state) if vf else initial_state
    if gv is not None:
        gk = q.new_zeros(q.shape) if gk is None else gk

        def fn(q, k, v, gk, gv, **kw):
            return call(gla_gv_mixer, (q, k, v, gk, gv), **kw)
        res = c.run(fn, dict(q=q, k=k, v=v, gk=gk, gv=gv), reverse, cu_seqlens, output_final_state,
                    scale=scale, initial_state=h0, strategy=RECURRENT)
    elif gk is None:
        res = c.run(lib.linear_attention, dict(q=q, k=k, v=v), reverse, cu_seqlens,
                    output_final_state, scale=scale, initial_state=h0, strategy=RECURRENT)
    else:
        res = c.run(lib.gla, dict(q=q, k=k, v=v, gk=gk), reverse, cu_seqlens, output_final_state,
                    scale=scale, initial_state=h0, strategy=RECURRENT)
    return c.pair(res, output_final_state, vf)


# ---- HGRN --------------------------------------------------------------------------------------


def fused_recurrent_hgrn(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor = None,
                         output_final_state: bool = False, cu_seqlens: torch.LongTensor | None = None):
    """fla's ``fused_recurrent_hgrn``: ``h_t = exp(g_t) ⊙ h_{t-1} + x_t``, ``o_t = h_t``; x, g
    ``[B, T, D]``, states ``[N, D]``."""
    c.tensor("fused_recurrent_hgrn", "x", x)
    c.check_varlen("fused_recurrent_hgrn", x, initial_state, cu_seqlens)
    res = lib.hgrn(x, g, initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens, strategy=RECURRENT)
    return c.pair(res, output_final_state)


# ---- LightNet ----------------------------------------------------------------------------------


def chunk_lightnet(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                   initial_state: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
                   output_final_state: bool = False, state_v_first: bool = False,
                   cu_seqlens: torch.LongTensor | None = None):
    """fla's ``chunk_lightnet``: returns ``(o, (S_T or None, z_T))``, the log-normaliser
    ``z_T [N, 1, H, K]`` always (as fla)."""
    return _lightnet("chunk_lightnet", q, k, v, scale, initial_state, output_final_state,
                     state_v_first, cu_seqlens, CHUNKED)


def fused_recurrent_lightnet(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float | None = None,
                             initial_state: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
                             output_final_state: bool = False, state_v_first: bool = False,
                             cu_seqlens: torch.LongTensor | None = None):
    """fla's ``fused_recurrent_lightnet`` (see ``chunk_lightnet``)."""
    return _lightnet("fused_recurrent_lightnet", q, k, v, scale, initial_state, output_final_state,
                     state_v_first, cu_seqlens, RECURRENT)


def _lightnet(name, q, k, v, scale, initial_state, output_final_state, state_v_first, cu_seqlens,
              strategy):
    c.tensor(name, "q", q, 4)
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise InputError(f"{name}: initial_state must be a pair (recurrent_state [N, H, K, V], "
                             "log_normalizer [N, 1, H, K]), either of which may be None")
        h0, z0 = initial_state
        c.check_varlen(name, q, h0 if h0 is not None else z0, cu_seqlens)
        initial_state = (c.swap(h0) if state_v_first else h0, z0)
    else:
        c.check_varlen(name, q, None, cu_seqlens)
    o, (ST, zT) = lib.lightnet(q, k, v, scale=scale, initial_state=initial_state,
                               output_final_state=True, cu_seqlens=cu_seqlens, strategy=strategy)
    if not output_final_state:
        return o, (None, zT)
    return o, (c.swap(ST) if state_v_first else ST, zT)
