"""The one evaluator of the expression IR: every op's meaning, on NumPy or torch.

``OPS[op](xp, *operands)`` is the value of ``op`` on arrays of a backend ``xp`` (``NumpyBackend``,
``TorchBackend``), elementwise with broadcasting (``sum``/``amax`` take the axes as well):

    neg a = -a,   recip a = 1 / a,   rsqrt a = 1 / sqrt a,   silu a = a σ(a),
    logsigmoid a = -softplus(-a),   exp, log, tanh, sqrt, abs, sigmoid, softplus, cos, sin,
    a + b,  a - b,  a b,  a / b,  a ** b,  max(a, b),  min(a, b),
    mod a b = a - b ⌊a / b⌋,   floordiv a b = ⌊a / b⌋         (the attention-mask index ops)
    a < b, a ≤ b, a > b, a ≥ b, a = b, a ≠ b,  a ∧ b,  a ∨ b,  ¬a    (``PREDICATES``: booleans)
    where(c, a, b) = a if c else b,   Σ_axes a,   max_axes a,

where a condition (``and``/``or``/``not``/``where``) is any nonzero value. Three layouts call it:
``evaluate`` below (values ``lead + dims``, named dims aligned by name: the reference, the
constant folding of the code generator, the analyses), the LTI parameter trees per head
(``lowering/lti/params.py``) and the attention masks over index tensors
(``reference/attention.evaluate_mask``). Each keeps its own value representation (the IR's
booleans are 0/1 floats here and in LTI, bool tensors in masks), never its own op semantics.
The torch backend exists so that autograd of the *same* semantics, in float64, checks gradients.
"""
from __future__ import annotations

import numpy as np

from ..dsl import ir


class NumpyBackend:
    name = "numpy"

    @staticmethod
    def asarray(x, like=None):
        return np.asarray(x, dtype=np.float64)

    exp, log, tanh, sqrt, abs = (staticmethod(f) for f in (np.exp, np.log, np.tanh, np.sqrt, np.abs))
    cos, sin = staticmethod(np.cos), staticmethod(np.sin)
    maximum, minimum, where = (staticmethod(f) for f in (np.maximum, np.minimum, np.where))
    remainder, floor_divide = staticmethod(np.remainder), staticmethod(np.floor_divide)

    @staticmethod
    def sigmoid(x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    @staticmethod
    def softplus(x):
        return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)

    @staticmethod
    def logsigmoid(x):
        return -NumpyBackend.softplus(-x)

    @staticmethod
    def silu(x):
        return x * NumpyBackend.sigmoid(x)

    @staticmethod
    def rsqrt(x):
        return 1.0 / np.sqrt(x)

    @staticmethod
    def truth(x):
        return x if x.dtype == np.bool_ else x != 0

    @staticmethod
    def transpose(x, axes):
        return np.transpose(x, axes)

    @staticmethod
    def reshape(x, shape):
        return np.reshape(x, shape)

    @staticmethod
    def sum(x, axes):
        return np.sum(x, axis=axes)

    @staticmethod
    def amax(x, axes):
        return np.max(x, axis=axes)

    @staticmethod
    def to_float(mask):
        return mask.astype(np.float64)


class TorchBackend:
    name = "torch"

    def __init__(self, dtype=None):
        import torch
        F = torch.nn.functional
        self.torch = torch
        self.dtype = dtype or torch.float64   # of constants: float64 for the reference
        self.exp, self.log, self.tanh, self.sqrt, self.abs = (
            torch.exp, torch.log, torch.tanh, torch.sqrt, torch.abs)
        self.cos, self.sin, self.rsqrt = torch.cos, torch.sin, torch.rsqrt
        self.maximum, self.minimum, self.where = torch.maximum, torch.minimum, torch.where
        self.sigmoid, self.softplus, self.logsigmoid, self.silu = (
            torch.sigmoid, F.softplus, F.logsigmoid, F.silu)
        self.remainder = torch.remainder

    def floor_divide(self, a, b):
        return self.torch.div(a, b, rounding_mode="floor")

    def truth(self, x):
        return x if x.dtype == self.torch.bool else x != 0

    def asarray(self, x, like=None):
        return x if isinstance(x, self.torch.Tensor) else self.torch.as_tensor(x, dtype=self.dtype)

    def transpose(self, x, axes):
        return x.permute(*axes)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def sum(self, x, axes):
        return x.sum(dim=axes)

    def amax(self, x, axes):
        return x.amax(dim=axes)

    def to_float(self, mask):
        return mask.to(self.dtype) if mask.dtype == self.torch.bool else mask


def _unary(name):
    return lambda xp, a: getattr(xp, name)(a)


#: op -> f(xp, *operands): the semantics of every non-leaf op (see the module docstring)
OPS = {
    "neg": lambda xp, a: -a,
    "recip": lambda xp, a: 1.0 / a,
    **{op: _unary(op) for op in ("exp", "log", "tanh", "sqrt", "rsqrt", "abs", "sigmoid",
                                  "softplus", "logsigmoid", "silu", "cos", "sin")},
    "add": lambda xp, a, b: a + b,
    "sub": lambda xp, a, b: a - b,
    "mul": lambda xp, a, b: a * b,
    "div": lambda xp, a, b: a / b,
    "pow": lambda xp, a, b: a ** b,
    "max": lambda xp, a, b: xp.maximum(a, b),
    "min": lambda xp, a, b: xp.minimum(a, b),
    "mod": lambda xp, a, b: xp.remainder(a, b),
    "floordiv": lambda xp, a, b: xp.floor_divide(a, b),
    "lt": lambda xp, a, b: a < b,
    "le": lambda xp, a, b: a <= b,
    "gt": lambda xp, a, b: a > b,
    "ge": lambda xp, a, b: a >= b,
    "eq": lambda xp, a, b: a == b,
    "ne": lambda xp, a, b: a != b,
    "and": lambda xp, a, b: xp.truth(a) & xp.truth(b),
    "or": lambda xp, a, b: xp.truth(a) | xp.truth(b),
    "not": lambda xp, a: ~xp.truth(a),
    "where": lambda xp, c, a, b: xp.where(xp.truth(c), a, b),
    "sum": lambda xp, a, axes: xp.sum(a, axes),
    "amax": lambda xp, a, axes: xp.amax(a, axes),
}
#: the ops whose value is a boolean
PREDICATES = ir.COMPARE + ("not",)


def align(xp, arr, dims, target, nlead):
    """Permute/expand ``arr`` (named ``dims`` after ``nlead`` axes) to the order of ``target``."""
    if dims == target:
        return arr
    order = [d for d in target if d in dims]
    if order != list(dims):
        arr = xp.transpose(arr, list(range(nlead)) + [nlead + dims.index(d) for d in order])
    shape = list(arr.shape[:nlead])
    it = iter(arr.shape[nlead:])
    for d in target:
        shape.append(next(it) if d in dims else 1)
    return xp.reshape(arr, shape)


def evaluate(roots, env: dict, xp, nlead: int, sizes: dict | None = None):
    """Evaluate IR ``roots`` (a node or a list). ``env`` maps leaf nodes to arrays (or floats for
    scalars). Returns arrays named by each root's dims (broadcast dims may have size 1)."""
    single = isinstance(roots, ir.Node)
    roots = [roots] if single else list(roots)
    memo: dict = {}
    for root in roots:
        for n in ir.toposort(root):
            if n in memo:
                continue
            memo[n] = _eval(n, memo, env, xp, nlead, sizes)
    out = [memo[r] for r in roots]
    if sizes is not None:
        out = [_expand(xp, o, r.dims, nlead, sizes) for o, r in zip(out, roots)]
    return out[0] if single else out


def _expand(xp, arr, dims, nlead, sizes):
    """Broadcast a value (every value has rank nlead + len(dims), size-1 where broadcast)."""
    shape = tuple(arr.shape[:nlead]) + tuple(sizes[d] for d in dims)
    if hasattr(arr, "expand"):
        return arr.expand(*shape)
    return np.broadcast_to(arr, shape)


def _eval(n, memo, env, xp, nlead, sizes):
    op = n.op
    if op in ir.LEAVES:
        if op == "const":
            v = xp.reshape(xp.asarray(n.arg), (1,) * (nlead + len(n.dims)))
            if n.dims and sizes is not None:  # a broadcast constant is summed over its full dims
                v = v * xp.asarray(np.ones((1,) * nlead + tuple(sizes[d] for d in n.dims)))
            return v
        if op == "delta":   # Kronecker delta over (a, b): needs the dims' sizes
            if sizes is None:
                raise KeyError("delta[...] (mixir.rename) needs the dims' sizes")
            a, b = (sizes[d] for d in n.dims)
            if a != b:
                raise ValueError(f"mixir.rename: dims {n.dims} must have the same size, got {a} and {b}")
            v = xp.asarray(np.eye(a).reshape((1,) * nlead + (a, b)))
            like = next((x for x in env.values() if hasattr(x, "device")), None)
            return v.to(like.device) if like is not None and xp.name == "torch" else v
        if n not in env:
            raise KeyError(f"no value bound for leaf {n.op} {n.arg!r}")
        v = env[n]
        if not hasattr(v, "shape"):
            v = xp.reshape(xp.asarray(float(v)), (1,) * (nlead + len(n.dims)))
        return v
    if op in ("sum", "amax"):
        # a broadcast (size-1) axis under a sum stands for a full dim: it was expanded by sizes
        (a,) = n.src
        return OPS[op](xp, memo[a], tuple(nlead + a.dims.index(d) for d in n.arg))
    r = OPS[op](xp, *(align(xp, memo[s], s.dims, n.dims, nlead) for s in n.src))
    return xp.to_float(r) if op in PREDICATES else r
