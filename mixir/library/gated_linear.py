"""Gated linear attention and its relatives, declared in the DSL, with fla-style wrappers.

Every mixer here has a state ``S_t = decay_t ⊙ S_{t-1} + k_t v_tᵀ`` and a read-out ``o_t = q_t @ S_t``
(fla's convention: the read-out sees the current token). The formulas, shapes and papers are in
docs/library.md; the declarations below are the definition.
"""
from __future__ import annotations

from ..dsl import ops as mx
from ..dsl.mixer import In, Scale, State, mixer
from ..errors import InputError, UnsupportedMixerError
from ..lowering.common.call import check_tensors
from .registry import call, check_chunk_size, register

# ---- declarations ------------------------------------------------------------------------------


@mixer(name="linear_attention")
def linear_attention_mixer(q: In["K"], k: In["K"], v: In["V"], scale: Scale["K"],
                           S: State["K", "V"]):
    """Linear attention without normaliser: S_t = S_{t-1} + k_t v_tᵀ, o_t = (scale·q_t) @ S_t."""
    S = S + mx.outer(k, v)
    return (q * scale) @ S, S


def _retention_log_gamma():
    # RetNet's fixed per-head decay γ_h = 1 - 2^(-5-h), written as exp(log γ_h) so that the
    # analysis reads the log-decay directly (γ_h ∈ (0, 1): no sign to track)
    return mx.log(1.0 - 2.0 ** (-5.0 - mx.head()))


@mixer(name="retention")
def retention_mixer(q: In["K"], k: In["K"], v: In["V"], scale: Scale["K"], S: State["K", "V"]):
    """RetNet: S_t = γ_h S_{t-1} + k_t v_tᵀ with γ_h = 1 - 2^(-5-h), o_t = (scale·q_t) @ S_t."""
    S = mx.exp(_retention_log_gamma()) * S + mx.outer(k, v)
    return (q * scale) @ S, S


@mixer(name="simple_gla")
def simple_gla_mixer(q: In["K"], k: In["K"], v: In["V"], g: In[()], scale: Scale["K"],
                     S: State["K", "V"]):
    """Scalar-gated linear attention: S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = (scale·q_t) @ S_t."""
    S = mx.exp(g) * S + mx.outer(k, v)
    return (q * scale) @ S, S


@mixer(name="gla")
def gla_mixer(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], scale: Scale["K"],
              S: State["K", "V"]):
    """GLA: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ, o_t = (scale·q_t) @ S_t."""
    S = mx.exp(gk) * S + mx.outer(k, v)
    return (q * scale) @ S, S


@mixer(name="hgrn")
def hgrn_mixer(x: In["D"], g: In["D"], h: State["D"]):
    """HGRN: h_t = exp(g_t) ⊙ h_{t-1} + x_t, o_t = h_t (elementwise over D)."""
    h = mx.exp(g) * h + x
    return h, h


@mixer(name="lightnet")
def lightnet_mixer(q: In["K"], k: In["K"], v: In["V"], scale: Scale["K"],
                   S: State["K", "V"], Z: State["K"]):
    """LightNet: Z_t = Z_{t-1} + exp(k_t) (the running normaliser, per key channel),
    S_t = a_t ⊙ S_{t-1} + (exp(k_t) / Z_t) v_tᵀ with a_t = Z_{t-1} / Z_t (a_t = 1 while
    Z_{t-1} = 0, fla's zero first gate after an empty prefix), o_t = (scale·q_t) @ S_t."""
    Z_new = Z + mx.exp(k)
    seen = Z > 0.0                          # 1 once a key has been seen, 0 on an empty prefix
    decay = seen * (Z / Z_new) + (1.0 - seen)
    S = decay * S + mx.outer(mx.exp(k) / Z_new, v)
    return (q * scale) @ S, S, Z_new


# ---- wrappers ----------------------------------------------------------------------------------


def linear_attention(q, k, v, *, scale=None, initial_state=None, output_final_state=False,
                     normalize=False, cu_seqlens=None, chunk_size=None, strategy=None, group=None):
    """fla's ``chunk_linear_attn`` with ``normalize=False``.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; ``initial_state``: ``[N, H, K, V]``.
    Returns ``o`` ``[B, T, H, V]``, or ``(o, final_state)`` when ``output_final_state``.
    ``normalize=True`` (fla's default) divides by ``q·Σk``, a second state: not provided here.
    """
    if normalize:
        raise UnsupportedMixerError(
            "linear_attention(normalize=True): the normaliser q·Σk is a second state, which the "
            "library does not declare; call with normalize=False (the un-normalised form)")
    check_chunk_size("linear_attention", chunk_size)
    return call(linear_attention_mixer, (q, k, v), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)


def retention(q, k, v, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              chunk_size=None, strategy=None, group=None):
    """fla's ``chunk_retention``: decay γ_h = 1 - 2^(-5-h) for head h of ``H = q.shape[2]``.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; ``initial_state``: ``[N, H, K, V]``.
    """
    check_chunk_size("retention", chunk_size)
    return call(retention_mixer, (q, k, v), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)


def simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
               output_final_state=False, state_v_first=False, cu_seqlens=None, chunk_size=None,
               strategy=None, group=None):
    """fla's ``chunk_simple_gla``: ``g`` ``[B, T, H]`` per-token log-decays (≤ 0) and/or ``g_gamma``
    ``[H]`` constant per-head log-decays (their sum when both; neither: no decay).

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; ``initial_state``: ``[N, H, K, V]``
    (``[N, H, V, K]`` in and out with ``state_v_first``). ``chunk_size`` is advisory
    (``registry.check_chunk_size``).
    """
    check_chunk_size("simple_gla", chunk_size)
    check_tensors("simple_gla", [(n, t, False) for n, t in (("q", q), ("k", k), ("v", v), ("g", g))
                                 if t is not None], float64=True)   # float64: refused by the call
    if g_gamma is not None:
        check_tensors("simple_gla", [("g_gamma", g_gamma, False)])
    if q.ndim != 4:
        raise InputError(f"simple_gla: q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H = q.shape[:3]
    if g_gamma is not None:
        if g_gamma.numel() != H:
            raise InputError(f"simple_gla: g_gamma must be [H] = [{H}], got {tuple(g_gamma.shape)}")
        gam = g_gamma.reshape(1, 1, H).expand(B, T, H)
        g = gam if g is None else g + gam
    if g is None:
        g = q.new_zeros((B, T, H))
    res = call(simple_gla_mixer, (q, k, v, g), scale=scale,
               initial_state=_swap(initial_state, state_v_first),
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)
    return _v_first(res, output_final_state, state_v_first)


def gla(q, k, v, gk=None, *, g=None, scale=None, initial_state=None, output_final_state=False,
        state_v_first=False, cu_seqlens=None, chunk_size=None, strategy=None, group=None):
    """fla's ``chunk_gla`` / ``fused_recurrent_gla``: ``gk`` ``[B, T, H, K]`` is the per-key-channel
    log-decay (≤ 0); ``g`` is chunk_gla's name for it (pass one of the two).

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; ``initial_state``: ``[N, H, K, V]``
    (``[N, H, V, K]`` in and out with ``state_v_first``). ``chunk_size`` is advisory.
    """
    if (gk is None) == (g is None):
        raise InputError("gla: pass the log-decay gate [B, T, H, K] once, as gk (fused_recurrent_gla's "
                         "name) or g (chunk_gla's), got " + ("neither" if gk is None else "both"))
    gk = g if gk is None else gk
    check_chunk_size("gla", chunk_size)
    res = call(gla_mixer, (q, k, v, gk), scale=scale, initial_state=_swap(initial_state, state_v_first),
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)
    return _v_first(res, output_final_state, state_v_first)


def _swap(state, state_v_first):
    """fla's ``state_v_first``: states ``[N, H, V, K]`` ↔ the declarations' ``[N, H, K, V]`` (a view)."""
    return state.transpose(-1, -2) if state_v_first and state is not None else state


def _v_first(res, output_final_state, state_v_first):
    if output_final_state and state_v_first:
        return res[0], res[1].transpose(-1, -2)
    return res


def hgrn(x, g, initial_state=None, output_final_state=False, cu_seqlens=None, *, strategy=None, group=None):
    """fla's ``fused_recurrent_hgrn`` (same positional order): ``h_t = exp(g_t) ⊙ h_{t-1} + x_t``,
    ``o_t = h_t``.

    x, g: ``[B, T, D]``; ``initial_state``: ``[N, D]``. Returns ``o`` ``[B, T, D]`` (and the final
    state ``[N, D]``). The declaration is per head with a state ``[D]``: one head.
    """
    check_tensors("hgrn", [("x", x, False), ("g", g, False)]      # float64: refused by the call
                  + ([("initial_state", initial_state, False)] if initial_state is not None else []),
                  float64=True)
    for name, t in (("x", x), ("g", g)):
        if getattr(t, "ndim", None) != 3:
            raise InputError(f"hgrn: {name} must be [B, T, D], got shape {tuple(getattr(t, 'shape', ()))}")
    if initial_state is not None:
        if initial_state.ndim != 2:
            raise InputError(f"hgrn: initial_state must be [N, D], got shape {tuple(initial_state.shape)}")
        initial_state = initial_state.unsqueeze(1)
    res = call(hgrn_mixer, (x.unsqueeze(2), g.unsqueeze(2)), initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)
    if output_final_state:
        o, ht = res
        return o.squeeze(2), ht.squeeze(1)
    return res.squeeze(2)


def lightnet(q, k, v, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
             strategy=None, group=None):
    """fla's ``chunk_lightnet`` (LightNet, "You Only Scan Once").

    q: ``[B, T, H, K]``; k: ``[B, T, H, K]`` key logits; v: ``[B, T, H, V]``.
    ``initial_state``: ``None`` or fla's pair ``(recurrent_state [N, H, K, V], log_normalizer
    [N, 1, H, K])``, either may be ``None``. Returns ``o``, or ``(o, (S_T, z_T))`` in the same
    layouts when ``output_final_state`` (``z_T = -inf`` for an empty sequence without ``z_0``).
    The declaration carries ``Z = exp(z)``; this wrapper converts. Needs the lowering's two-state
    support: until then ``mixir.compile`` raises ``UnsupportedMixerError``.
    """
    check_tensors("lightnet", [("q", q, False), ("k", k, False), ("v", v, False)], float64=True)
    h0 = Z0 = None
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise InputError("lightnet: initial_state must be a pair (recurrent_state [N, H, K, V], "
                             "log_normalizer [N, 1, H, K]), either of which may be None")
        h0, z0 = initial_state
        if z0 is not None:
            if z0.ndim != 4 or z0.shape[1] != 1:
                raise InputError(f"lightnet: the log-normaliser must be [N, 1, H, K], got shape "
                                 f"{tuple(z0.shape)}")
            Z0 = z0.squeeze(1).exp()
        if h0 is None and Z0 is None:
            initial_state = None
        else:
            initial_state = (h0, Z0)
    res = call(lightnet_mixer, (q, k, v), scale=scale, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)
    if output_final_state:
        o, (ST, ZT) = res
        return o, (ST, ZT.log().unsqueeze(1))
    return res


# ---- registry ----------------------------------------------------------------------------------

_KV = {"K": "K", "V": "V"}

register(linear_attention_mixer, linear_attention, dims=_KV,
         description="linear attention without normaliser: S += k vᵀ, o = (scale·q) @ S",
         paper="Katharopoulos et al. 2020, Transformers are RNNs (arXiv:2006.16236)")
register(retention_mixer, retention, dims=_KV,
         description="RetNet retention: fixed per-head decay γ_h = 1 - 2^(-5-h)",
         paper="Sun et al. 2023, Retentive Network (arXiv:2307.08621)")
register(simple_gla_mixer, simple_gla, dims=_KV, samplers={"g": "log_decay"},
         description="scalar-gated linear attention: S = exp(g) S + k vᵀ",
         paper="Yang et al. 2023, Gated Linear Attention Transformers (arXiv:2312.06635); "
               "fla chunk_simple_gla")
register(gla_mixer, gla, dims=_KV, samplers={"gk": "log_decay"},
         description="gated linear attention: S = diag(exp(gk)) S + k vᵀ",
         paper="Yang et al. 2023, Gated Linear Attention Transformers (arXiv:2312.06635)")
register(hgrn_mixer, hgrn, dims={"D": "K"}, samplers={"g": "log_decay"},
         description="HGRN: h = exp(g) ⊙ h + x, o = h (elementwise)",
         paper="Qin et al. 2023, Hierarchically Gated Recurrent Neural Network (arXiv:2311.04823)")
register(lightnet_mixer, lightnet, dims=_KV, samplers={"Z": "positive"},
         description="LightNet: GLA with key exp(k)/Z and decay Z_prev/Z, Z = running Σexp(k)",
         paper="Qin et al. 2024, You Only Scan Once: LightNet (arXiv:2405.21022)")
