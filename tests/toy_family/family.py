"""The toy running-max family under the family contract (``mixir/lowering/family.py``).

Priority 5: tried before every in-tree family (LTI is 10), so the suite also shows that a
high-priority family refuses everything it does not recognise — every library mixer still reaches
its own family. An in-tree family would end this module with ``FAMILY = register(...)``; the toy is
registered by the test fixture instead (``tests/test_family_contract.py``).
"""
from __future__ import annotations

from mixir.lowering.family import Family

from . import analysis


class RunningMaxFamily(Family):
    name = analysis.NAME
    priority = 5

    def analyse(self, mixer):
        return analysis.analyse(mixer)

    def compile(self, mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledRunningMax
        return CompiledRunningMax(mixer, plan, strategy=strategy, config=config)

    def tunable_strategies(self, plan) -> tuple:
        """Nothing to tune: torch picks its own kernels."""
        return ()

    def key_dims(self, mixer, plan) -> frozenset:
        return frozenset()


FAMILY = RunningMaxFamily()
