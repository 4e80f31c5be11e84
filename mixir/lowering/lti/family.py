"""The LTI family (constant, input-independent transitions: S4, S4D, LSSL, LMU) under the family
contract (``lowering/family.py``). Tried before the gated-linear family: it accepts only mixers
whose transition, input term and read-out depend on parameters, scalars and ``head()`` alone, with
the one per-token input entering linearly — RetNet, GLA, Mamba and the rest are refused here and go
on to gated_linear."""
from __future__ import annotations

from ..family import Family, register
from .analysis import analyse


class LTIFamily(Family):
    name = "lti"
    priority = 10

    def analyse(self, mixer):
        return analyse(mixer)

    def compile(self, mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledLTIMixer
        return CompiledLTIMixer(mixer, plan, strategy=strategy, config=config)

    def tunable_strategies(self, plan) -> tuple:
        """Only the conv strategy has tiles (its Vandermonde or Cauchy kernel pair)."""
        return ("conv",)

    def tuning_targets(self, mixer, plan, request) -> list:
        """The conv strategy's kernel pair at its launch shape (``space.targets``)."""
        from .space import targets
        return targets(mixer, plan, request)

    def kernel_signature(self, mixer, plan, request):
        """The kernel pair and the launch shape's (Q, N): the shared LTI kernels."""
        from .space import kernel_signature
        return kernel_signature(mixer, plan, request)

    def state_passing(self, plan):
        """How a slice's (transition, final state) pair combines with the next (``distributed.py``;
        docs/distributed.md), or None when the plan cannot be split."""
        from .distributed import passing_for
        return passing_for(plan)


FAMILY = register(LTIFamily())
