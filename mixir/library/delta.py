"""DeltaNet, Gated DeltaNet and Gated DeltaProduct, declared in the DSL, with fla-style wrappers.

Each declaration is the per-token delta rule written out (docs/delta_rule.md has the math):

    S ← α (S − β k (kᵀ S)) + β k vᵀ,        o = (scale · q)ᵀ S

and DeltaProduct applies n_h such steps per token (gate on the first, read-out after the last).
The same functions as flash-linear-attention 0.6's ``chunk_delta_rule``, ``chunk_gated_delta_rule``
and ``chunk_gated_delta_product`` (argument names, layouts, defaults).
"""
from __future__ import annotations

import inspect

from ..dsl import ops as mx
from ..dsl.mixer import In, Scale, State, mixer
from ..errors import InputError
from .registry import call, register

# ---- declarations ------------------------------------------------------------------------------


def _key(k, l2norm):
    return mx.l2norm(k, "K") if l2norm else k


def _beta(b, beta_act):
    """β from the β input: as given, ``sigmoid(b)``, or ``2 sigmoid(b)`` (fla's
    use_beta_sigmoid_in_kernel / allow_neg_eigval)."""
    if beta_act == "sigmoid":
        return mx.sigmoid(b)
    if beta_act == "2sigmoid":
        return 2.0 * mx.sigmoid(b)
    return b


def _delta_mixer(name, gated, l2norm, beta_act=""):
    def step(q, k, v, beta, *rest):
        *g, S, scale = rest
        beta = _beta(beta, beta_act)
        kn = _key(k, l2norm)
        S = S - beta * mx.outer(kn, kn @ S)
        if gated:
            S = mx.exp(g[0]) * S
        S = S + beta * mx.outer(kn, v)
        return (_key(q, l2norm) * scale) @ S, S

    params = ([("q", In["K"]), ("k", In["K"]), ("v", In["V"]), ("beta", In[()])]
              + ([("g", In[()])] if gated else []) + [("S", State["K", "V"]), ("scale", Scale["K"])])
    return _declare(name, step, params, _doc(gated, 1))


def _product_mixer(name, n_h, l2norm):
    def step(q, *rest):
        ks, vs, betas = rest[:n_h], rest[n_h:2 * n_h], rest[2 * n_h:3 * n_h]
        g, S, scale = rest[3 * n_h:]
        for j in range(n_h):
            kn = _key(ks[j], l2norm)
            S = S - betas[j] * mx.outer(kn, kn @ S)
            if j == 0:
                S = mx.exp(g) * S
            S = S + betas[j] * mx.outer(kn, vs[j])
        return (_key(q, l2norm) * scale) @ S, S

    params = ([("q", In["K"])] + [(f"k{j}", In["K"]) for j in range(n_h)]
              + [(f"v{j}", In["V"]) for j in range(n_h)] + [(f"beta{j}", In[()]) for j in range(n_h)]
              + [("g", In[()]), ("S", State["K", "V"]), ("scale", Scale["K"])])
    return _declare(name, step, params, _doc(True, n_h))


def _doc(gated, n_h):
    gate = "exp(g) " if gated else ""
    if n_h == 1:
        return f"S = {gate}(I − β k kᵀ) S + β k vᵀ, o = (scale·q)ᵀ S"
    return (f"{n_h} Householder steps per token: S = (I − β_j k_j k_jᵀ) S + β_j k_j v_jᵀ "
            f"(j = 0 … {n_h - 1}), "
            "the gate exp(g) on step 0, o = (scale·q)ᵀ S after the last")


def _declare(name, step, params, doc):
    """Trace ``step`` under a signature built from ``params`` [(name, annotation)]: the DSL reads
    a mixer's arguments from its signature, so generated families of declarations get one."""
    def fn(*args):
        return step(*args)
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n, _ in params])
    fn.__annotations__ = dict(params)
    fn.__doc__ = doc
    fn.__name__ = name
    return mixer(fn, name=name)


_VARIANTS = {}


def delta_mixer(kind: str, l2norm: bool = False, num_householder: int = 1, beta_act: str = ""):
    """The declared mixer of one variant: ``kind`` ∈ {"delta_rule", "gated_delta_rule",
    "gated_delta_product"}; ``l2norm`` normalises q and k inside (fla's use_qk_l2norm_in_kernel);
    ``beta_act`` ∈ {"", "sigmoid", "2sigmoid"} applies to the β input (gated_delta_rule only)."""
    key = (kind, bool(l2norm), int(num_householder), beta_act)
    if key not in _VARIANTS:
        suffix = ("_l2norm" if l2norm else "") + (f"_beta_{beta_act}" if beta_act else "")
        if kind == "delta_rule":
            _VARIANTS[key] = _delta_mixer("delta_rule" + suffix, False, l2norm)
        elif kind == "gated_delta_rule":
            _VARIANTS[key] = _delta_mixer("gated_delta_rule" + suffix, True, l2norm, beta_act)
        elif kind == "gated_delta_product":
            _VARIANTS[key] = _product_mixer(f"gated_delta_product{num_householder}" + suffix,
                                            num_householder, l2norm)
        else:
            raise ValueError(kind)
    return _VARIANTS[key]


# ---- wrappers ----------------------------------------------------------------------------------

def _common(name, q, beta, initial_state, cu_seqlens):
    for arg, t in (("q", q), ("beta", beta)):
        if not hasattr(t, "shape"):
            raise InputError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if q.ndim != 4:
        raise InputError(f"{name}: q must be [B, T, H, K], got shape {tuple(q.shape)}")


def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, use_qk_l2norm_in_kernel=False, cu_seqlens_cpu=None, strategy=None):
    """fla's ``chunk_delta_rule``: S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = (scale·q_t)ᵀ S_t.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; beta: ``[B, T, H]``; ``initial_state``: ``[N, H, K, V]``;
    ``scale`` defaults to K^-1/2. Returns ``o`` (and the final state when ``output_final_state``).
    """
    _common("delta_rule", q, beta, initial_state, cu_seqlens)
    m = delta_mixer("delta_rule", use_qk_l2norm_in_kernel)
    return call(m, (q, k, v, beta), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy)


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                     allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                     strategy=None):
    """fla's ``chunk_gated_delta_rule``: S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ.

    q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]`` with HV a multiple of H (grouped values: value head
    j reads query/key head j // (HV / H)); g: ``[B, T, HV]`` log-gates (≤ 0); beta: ``[B, T, HV]``
    (``use_beta_sigmoid_in_kernel``: β = sigmoid(beta), or 2·sigmoid(beta) with
    ``allow_neg_eigval``); states ``[N, HV, K, V]`` (``[N, HV, V, K]`` with ``state_v_first``).
    ``cu_seqlens_cpu`` is accepted for fla compatibility (mixir reads offsets itself).
    """
    _common("gated_delta_rule", q, beta, initial_state, cu_seqlens)
    act = ("2sigmoid" if allow_neg_eigval else "sigmoid") if use_beta_sigmoid_in_kernel else ""
    H, HV = q.shape[2], v.shape[2] if hasattr(v, "shape") and v.ndim == 4 else q.shape[2]
    if HV != H:
        if HV % H:
            raise InputError(f"gated_delta_rule: v has {HV} heads, not a multiple of q's {H}")
        q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    m = delta_mixer("gated_delta_rule", use_qk_l2norm_in_kernel, beta_act=act)
    res = call(m, (q, k, v, beta, g), scale=scale, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy)
    if output_final_state and state_v_first:
        return res[0], res[1].transpose(-1, -2)
    return res


def gated_delta_product(q, k, v, g, beta, *, num_householder, scale=None, initial_state=None,
                        output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
                        cu_seqlens_cpu=None, strategy=None):
    """fla's ``chunk_gated_delta_product``: n_h = ``num_householder`` delta steps per token.

    q: ``[B, T, H, K]``; k: ``[B, T·n_h, H, K]``; v: ``[B, T·n_h, H, V]``; beta: ``[B, T·n_h, H]``
    (sub-step j of token t at row t·n_h + j); g: ``[B, T, H]`` or ``None`` (applied with the first
    sub-step); ``cu_seqlens`` counts tokens (rows of q).
    """
    _common("gated_delta_product", q, beta, initial_state, cu_seqlens)
    n = int(num_householder)
    if n < 1:
        raise InputError(f"gated_delta_product: num_householder must be ≥ 1, got {num_householder}")
    B, T, H = q.shape[:3]
    for arg, t, rows in (("k", k, T * n), ("v", v, T * n), ("beta", beta, T * n)):
        if t.ndim < 3 or t.shape[0] != B or t.shape[1] != rows or t.shape[2] != H:
            raise InputError(f"gated_delta_product: {arg} must have T·num_householder = {rows} rows "
                             f"[B={B}, {rows}, H={H}, ...], got shape {tuple(t.shape)}")
    if g is None:
        g = q.new_zeros((B, T, H))
    elif tuple(g.shape) != (B, T, H):
        raise InputError(f"gated_delta_product: g must be [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")

    def split(t):
        t = t.reshape((B, T, n) + tuple(t.shape[2:]))
        return [t[:, :, j] for j in range(n)]

    m = delta_mixer("gated_delta_product", use_qk_l2norm_in_kernel, n)
    arrays = (q, *split(k), *split(v), *split(beta), g)
    return call(m, arrays, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy)


# ---- registry ----------------------------------------------------------------------------------

_KV = {"K": "K", "V": "V"}
_PAPER = ("Schlag et al. 2021 (arXiv:2102.11174); Yang et al. 2024, Parallelizing Linear Transformers "
          "with the Delta Rule (arXiv:2406.06484)")

register(delta_mixer("delta_rule"), delta_rule, dims=_KV, family="householder",
         samplers={"beta": "beta_neg", "k": "key"},
         description="DeltaNet: S = (I − β k kᵀ) S + β k vᵀ, β ∈ [0, 2]", paper=_PAPER)
register(delta_mixer("gated_delta_rule"), gated_delta_rule, dims=_KV, family="householder",
         samplers={"beta": "beta_neg", "g": "log_decay", "k": "key"},
         description="Gated DeltaNet: S = exp(g)(I − β k kᵀ) S + β k vᵀ",
         paper="Yang, Kautz, Hatamizadeh 2024, Gated Delta Networks (arXiv:2412.06464)")
for _n in (2, 3):
    register(delta_mixer("gated_delta_product", False, _n),
             gated_delta_product, dims=_KV, family="householder",
             samplers={"g": "log_decay", **{f"beta{j}": "beta_neg" for j in range(_n)},
                       **{f"k{j}": "key" for j in range(_n)}},
             description=f"Gated DeltaProduct, n_h = {_n} Householder factors per token",
             paper="Siems et al. 2025, DeltaProduct (arXiv:2502.10297)")
