"""The gated-linear family (scalar/diagonal transitions, auxiliary scans: linear attention,
RetNet, GLA, HGRN, LightNet, Mamba, mLSTM) under the family contract (``lowering/family.py``)."""
from __future__ import annotations

from ..family import Family, register
from .analysis import analyse


class GatedLinearFamily(Family):
    name = "gated_linear"
    priority = 20

    def analyse(self, mixer):
        return analyse(mixer)

    def compile(self, mixer, plan, *, strategy=None, config=None):
        from .runtime import CompiledMixer
        return CompiledMixer(mixer, strategy=strategy, config=config, plan=plan)

    def describe(self, mixer, plan) -> str:
        from ..common.call import RECURRENT_MAX_T
        return (plan.describe() + "\n"
                f"default strategy: recurrent for T <= {RECURRENT_MAX_T} or a vector state (a "
                f"head size of 1), chunked above"
                + ("; fused (the state on chip) on a GPU where its programs fill half the SMs "
                   "(fused.suits), or on request" if "fused" in plan.strategies else ""))

    def tuning_targets(self, mixer, plan, request) -> list:
        from .space import targets
        return targets(mixer, plan, request)

    def kernel_signature(self, mixer, plan, request):
        """The template launches a probe config records, per strategy (``space.kernel_signature``)."""
        from .space import kernel_signature
        return kernel_signature(mixer, plan, request)

    def tuning_formulas(self, plan) -> str | None:
        from ...autotune.report import formulas_text
        from .space import spaces_for
        spaces = spaces_for(plan.main)
        tuned = [s for s in plan.strategies if s in spaces]
        return formulas_text(spaces, tuned, plan.main.k_dim, plan.main.v_dim) if tuned else None

    def input_ranges(self, mixer, plan) -> dict:
        """An input used directly as a log-decay is drawn from (-3, 0); one used as a (possibly
        negative) transition ``log|a|`` from (-1, 1)."""
        ranges = {}
        for _, form in list(plan.aux) + [(None, plan.main)]:
            for d in (form.g, form.gk, form.gv):
                if d is None:
                    continue
                node = d.log
                if node.op == "input":
                    ranges[node.arg] = (-3.0, 0.0)
                elif node.op == "log" and node.src[0].op == "abs" and node.src[0].src[0].op == "input":
                    ranges[node.src[0].src[0].arg] = (-1.0, 1.0)
        return ranges

    def key_dims(self, mixer, plan) -> frozenset:
        return frozenset(f.k_dim for _, f in list(plan.aux) + [(None, plan.main)] if f.k_dim)

    def state_passing(self, plan):
        """How a slice's (transition, final state) pair combines with the next (``distributed.py``;
        docs/distributed.md), or None when the plan cannot be split."""
        from .distributed import passing_for
        return passing_for(plan)


FAMILY = register(GatedLinearFamily())
