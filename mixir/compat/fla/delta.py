"""fla 0.6's delta-rule ops (DeltaNet, Gated DeltaNet, Gated DeltaProduct, KDA) with fla's names,
signatures, layouts and results, over ``mixir.library.householder``'s wrappers.

β is fla's: ``S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`` — the library's declarations write
the ``β_t v_t`` of the delta rule out, so fla's ``beta`` passes through unchanged. ``chunk_*`` runs
mixir's chunked strategy, ``fused_recurrent_*`` its recurrent one, except KDA: mixir has no chunked
kernel for a per-key-channel gate, so ``chunk_kda`` runs the recurrent strategy.
"""
from __future__ import annotations

import torch

import mixir.compat.fla._common as c
import mixir.library as lib
from ...errors import InputError
from ...library.householder import gdn_gate

CHUNKED, RECURRENT = "chunked", "recurrent"


def _beta(name, beta, q, v):
    """fla's ``beta=None`` (fused_recurrent ops) is 1; a β per value channel is not declared."""
    if beta is None:
        return torch.ones_like(q[..., 0]) if v.shape[2] == q.shape[2] else v.new_ones(v.shape[:3])
    if beta.ndim == 4:
        raise InputError(f"{name}: beta of shape {tuple(beta.shape)} (one β per value channel) is not "
                         "supported: mixir declares the delta rule with one β per head and token "
                         "([B, T, H])")
    return beta


def _sigmoid_beta(name, use_beta_sigmoid_in_kernel, allow_neg_eigval):
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise InputError(f"{name}: `allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")


# ---- DeltaNet ----------------------------------------------------------------------------------


def chunk_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
                     cu_seqlens: torch.LongTensor | None = None,
                     cu_seqlens_cpu: torch.LongTensor | None = None, **kwargs):
    """fla's ``chunk_delta_rule`` (fp32 inputs are accepted too; fla's chunked kernel refuses them)."""
    c.options("chunk_delta_rule", kwargs)
    c.tensor("chunk_delta_rule", "q", q, 4)
    c.tensor("chunk_delta_rule", "beta", beta, 3)
    c.check_varlen("chunk_delta_rule", q, initial_state, cu_seqlens)
    res = lib.delta_rule(q, k, v, beta, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                         use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, strategy=CHUNKED)
    return c.pair(res, output_final_state)


def fused_recurrent_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               beta: torch.Tensor = None, scale: float = None,
                               initial_state: torch.Tensor = None, output_final_state: bool = False,
                               use_qk_l2norm_in_kernel: bool = False,
                               cu_seqlens: torch.LongTensor | None = None):
    """fla's ``fused_recurrent_delta_rule`` (``beta=None`` is β = 1)."""
    name = "fused_recurrent_delta_rule"
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    if scale is not None and not scale > 0:
        raise InputError(f"{name}: scale must be positive, got {scale}")
    res = lib.delta_rule(q, k, v, _beta(name, beta, q, v), scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                         use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, strategy=RECURRENT)
    return c.pair(res, output_final_state)


# ---- Gated DeltaNet ----------------------------------------------------------------------------


def _check_heads(name, q, k, v):
    c.tensor(name, "q", q, 4)
    c.tensor(name, "k", k, 4)
    c.tensor(name, "v", v, 4)
    if q.shape[2] != k.shape[2]:
        raise InputError(f"{name}: q and k must have the same number of heads, but got "
                         f"q.shape[2]={q.shape[2]} and k.shape[2]={k.shape[2]}")
    H, HV = q.shape[2], v.shape[2]
    if HV % H:
        raise InputError(f"{name}: For GVA, num_v_heads (HV={HV}) must be evenly divisible by "
                         f"num_heads (H={H}), but got HV % H = {HV % H}")


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, scale: float | None = None,
                           initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                           use_qk_l2norm_in_kernel: bool = False, use_beta_sigmoid_in_kernel: bool = False,
                           allow_neg_eigval: bool = False, state_v_first: bool = False,
                           cu_seqlens: torch.LongTensor | None = None,
                           cu_seqlens_cpu: torch.LongTensor | None = None,
                           chunk_indices: torch.LongTensor | None = None, cp_context=None, **kwargs):
    """fla's ``chunk_gated_delta_rule``: grouped value heads, ``use_qk_l2norm_in_kernel``, β
    activations, ``state_v_first`` and (in ``kwargs``, as fla) ``use_gate_in_kernel`` with
    ``A_log`` / ``dt_bias``."""
    name = "chunk_gated_delta_rule"
    vf = c.options(name, dict(kwargs, cp_context=cp_context), state_v_first)
    _check_heads(name, q, k, v)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    _sigmoid_beta(name, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    if kwargs.get("use_gate_in_kernel", False):     # fla reads these from kwargs here
        g = gdn_gate(name, g, kwargs.get("A_log"), kwargs.get("dt_bias"))
    res = lib.gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state,
                               use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                               use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                               allow_neg_eigval=allow_neg_eigval, state_v_first=vf,
                               cu_seqlens=cu_seqlens, strategy=CHUNKED)
    return c.pair(res, output_final_state)


def fused_recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     g: torch.Tensor | None = None, gk: torch.Tensor | None = None,
                                     gv: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                                     scale: float = None, initial_state: torch.Tensor = None,
                                     output_final_state: bool = False,
                                     use_qk_l2norm_in_kernel: bool = False,
                                     use_gate_in_kernel: bool = False,
                                     A_log: torch.Tensor | None = None,
                                     dt_bias: torch.Tensor | None = None,
                                     use_beta_sigmoid_in_kernel: bool = False,
                                     allow_neg_eigval: bool = False, state_v_first: bool = False,
                                     cu_seqlens: torch.LongTensor | None = None, **kwargs):
    """fla's ``fused_recurrent_gated_delta_rule``: scalar gate ``g [B, T, HV]`` and/or key-side
    gate ``gk [B, T, HV, K]`` (then the KDA mixer with the gate ``gk + g``); a value-side gate
    ``gv`` is refused (no declared delta rule has one)."""
    name = "fused_recurrent_gated_delta_rule"
    vf = c.options(name, kwargs, state_v_first)
    _check_heads(name, q, k, v)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    _sigmoid_beta(name, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    if gv is not None:
        raise InputError(f"{name}: gv (a gate per value channel) is not supported: mixir declares the "
                         "gated delta rule with scalar (g) and key-side (gk) gates only")
    if use_gate_in_kernel:
        g = gdn_gate(name, g, A_log, dt_bias)
    beta = _beta(name, beta, q, v)
    opts = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                allow_neg_eigval=allow_neg_eigval, state_v_first=vf, cu_seqlens=cu_seqlens,
                strategy=RECURRENT)
    if gk is not None:
        gate = gk if g is None else gk + g.unsqueeze(-1)
        return c.pair(lib.kda(q, k, v, gate, beta, **opts), output_final_state)
    g = v.new_zeros(v.shape[:3]) if g is None else g
    return c.pair(lib.gated_delta_rule(q, k, v, g, beta, **opts), output_final_state)


# ---- Gated DeltaProduct ------------------------------------------------------------------------


def chunk_gated_delta_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                              beta: torch.Tensor, num_householder: int, scale: float = None,
                              initial_state: torch.Tensor = None, output_final_state: bool = False,
                              use_qk_l2norm_in_kernel: bool = False,
                              cu_seqlens: torch.LongTensor | None = None,
                              cu_seqlens_cpu: torch.LongTensor | None = None, cp_context=None):
    """fla's ``chunk_gated_delta_product``: ``num_householder`` delta steps per token (k, v, beta
    have ``T·num_householder`` rows; ``g [B, T, H]`` or None)."""
    name = "chunk_gated_delta_product"
    c.options(name, {"cp_context": cp_context})
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    res = lib.gated_delta_product(q, k, v, g, beta, num_householder=num_householder, scale=scale,
                                  initial_state=initial_state, output_final_state=output_final_state,
                                  cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                  strategy=CHUNKED)
    return c.pair(res, output_final_state)


# ---- KDA ---------------------------------------------------------------------------------------


def chunk_kda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              scale: float | None = None, initial_state: torch.Tensor | None = None,
              output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
              use_gate_in_kernel: bool = False, use_beta_sigmoid_in_kernel: bool = False,
              allow_neg_eigval: bool = False, safe_gate: bool = False, lower_bound: float | None = None,
              disable_recompute: bool = False, return_intermediate_states: bool = False,
              state_v_first: bool = False, cu_seqlens: torch.LongTensor | None = None,
              cu_seqlens_cpu: torch.LongTensor | None = None, cp_context=None, use_graph: bool = False,
              max_num_seqs: int | None = None, **kwargs):
    """fla's ``chunk_kda`` (run with mixir's recurrent strategy: see the module docstring).
    ``A_log`` / ``dt_bias`` come in ``kwargs`` with ``use_gate_in_kernel``, as in fla;
    ``disable_recompute``, ``use_graph``, ``max_num_seqs`` are performance options without effect;
    ``return_intermediate_states`` is refused."""
    name = "chunk_kda"
    vf = c.options(name, dict(kwargs, cp_context=cp_context), state_v_first)
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    if return_intermediate_states:
        raise InputError(f"{name}: return_intermediate_states (fla's per-chunk states) is not "
                         "supported by mixir")
    A_log = dt_bias = None
    if use_gate_in_kernel:
        A_log, dt_bias = kwargs.get("A_log"), kwargs.get("dt_bias")
        if A_log is None and lower_bound is None:
            raise InputError(f"{name}: `A_log` must be provided when `use_gate_in_kernel=True` and "
                             "`lower_bound` is not set.")
    if safe_gate and use_gate_in_kernel:
        if lower_bound is None:
            raise InputError(f"{name}: `lower_bound` must be specified when `safe_gate=True` and "
                             "`use_gate_in_kernel=True`.")
        if not (-5 <= lower_bound < 0):
            raise InputError(f"{name}: `lower_bound` must be in the safe range [-5, 0), got {lower_bound}.")
    _sigmoid_beta(name, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    res = lib.kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                  use_gate_in_kernel=use_gate_in_kernel,
                  use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                  allow_neg_eigval=allow_neg_eigval, safe_gate=safe_gate, lower_bound=lower_bound,
                  state_v_first=vf, cu_seqlens=cu_seqlens, A_log=A_log, dt_bias=dt_bias,
                  strategy=RECURRENT)
    return c.pair(res, output_final_state)


def fused_recurrent_kda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                        beta: torch.Tensor, A_log: torch.Tensor | None = None,
                        dt_bias: torch.Tensor | None = None, scale: float | None = None,
                        initial_state: torch.Tensor = None, output_final_state: bool = False,
                        use_qk_l2norm_in_kernel: bool = False, use_gate_in_kernel: bool = False,
                        use_beta_sigmoid_in_kernel: bool = False, allow_neg_eigval: bool = False,
                        lower_bound: float | None = None, state_v_first: bool = False,
                        cu_seqlens: torch.LongTensor | None = None, **kwargs):
    """fla's ``fused_recurrent_kda`` (``lower_bound`` with ``use_gate_in_kernel``: the bounded
    gate ``lower_bound·sigmoid(exp(A_log)·(g + dt_bias))``)."""
    name = "fused_recurrent_kda"
    vf = c.options(name, kwargs, state_v_first)
    c.tensor(name, "q", q, 4)
    c.check_varlen(name, q, initial_state, cu_seqlens)
    _sigmoid_beta(name, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    if use_gate_in_kernel and A_log is None and lower_bound is None:
        raise InputError(f"{name}: use_gate_in_kernel needs A_log (or lower_bound)")
    res = lib.kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                  use_gate_in_kernel=use_gate_in_kernel,
                  use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                  allow_neg_eigval=allow_neg_eigval, safe_gate=lower_bound is not None,
                  lower_bound=lower_bound, state_v_first=vf, cu_seqlens=cu_seqlens,
                  A_log=A_log if use_gate_in_kernel else None,
                  dt_bias=dt_bias if use_gate_in_kernel else None, strategy=RECURRENT)
    return c.pair(res, output_final_state)
