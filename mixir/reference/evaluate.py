"""Evaluate the expression IR on arrays with named dims, on NumPy or torch.

A value is an array of shape ``lead + [size of d for d in dims]``; ``lead`` is a fixed prefix of
axes (heads, or batch·time·heads) shared by every value. Elementwise ops align operands by name.
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

    @staticmethod
    def sigmoid(x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    @staticmethod
    def softplus(x):
        return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)

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
        self.torch = torch
        self.dtype = dtype or torch.float64   # of constants: float64 for the reference
        self.exp, self.log, self.tanh, self.sqrt, self.abs = (
            torch.exp, torch.log, torch.tanh, torch.sqrt, torch.abs)
        self.cos, self.sin = torch.cos, torch.sin
        self.maximum, self.minimum, self.where = torch.maximum, torch.minimum, torch.where
        self.sigmoid = torch.sigmoid
        self.softplus = torch.nn.functional.softplus

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
    src = [align(xp, memo[s], s.dims, n.dims, nlead) if op not in ("sum", "amax") else memo[s]
           for s in n.src]
    if op in ("sum", "amax"):
        (a,) = n.src
        axes = tuple(nlead + a.dims.index(d) for d in n.arg)
        arr = src[0]
        # a broadcast (size-1) axis under a sum stands for a full dim: it was expanded by sizes
        return xp.sum(arr, axes) if op == "sum" else xp.amax(arr, axes)
    a = src[0]
    if op == "neg":
        return -a
    if op == "recip":
        return 1.0 / a
    if op == "rsqrt":
        return 1.0 / xp.sqrt(a)
    if op == "silu":
        return a * xp.sigmoid(a)
    if op == "logsigmoid":
        return -xp.softplus(-a)
    if op in ("exp", "log", "tanh", "sqrt", "abs", "sigmoid", "softplus", "cos", "sin"):
        return getattr(xp, op)(a)
    b = src[1] if len(src) > 1 else None
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return a / b
    if op == "pow":
        return a ** b
    if op == "max":
        return xp.maximum(a, b)
    if op == "min":
        return xp.minimum(a, b)
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
        res = {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b, "eq": a == b, "ne": a != b}[op]
        return xp.to_float(res)
    if op == "and":
        return xp.to_float((a != 0) & (b != 0))
    if op == "or":
        return xp.to_float((a != 0) | (b != 0))
    if op == "where":
        return xp.where(a != 0, b, src[2])
    raise AssertionError(op)
