"""``mixir.nn``: ``torch.nn.Module`` layers around mixir's mixers (docs/nn.md).

Every layer takes ``x [B, T, d_model]`` and returns ``[B, T, d_model]`` (and its state with
``output_final_state=True``), forward and backward, with the token mixing done by mixir's compiled
mixers (Triton on CUDA, Triton's interpreter on the CPU):

- ``GatedLinearAttention``, ``GatedDeltaNet`` (fla's layers; ``mixir.library.gla`` /
  ``gated_delta_rule``);
- ``Mamba2`` (``mamba2``), ``S4D`` (``s4d``);
- ``SLSTM``, ``LSTM`` (head-wise cells ``slstm`` / ``lstm``);
- ``SparseAttention(mask=...)``, ``SlidingWindowAttention``, ``DocumentAttention``;
- ``MixerLayer(mixer, d_model, ...)``: any ``@mixir.mixer`` declaration as a layer.
"""
from .attention import (
           DocumentAttention,
           SlidingWindowAttention,
           SparseAttention,
           rotary,
)
from .common import GatedRMSNorm, RMSNorm, ShortConvolution
from .linear_attn import GatedDeltaNet, GatedLinearAttention
from .mixer_layer import ACTIVATIONS, MixerLayer, default_param_init
from .rnn import LSTM, SLSTM, powerlaw_forget_bias
from .ssm import S4D, Mamba2

__all__ = [
           "ACTIVATIONS",
           "LSTM",
           "S4D",
           "SLSTM",
           "DocumentAttention",
           "GatedDeltaNet",
           "GatedLinearAttention",
           "GatedRMSNorm",
           "Mamba2",
           "MixerLayer",
           "RMSNorm",
           "ShortConvolution",
           "SlidingWindowAttention",
           "SparseAttention",
           "default_param_init",
           "powerlaw_forget_bias",
           "rotary",
]
