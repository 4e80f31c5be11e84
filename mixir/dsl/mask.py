"""The attention-mask DSL: predicates over ``(b, h, q, kv)`` and score modifications, traced into IR.

A mask is a Python function of four traced index values ``(b, h, q, kv)`` (batch, query head, query
position, key position) and, after them, any number of named *data* arguments (per-token or
per-head tensors given at call time, such as document ids). It is called once, with traced values,
and returns a traced boolean: the expression tree is the mask (never a string, never evaluated
per element in Python)::

    @mask
    def sliding(b, h, q, kv):
        return (kv <= q) & (q - kv < 128)

    @mask
    def document(b, h, q, kv, doc):            # ``doc`` is a data argument: doc[b, t] -> int
        return doc[b, q] == doc[b, kv]

    @score_mod
    def alibi(score, b, h, q, kv, slopes):     # slopes[h]: a per-head float
        return score + slopes[h] * (kv - q)

The nodes are ``mixir.dsl.ir`` nodes (arithmetic, comparisons, ``&``/``|``, ``where``, ``exp``,
``tanh``, ``sin``, ``cos``, ...) plus four index ops that the mixer DSL does not need and that live
here as ``MaskNode``: ``mod`` and ``floordiv`` (Python's floor semantics), ``not`` and ``load`` (a
data lookup ``data[i0, i1, ...]``; indices are clamped into the tensor's extent). Integral
constants are integers; ``/`` is true division (float).

Constants are part of the expression (a different window is a different kernel); data tensors
are not (different document ids or a different top-k choice rebuild the block-mask metadata, never
a kernel).
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers

from . import ir
from .grad import tangent
from .ops import Value
from ..errors import DeclarationError

INDEX_NAMES = ("b", "h", "q", "kv")
SCORE_NAME = "score"
EXTRA_OPS = ("mod", "floordiv", "not", "load")
BOOL_OPS = ("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not")
#: the ops whose value is a float whatever their operands (integer operands are converted)
FLOAT_OPS = ("div", "pow", "exp", "log", "tanh", "sigmoid", "sqrt", "rsqrt", "recip", "softplus",
             "logsigmoid", "silu", "sin", "cos")

__all__ = ["Mask", "ScoreMod", "mask", "score_mod", "Expr", "Data", "MaskNode", "where", "exp",
           "log", "tanh", "sigmoid", "sqrt", "sin", "cos", "abs_", "maximum", "minimum", "and_masks",
           "or_masks", "FULL", "infer_types", "REGISTRY"]


@dataclasses.dataclass(frozen=True, eq=True)
class MaskNode(ir.Node):
    """An IR node with one of the index ops of this module (``EXTRA_OPS``)."""

    def __post_init__(self):
        if self.op not in EXTRA_OPS:
            raise ValueError(f"unknown mask op {self.op!r}")
        object.__setattr__(self, "_hash", hash(("mask", self.op, self.dims, self.src, self.arg)))

    def __hash__(self):
        return self._hash


def _node(x, what="operand") -> ir.Node:
    if isinstance(x, Value):
        return x.node
    if isinstance(x, bool):
        return ir.const(1.0 if x else 0.0)
    if isinstance(x, numbers.Real):
        return ir.const(float(x))
    raise DeclarationError(
        f"{what} must be a traced index/score value or a real number, got {type(x).__name__}: {x!r}")


def _bin(op, a, b) -> "Expr":
    a, b = _node(a), _node(b)
    if op in EXTRA_OPS:
        if a.op == "const" and b.op == "const":
            import math
            if op == "mod":
                return Expr(ir.const(a.arg - b.arg * math.floor(a.arg / b.arg)))
            return Expr(ir.const(float(math.floor(a.arg / b.arg))))
        return Expr(MaskNode(op, (), (a, b)))
    return Expr(ir.binary(op, a, b))


class Expr(Value):
    """A traced value of a mask or score modification (an index, a score, a data element, or an
    expression of them). Besides the operators of ``mixir.dsl.ops.Value`` it has ``==``, ``!=``,
    ``%``, ``//`` and ``~`` (logical not). Python ``if``/``and``/``or`` on it raise: use ``&``,
    ``|`` and ``where``."""
    __slots__ = ()

    def __eq__(self, o): return _bin("eq", self, o)        # noqa: E704
    def __ne__(self, o): return _bin("ne", self, o)        # noqa: E704
    def __mod__(self, o): return _bin("mod", self, o)      # noqa: E704
    def __rmod__(self, o): return _bin("mod", o, self)     # noqa: E704
    def __floordiv__(self, o): return _bin("floordiv", self, o)   # noqa: E704
    def __rfloordiv__(self, o): return _bin("floordiv", o, self)  # noqa: E704
    def __invert__(self): return Expr(MaskNode("not", (), (self.node,)))  # noqa: E704
    __hash__ = object.__hash__

    # the operators of Value, returning Expr so that ==, % ... stay available
    def __add__(self, o): return _bin("add", self, o)      # noqa: E704
    def __radd__(self, o): return _bin("add", o, self)     # noqa: E704
    def __sub__(self, o): return _bin("sub", self, o)      # noqa: E704
    def __rsub__(self, o): return _bin("sub", o, self)     # noqa: E704
    def __mul__(self, o): return _bin("mul", self, o)      # noqa: E704
    def __rmul__(self, o): return _bin("mul", o, self)     # noqa: E704
    def __truediv__(self, o): return _bin("div", self, o)  # noqa: E704
    def __rtruediv__(self, o): return _bin("div", o, self)  # noqa: E704
    def __pow__(self, o): return _bin("pow", self, o)      # noqa: E704
    def __rpow__(self, o): return _bin("pow", o, self)     # noqa: E704
    def __neg__(self): return Expr(ir.unary("neg", self.node))  # noqa: E704
    def __abs__(self): return Expr(ir.unary("abs", self.node))  # noqa: E704
    def __lt__(self, o): return _bin("lt", self, o)        # noqa: E704
    def __le__(self, o): return _bin("le", self, o)        # noqa: E704
    def __gt__(self, o): return _bin("gt", self, o)        # noqa: E704
    def __ge__(self, o): return _bin("ge", self, o)        # noqa: E704
    def __and__(self, o): return _bin("and", self, o)      # noqa: E704
    def __rand__(self, o): return _bin("and", o, self)     # noqa: E704
    def __or__(self, o): return _bin("or", self, o)        # noqa: E704
    def __ror__(self, o): return _bin("or", o, self)       # noqa: E704

    def __repr__(self):
        return f"Expr({ir.render(self.node)})"


class Data:
    """A named data argument of a mask: ``data[i0, i1, ...]`` looks up one element (the indices
    are traced values or ints; the tensor's rank is checked at call time)."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if not idx:
            raise DeclarationError(f"data {self.name!r} needs at least one index")
        return Expr(MaskNode("load", (), tuple(_node(i, f"index of {self.name}") for i in idx),
                             self.name))

    def __repr__(self):
        return f"Data({self.name!r})"


def _unary(op):
    def f(x):
        return Expr(ir.unary(op, _node(x, f"argument of {op}")))
    f.__name__ = op
    return f


exp, log, tanh, sigmoid, sqrt, sin, cos, abs_ = (
    _unary(o) for o in ("exp", "log", "tanh", "sigmoid", "sqrt", "sin", "cos", "abs"))


def where(cond, a, b) -> Expr:
    return Expr(ir.where(_node(cond), _node(a), _node(b)))


def maximum(a, b) -> Expr:
    return _bin("max", a, b)


def minimum(a, b) -> Expr:
    return _bin("min", a, b)


# ---------------------------------------------------------------------------------------- types

def node_type(n: ir.Node, types: dict, data_kinds: dict) -> str:
    """'b' (bool), 'i' (integer) or 'f' (float) of ``n`` given its sources' types."""
    if n.op in BOOL_OPS:
        return "b"
    if n.op == "const":
        return "i" if float(n.arg).is_integer() and abs(n.arg) < 2**31 else "f"
    if n.op == "input":
        return "f" if n.arg == SCORE_NAME else "i"
    if n.op == "load":
        return data_kinds.get(n.arg, "f")
    if n.op in FLOAT_OPS:
        return "f"
    if n.op == "where":
        ts = {types[s] for s in n.src[1:]}
        return "f" if "f" in ts else "i"
    ts = {types[s] for s in n.src}
    return "f" if "f" in ts else "i"


def infer_types(root: ir.Node, data_kinds: dict) -> dict:
    types = {}
    for n in ir.toposort(root):
        types[n] = node_type(n, types, data_kinds)
    return types


# ---------------------------------------------------------------------------------------- traced

def _trace(fn, lead: tuple, kind: str):
    if not callable(fn):
        raise DeclarationError(f"@{kind} expects a function, got {fn!r}")
    params = list(inspect.signature(fn).parameters)
    if len(params) < len(lead):
        raise DeclarationError(
            f"@{kind} function {fn.__name__} must take {', '.join(lead)} (then optional data "
            f"arguments); it takes {params}")
    args = [Expr(ir.leaf("input", name)) for name in lead]
    data_names = tuple(params[len(lead):])
    out = fn(*args, *(Data(n) for n in data_names))
    if isinstance(out, bool):
        out = ir.const(1.0 if out else 0.0)
    else:
        out = _node(out, f"the result of {fn.__name__}")
    return out, data_names


def _data_used(root) -> tuple:
    seen = []
    for n in ir.toposort(root):
        if n.op == "load" and n.arg not in seen:
            seen.append(n.arg)
    return tuple(seen)


#: key -> Mask / ScoreMod: every declared mask and score modification, by content. The kernels
#: are looked up by these keys inside the custom ops (``ops.py``), so a compiled call (dynamo) only
#: carries strings and never traces hashing or code generation.
REGISTRY: dict = {}


class _Traced:
    kind = "?"

    def _register(self):
        """Compute what the call path reads (eagerly, at declaration: nothing of it is traced by
        ``torch.compile``): the content key and the index dependencies."""
        self.key = ir.fingerprint(self.node, extra=f"{self.kind}:{','.join(self.data_names)}")
        self._deps = frozenset(n.arg for n in ir.toposort(self.node) if n.op == "input")
        REGISTRY.setdefault(self.key, self)

    def depends_on(self, name: str) -> bool:
        """Whether the expression uses index ``name`` ("b", "h", "q", "kv") directly."""
        return name in self._deps

    @property
    def fingerprint(self) -> str:
        return self.key

    def __repr__(self):
        return f"{type(self).__name__}({self.name}: {ir.render(self.node)})"


class Mask(_Traced):
    """A traced mask predicate. ``node`` is the IR of the predicate (a constant 1 for no mask),
    ``data_names`` the data arguments it declares, in order."""
    kind = "mask"

    def __init__(self, node: ir.Node, data_names=(), name="mask"):
        self.node, self.data_names, self.name = node, tuple(data_names), name
        types = infer_types(node, {d: "i" for d in data_names})
        if node.op not in ("const", "load") and types[node] != "b":
            raise DeclarationError(
                f"mask {name} must return a boolean (a comparison, &, |, ~ of comparisons), got "
                f"the float expression {ir.render(node)}")
        if node.op == "const" and node.arg == 0.0:
            pass  # the empty mask: every row is empty (o = 0)
        used = set(_data_used(node))
        unknown = used - set(self.data_names)
        if unknown:  # pragma: no cover - Data objects only come from the signature
            raise DeclarationError(f"mask {name} reads undeclared data {sorted(unknown)}")
        self.is_full = self.node.op == "const" and self.node.arg != 0.0
        self._register()

    def depends_on_batch(self) -> bool:
        return self.depends_on("b")

    def depends_on_head(self) -> bool:
        return self.depends_on("h")

    def __and__(self, other):
        return and_masks(self, other)

    def __or__(self, other):
        return or_masks(self, other)


class ScoreMod(_Traced):
    """A traced score modification ``score' = f(score, b, h, q, kv, *data)`` (applied to the
    scaled score ``scale * q.k`` before the mask and the softmax). Its derivative with respect to
    the score, ``dnode``, is derived symbolically (``dsl.grad.tangent``) for the backward; data
    tensors get no gradient."""
    kind = "score_mod"

    def __init__(self, node: ir.Node, data_names=(), name="score_mod"):
        self.node, self.data_names, self.name = node, tuple(data_names), name
        self.dnode = tangent(node, ir.leaf("input", SCORE_NAME))
        self._register()


def mask(fn) -> Mask:
    """Decorator: trace ``fn(b, h, q, kv, *data)`` into a ``Mask``."""
    node, data = _trace(fn, INDEX_NAMES, "mask")
    return Mask(node, data, getattr(fn, "__name__", "mask"))


def score_mod(fn) -> ScoreMod:
    """Decorator: trace ``fn(score, b, h, q, kv, *data)`` into a ``ScoreMod``."""
    node, data = _trace(fn, (SCORE_NAME,) + INDEX_NAMES, "score_mod")
    return ScoreMod(node, data, getattr(fn, "__name__", "score_mod"))


FULL = Mask(ir.const(1.0), (), "full")


def _combine(op, masks):
    node, names = None, []
    for m in masks:
        node = m.node if node is None else ir.binary(op, node, m.node)
        names += [d for d in m.data_names if d not in names]
    return Mask(node, names, f" {'&' if op == 'and' else '|'} ".join(m.name for m in masks))


def and_masks(*masks) -> Mask:
    """The intersection of masks (data arguments are shared by name)."""
    return _combine("and", masks)


def or_masks(*masks) -> Mask:
    """The union of masks (data arguments are shared by name)."""
    return _combine("or", masks)
