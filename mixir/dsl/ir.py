"""The expression IR: one small frozen node type, hash-consed by structure.

A ``Node`` is (op, dims, src, arg). ``dims`` are the *named feature dims* of the value, in order;
batch, time and head are implicit. Elementwise ops broadcast by name. A contraction ``a @ b`` is
not a node of its own: it is ``sum(mul(a, b), shared dims)``, so passes see one canonical form.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

# leaves
LEAVES = ("input", "param", "state", "scalar", "const", "head", "delta")
# "delta": the Kronecker delta over two named dims (dims (a, b), value [i == j]); ``rename`` in the
# DSL is a contraction with it, so a renamed value stays an ordinary sum-of-products tree
UNARY = ("neg", "exp", "log", "sigmoid", "softplus", "logsigmoid", "silu", "tanh", "sqrt",
         "rsqrt", "abs", "recip", "cos", "sin")   # cos/sin: rotations of complex (re, im) pairs
BINARY = ("add", "sub", "mul", "div", "max", "min", "pow")
COMPARE = ("lt", "le", "gt", "ge", "eq", "ne", "and", "or")
OPS = LEAVES + UNARY + BINARY + COMPARE + ("where", "sum", "amax")


@dataclasses.dataclass(frozen=True, eq=True)
class Node:
    op: str
    dims: tuple
    src: tuple = ()
    arg: Any = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}")
        object.__setattr__(self, "_hash", hash((self.op, self.dims, self.src, self.arg)))

    def __hash__(self):  # cached: trees are shared DAGs
        return self._hash

    def __repr__(self):
        return render(self)


def broadcast_dims(*dims_list):
    out = []
    for dims in dims_list:
        for d in dims:
            if d not in out:
                out.append(d)
    return tuple(out)


# ---- constructors (with light constant folding) --------------------------------------------

def const(value: float, dims=()) -> Node:
    """A constant, optionally broadcast over named dims (a zero state has the state's dims)."""
    return Node("const", tuple(dims), (), float(value))


def leaf(op: str, name: str, dims=()) -> Node:
    return Node(op, tuple(dims), (), name)


def delta(a: str, b: str) -> Node:
    """The Kronecker delta ``[i == j]`` over dims ``(a, b)`` (see ``rename``)."""
    return Node("delta", (a, b), (), "delta")


def rename(x: Node, old: str, new: str) -> Node:
    """``x`` with its dim ``old`` called ``new``: ``sum(x * delta[old, new], old)``."""
    return reduce("sum", binary("mul", x, delta(old, new)), (old,))


def is_const(n: Node, value=None) -> bool:
    return n.op == "const" and (value is None or n.arg == value)


_FOLD = {
    "neg": lambda a: -a, "exp": math.exp, "log": lambda a: math.log(a) if a > 0 else float("nan"),
    "sigmoid": lambda a: 1 / (1 + math.exp(-a)), "tanh": math.tanh, "abs": abs,
    "sqrt": math.sqrt, "recip": lambda a: 1 / a, "cos": math.cos, "sin": math.sin,
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "max": max, "min": min, "pow": lambda a, b: a ** b,
}


def unary(op: str, a: Node) -> Node:
    if a.op == "const" and op in _FOLD:
        try:
            return const(_FOLD[op](a.arg), a.dims)
        except (OverflowError, ValueError, ZeroDivisionError):
            pass
    if op == "neg" and a.op == "neg":
        return a.src[0]
    return Node(op, a.dims, (a,))


def binary(op: str, a: Node, b: Node) -> Node:
    dims = broadcast_dims(a.dims, b.dims)
    # adding a zero drops it even when the zero was broadcast over more dims: the sum has the
    # same values, and every consumer broadcasts by name (before constant folding, so that the
    # derivative of ``0.9 * S``, ``0 * S + 0.9``, is the scalar 0.9, not 0.9 broadcast over S)
    if op == "add":
        if is_const(a, 0.0):
            return b
        if is_const(b, 0.0):
            return a
    if op == "sub" and is_const(b, 0.0):
        return a
    if a.op == "const" and b.op == "const" and op in _FOLD:
        try:
            return const(_FOLD[op](a.arg, b.arg), dims)
        except (OverflowError, ValueError, ZeroDivisionError):
            pass
    if op == "sub" and is_const(a, 0.0):
        return unary("neg", b)
    if op == "mul":
        if is_const(a, 0.0) or is_const(b, 0.0):
            return const(0.0, dims)
        if is_const(a, 1.0) and b.dims == dims:
            return b
        if is_const(b, 1.0) and a.dims == dims:
            return a
    if op == "div" and is_const(b, 1.0) and a.dims == dims:
        return a
    if op == "div" and is_const(a, 0.0):
        return const(0.0, dims)
    return Node(op, dims, (a, b))


def where(c: Node, a: Node, b: Node) -> Node:
    return Node("where", broadcast_dims(c.dims, a.dims, b.dims), (c, a, b))


def reduce(op: str, a: Node, dims) -> Node:
    dims = tuple(d for d in a.dims if d in dims)
    if not dims:
        return a
    rest = tuple(d for d in a.dims if d not in dims)
    if is_const(a, 0.0):
        return const(0.0, rest)
    return Node(op, rest, (a,), dims)


def contract(a: Node, b: Node) -> Node:
    shared = tuple(d for d in a.dims if d in b.dims)
    return reduce("sum", binary("mul", a, b), shared)


# ---- traversal --------------------------------------------------------------------------------

def toposort(root: Node) -> list:
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if n in seen:
            continue
        seen.add(n)
        stack.append((n, True))
        stack.extend((s, False) for s in reversed(n.src))
    return order


def leaves(root: Node) -> list:
    return [n for n in toposort(root) if n.op in LEAVES]


def contains(root: Node, target: Node) -> bool:
    return any(n == target for n in toposort(root))


def rebuild(n: Node, src: tuple) -> Node:
    """Rebuild ``n`` with new sources, re-running the folding constructors."""
    if src == n.src:
        return n
    if n.op in UNARY:
        return unary(n.op, src[0])
    if n.op in BINARY or n.op in COMPARE:
        return binary(n.op, *src)
    if n.op == "where":
        return where(*src)
    if n.op in ("sum", "amax"):
        return reduce(n.op, src[0], n.arg)
    raise AssertionError(n.op)


def substitute(root: Node, mapping: dict) -> Node:
    """Replace every occurrence of the keys of ``mapping`` (nodes) by their values."""
    memo = dict(mapping)
    for n in toposort(root):
        if n in memo:
            continue
        memo[n] = n if not n.src else rebuild(n, tuple(memo[s] for s in n.src))
    return memo[root]


# ---- printing and fingerprints -------------------------------------------------------------

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
          "ge": ">=", "eq": "==", "ne": "!=", "and": "&", "or": "|", "pow": "**"}


def render(root: Node) -> str:
    memo = {}
    for n in toposort(root):
        s = [memo[x] for x in n.src]
        if n.op == "const":
            memo[n] = repr(n.arg)
        elif n.op == "head":
            memo[n] = "head"
        elif n.op == "delta":
            memo[n] = f"delta[{', '.join(n.dims)}]"
        elif n.op in LEAVES:
            memo[n] = str(n.arg)
        elif n.op in _INFIX:
            memo[n] = f"({s[0]} {_INFIX[n.op]} {s[1]})"
        elif n.op in ("sum", "amax"):
            memo[n] = f"{n.op}({s[0]}, {list(n.arg)})"
        else:
            memo[n] = f"{n.op}({', '.join(s)})"
    return memo[root]


def render_shared(named: dict, min_len: int = 24) -> list:
    """Several trees as readable lines: every non-leaf subtree used more than once across them
    (and longer than ``min_len`` characters) is named ``%k`` once, before its first use; returns
    ``["%1 = ...", ..., "name = ..."]`` in dependency order, one line per shared term and root."""
    uses: dict = {}
    for root in named.values():
        for n in toposort(root):
            for x in n.src:
                uses[x] = uses.get(x, 0) + 1
    for root in named.values():
        uses[root] = uses.get(root, 0) + 1
    memo, names, lines = {}, {}, []
    order = []
    for root in named.values():
        for n in toposort(root):
            if n not in memo:
                memo[n] = None
                order.append(n)
    text = {}
    for n in order:
        s = [names.get(x, text[x]) for x in n.src]
        if n.op == "const":
            t = repr(n.arg)
        elif n.op == "head":
            t = "head"
        elif n.op == "delta":
            t = f"delta[{', '.join(n.dims)}]"
        elif n.op in LEAVES:
            t = str(n.arg)
        elif n.op in _INFIX:
            t = f"({s[0]} {_INFIX[n.op]} {s[1]})"
        elif n.op in ("sum", "amax"):
            t = f"{n.op}({s[0]}, {list(n.arg)})"
        else:
            t = f"{n.op}({', '.join(s)})"
        text[n] = t
        if n.src and uses.get(n, 0) > 1 and len(t) > min_len:
            names[n] = f"%{len(names) + 1}"
            lines.append(f"{names[n]} = {t}")
    for name, root in named.items():
        lines.append(f"{name} = {names.get(root, text[root])}")
    return lines


def canonical_text(root: Node) -> str:
    """A stable text of the DAG (each distinct node once), for fingerprints."""
    ids, lines = {}, []
    for n in toposort(root):
        ids[n] = len(ids)
        lines.append(f"{ids[n]}={n.op}{list(n.dims)}({','.join(str(ids[s]) for s in n.src)}){n.arg!r}")
    return ";".join(lines)


def fingerprint(*roots: Node, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for r in roots:
        h.update(canonical_text(r).encode())
        h.update(b"|")
    return h.hexdigest()[:16]
