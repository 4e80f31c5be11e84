"""The gated-linear family (scalar/diagonal transitions, auxiliary scans) in the lowering registry."""
from __future__ import annotations

from . import analysis
from .families import register_family


@register_family("gated_linear", priority=20)
class GatedLinearFamily:
    @staticmethod
    def analyse(mixer):
        return analysis.analyse(mixer)

    @staticmethod
    def compile(mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledMixer
        return CompiledMixer(mixer, strategy=strategy, config=config, plan=plan)
