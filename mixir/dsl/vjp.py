"""Symbolic reverse mode over the IR (a pass from IR to IR).

``vjp(roots, cotangents, wrt)`` returns, for each node of ``wrt`` (usually leaves), an IR tree for
the gradient of ``sum_i <root_i, cotangent_i>`` with respect to it. The pairing sums over every
axis of the values: the implicit lead axes (batch, time, head) are *not* summed here - the
gradient of a per-head ``param`` leaf is returned per token row, and the caller sums it over the
rows (a per-head parameter is broadcast over batch and time, so its gradient is the row sum).

Semantics of the result: an adjoint of a node with dims ``D`` is a tree with dims ``⊆ D``,
broadcast by name over the dims it lacks (e.g. the cotangent of ``x[K] + c`` w.r.t. the scalar
``c`` sums over ``K``; w.r.t. ``x`` it is the cotangent itself). A leaf that does not influence the
roots gets ``const(0.0)``.

Rules: broadcasting in an elementwise op → the adjoint is summed over the broadcast dims (an
adjoint that is constant along such a dim is first broadcast explicitly, so the sum counts the
dim's size); ``sum`` → broadcast; ``amax`` → the adjoint goes to the maximal entries, split evenly
between ties (as torch does); ``where`` routes; comparisons have zero derivative; the pointwise
derivatives are those of ``grad.py`` (``max``/``min`` split ties evenly, ``abs`` has derivative
``sign``, ``pow`` is guarded at 0 exactly like torch, so the trees agree with torch autograd).
Every tree is built with the folding constructors of ``ir``, and reuses the forward nodes, so the
forward and backward DAGs share their common subexpressions.
"""
from __future__ import annotations

from . import ir
from .ir import binary as B
from .ir import const
from .ir import unary as U

__all__ = ["vjp", "multi_toposort"]


def multi_toposort(roots) -> list:
    """A topological order (sources first) of the union of the DAGs of ``roots``."""
    order, seen = [], set()
    for r in roots:
        for n in ir.toposort(r):
            if n not in seen:
                seen.add(n)
                order.append(n)
    return order


def _unbroadcast(c: ir.Node, from_dims: tuple, to_dims: tuple) -> ir.Node:
    """Sum the contribution ``c`` (an adjoint of a value with dims ``from_dims``) down to a source
    with dims ``to_dims``: every dim of ``from_dims`` (or of ``c``) that the source lacks is summed."""
    extra = [d for d in ir.broadcast_dims(from_dims, c.dims) if d not in to_dims]
    if not extra:
        return c
    if ir.is_const(c, 0.0):
        return const(0.0)
    missing = tuple(d for d in extra if d not in c.dims)
    if missing:  # constant along these dims: broadcast explicitly so the sum counts their size
        c = B("mul", c, const(1.0, missing))
    return ir.reduce("sum", c, tuple(extra))


def _sign(a):
    zero = const(0.0)
    return ir.where(B("gt", a, zero), const(1.0), ir.where(B("lt", a, zero), const(-1.0), zero))


def _partials(n: ir.Node, g: ir.Node, live) -> list:
    """[(source, contribution)] of the adjoint ``g`` of ``n`` to its live sources (contributions
    still carry ``n``'s dims; the caller unbroadcasts them)."""
    op, src = n.op, n.src
    a = src[0] if src else None
    b = src[1] if len(src) > 1 else None
    one, zero = const(1.0), const(0.0)
    out = []

    def put(s, c):
        if s in live:
            out.append((s, c))

    if op == "add":
        put(a, g)
        put(b, g)
    elif op == "sub":
        put(a, g)
        put(b, U("neg", g))
    elif op == "mul":
        put(a, B("mul", g, b))
        put(b, B("mul", g, a))
    elif op == "div":
        put(a, B("div", g, b))
        put(b, U("neg", B("div", B("mul", g, n), b)))           # -g a / b² = -g n / b
    elif op == "neg":
        put(a, U("neg", g))
    elif op == "exp":
        put(a, B("mul", g, n))
    elif op == "log":
        put(a, B("div", g, a))
    elif op == "sigmoid":
        put(a, B("mul", g, B("mul", n, B("sub", one, n))))
    elif op == "softplus":
        put(a, B("mul", g, U("sigmoid", a)))
    elif op == "logsigmoid":
        put(a, B("mul", g, U("sigmoid", U("neg", a))))
    elif op == "silu":
        s = U("sigmoid", a)
        put(a, B("mul", g, B("add", s, B("mul", a, B("mul", s, B("sub", one, s))))))
    elif op == "cos":
        put(a, U("neg", B("mul", g, U("sin", a))))
    elif op == "sin":
        put(a, B("mul", g, U("cos", a)))
    elif op == "tanh":
        put(a, B("mul", g, B("sub", one, B("mul", n, n))))
    elif op == "sqrt":
        put(a, B("div", g, B("mul", const(2.0), n)))
    elif op == "rsqrt":
        put(a, B("mul", g, B("mul", const(-0.5), B("div", n, a))))
    elif op == "recip":
        put(a, U("neg", B("mul", g, B("mul", n, n))))
    elif op == "abs":
        put(a, B("mul", g, _sign(a)))
    elif op == "pow":
        if a in live:
            if ir.is_const(b):
                da = zero if b.arg == 0 else B("mul", g, B("mul", b, B("pow", a, const(b.arg - 1.0))))
            else:   # torch: 0 where the exponent is 0
                da = ir.where(B("eq", b, zero), zero,
                              B("mul", g, B("mul", b, B("pow", a, B("sub", b, one)))))
            put(a, da)
        if b in live:   # torch: 0 where the base is 0 and the exponent >= 0
            put(b, ir.where(B("and", B("eq", a, zero), B("ge", b, zero)), zero,
                            B("mul", g, B("mul", n, U("log", a)))))
    elif op in ("max", "min"):
        # torch.maximum/minimum: the winner takes the gradient, ties split it evenly
        win = B("gt" if op == "max" else "lt", a, b)
        wa = ir.where(win, one, ir.where(B("eq", a, b), const(0.5), zero))
        put(a, B("mul", g, wa))
        put(b, B("mul", g, B("sub", one, wa)))
    elif op in ir.COMPARE:
        pass
    elif op == "where":
        c, x, y = src
        put(x, ir.where(c, g, zero))
        put(y, ir.where(c, zero, g))
    elif op == "sum":
        put(a, g)                                               # broadcast back over n.arg
    elif op == "amax":
        hit = B("eq", a, n)
        count = ir.reduce("sum", hit, n.arg)
        put(a, ir.where(hit, B("div", g, count), zero))
    else:  # pragma: no cover - every op of ir.OPS is handled above
        raise AssertionError(op)
    return out


def vjp(roots, cotangents, wrt) -> list:
    """Gradients of ``sum_i <roots[i], cotangents[i]>`` w.r.t. each node of ``wrt`` (IR trees).

    A cotangent may lack some of its root's dims (it is broadcast) or carry more (the root is
    broadcast, i.e. the cotangent is summed over them)."""
    roots, cotangents, wrt = list(roots), list(cotangents), list(wrt)
    if len(roots) != len(cotangents):
        raise ValueError(f"vjp: {len(roots)} roots but {len(cotangents)} cotangents")
    order = multi_toposort(roots)
    targets = set(wrt)
    live = set()                      # nodes through which some node of wrt reaches a root
    for n in order:
        if n in targets or any(s in live for s in n.src):
            live.add(n)
    adj: dict = {}

    def accumulate(node, c):
        if not ir.is_const(c, 0.0):
            adj[node] = B("add", adj[node], c) if node in adj else c

    for r, ct in zip(roots, cotangents):
        if r in live:
            accumulate(r, _unbroadcast(ct, ct.dims, r.dims))
    for n in reversed(order):
        if n not in live or n not in adj or not n.src:
            continue
        # an elementwise op broadcasts its sources to n.dims; a reduction's adjoint broadcasts back
        from_dims = n.dims if n.op not in ("sum", "amax") else n.src[0].dims
        for s, c in _partials(n, adj[n], live):
            accumulate(s, _unbroadcast(c, from_dims, s.dims))
    return [adj.get(w, const(0.0)) for w in wrt]
