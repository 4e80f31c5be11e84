"""Pieces the chunked delta core applies on load: no pieces kernel for the common declarations.

The canonical core (``core``) reads q', k, v', β, g with v' the value side of the write. When a
declaration's pieces are simple per-token maps of its inputs, the kernels can form them on chip
instead of a generated pieces kernel materialising them in HBM (and its backward turning the
core's gradients back into the inputs'):

* q' = c · q for a call tensor q and a number c made of scalars and constants (``scale``): the
  core takes q and ``q_scale`` = c (o and the q-terms of the backward are linear in q');
* k, β, g: call tensors as they are (β and g read in their own dtype);
* v' = β · v (the delta rule's write) or v' = v, for a call tensor v: the core takes v and
  ``v_beta`` (it multiplies on load; the backward writes dv = β·dv' and adds Σ v·dv' to dβ).

Recognised from the plan's pieces, never by name: ``direct_plan`` returns None where any piece is
something else (l2-normalised keys, an activated β, an output affine map, ...), and those
declarations keep the pieces kernel.
"""
from __future__ import annotations

import dataclasses

from ...dsl import ir
from ...reference.evaluate import NumpyBackend, evaluate
from ..common.algebra import factors


@dataclasses.dataclass(frozen=True)
class DirectStep:
    k: str                      # call tensor names
    beta: str
    v: str
    v_beta: bool                # v' = β · v (else v' = v)
    g: str | None


@dataclasses.dataclass(frozen=True)
class DirectPlan:
    q: str
    q_factor: ir.Node           # a number: scalars and constants (1.0 when q' = q)
    steps: tuple                # DirectStep, one per sub-step

    def q_scale(self, scalars: dict) -> float:
        """The value of ``q_factor`` for a call's scalars."""
        if ir.is_const(self.q_factor):
            return float(self.q_factor.arg)
        if self.q_factor.op == "scalar":
            return float(scalars[self.q_factor.arg])
        env = {x: float(scalars[x.arg]) for x in ir.leaves(self.q_factor) if x.op == "scalar"}
        return float(evaluate(self.q_factor, env, NumpyBackend(), 0))


def _is_number(n: ir.Node) -> bool:
    return not n.dims and all(x.op in ("scalar", "const") for x in ir.leaves(n))


def _tensor(node: ir.Node, dims: tuple, kinds: dict) -> str | None:
    """The call tensor ``node`` is, when it is a per-token input of exactly ``dims``."""
    if node.op == "input" and tuple(node.dims) == dims and kinds.get(node.arg) == ("input", dims):
        return node.arg
    return None


def _scaled(node: ir.Node, dims: tuple, kinds: dict):
    """(tensor name, number node) when ``node`` is a call tensor times a number, else None."""
    fs = factors(node)
    tensors = [f for f in fs if not _is_number(f)]
    if len(tensors) != 1 or (name := _tensor(tensors[0], dims, kinds)) is None:
        return None
    nums = [f for f in fs if _is_number(f)]
    out = ir.const(1.0)
    for f in nums:
        out = f if ir.is_const(out, 1.0) else ir.binary("mul", out, f)
    return name, out


def _write(v: ir.Node, beta: ir.Node, v_dim: str, kinds: dict):
    """(tensor name, v_beta) when v' is a call tensor v, or β times one."""
    if (name := _tensor(v, (v_dim,), kinds)) is not None:
        return name, False
    fs = factors(v)
    if len(fs) == 2 and beta in fs:
        other = fs[1] if fs[0] == beta else fs[0]
        if (name := _tensor(other, (v_dim,), kinds)) is not None:
            return name, True
    return None


def direct_plan(plan, specs) -> DirectPlan | None:
    """The ``DirectPlan`` of a ``HouseholderPlan`` whose pieces the chunked core can apply on
    load, or None. ``specs``: (name, kind, dims) of the tensors a call binds."""
    kinds = {name: (kind, tuple(dims)) for name, kind, dims in specs}
    if plan.gate_k or not (ir.is_const(plan.out_scale, 1.0) and ir.is_const(plan.out_bias, 0.0)):
        return None
    q = _scaled(plan.q, (plan.k_dim,), kinds)
    if q is None:
        return None
    steps = []
    for s in plan.steps:
        k = _tensor(s.k, (plan.k_dim,), kinds)
        beta = _tensor(s.beta, (), kinds)
        v = _write(s.v, s.beta, plan.v_dim, kinds)
        g = None if s.g is None else _tensor(s.g.log, (), kinds)
        if k is None or beta is None or v is None or (s.g is not None and g is None):
            return None
        steps.append(DirectStep(k, beta, v[0], v[1], g))
    if len({s.v_beta for s in steps}) > 1:       # the core takes one flag for all sub-steps
        return None
    return DirectPlan(q[0], q[1], tuple(steps))
