"""Gated linear attention and Gated DeltaNet layers (fla's ``layers/gla.py`` and
``layers/gated_deltanet.py`` conventions), mixing through mixir's library mixers.

Both layers take ``x [B, T, d_model]`` and return ``[B, T, d_model]``; with
``output_final_state=True`` they return ``(o, state)``, ``state`` a dict ``{"recurrent": S,
"conv": (cq, ck, cv)}`` (``"conv"`` only with short convolutions) that ``initial_state`` accepts,
so that a sequence cut in pieces gives the outputs of the whole.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..library import gated_delta_rule, gla
from ..library.householder import delta_mixer
from ..library.registry import MIXERS
from .common import (
    GatedRMSNorm,
    RMSNorm,
    ShortConvolution,
    a_log_init,
    check_divides,
    check_positive,
    check_x,
    dt_bias_init,
    heads,
    layer_output,
    split_state,
    xavier_,
)

_STATE_KEYS = ("recurrent", "conv")


class _ConvQKV(nn.Module):
    """Optional short convolutions on q, k and v (silu), with their caches."""

    def __init__(self, dims, use_short_conv: bool, conv_size: int, conv_bias: bool):
        super().__init__()
        self.convs = (nn.ModuleList(ShortConvolution(d, conv_size, conv_bias) for d in dims)
                      if use_short_conv else None)

    def forward(self, xs, caches, output_final_state):
        if self.convs is None:
            if caches is not None:
                raise InputError("initial_state['conv'] is given but the layer has no short convolution")
            return xs, None
        caches = caches if caches is not None else (None,) * len(xs)
        outs = [c(x, cache, output_final_state) for c, x, cache in zip(self.convs, xs, caches)]
        return [o[0] for o in outs], (tuple(o[1] for o in outs) if output_final_state else None)


class GatedLinearAttention(nn.Module):
    """Gated linear attention (Yang et al. 2023, arXiv:2312.06635), fla's ``GatedLinearAttention``.

    ``q, k = W_q x, W_k x`` (key dim ``d_model·expand_k``), ``v = W_v x`` (``d_model·expand_v``),
    a low-rank forget gate ``gk = logsigmoid(W_g2 W_g1 x + b) / gate_logit_normalizer`` per key
    channel, the GLA recurrence ``S_t = diag(exp gk_t) S_{t−1} + k_t v_tᵀ``, ``o_t = (q_t/√d_k)ᵀ S_t``
    per head, then RMSNorm per head times ``silu(W_r x)`` (``use_output_gate``) and ``W_o``.
    Projections: ``xavier_uniform_`` with gain ``2^-2.5``, zero biases (fla's init).
    """

    def __init__(self, d_model: int, num_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0,
                 use_output_gate: bool = True, use_short_conv: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0,
                 clamp_min: float | None = None, norm_eps: float = 1e-5, strategy: str | None = None):
        super().__init__()
        name = "GatedLinearAttention"
        self.d_model = check_positive(d_model, "d_model", name)
        self.num_heads = check_positive(num_heads, "num_heads", name)
        self.key_dim, self.value_dim = int(d_model * expand_k), int(d_model * expand_v)
        self.head_k_dim = check_divides(self.key_dim, num_heads, "key_dim (d_model·expand_k)", name)
        self.head_v_dim = check_divides(self.value_dim, num_heads, "value_dim (d_model·expand_v)", name)
        self.gate_logit_normalizer, self.clamp_min, self.strategy = gate_logit_normalizer, clamp_min, strategy
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, self.key_dim, bias=True))
        self.conv = _ConvQKV((self.key_dim, self.key_dim, self.value_dim), use_short_conv, conv_size, conv_bias)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False) if use_output_gate else None
        self.o_norm = (GatedRMSNorm(self.head_v_dim, norm_eps) if use_output_gate
                       else RMSNorm(self.head_v_dim, norm_eps))
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        xavier_(self)

    @property
    def mixer(self):
        """The declaration the layer runs (``mixir.reference(layer.mixer)`` executes it)."""
        return MIXERS["gla"].mixer

    def mixer_inputs(self, x, conv_cache=None, output_final_state=False):
        """The mixer's inputs ``(q, k, v, gk)`` ``[B, T, H, ·]`` in declaration order, and the new
        conv caches (None without short convolutions or ``output_final_state``)."""
        check_x(x, self.d_model, "GatedLinearAttention")
        (q, k, v), conv = self.conv([self.q_proj(x), self.k_proj(x), self.v_proj(x)], conv_cache,
                                    output_final_state)
        gk = F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp(min=self.clamp_min)
        H = self.num_heads
        return (heads(q, H), heads(k, H), heads(v, H), heads(gk, H)), conv

    def forward(self, x, initial_state=None, output_final_state: bool = False):
        st = split_state(initial_state, "GatedLinearAttention", _STATE_KEYS)
        (q, k, v, gk), conv = self.mixer_inputs(x, st["conv"], output_final_state)
        res = gla(q, k, v, gk, initial_state=st["recurrent"], output_final_state=output_final_state,
                  strategy=self.strategy)
        o, S = res if output_final_state else (res, None)
        o = self.o_norm(o, heads(self.g_proj(x), self.num_heads)) if self.g_proj is not None else self.o_norm(o)
        return layer_output(self.o_proj(o.flatten(-2)), S, conv, output_final_state)


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, arXiv:2412.06464), fla's ``GatedDeltaNet``.

    ``q, k, v`` projections through short causal convolutions with silu (``use_short_conv``),
    ``β = sigmoid(W_b x)`` (``2·sigmoid`` with ``allow_neg_eigval``: eigenvalues of the transition
    in [−1, 1], Grazzi et al. 2024, arXiv:2411.12537), the decay
    ``g = −exp(A_log)·softplus(W_a x + dt_bias)`` per head, the rule
    ``S_t = exp(g_t)(I − β_t k̂_t k̂_tᵀ) S_{t−1} + β_t k̂_t v_tᵀ``, ``o_t = (q̂_t/√d_k)ᵀ S_t`` with
    L2-normalised ``q̂, k̂``, then RMSNorm per head times ``silu(W_r x)`` (``use_gate``) and ``W_o``.
    Init: ``A ~ U[1, 16]`` (``A_log = log A``), ``dt_bias = softplus⁻¹(dt)``,
    ``dt ~ exp(U[log 1e-3, log 1e-1])``; projections ``xavier_uniform_`` (gain ``2^-2.5``).
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 2.0,
                 use_gate: bool = True, use_short_conv: bool = True, conv_size: int = 4,
                 conv_bias: bool = False, allow_neg_eigval: bool = False, norm_eps: float = 1e-5,
                 strategy: str | None = None):
        super().__init__()
        name = "GatedDeltaNet"
        self.d_model = check_positive(d_model, "d_model", name)
        self.num_heads = check_positive(num_heads, "num_heads", name)
        self.head_k_dim = check_positive(head_dim if head_dim is not None else
                                         check_divides(d_model, num_heads, "d_model", name), "head_dim", name)
        self.head_v_dim = int(self.head_k_dim * expand_v)
        if self.head_v_dim < 1:
            raise InputError(f"{name}: expand_v = {expand_v} gives a value head dim of 0")
        self.key_dim, self.value_dim = num_heads * self.head_k_dim, num_heads * self.head_v_dim
        self.allow_neg_eigval, self.strategy = allow_neg_eigval, strategy
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, num_heads, bias=False)
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        self.conv = _ConvQKV((self.key_dim, self.key_dim, self.value_dim), use_short_conv, conv_size, conv_bias)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False) if use_gate else None
        self.o_norm = GatedRMSNorm(self.head_v_dim, norm_eps) if use_gate else RMSNorm(self.head_v_dim, norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        xavier_(self)
        self.A_log = nn.Parameter(a_log_init(num_heads))
        self.dt_bias = nn.Parameter(dt_bias_init(num_heads))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True

    @property
    def mixer(self):
        """The declaration the layer runs: the gated delta rule with L2-normalised q, k."""
        return delta_mixer("gated_delta_rule", True)

    def mixer_inputs(self, x, conv_cache=None, output_final_state=False):
        """The mixer's inputs ``(q, k, v, beta, g)`` in declaration order, and the new conv caches."""
        check_x(x, self.d_model, "GatedDeltaNet")
        (q, k, v), conv = self.conv([self.q_proj(x), self.k_proj(x), self.v_proj(x)], conv_cache,
                                    output_final_state)
        beta = torch.sigmoid(self.b_proj(x))
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        H = self.num_heads
        return (heads(q, H), heads(k, H), heads(v, H), beta.to(x.dtype), g), conv

    def forward(self, x, initial_state=None, output_final_state: bool = False):
        st = split_state(initial_state, "GatedDeltaNet", _STATE_KEYS)
        (q, k, v, beta, g), conv = self.mixer_inputs(x, st["conv"], output_final_state)
        res = gated_delta_rule(q, k, v, g, beta, initial_state=st["recurrent"],
                               output_final_state=output_final_state, use_qk_l2norm_in_kernel=True,
                               strategy=self.strategy)
        o, S = res if output_final_state else (res, None)
        o = self.o_norm(o, heads(self.g_proj(x), self.num_heads)) if self.g_proj is not None else self.o_norm(o)
        return layer_output(self.o_proj(o.flatten(-2)), S, conv, output_final_state)
