"""The nonlinear head-wise RNN family (LSTM, GRU, sLSTM, Elman; FlashRNN's class) under the family
contract (``lowering/family.py``).

Priority 40: tried after the affine families (gated_linear 20, householder 30), so an update that
is affine in its state never lands here. ``analyse`` accepts updates whose only state-mixing
operations are recurrent matmuls ``rename(h, D→E) @ R_g`` of one hidden state with per-head
weights, followed by pointwise cell logic (``analysis.py``); ``compile`` returns a ``CompiledRNN``
with the ``fused`` and ``alternating`` strategies (``runtime.py``).
"""
from __future__ import annotations

from ..family import Family, register
from .analysis import analyse_rnn


class RNNFamily(Family):
    name = "rnn"
    priority = 40

    def analyse(self, mixer):
        return analyse_rnn(mixer)

    def compile(self, mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledRNN
        return CompiledRNN(mixer, plan, strategy=strategy, config=config)

    def tuning_targets(self, mixer, plan, request) -> list:
        """The fused / alternating spaces of the cell, per feasible strategy (``space.targets``)."""
        from .space import targets
        return targets(mixer, plan, request)


FAMILY = register(RNNFamily())
