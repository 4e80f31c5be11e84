"""Two fla ops that mixir's library does not declare, declared here in the DSL.

Neither is registered in ``mixir.library.MIXERS`` (the library's contract tests draw unbounded
random inputs, and a normalised read-out ``/(q·z)`` has poles there); both compile through the
gated-linear family like the library's mixers (``mixir show`` / ``mixir.compile`` accept them).
"""
from __future__ import annotations

from ...dsl import ops as mx
from ...dsl.mixer import In, Scale, State, mixer

#: fla's ``normalize_with_z_state`` adds this to the denominator
NORMALIZE_EPS = 1e-10


@mixer(name="linear_attention_normalized")
def linear_attention_normalized_mixer(q: In["K"], k: In["K"], v: In["V"], scale: Scale["K"],
                                      S: State["K", "V"], z: State["K"]):
    """fla's ``chunk_linear_attn(normalize=True)``: a second state, the running key sum
    z_t = z_{t-1} + k_t, and o_t = (q̂_t @ S_t) / (q̂_t · z_t + 1e-10) with q̂ = scale·q,
    S_t = S_{t-1} + k_t v_tᵀ. (z is an auxiliary scan; the division is the output scale.)"""
    z = z + k
    S = S + mx.outer(k, v)
    qs = q * scale
    return (qs @ S) / (qs @ z + NORMALIZE_EPS), S, z


@mixer(name="gla_gv")
def gla_gv_mixer(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], gv: In["V"], scale: Scale["K"],
                 S: State["K", "V"]):
    """fla's ``fused_recurrent_gla`` with a value-side gate: S_t = diag(exp gk_t) S_{t-1}
    diag(exp gv_t) + k_t v_tᵀ, o_t = (scale·q_t) @ S_t."""
    S = mx.exp(gv) * (mx.exp(gk) * S) + mx.outer(k, v)
    return (q * scale) @ S, S
