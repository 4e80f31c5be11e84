"""IR algebra shared by the analyses of the affine matrix-state families (gated-linear, Householder).

* ``factors`` / ``product``: a product tree as a flat list of factors and back;
* ``Decay``, ``decay``: a group of transition factors as one log-decay ``exp(log)`` times a sign
  (factors that may be negative keep ``log|a|`` and a ±1 node);
* ``readout``: the split of an output into ``e ⊙ (q @ S_new) + d`` (one read-out of the new state,
  the query along the contracted state dim, and e, d free of the state);
* ``render_plan``: the text of a plan's ``describe()``: header lines, its pieces, its strategies.

Functions that can reject a mixer take ``unsupported(mixer, why) -> Exception``: the calling
family's error, whose text says which family refused and why.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from ...dsl import ir
from ...dsl.grad import NotPointwise, tangent

Unsupported = Callable[[object, str], Exception]


@dataclasses.dataclass(frozen=True)
class Decay:
    """One group of transition factors: ``exp(log)`` times ``sign`` (a ±1 node, or None)."""
    log: ir.Node
    sign: ir.Node | None = None


def factors(n: ir.Node) -> list:
    """Flatten a product into its factors (division → reciprocal, negation → -1)."""
    if n.op == "mul":
        return factors(n.src[0]) + factors(n.src[1])
    if n.op == "div":
        return factors(n.src[0]) + [ir.unary("recip", f) for f in factors(n.src[1])]
    if n.op == "neg":
        return [ir.const(-1.0)] + factors(n.src[0])
    return [n]


def product(nodes) -> ir.Node:
    """The product of ``nodes`` (1 for none)."""
    out = ir.const(1.0)
    for f in nodes:
        out = ir.binary("mul", out, f)
    return out


def log_of(f: ir.Node):
    """(log|f|, sign node or None) of one transition factor; (None, None) for a constant 0."""
    if f.op == "exp":
        return f.src[0], None
    if f.op == "sigmoid":
        return ir.unary("logsigmoid", f.src[0]), None
    if f.op == "softplus":
        return ir.unary("log", f), None
    if f.op == "recip":
        lg, s = log_of(f.src[0])
        return ir.unary("neg", lg), s
    if f.op == "const":
        if f.arg == 0:
            return None, None
        return ir.const(math.log(abs(f.arg))), (ir.const(-1.0) if f.arg < 0 else None)
    if f.op == "pow" and f.src[1].op == "const":
        lg, s = log_of(f.src[0])
        if lg is None:
            return None, None
        return ir.binary("mul", f.src[1], lg), (None if s is None else ir.binary("pow", s, f.src[1]))
    sign = ir.where(ir.binary("lt", f, ir.const(0.0)), ir.const(-1.0), ir.const(1.0))
    return ir.unary("log", ir.unary("abs", f)), sign


def decay(mixer, fs, unsupported: Unsupported) -> Decay | None:
    """The factors ``fs`` as one ``Decay`` (None when there are none, or they are 1)."""
    if not fs:
        return None
    logs, signs = [], []
    for f in fs:
        lg, s = log_of(f)
        if lg is None:
            raise unsupported(mixer, f"the transition factor `{ir.render(f)}` is identically 0")
        logs.append(lg)
        if s is not None:
            signs.append(s)
    log = logs[0]
    for lg in logs[1:]:
        log = ir.binary("add", log, lg)
    if ir.is_const(log, 0.0) and not signs:
        return None
    return Decay(log, product(signs) if signs else None)


def readout(mixer, out, snew, S, unsupported: Unsupported):
    """Split the output ``out`` (with the new state as the leaf ``snew``) into e ⊙ (q @ S_new) + d.
    Returns (q, k_dim, e, d); k_dim None when a vector state is read out whole."""
    if ir.contains(out, S):
        raise unsupported(mixer, f"the output `{ir.render(out)}` reads the state {S.arg!r} before its "
                                 "update; return the read-out of the new state")
    sums = [n for n in ir.toposort(out) if n.op == "sum" and ir.contains(n.src[0], snew)]
    outer_sums = [n for n in sums if not any(m is not n and ir.contains(m, n) for m in sums)]
    if len(outer_sums) > 1:
        raise unsupported(mixer, "the output reads the state through several contractions: "
                                 + ", ".join(f"`{ir.render(n)}`" for n in outer_sums))
    if not outer_sums:
        if len(S.dims) == 2:
            raise unsupported(mixer, "the output is the whole matrix state; contract it with a "
                                     "query (`q @ S`)")
        q, k_dim, rleaf = ir.const(1.0), None, snew
        rest = out
    else:
        (R,) = outer_sums
        fs = factors(R.src[0])
        hits = [f for f in fs if f == snew]
        others = [f for f in fs if f != snew]
        if len(hits) != 1 or any(ir.contains(f, snew) for f in others):
            raise unsupported(mixer, f"the read-out `{ir.render(R)}` is not linear in the state")
        contracted = [d for d in R.arg if d in S.dims]
        if len(contracted) != 1 or len(R.arg) != 1:
            raise unsupported(mixer, f"the read-out `{ir.render(R)}` must contract exactly one state dim")
        k_dim = contracted[0]
        qf = [f for f in others if k_dim in f.dims or not f.dims]
        outside = [f for f in others if f not in qf]   # value-side factors move to the output
        q = product(qf)
        rleaf = ir.leaf("input", "__readout__", R.dims)
        moved = product(outside)
        rest = ir.substitute(out, {R: ir.binary("mul", moved, rleaf)})
        if bad := [d for d in q.dims if d != k_dim]:
            raise unsupported(mixer, f"the query `{ir.render(q)}` has dims {bad} outside the state")
    if rleaf is not snew and ir.contains(rest, snew):
        raise unsupported(mixer, f"the output `{ir.render(out)}` uses the state outside its read-out")
    try:
        e = tangent(rest, rleaf)
    except NotPointwise as err:
        raise unsupported(mixer, f"the output reduces its read-out in `{ir.render(err.node)}`") from None
    if ir.contains(e, rleaf):
        raise unsupported(mixer, f"the output `{ir.render(out)}` is not linear in the state")
    d = ir.substitute(rest, {rleaf: ir.const(0.0, rleaf.dims)})
    return q, k_dim, e, d


def render_plan(header, pieces: dict, strategies=()) -> str:
    """``header`` lines, then one line per piece (``name = expression``), then the strategies (when
    given): the ``describe()`` text of a plan."""
    lines = list(header) + [f"  {name:8s} = {ir.render(node)}" for name, node in pieces.items()]
    if strategies:
        lines.append(f"strategies: {', '.join(strategies)}")
    return "\n".join(lines)


__all__ = ["Decay", "Unsupported", "decay", "factors", "log_of", "product", "readout", "render_plan"]
