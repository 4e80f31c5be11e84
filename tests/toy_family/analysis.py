"""Recognise a running maximum from the traced IR.

Accepted: one state ``S[dims]`` updated as ``S = maximum(S, x)`` with ``x`` a per-token input of
the state's dims, and an output that is the new state, or the new state times another per-token
input of the same dims (a gate ``q``). Everything else is refused with the reason.
"""
from __future__ import annotations

import dataclasses

from mixir.dsl import ir
from mixir.dsl.mixer import Mixer
from mixir.errors import UnsupportedMixerError

NAME = "toy_running_max"
STRATEGIES = ("torch",)


@dataclasses.dataclass(frozen=True)
class RunningMaxPlan:
    """``S_t = max(S_{t-1}, x_t)``; ``o_t = S_t`` or ``q_t * S_t``."""
    state: str
    x: str
    gate: str | None
    family: str = NAME
    strategies: tuple = STRATEGIES

    @property
    def transition(self) -> str:
        return "running maximum (max-plus, idempotent)"

    def describe(self) -> str:
        out = f"{self.gate} * {self.state}" if self.gate else self.state
        return "\n".join([self.transition, f"update: {self.state} = max({self.state}, {self.x})",
                          f"output: {out}"])


def _refuse(mixer, why):
    raise UnsupportedMixerError(f"mixer {mixer.name}: not a running maximum: {why}")


def _input_leaf(mixer, node, dims):
    """The name of the per-token input ``node`` is, if it is one with ``dims``; else None."""
    if node.op != "input" or tuple(node.dims) != tuple(dims):
        return None
    return node.arg


def analyse(mixer) -> RunningMaxPlan:
    if not isinstance(mixer, Mixer):
        _refuse(mixer, f"expected a traced @mixir.mixer, got {type(mixer).__name__}")
    if len(mixer.states) != 1:
        _refuse(mixer, f"it has {len(mixer.states)} states; the family needs one")
    if mixer.scalars:
        _refuse(mixer, "it takes scalar keywords; the family has none")
    spec, S, update = mixer.states[0], mixer.state_leaf(0), mixer.updates[0]
    if update.op != "max" or S not in update.src:
        _refuse(mixer, f"the update of {spec.name!r} is `{ir.render(update)}`, not max({spec.name}, x)")
    other = update.src[1] if update.src[0] == S else update.src[0]
    x = _input_leaf(mixer, other, spec.dims)
    if x is None:
        _refuse(mixer, f"max({spec.name}, ...) takes `{ir.render(other)}`, not a per-token input "
                       f"In[{', '.join(map(repr, spec.dims))}]")
    out, gate = mixer.output, None
    if out != update:
        if out.op != "mul" or update not in out.src:
            _refuse(mixer, f"the output `{ir.render(out)}` is neither the new state nor a gate times it")
        g = out.src[1] if out.src[0] == update else out.src[0]
        gate = _input_leaf(mixer, g, spec.dims)
        if gate is None:
            _refuse(mixer, f"the output gate `{ir.render(g)}` is not a per-token input")
    unused = {a.name for a in mixer.inputs} - {x, gate}
    if unused:
        _refuse(mixer, f"inputs {sorted(unused)} are not used as the family uses them")
    return RunningMaxPlan(spec.name, x, gate)
