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
from ..lowering.common.call import check_tensors
from .registry import call, check_chunk_size, register

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


def _kda_mixer(name, l2norm, beta_act=""):
    def step(q, k, v, beta, g, S, scale):
        beta = _beta(beta, beta_act)
        kn = _key(k, l2norm)
        S = mx.exp(g) * S                 # the key-diagonal gate first: Diag(exp g) S
        S = S - beta * mx.outer(kn, kn @ S)
        S = S + beta * mx.outer(kn, v)
        return (_key(q, l2norm) * scale) @ S, S

    params = [("q", In["K"]), ("k", In["K"]), ("v", In["V"]), ("beta", In[()]), ("g", In["K"]),
              ("S", State["K", "V"]), ("scale", Scale["K"])]
    return _declare(name, step, params, "KDA: S = (I − β k kᵀ) Diag(exp g) S + β k vᵀ, o = (scale·q)ᵀ S")


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
    "gated_delta_product", "kda"}; ``l2norm`` normalises q and k inside (fla's use_qk_l2norm_in_kernel);
    ``beta_act`` ∈ {"", "sigmoid", "2sigmoid"} applies to the β input (gated_delta_rule, kda)."""
    key = (kind, bool(l2norm), int(num_householder), beta_act)
    if key not in _VARIANTS:
        suffix = ("_l2norm" if l2norm else "") + (f"_beta_{beta_act}" if beta_act else "")
        if kind == "delta_rule":
            _VARIANTS[key] = _delta_mixer("delta_rule" + suffix, False, l2norm)
        elif kind == "gated_delta_rule":
            _VARIANTS[key] = _delta_mixer("gated_delta_rule" + suffix, True, l2norm, beta_act)
        elif kind == "kda":
            _VARIANTS[key] = _kda_mixer("kda" + suffix, l2norm, beta_act)
        elif kind == "gated_delta_product":
            _VARIANTS[key] = _product_mixer(f"gated_delta_product{num_householder}" + suffix,
                                            num_householder, l2norm)
        else:
            raise ValueError(kind)
    return _VARIANTS[key]


# ---- wrappers ----------------------------------------------------------------------------------

def _common(name, q, beta, initial_state, cu_seqlens, **tensors):
    """The public arguments' checks (names as the caller wrote them: q, k, v, g, beta): torch
    tensors of a float dtype on one device (``check_tensors``; the per-token dtype rule runs at the
    call), q ``[B, T, H, K]``."""
    check_tensors(name, [(arg, t, False) for arg, t in dict(q=q, **tensors, beta=beta).items()
                         if t is not None])
    if q.ndim != 4:
        raise InputError(f"{name}: q must be [B, T, H, K], got shape {tuple(q.shape)}")


def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, use_qk_l2norm_in_kernel=False, cu_seqlens_cpu=None, chunk_size=None,
               strategy=None, group=None):
    """fla's ``chunk_delta_rule``: S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = (scale·q_t)ᵀ S_t.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; beta: ``[B, T, H]``; ``initial_state``: ``[N, H, K, V]``;
    ``scale`` defaults to K^-1/2. Returns ``o`` (and the final state when ``output_final_state``).
    """
    _common("delta_rule", q, beta, initial_state, cu_seqlens, k=k, v=v)
    check_chunk_size("delta_rule", chunk_size)
    m = delta_mixer("delta_rule", use_qk_l2norm_in_kernel)
    return call(m, (q, k, v, beta), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy, group=group)


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                     allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                     use_gate_in_kernel=False, A_log=None, dt_bias=None, chunk_size=None, strategy=None,
                     group=None):
    """fla's ``chunk_gated_delta_rule``: S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ.

    q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]`` with HV a multiple of H (grouped values: value head
    j reads query/key head j // (HV / H)); g: ``[B, T, HV]`` log-gates (≤ 0); beta: ``[B, T, HV]``
    (``use_beta_sigmoid_in_kernel``: β = sigmoid(beta), or 2·sigmoid(beta) with
    ``allow_neg_eigval``); states ``[N, HV, K, V]`` (``[N, HV, V, K]`` with ``state_v_first``).
    ``use_gate_in_kernel``: g is the raw gate and the log-decay is ``−exp(A_log)·softplus(g + dt_bias)``
    (``A_log``, ``dt_bias`` ``[HV]``), computed in fp32 by torch before the scan, as fla's kernel does.
    ``cu_seqlens_cpu`` is accepted for fla compatibility (mixir reads offsets itself); ``chunk_size``
    is advisory (``registry.check_chunk_size``).
    """
    _common("gated_delta_rule", q, beta, initial_state, cu_seqlens, k=k, v=v, g=g)
    check_chunk_size("gated_delta_rule", chunk_size)
    if use_gate_in_kernel:
        g = gdn_gate("gated_delta_rule", g, A_log, dt_bias)
    return _gated_call("gated_delta_rule", q, k, v, g, beta, scale, initial_state, output_final_state,
                       use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                       state_v_first, cu_seqlens, strategy, group=group)


def _gated_call(kind, q, k, v, g, beta, scale, initial_state, output_final_state, l2norm,
                beta_sigmoid, neg_eigval, state_v_first, cu_seqlens, strategy, group=None):
    """The shared fla 0.6 conventions of ``gated_delta_rule`` and ``kda``: grouped value heads
    (q, k repeated over HV / H), β activation in the declaration, V-first state layout."""
    act = ("2sigmoid" if neg_eigval else "sigmoid") if beta_sigmoid else ""
    H, HV = q.shape[2], v.shape[2] if hasattr(v, "shape") and v.ndim == 4 else q.shape[2]
    if HV != H:
        if HV % H:
            raise InputError(f"{kind}: v has {HV} heads, not a multiple of q's {H}")
        q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    m = delta_mixer(kind, l2norm, beta_act=act)
    res = call(m, (q, k, v, beta, g), scale=scale, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy,
               group=group)
    if output_final_state and state_v_first:
        return res[0], res[1].transpose(-1, -2)
    return res


def kda(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
        use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
        allow_neg_eigval=False, safe_gate=False, lower_bound=None, state_v_first=False,
        cu_seqlens=None, cu_seqlens_cpu=None, A_log=None, dt_bias=None, strategy=None, group=None,
        **unsupported):
    """fla's ``chunk_kda`` (Kimi Delta Attention): S_t = (I − β_t k_t k_tᵀ) Diag(exp g_t) S_{t−1}
    + β_t k_t v_tᵀ, o_t = (scale·q_t)ᵀ S_t.

    q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]`` (HV a multiple of H: grouped values); g:
    ``[B, T, HV, K]`` log-gates (one per key channel); beta: ``[B, T, HV]``; states
    ``[N, HV, K, V]`` (``[N, HV, V, K]`` with ``state_v_first``). ``use_gate_in_kernel``: g is the
    raw gate input and the decay is ``−exp(A_log)·softplus(g + dt_bias)`` (``A_log`` [HV],
    ``dt_bias`` [HV·K]), or with ``safe_gate`` and ``lower_bound``
    ``lower_bound·sigmoid(exp(A_log)·(g + dt_bias))`` (``lower_bound·sigmoid(g + dt_bias)``
    without A_log) — computed by torch before the core. mixir runs KDA with the recurrent
    strategy (forward and backward Triton kernels, one token at a time); the chunked WY kernels
    take scalar gates only. fla's context-parallel, CUDA-graph and intermediate-state options are
    refused by name.
    """
    if bad := sorted(k_ for k_, v_ in unsupported.items() if v_ not in (None, False)):
        raise InputError(f"kda: option(s) {bad} are not supported by mixir")
    _common("kda", q, beta, initial_state, cu_seqlens, k=k, v=v, g=g)
    B, T, H, K = q.shape
    HV = v.shape[2] if hasattr(v, "shape") and v.ndim == 4 else H
    if not hasattr(g, "shape") or tuple(g.shape) != (B, T, HV, K):
        raise InputError(f"kda: g must be [B, T, HV, K] = {(B, T, HV, K)} (one log-gate per key "
                         f"channel), got {tuple(getattr(g, 'shape', ()))}")
    if use_gate_in_kernel:
        g = _kda_gate(g, A_log, dt_bias, HV, K, lower_bound if safe_gate else None)
    return _gated_call("kda", q, k, v, g, beta, scale, initial_state, output_final_state,
                       use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                       state_v_first, cu_seqlens, strategy, group=group)


def gdn_gate(where, g, A_log, dt_bias):
    """fla's in-kernel Gated DeltaNet gate ``−exp(A_log)·softplus(g + dt_bias)`` (A_log, dt_bias
    ``[HV]``; g ``[B, T, HV]`` the raw gate), in fp32 before the scan."""
    import torch
    if A_log is None:
        raise InputError(f"{where}: `A_log` must be provided when `use_gate_in_kernel=True`.")
    if g is None:
        raise InputError(f"{where}: `g` (raw pre-activation) must be provided when "
                         "`use_gate_in_kernel=True`.")
    HV = g.shape[2]
    x = g.float()
    if dt_bias is not None:
        if dt_bias.numel() != HV:
            raise InputError(f"{where}: dt_bias must be [HV] = [{HV}], got {tuple(dt_bias.shape)}")
        x = x + dt_bias.float().reshape(HV)
    if A_log.numel() != HV:
        raise InputError(f"{where}: A_log must be [HV] = [{HV}], got {tuple(A_log.shape)}")
    return -torch.exp(A_log.float().reshape(HV)) * torch.nn.functional.softplus(x)


def _kda_gate(g, A_log, dt_bias, HV, K, lower_bound):
    """fla's in-kernel KDA decay, in torch: ``−exp(A_log)·softplus(g + dt_bias)`` or, bounded,
    ``lower_bound·sigmoid(exp(A_log)·(g + dt_bias))`` (A_log None: ``lower_bound·sigmoid(g + dt_bias)``)."""
    import torch
    x = g.float()
    if dt_bias is not None:
        if dt_bias.numel() != HV * K:
            raise InputError(f"kda: dt_bias must have HV·K = {HV * K} elements, got {dt_bias.numel()}")
        x = x + dt_bias.float().view(HV, K)
    if A_log is not None and A_log.numel() != HV:
        raise InputError(f"kda: A_log must be [HV] = [{HV}], got {tuple(A_log.shape)}")
    a = None if A_log is None else torch.exp(A_log.float()).view(HV, 1)
    if lower_bound is not None:
        return lower_bound * torch.sigmoid(x if a is None else a * x)
    if a is None:
        raise InputError("kda: use_gate_in_kernel needs A_log (or safe_gate with lower_bound)")
    return -a * torch.nn.functional.softplus(x)


def gated_delta_product(q, k, v, g, beta, *, num_householder, scale=None, initial_state=None,
                        output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
                        cu_seqlens_cpu=None, chunk_size=None, strategy=None, group=None):
    """fla's ``chunk_gated_delta_product``: n_h = ``num_householder`` delta steps per token.

    q: ``[B, T, H, K]``; k: ``[B, T·n_h, H, K]``; v: ``[B, T·n_h, H, V]``; beta: ``[B, T·n_h, H]``
    (sub-step j of token t at row t·n_h + j); g: ``[B, T, H]`` or ``None`` (applied with the first
    sub-step); ``cu_seqlens`` counts tokens (rows of q).
    """
    _common("gated_delta_product", q, beta, initial_state, cu_seqlens, k=k, v=v, g=g)
    check_chunk_size("gated_delta_product", chunk_size)
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
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy,
                group=group)


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
register(delta_mixer("kda"), kda, dims=_KV, family="householder",
         samplers={"beta": "beta_neg", "g": "log_decay", "k": "key"},
         description="Kimi Delta Attention: S = (I − β k kᵀ) Diag(exp g) S + β k vᵀ (recurrent)",
         paper="Kimi Team 2025, Kimi Linear (arXiv:2510.26692)")
for _n in (2, 3):
    register(delta_mixer("gated_delta_product", False, _n),
             gated_delta_product, dims=_KV, family="householder",
             samplers={"g": "log_decay", **{f"beta{j}": "beta_neg" for j in range(_n)},
                       **{f"k{j}": "key" for j in range(_n)}},
             description=f"Gated DeltaProduct, n_h = {_n} Householder factors per token",
             paper="Siems et al. 2025, DeltaProduct (arXiv:2502.10297)")
