"""Head-wise recurrent layers: xLSTM's sLSTM and a head-wise LSTM, mixing through mixir's ``slstm``
and ``lstm`` library cells (FlashRNN's convention: gate pre-activations ``W x`` computed here,
recurrent weights block-diagonal per head).

``x [B, T, d_model]`` → ``[B, T, d_model]``; ``output_final_state=True`` adds the state dict
``{"recurrent": (h, c[, n, m]), "conv": cache}`` that ``initial_state`` accepts.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..library import lstm, slstm
from ..library.rnn import lstm_mixer, slstm_mixer
from .common import (
    ShortConvolution,
    check_divides,
    check_positive,
    check_x,
    layer_output,
    split_state,
    xavier_,
)


def powerlaw_forget_bias(D: int, layer_idx: int = 0, num_layers: int = 1) -> torch.Tensor:
    """xLSTM's ``powerlaw_blockdependent`` forget-gate bias over the ``D`` cells of a head:
    ``b_d = −(−5 + 12 (d/(D−1))^(0.3 + 1.3 r))`` with ``r = layer_idx/(num_layers − 1)`` (0 for one
    layer): from −7 (short memory) up to +5 (long memory), longer in deeper layers."""
    r = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    pos = torch.arange(D, dtype=torch.float64) / max(D - 1, 1)
    return (-(-5.0 + 12.0 * pos ** (0.3 + 1.3 * r))).float()


class _HeadwiseRNN(nn.Module):
    """Shared parts: pre-activation projections, recurrent weights ``R [4, H, D, D]``, biases
    ``b [4, H, D]``, a per-head norm and the output projection."""

    cell = "lstm"

    def __init__(self, d_model, num_heads, use_conv, conv_size, norm_eps, strategy):
        super().__init__()
        name = type(self).__name__
        self.d_model = check_positive(d_model, "d_model", name)
        self.num_heads = check_positive(num_heads, "num_heads", name)
        self.head_dim = check_divides(d_model, num_heads, "d_model", name)
        self.strategy = strategy
        self.conv = ShortConvolution(d_model, conv_size, bias=True) if use_conv else None
        self.gate_proj = nn.Linear(d_model, 4 * d_model, bias=False)
        self.R = nn.Parameter(torch.zeros(4, num_heads, self.head_dim, self.head_dim))
        self.b = nn.Parameter(torch.zeros(4, num_heads, self.head_dim))
        self.norm = nn.GroupNorm(num_heads, d_model, eps=norm_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def preactivations(self, x, conv_cache=None, output_final_state=False):
        """Gate pre-activations ``[B, T, 4, H, D]`` (gates i, f, z, o) and the new conv cache.
        With the convolution, the i and f gates read ``silu(conv(x))`` and z, o read x (xLSTM)."""
        Bsz, T = check_x(x, self.d_model, type(self).__name__)
        W = self.gate_proj.weight.view(4, self.d_model, self.d_model)
        conv = None
        if self.conv is not None:
            xc, conv = self.conv(x, conv_cache, output_final_state)
            pre = torch.cat([xc @ W[:2].flatten(0, 1).T, x @ W[2:].flatten(0, 1).T], -1)
        else:
            pre = self.gate_proj(x)
        return pre.view(Bsz, T, 4, self.num_heads, self.head_dim), conv

    def forward(self, x, initial_state=None, output_final_state: bool = False):
        st = split_state(initial_state, type(self).__name__, ("recurrent", "conv"))
        pre, conv = self.preactivations(x, st["conv"], output_final_state)
        fn = slstm if self.cell == "slstm" else lstm
        res = fn(pre, self.R, self.b, initial_state=st["recurrent"], output_final_state=output_final_state,
                 strategy=self.strategy)
        h, hT = res if output_final_state else (res, None)
        Bsz, T = h.shape[:2]
        y = self.norm(h.reshape(Bsz * T, self.d_model).float()).to(x.dtype).view(Bsz, T, self.d_model)
        return layer_output(self.out_proj(y), hT, conv, output_final_state)


class SLSTM(_HeadwiseRNN):
    """xLSTM's sLSTM layer (Beck et al. 2024, *xLSTM: Extended Long Short-Term Memory*,
    arXiv:2405.04517): exponential input gate and stabiliser,

    ``m_t = max(log σ(f̃_t) + m_{t−1}, ĩ_t)``, ``i = exp(ĩ − m_t)``, ``f = exp(log σ(f̃) + m_{t−1} − m_t)``,
    ``c_t = f c_{t−1} + i tanh(z̃)``, ``n_t = f n_{t−1} + i``, ``h_t = σ(õ) c_t / n_t``,

    with pre-activations ``W x + R h_{t−1} + b`` per head (``R`` block-diagonal over heads). The i and
    f gates read a causal conv (``conv_size``, silu) of x; the output is group-normed per head
    (xLSTM's multi-head layer norm) and projected. Init (xLSTM): recurrent weights zero, biases zero
    except the forget gate's power-law ``powerlaw_forget_bias`` (depending on ``layer_idx`` of
    ``num_layers``); projections ``xavier_uniform_`` gain ``2^-2.5``.
    """

    cell = "slstm"

    def __init__(self, d_model: int, num_heads: int = 4, use_conv: bool = True, conv_size: int = 4,
                 layer_idx: int = 0, num_layers: int = 1, norm_eps: float = 1e-5, strategy: str | None = None):
        super().__init__(d_model, num_heads, use_conv, conv_size, norm_eps, strategy)
        xavier_(self)
        with torch.no_grad():
            self.b[1].copy_(powerlaw_forget_bias(self.head_dim, layer_idx, num_layers).expand(num_heads, -1))

    @property
    def mixer(self):
        return slstm_mixer


class LSTM(_HeadwiseRNN):
    """A head-wise LSTM layer (Hochreiter & Schmidhuber 1997; FlashRNN's head-wise form, Pöppel et
    al. 2024, arXiv:2412.07752): ``i, f, o = σ(W x + R h + b)``, ``z = tanh(W_z x + R_z h + b_z)``,
    ``c_t = f c_{t−1} + i z``, ``h_t = o tanh(c_t)``, ``R`` block-diagonal over heads; then group norm
    per head and an output projection. Init: ``R ~ U(±1/√D)`` (torch's ``nn.LSTM``), forget-gate
    bias 1 (Jozefowicz et al. 2015), other biases 0; projections ``xavier_uniform_`` gain ``2^-2.5``.
    """

    cell = "lstm"

    def __init__(self, d_model: int, num_heads: int = 4, use_conv: bool = False, conv_size: int = 4,
                 forget_bias: float = 1.0, norm_eps: float = 1e-5, strategy: str | None = None):
        super().__init__(d_model, num_heads, use_conv, conv_size, norm_eps, strategy)
        xavier_(self)
        bound = 1.0 / math.sqrt(self.head_dim)
        with torch.no_grad():
            self.R.uniform_(-bound, bound)
            self.b[1].fill_(forget_bias)

    @property
    def mixer(self):
        return lstm_mixer
