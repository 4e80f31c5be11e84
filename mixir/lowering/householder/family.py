"""The Householder family (DeltaNet, Gated DeltaNet, DeltaProduct, KDA: transitions that are
products of identity-minus-rank-one factors, times a scalar or key-diagonal gate) under the family
contract (``lowering/family.py``)."""
from __future__ import annotations

from ..family import Family, register
from .analysis import analyse


class HouseholderFamily(Family):
    name = "householder"
    priority = 30

    def analyse(self, mixer):
        return analyse(mixer)

    def compile(self, mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledHouseholder
        return CompiledHouseholder(mixer, plan, strategy=strategy, config=config)

    def tuning_targets(self, mixer, plan, request) -> list:
        """The delta spaces at the core's shape, per strategy (``space.targets``)."""
        from .space import targets
        return targets(mixer, plan, request)

    def state_passing(self, plan):
        """How a slice's (transition, final state) pair combines with the next (``distributed.py``;
        docs/distributed.md), or None when the plan cannot be split."""
        from .distributed import passing_for
        return passing_for(plan)


FAMILY = register(HouseholderFamily())
