"""What users write inside a ``@mixir.mixer`` body: traced values and the closed set of ops."""
from __future__ import annotations

import numbers

from ..errors import DeclarationError
import mixir.dsl.ir as ir


class Value:
    """A traced value: wraps an IR node and overloads Python's operators."""
    __slots__ = ("node",)
    __array_priority__ = 1000

    def __init__(self, node: ir.Node):
        self.node = node

    @property
    def dims(self):
        return self.node.dims

    def __repr__(self):
        return f"Value({ir.render(self.node)}, dims={self.node.dims})"

    def __bool__(self):
        raise DeclarationError(
            "a traced mixir value has no truth value: use mixir.where(cond, a, b) instead of "
            "Python `if`/`and`/`or` on traced values")

    # arithmetic
    def __add__(self, o): return _bin("add", self, o)
    def __radd__(self, o): return _bin("add", o, self)
    def __sub__(self, o): return _bin("sub", self, o)
    def __rsub__(self, o): return _bin("sub", o, self)
    def __mul__(self, o): return _bin("mul", self, o)
    def __rmul__(self, o): return _bin("mul", o, self)
    def __truediv__(self, o): return _bin("div", self, o)
    def __rtruediv__(self, o): return _bin("div", o, self)
    def __pow__(self, o): return _bin("pow", self, o)
    def __rpow__(self, o): return _bin("pow", o, self)
    def __neg__(self): return Value(ir.unary("neg", self.node))
    def __pos__(self): return self
    def __abs__(self): return Value(ir.unary("abs", self.node))
    def __matmul__(self, o): return contract(self, o)
    def __rmatmul__(self, o): return contract(o, self)
    # comparisons (elementwise, produce 0/1 masks)
    def __lt__(self, o): return _bin("lt", self, o)
    def __le__(self, o): return _bin("le", self, o)
    def __gt__(self, o): return _bin("gt", self, o)
    def __ge__(self, o): return _bin("ge", self, o)
    def __and__(self, o): return _bin("and", self, o)
    def __or__(self, o): return _bin("or", self, o)
    __hash__ = object.__hash__

    def sum(self, dim):
        return sum_(self, dim)


def as_node(x, what="operand") -> ir.Node:
    if isinstance(x, Value):
        return x.node
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return ir.const(float(x))
    raise DeclarationError(
        f"{what} must be a traced mixir value or a real number, got {type(x).__name__}: {x!r}")


def _bin(op, a, b) -> Value:
    return Value(ir.binary(op, as_node(a), as_node(b)))


def _unary(op):
    def f(x):
        return Value(ir.unary(op, as_node(x, f"argument of mixir.{op}")))
    f.__name__ = op
    f.__doc__ = f"Elementwise {op}."
    return f


exp, log, sigmoid, softplus, logsigmoid, silu, tanh, sqrt, rsqrt = (
    _unary(o) for o in ("exp", "log", "sigmoid", "softplus", "logsigmoid", "silu", "tanh",
                        "sqrt", "rsqrt"))
abs = _unary("abs")  # noqa: A001 - mirrors the math name
# cos/sin: the rotation part of a complex exponential exp(dt·(a + ib)) kept as a (re, im) pair
cos, sin = _unary("cos"), _unary("sin")


def maximum(a, b) -> Value:
    return _bin("max", a, b)


def minimum(a, b) -> Value:
    return _bin("min", a, b)


def where(cond, a, b) -> Value:
    return Value(ir.where(as_node(cond), as_node(a), as_node(b)))


def _check_dims(x: Value, dims, fn):
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise DeclarationError(f"mixir.{fn}: dims {missing} not in the operand's dims {x.dims}")
    return dims


def sum_(x, dim) -> Value:
    x = Value(as_node(x))
    return Value(ir.reduce("sum", x.node, _check_dims(x, dim, "sum")))


def amax(x, dim) -> Value:
    x = Value(as_node(x))
    return Value(ir.reduce("amax", x.node, _check_dims(x, dim, "amax")))


def contract(a, b) -> Value:
    """``a @ b``: multiply and sum over the named dims the two operands share."""
    a, b = as_node(a), as_node(b)
    shared = [d for d in a.dims if d in b.dims]
    if not shared:
        raise DeclarationError(
            f"`@` needs a shared named dim to contract: left has dims {a.dims}, right has "
            f"{b.dims}; use mixir.outer or `*` for products without contraction")
    return Value(ir.contract(a, b))


def outer(a, b) -> Value:
    """Outer product of operands with disjoint named dims."""
    a, b = as_node(a), as_node(b)
    shared = [d for d in a.dims if d in b.dims]
    if shared:
        raise DeclarationError(f"mixir.outer: operands share dims {shared}; outer needs disjoint dims")
    return Value(ir.binary("mul", a, b))


def l2norm(x, dim, eps: float = 1e-6) -> Value:
    """``x / sqrt(sum(x*x, dim) + eps)`` (fla's l2norm convention)."""
    x = Value(as_node(x))
    return x * rsqrt(sum_(x * x, dim) + eps)


def rename(x, **mapping) -> Value:
    """``x`` with dims renamed, ``rename(h, D="E")``: the same values along a new dim name, so
    that ``rename(h, D="E") @ R`` with ``R: Param["E", "D"]`` gives a vector along ``D`` again
    (a recurrent matmul). It is a contraction with the Kronecker delta over (old, new); the two
    dims must have the same size at call time."""
    x = Value(as_node(x))
    for old, new in mapping.items():
        if old not in x.dims:
            raise DeclarationError(f"mixir.rename: dim {old!r} not in the operand's dims {x.dims}")
        if new in x.dims:
            raise DeclarationError(f"mixir.rename: the operand already has a dim {new!r}")
    node = x.node
    for old, new in mapping.items():
        node = ir.rename(node, old, new)
    return Value(node)


def head() -> Value:
    """The head index h (0-based) as a value: for per-head constants such as RetNet's decays."""
    return Value(ir.Node("head", (), (), "head"))
