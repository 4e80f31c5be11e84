"""Symbolic derivatives over the IR (a pass from IR to IR): the one forward mode.

``tangent(root, wrt)`` is the *pointwise* forward-mode derivative d root / d wrt of ``root`` with
respect to the node ``wrt``: it is defined when ``wrt`` is never summed over one of its own dims
on the way to ``root`` (otherwise ``NotPointwise`` names the reduction). The chain rule runs
sources first; a node whose sources all have derivative 0 has derivative 0. Comparisons, logic
and the piecewise-constant index ops of the attention masks (``floordiv``, ``not``, ``load``:
indices are integers, data gets no gradient) have derivative 0; ``mod a b = a - b ⌊a/b⌋`` has
``da - ⌊a/b⌋ db``.

Users: the gated-linear analysis reads off the transition of an affine state update
(``S_new = A ⊙ S + U`` gives ``A = tangent(S_new, S)``); a score modification's derivative with
respect to the score (``ScoreMod.dnode``) is ``tangent(score_mod, score)``.
"""
from __future__ import annotations

import dataclasses

from . import ir
from .ir import binary as B
from .ir import const, unary as U


#: piecewise-constant ops of the attention masks (dsl/mask.py): derivative 0
_STEPS = ("floordiv", "not", "load")


class NotPointwise(Exception):
    def __init__(self, node):
        super().__init__(node)
        self.node = node


def _mul(a, b):
    return B("mul", a, b)


def _rules(n, a, da, b=None, db=None, c=None, dc=None):
    op = n.op
    zero = const(0.0)
    if op == "add":
        return B("add", da, db)
    if op == "sub":
        return B("sub", da, db)
    if op == "mul":
        return B("add", _mul(da, b), _mul(a, db))
    if op == "div":
        return B("sub", B("div", da, b), B("div", _mul(a, db), _mul(b, b)))
    if op == "neg":
        return U("neg", da)
    if op == "exp":
        return _mul(n, da)
    if op == "log":
        return B("div", da, a)
    if op == "sigmoid":
        return _mul(_mul(n, B("sub", const(1.0), n)), da)
    if op == "softplus":
        return _mul(U("sigmoid", a), da)
    if op == "logsigmoid":
        return _mul(U("sigmoid", U("neg", a)), da)
    if op == "silu":
        s = U("sigmoid", a)
        return _mul(B("add", s, _mul(a, _mul(s, B("sub", const(1.0), s)))), da)
    if op == "cos":
        return _mul(U("neg", U("sin", a)), da)
    if op == "sin":
        return _mul(U("cos", a), da)
    if op == "tanh":
        return _mul(B("sub", const(1.0), _mul(n, n)), da)
    if op == "sqrt":
        return B("div", da, _mul(const(2.0), n))
    if op == "rsqrt":
        return _mul(_mul(const(-0.5), B("div", n, a)), da)
    if op == "recip":
        return U("neg", _mul(_mul(n, n), da))
    if op == "abs":
        return _mul(ir.where(B("ge", a, zero), const(1.0), const(-1.0)), da)
    if op == "pow":
        return B("add", _mul(_mul(b, B("pow", a, B("sub", b, const(1.0)))), da),
                 _mul(_mul(n, U("log", a)), db))
    if op == "mod":       # ⌊a/b⌋ is the floordiv node of the same sources (a mask node)
        return B("sub", da, _mul(dataclasses.replace(n, op="floordiv"), db))
    if op == "max":
        return ir.where(B("ge", a, b), da, db)
    if op == "min":
        return ir.where(B("le", a, b), da, db)
    if op in ir.COMPARE:
        return zero
    if op == "where":
        return ir.where(a, db, dc)
    raise AssertionError(op)


def tangent(root: ir.Node, wrt: ir.Node) -> ir.Node:
    """d root / d wrt as an IR tree (see the module docstring)."""
    memo: dict = {}
    for n in ir.toposort(root):
        if n == wrt:
            memo[n] = const(1.0)
            continue
        if not n.src or n.op in _STEPS or all(ir.is_const(memo[s], 0.0) for s in n.src):
            memo[n] = const(0.0)
            continue
        if n.op in ("sum", "amax"):
            if n.op == "amax" or any(d in wrt.dims for d in n.arg):
                raise NotPointwise(n)
            memo[n] = ir.reduce("sum", memo[n.src[0]], n.arg)
            continue
        args = []
        for s in n.src:
            args += [s, memo[s]]
        memo[n] = _rules(n, *args)
    return memo[root]
