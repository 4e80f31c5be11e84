"""The LTI family (constant, input-independent transitions: S4, S4D, LSSL, LMU) in the lowering
registry. Tried before the gated-linear family: it accepts only mixers whose transition, input
term and read-out depend on parameters, scalars and ``head()`` alone, with the one per-token input
entering linearly — RetNet, GLA, Mamba and the rest are refused here and go on to gated_linear."""
from __future__ import annotations

from . import lti_analysis
from .families import register_family


@register_family("lti", priority=10)
class LTIFamily:
    @staticmethod
    def analyse(mixer):
        return lti_analysis.analyse(mixer)

    @staticmethod
    def compile(mixer, plan, *, strategy=None, config=None):
        from .lti_runtime import CompiledLTIMixer
        return CompiledLTIMixer(mixer, plan, strategy=strategy, config=config)
