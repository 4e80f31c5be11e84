"""The nonlinear head-wise RNN family (LSTM, GRU, sLSTM, Elman; FlashRNN's class) in the registry.

Priority 40: tried after the affine families (gated_linear 20, householder 30), so an update that
is affine in its state never lands here. ``analyse`` accepts updates whose only state-mixing
operations are recurrent matmuls ``rename(h, D→E) @ R_g`` of one hidden state with per-head
weights, followed by pointwise cell logic (``rnn_analysis``); ``compile`` returns a
``CompiledRNN`` with the ``fused`` and ``alternating`` strategies (``rnn_runtime``).
"""
from __future__ import annotations

from .families import register_family
from .rnn_analysis import analyse_rnn


@register_family("rnn", priority=40)
class RNNFamily:
    @staticmethod
    def analyse(mixer):
        return analyse_rnn(mixer)

    @staticmethod
    def compile(mixer, plan, *, strategy=None, config=None):
        from .rnn_runtime import CompiledRNN
        return CompiledRNN(mixer, plan, strategy=strategy, config=config)
