"""Tracing FlexAttention-style ``mask_mod`` / ``score_mod`` functions — plain Python written with
torch operations on index tensors — into mixir's mask IR (``mixir.dsl.mask``).

The function is called once with ``TorchExpr`` arguments: a subclass of the mask DSL's traced
``Expr`` that also speaks torch's ``__torch_function__`` protocol, so ``torch.where(...)``,
``torch.tanh(...)``, ``q_idx.abs()`` and indexing a captured tensor (``document_id[q_idx]``,
``bias[h, q_idx - kv_idx]``) build IR nodes instead of running. A captured tensor becomes a data
argument of the mask (``mask_mod_captured0``, ...; ``score_mod_captured0``, ...: looked up at run time, clamped into its
extent like every mixir data lookup); a 0-dim tensor used as an operand (a captured temperature,
``torch.tensor(-1.0)``) becomes a one-element data tensor too, so a new value reuses the kernels.
``torch.sin`` / ``torch.cos`` are accepted in score mods and masks (the mask DSL's ``sin`` /
``cos``); ``torch.exp2(x)`` is ``exp(x ln 2)``. Anything else raises ``DeclarationError`` naming the
operation; Python ``if``/``and``/``or`` on traced values raise the DSL's own error.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import ir
from .mask import SCORE_NAME, Data, Expr, Mask, ScoreMod, infer_types
from .mask import _bin as _mask_bin
from .mask import where as _where
from ..errors import DeclarationError, MixirError

INDEX_NAMES = ("b", "h", "q", "kv")

_CURRENT: list = []      # the trace in progress (its captured tensors)


class _Trace:
    def __init__(self, what, prefix):
        self.what, self.prefix, self.tensors, self.names = what, prefix, {}, {}

    def capture(self, t: torch.Tensor) -> Data:
        if t.requires_grad and torch.is_grad_enabled():
            raise DeclarationError(
                f"{self.what} reads a captured tensor of shape {tuple(t.shape)} that requires grad: "
                "mixir's attention kernels give data tensors no gradient (detach it, or compute the "
                "term outside the score_mod)")
        name = self.names.get(id(t))
        if name is None:
            name = self.names[id(t)] = f"{self.prefix}{len(self.tensors)}"
            self.tensors[name] = t.detach().reshape(1) if t.dim() == 0 else t.detach()
        return Data(name)


def _fail(what: str):
    where = _CURRENT[-1].what if _CURRENT else "a traced function"
    raise DeclarationError(
        f"{where} uses {what}, which mixir's tracer cannot express. Supported: arithmetic "
        "(+ - * / ** // %), comparisons, & | ~, torch.where / abs / exp / exp2 / log / tanh / sigmoid "
        "/ sqrt / rsqrt / maximum / minimum / clamp / softplus / silu / logsigmoid / logical_and|or|not, "
        "sin / cos, "
        "indexing a captured tensor with index values, and constants")


def _node(x):
    """An operand: a traced value, a Python number or a 0-dim tensor (a constant)."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool):
        return 1 if x else 0
    if isinstance(x, numbers.Real):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            if not _CURRENT:
                return x.item()
            if x.dtype.is_complex:
                _fail("a complex 0-dim tensor")
            return _wrap(_CURRENT[-1].capture(x)[0])      # data: a new value reuses the kernels
        _fail(f"a tensor of shape {tuple(x.shape)} as an operand (index it with b / h / q_idx / "
              "kv_idx: only elements of captured tensors can be read)")
    _fail(f"an operand of type {type(x).__name__}")


def _wrap(e):
    if isinstance(e, TorchExpr) or not isinstance(e, Expr):
        return e
    return TorchExpr(e.node)


def _kinds(tensors: dict) -> dict:
    """Data name → 'b', 'i' or 'f' by the captured tensor's dtype."""
    return {n: "b" if t.dtype == torch.bool else "f" if t.is_floating_point() else "i"
            for n, t in tensors.items()}


def _type(e) -> str:
    """'b', 'i' or 'f' of a traced value."""
    return infer_types(e.node, _kinds(_CURRENT[-1].tensors if _CURRENT else {}))[e.node]


def _is_float(e) -> bool:
    if not isinstance(e, Expr):
        return isinstance(e, float)
    return _type(e) == "f"


def _is_bool(e) -> bool:
    return isinstance(e, Expr) and _type(e) == "b"


def _cast(x, dtype):
    """``.to(dtype)`` and friends: floats stay, integer casts of an integer expression stay,
    ``bool`` is ``!= 0``; an integer cast of a float expression (truncation) is refused."""
    if dtype is None:
        return x
    if dtype == torch.bool:
        return x if _is_bool(x) else _wrap(Expr.__ne__(x, 0))
    if dtype.is_floating_point:
        return x
    if _is_float(x):
        _fail(f"a cast of the float expression {ir.render(x.node)} to {dtype} (truncation)")
    return x


def _index(t: torch.Tensor, idx):
    idx = idx if isinstance(idx, tuple) else (idx,)
    for i in idx:
        if not isinstance(i, (Expr, int)) or isinstance(i, bool):
            _fail(f"indexing a captured tensor with {type(i).__name__} (only index values and ints)")
    if len(idx) != t.dim():
        _fail(f"indexing a captured tensor of shape {tuple(t.shape)} with {len(idx)} indices "
              "(give one index per dim)")
    if t.dtype.is_complex:
        _fail("a complex captured tensor")
    data = _CURRENT[-1].capture(t) if _CURRENT else _fail("a captured tensor outside a trace")
    return _wrap(data[tuple(_node(i) for i in idx)])


def _clamp(x, min=None, max=None):
    if min is not None:
        x = _wrap(_bin("max", x, min))
    if max is not None:
        x = _wrap(_bin("min", x, max))
    return x


def _bin(op, a, b):
    return _mask_bin(op, _node(a), _node(b))


def _un(op):
    def f(x, *rest, **kw):
        if rest or kw:
            _fail(f"torch.{op} with extra arguments {rest or sorted(kw)}")
        return _wrap(Expr(ir.unary(op, _as_expr(x).node)))
    return f


def _float_operand(x):
    """``x`` as an expression of float type (an integer index is converted, as torch's
    ``q_idx.float()`` would)."""
    x = _as_expr(x)
    if _is_float(x):
        return x
    return Expr(ir.Node("div", x.node.dims, (x.node, ir.const(1.0))))    # typed float, unfolded


def _trig(op):
    def f(x, *rest, **kw):
        if rest or kw:
            _fail(f"torch.{op} with extra arguments {rest or sorted(kw)}")
        return _wrap(Expr(ir.unary(op, _float_operand(x).node)))
    return f


def _exp2(x, *rest, **kw):
    if rest or kw:
        _fail(f"torch.exp2 with extra arguments {rest or sorted(kw)}")
    return _wrap(Expr(ir.unary("exp", ir.binary("mul", _float_operand(x).node,
                                                ir.const(math.log(2.0))))))


def _as_expr(x):
    x = _node(x)
    return x if isinstance(x, Expr) else Expr(ir.const(float(x)))


def _const_like(value):
    return lambda *a, **kw: _wrap(Expr(ir.const(float(value))))


def _full(x, fill_value, *a, **kw):
    if isinstance(fill_value, Expr):
        _fail("a traced fill value")
    return _wrap(Expr(ir.const(float(_node(fill_value)))))


def _div(a, b, rounding_mode=None):
    if rounding_mode is None:
        return _wrap(_bin("div", a, b))
    if rounding_mode == "floor":
        return _wrap(_bin("floordiv", a, b))
    _fail(f"torch.div with rounding_mode={rounding_mode!r} (only None and 'floor')")


def _minmax(op):
    def f(a, b=None, *rest, **kw):
        if not isinstance(b, (Expr, torch.Tensor)):
            _fail(f"torch.{op} as a reduction (use torch.{op}imum(a, b) for two operands)")
        return _wrap(_bin(op, a, b))
    return f


def _binop(op, swap=False):
    def f(a, b, *rest, **kw):
        if rest or kw:
            _fail(f"torch.{op} with extra arguments {rest or sorted(kw)}")
        return _wrap(_bin(op, b, a) if swap else _bin(op, a, b))
    return f


def _logic(op):
    def f(a, b):
        a, b = _node(a), _node(b)
        if _is_float(a) or _is_float(b):
            _fail(f"a bitwise {op} of float values")
        return _wrap(_bin(op, a, b))
    return f


def _not(x):
    return _wrap(Expr.__invert__(_as_expr(x)))


_OPS = {
    "add": _binop("add"), "radd": _binop("add", True), "sub": _binop("sub"),
    "rsub": _binop("sub", True), "mul": _binop("mul"), "rmul": _binop("mul", True),
    "div": _div, "true_divide": _binop("div"), "truediv": _binop("div"),
    "rtruediv": _binop("div", True), "rdiv": _binop("div", True), "pow": _binop("pow"),
    "rpow": _binop("pow", True), "floor_divide": _binop("floordiv"), "floordiv": _binop("floordiv"),
    "rfloordiv": _binop("floordiv", True), "remainder": _binop("mod"), "mod": _binop("mod"),
    "rmod": _binop("mod", True),
    "eq": _binop("eq"), "ne": _binop("ne"), "lt": _binop("lt"), "le": _binop("le"),
    "gt": _binop("gt"), "ge": _binop("ge"), "less": _binop("lt"), "less_equal": _binop("le"),
    "greater": _binop("gt"), "greater_equal": _binop("ge"), "not_equal": _binop("ne"),
    "and": _logic("and"), "rand": _logic("and"), "or": _logic("or"), "ror": _logic("or"),
    "bitwise_and": _logic("and"), "bitwise_or": _logic("or"), "logical_and": _logic("and"),
    "logical_or": _logic("or"), "logical_not": _not, "bitwise_not": _not, "invert": _not,
    "where": lambda c, a, b: _wrap(_where(_node(c), _node(a), _node(b))),
    "maximum": _binop("max"), "minimum": _binop("min"), "max": _minmax("max"), "min": _minmax("min"),
    "fmax": _binop("max"), "fmin": _binop("min"),
    "clamp": _clamp, "clip": _clamp, "clamp_min": lambda x, m: _clamp(x, min=m),
    "clamp_max": lambda x, m: _clamp(x, max=m),
    "neg": _un("neg"), "negative": _un("neg"), "abs": _un("abs"), "absolute": _un("abs"),
    "exp": _un("exp"), "exp2": _exp2, "sin": _trig("sin"), "cos": _trig("cos"),
    "log": _un("log"), "tanh": _un("tanh"), "sigmoid": _un("sigmoid"),
    "sqrt": _un("sqrt"), "rsqrt": _un("rsqrt"), "reciprocal": _un("recip"),
    "softplus": _un("softplus"), "silu": _un("silu"), "logsigmoid": _un("logsigmoid"),
    "square": lambda x: _wrap(_bin("mul", x, x)),
    "ones_like": _const_like(1), "zeros_like": _const_like(0), "full_like": _full,
    "new_ones": _const_like(1), "new_zeros": _const_like(0),
    "new_full": lambda x, size, fill_value, *a, **kw: _full(x, fill_value),
    "to": lambda x, *a, **kw: _cast(x, kw.get("dtype", next((d for d in a if isinstance(d, torch.dtype)), None))),
    "float": lambda x, *a, **kw: x, "double": lambda x, *a, **kw: x, "half": lambda x, *a, **kw: x,
    "bfloat16": lambda x, *a, **kw: x, "int": lambda x, *a, **kw: _cast(x, torch.int32),
    "long": lambda x, *a, **kw: _cast(x, torch.int64), "bool": lambda x, *a, **kw: _cast(x, torch.bool),
    "type_as": lambda x, other: x, "contiguous": lambda x, *a, **kw: x, "clone": lambda x, *a, **kw: x,
    "detach": lambda x: x,
}
_SOFTPLUS_DEFAULTS = {"beta": 1, "threshold": 20}


def _name(func) -> str:
    n = getattr(func, "__name__", str(func))
    return n[2:-2] if n.startswith("__") and n.endswith("__") else n


def _dispatch(func, args, kwargs):
    name = _name(func)
    if name == "getitem" and isinstance(args[0], torch.Tensor):
        return _index(args[0], args[1])
    if name == "softplus" and any(kwargs.get(k, v) != v for k, v in _SOFTPLUS_DEFAULTS.items()):
        _fail("softplus with beta/threshold other than the defaults")
    op = _OPS.get(name)
    if op is None:
        _fail(f"torch.{name}")
    kw = {k: v for k, v in kwargs.items() if k not in ("out", "device", "dtype", "layout",
                                                          "requires_grad", "pin_memory", "size")
          or (name == "to" and k == "dtype")}
    if name in ("softplus", "silu", "logsigmoid"):
        kw = {}
    return op(*args, **kw)


class TorchExpr(Expr):
    """A traced value that torch functions and tensor methods accept (see the module docstring)."""
    __slots__ = ()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})

    device = property(lambda self: torch.device("cpu"))
    shape = property(lambda self: torch.Size([]))

    def dim(self):
        return 0

    def __getitem__(self, idx):
        _fail("indexing an index value")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        op = _OPS.get(name)
        if op is None:
            _fail(f"the tensor method .{name}()")
        return lambda *a, **kw: op(self, *a, **kw)

    def __bool__(self):
        _fail("Python `if` / `and` / `or` / `not` on a traced value (use torch.where, &, |, ~)")


def _operator(op, swap=False):
    def f(self, other):
        return _wrap(_bin(op, other, self) if swap else _bin(op, self, other))
    return f


for _n, _op in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("truediv", "div"), ("pow", "pow"),
                ("floordiv", "floordiv"), ("mod", "mod"), ("lt", "lt"), ("le", "le"), ("gt", "gt"),
                ("ge", "ge"), ("eq", "eq"), ("ne", "ne")):
    setattr(TorchExpr, f"__{_n}__", _operator(_op))
    if _n not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(TorchExpr, f"__r{_n}__", _operator(_op, True))
TorchExpr.__and__ = TorchExpr.__rand__ = lambda a, b: _OPS["and"](a, b)
TorchExpr.__or__ = TorchExpr.__ror__ = lambda a, b: _OPS["or"](a, b)
TorchExpr.__xor__ = TorchExpr.__rxor__ = lambda a, b: _fail("^ (xor)")
TorchExpr.__invert__ = _not
TorchExpr.__neg__ = lambda a: _wrap(Expr(ir.unary("neg", a.node)))
TorchExpr.__abs__ = lambda a: _wrap(Expr(ir.unary("abs", a.node)))
TorchExpr.__hash__ = object.__hash__


def _run(fn, lead, what):
    if not callable(fn):
        raise DeclarationError(f"{what} must be a function, got {fn!r}")
    trace = _Trace(f"{what} {getattr(fn, '__name__', fn)!s}", f"{what}_captured")
    _CURRENT.append(trace)
    try:
        out = fn(*(TorchExpr(ir.leaf("input", n)) for n in lead))
    except MixirError as e:
        if str(e).startswith(trace.what):
            raise
        raise type(e)(f"{trace.what}: {e}") from None
    finally:
        _CURRENT.pop()
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        out = out.item()
    if isinstance(out, bool):
        out = ir.const(1.0 if out else 0.0)
    elif isinstance(out, numbers.Real):
        if math.isnan(out):
            raise DeclarationError(f"{trace.what} returns NaN")
        out = ir.const(float(out))
    elif isinstance(out, Expr):
        out = out.node
    else:
        raise DeclarationError(f"{trace.what} must return a traced value or a constant, got "
                               f"{type(out).__name__}")
    return out, trace.tensors, trace.what


def trace_mask(mask_mod):
    """``(Mask, captured tensors by data name)`` of ``mask_mod(b, h, q_idx, kv_idx)``."""
    node, data, what = _run(mask_mod, INDEX_NAMES, "mask_mod")
    if node.op != "const" and infer_types(node, _kinds(data))[node] == "i":   # e.g. where() of booleans
        node = ir.binary("ne", node, ir.const(0.0))
    return Mask(node, tuple(data), what), data


def trace_score_mod(score_mod):
    """``(ScoreMod or None for the identity, captured tensors)`` of
    ``score_mod(score, b, h, q_idx, kv_idx)``."""
    node, data, what = _run(score_mod, (SCORE_NAME,) + INDEX_NAMES, "score_mod")
    if node.op == "input" and node.arg == SCORE_NAME:
        return None, data
    return ScoreMod(node, tuple(data), what), data
