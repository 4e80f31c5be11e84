"""What users write inside a ``@mixir.mixer`` body: traced values and the closed set of ops."""
from __future__ import annotations

import numbers

from ..errors import DeclarationError
import mixir.dsl.ir as ir
from .names import check_dim_name


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

    # what a traced value cannot do, each with what to write instead (DeclarationError, never a
    # bare TypeError from deep inside NumPy, math or torch)
    def __float__(self):
        raise DeclarationError(
            "a traced mixir value is not a Python number: float(x), int(x) and the math module "
            "(math.exp, math.log, ...) cannot run on it; use mixir's elementwise ops (mixir.exp, "
            "mixir.log, mixir.sqrt, mixir.tanh, ...) and Scalar[...] arguments for numbers")

    __int__ = __complex__ = __float__

    def __index__(self):
        raise DeclarationError(
            "a traced mixir value is not an integer: it cannot size a range(), index a sequence or "
            "count a loop; a step describes one token (mixir runs the loop over tokens), and sizes "
            "are named dims fixed at call time")

    def __getitem__(self, item):
        raise DeclarationError(
            f"traced mixir values have named dims {self.dims}, not positions: x[{item!r}] is not "
            "supported; reduce with mixir.sum(x, 'K') / mixir.amax(x, 'K'), contract with `@`, "
            "select elementwise with mixir.where")

    def __iter__(self):
        raise DeclarationError(
            f"a traced mixir value (dims {self.dims}) cannot be iterated or unpacked; use named-dim "
            "ops (mixir.sum, `@`, mixir.where) on the whole value")

    def __len__(self):
        raise DeclarationError(f"a traced mixir value has named dims {self.dims}, no len()")

    def __call__(self, *args, **kwargs):
        raise DeclarationError("a traced mixir value is not callable (is an argument shadowing a "
                               "function name?)")

    def __array__(self, *args, **kwargs):
        raise DeclarationError(
            "a traced mixir value cannot become a NumPy array; use mixir's ops (mixir.exp, "
            "mixir.sum, ...) on it")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy scalars in arithmetic (np.float64(0.9) * S) keep working; NumPy functions do not
        name = ufunc.__name__
        if not all(isinstance(x, (Value, numbers.Real)) for x in inputs):
            raise DeclarationError(
                f"numpy.{name} got a NumPy array and a traced mixir value: arrays cannot enter a "
                "traced step; pass tensors as In[...] / Param[...] arguments")
        op = _NUMPY_OPERATORS.get(name)
        if op is not None and method == "__call__" and not kwargs:
            return op(*[x if isinstance(x, Value) else float(x) for x in inputs])
        if op is not None:
            raise DeclarationError(f"numpy.{name}.{method} (or with keywords) cannot run on a traced "
                                   "mixir value: write the Python operator (+, *, <, ...) on it")
        use = _NUMPY_TO_MIXIR.get(name, name)
        raise DeclarationError(
            f"numpy.{name} cannot run on a traced mixir value: use mixir.{use}(...) instead"
            if use in _MIXIR_OPS else
            f"numpy.{name} cannot run on a traced mixir value, and mixir has no such op; see "
            f"docs/dsl.md for the ops a step may use")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func)).strip("_")
        raise DeclarationError(
            f"torch.{name} cannot run on a traced mixir value: use mixir.{name}(...) instead"
            if name in _MIXIR_OPS else
            f"torch.{name} cannot run on a traced mixir value (torch tensors and functions cannot "
            f"enter a traced step); use mixir's ops (docs/dsl.md), and pass tensors as In[...] / "
            f"Param[...] arguments")

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


import operator as _op  # noqa: E402 - the tables below name these

#: NumPy ufuncs that are Python operators on traced values (a NumPy scalar on one side)
_NUMPY_OPERATORS = {
    "add": _op.add, "subtract": _op.sub, "multiply": _op.mul, "true_divide": _op.truediv,
    "divide": _op.truediv, "power": _op.pow, "negative": _op.neg, "positive": _op.pos,
    "absolute": abs, "less": _op.lt, "less_equal": _op.le, "greater": _op.gt,
    "greater_equal": _op.ge, "matmul": _op.matmul}
#: NumPy ufunc names whose mixir op has another name
_NUMPY_TO_MIXIR = {"absolute": "abs", "fmax": "maximum", "fmin": "minimum"}
#: the elementwise / reduction ops of ``mixir`` a NumPy, math or torch call maps to
_MIXIR_OPS = ("exp", "log", "sigmoid", "softplus", "logsigmoid", "silu", "tanh", "sqrt", "rsqrt",
              "abs", "cos", "sin", "maximum", "minimum", "where", "sum", "amax", "outer")


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


def rename(x, /, **mapping) -> Value:
    """``x`` with dims renamed, ``rename(h, D="E")``: the same values along a new dim name, so
    that ``rename(h, D="E") @ R`` with ``R: Param["E", "D"]`` gives a vector along ``D`` again
    (a recurrent matmul). It is a contraction with the Kronecker delta over (old, new); the two
    dims must have the same size at call time."""
    x = Value(as_node(x))
    for old, new in mapping.items():
        check_dim_name(new, "mixir.rename")
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
