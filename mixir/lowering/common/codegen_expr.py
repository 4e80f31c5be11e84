"""The expression emitter of ``codegen``: IR nodes → lines of a Triton kernel body.

``_Body`` emits every node of a DAG of pieces once (names ``t<i>``) as a tile of rank ``1 + #feature
dims`` (axis 0: the ``BR`` token rows, ``ROW``; one axis per feature dim, size 1 where the value
does not vary) or as a plain scalar, with masked strided loads of the inputs, parameters and
cotangents (``LoadArg``), stable forms of sigmoid, softplus, logsigmoid and tanh, torch's ``pow``,
reductions with neutral padded lanes, and masked contiguous fp32 stores (``StoreArg``). ``_Names``
gives sanitised, collision-free identifiers for user names, ``_lit`` prints a float literal and
``_fold`` evaluates a node with constant sources in float64 at generation time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from typing import TYPE_CHECKING

import numpy as np

from ...dsl import ir
from ...dsl.vjp import multi_toposort
from ...errors import MixirError

if TYPE_CHECKING:  # pragma: no cover
    from .codegen import LoadArg, StoreArg

ROW = "__row__"          # the axis of token rows in a tile


# ----------------------------------------------------------------------------------------------
# naming

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Names:
    """Sanitised, collision-free identifiers for user names (inputs, dims, pieces)."""

    def __init__(self):
        self.used: dict = {}

    def __call__(self, space: str, name: str) -> str:
        key = (space, name)
        if key in self.used:
            return self.used[key]
        base = name if _IDENT.match(name) and len(name) <= 40 else \
            "x" + hashlib.sha1(name.encode()).hexdigest()[:8]
        cand, i = base, 1
        taken = {v for (s, _), v in self.used.items() if s == space}
        while cand in taken:
            cand, i = f"{base}_{i}", i + 1
        self.used[key] = cand
        return cand


def _lit(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)


def _fold(n: ir.Node, values: list) -> float:
    """Evaluate one node with constant sources in float64 (NumPy semantics of evaluate.py)."""
    from ...reference.evaluate import NumpyBackend, evaluate
    tmp = ir.Node(n.op, (), tuple(ir.const(v) for v in values), n.arg)
    with np.errstate(all="ignore"):
        return float(evaluate(tmp, {}, NumpyBackend(), 0))


# ----------------------------------------------------------------------------------------------
# one kernel body

@dataclasses.dataclass
class _Val:
    expr: str                  # a name or a literal
    axes: frozenset            # tile axes along which the value varies (ROW, feature dims)
    lit: float | None = None   # the value, when it is a literal
    tile: bool = True          # False: a plain scalar (literal or scalar argument)
    bool_expr: str | None = None   # comparisons: the boolean; ``expr`` (0/1) made on first use
    pending: bool = False          # the float ``expr`` of a comparison is not emitted yet


class _Body:
    def __init__(self, fdims, names: _Names, leaf_args: dict, scalar_args: dict):
        self.fdims = list(fdims)
        self.rank = 1 + len(self.fdims)
        self.names = names
        self.leaf_args = leaf_args        # leaf node -> LoadArg
        self.scalar_args = scalar_args    # scalar name -> arg name
        self.lines: list = []
        self.vals: dict = {}
        self.counter = 0
        self.tiles: list = []             # the distinct sets of feature dims of the tiles
        self.head_emitted = False

    # -- helpers --------------------------------------------------------------------------
    def axis(self, d) -> int:
        return 0 if d == ROW else 1 + self.fdims.index(d)

    def dn(self, d) -> str:
        return self.names("dim", d)

    def expand(self, vec: str, d) -> str:
        """A 1-D vector along the axis of ``d``, expanded to the tile rank."""
        if self.rank == 1:
            return vec
        idx = ", ".join(":" if i == self.axis(d) else "None" for i in range(self.rank))
        return f"{vec}[{idx}]"

    def shape(self, axes) -> str:
        parts = ["BR" if ROW in axes else "1"]
        parts += [f"BD_{self.dn(d)}" if d in axes else "1" for d in self.fdims]
        return "[" + ", ".join(parts) + "]"

    def mask(self, axes) -> str:
        parts = [self.expand("rmask", ROW)] if ROW in axes else []
        parts += [self.expand(f"m_{self.dn(d)}", d) for d in self.fdims if d in axes]
        return " & ".join(parts)

    def fresh(self) -> str:
        name = f"t{self.counter}"
        self.counter += 1
        return name

    def emit(self, line: str):
        self.lines.append("    " + line)

    def note_axes(self, axes):
        dims = tuple(d for d in self.fdims if d in axes)
        if dims not in self.tiles:
            self.tiles.append(dims)

    def f(self, v: _Val) -> str:
        """The float expression of a value (materialising comparisons as 0/1 on first use)."""
        if v.pending:
            self.emit(f"{v.expr} = {v.bool_expr}.to(tl.float32)")
            v.pending = False
        return v.expr

    def b(self, v: _Val) -> str:
        """A boolean expression: nonzero-ness of a value."""
        if v.bool_expr is not None:
            return v.bool_expr
        return f"({v.expr} != 0.0)"

    def literal(self, value) -> _Val:
        return _Val(_lit(value), frozenset(), lit=float(value), tile=False)

    # -- nodes ----------------------------------------------------------------------------
    def build(self, roots):
        for n in multi_toposort(roots):
            if n not in self.vals:
                self.vals[n] = self.node(n)

    def node(self, n: ir.Node) -> _Val:
        op = n.op
        if op == "const":
            return self.literal(n.arg)
        if op in ("input", "param", "state"):
            return self.load(n)
        if op == "scalar":
            return _Val(self.scalar_args[n.arg], frozenset(), tile=False)
        if op == "head":
            if not self.head_emitted:
                self.emit("hf = h.to(tl.float32)")
                self.head_emitted = True
            return _Val(self.expand("hf", ROW), frozenset([ROW]))
        src = [self.vals[s] for s in n.src]
        if op in ("sum", "amax"):
            return self.reduce(n, src[0])
        if all(s.lit is not None for s in src):
            return self.literal(_fold(n, [s.lit for s in src]))
        axes = frozenset().union(*(s.axes for s in src))
        tile = any(s.tile for s in src)
        self.note_axes(axes)
        if op == "silu":   # x * sigmoid(x), sharing the sigmoid node with the backward's
            sig = ir.unary("sigmoid", n.src[0])
            if sig not in self.vals:
                self.vals[sig] = self.unary("sigmoid", src[0], axes, tile)
            t = self.fresh()
            self.emit(f"{t} = {self.f(src[0])} * {self.vals[sig].expr}")
            return _Val(t, axes, tile=tile)
        if op in ir.UNARY:
            return self.unary(op, src[0], axes, tile)
        if op == "pow":
            return self.pow(src[0], src[1], axes, tile)
        if op in ir.BINARY:
            return self.binary(op, src[0], src[1], axes, tile)
        if op in ir.COMPARE:
            return self.compare(op, src[0], src[1], axes, tile)
        if op == "where":
            c, x, y = src
            if c.lit is not None:
                return x if c.lit != 0 else y
            t = self.fresh()
            self.emit(f"{t} = tl.where({self.b(c)}, {self.f(x)}, {self.f(y)})")
            return _Val(t, axes, tile=tile)
        raise AssertionError(op)

    def load(self, n: ir.Node) -> _Val:
        la: LoadArg = self.leaf_args[n]
        t = self.fresh()
        if la.kind == "param":
            sh, *sd = la.stride_args
            row = f"h * {sh}"
        else:
            sb, st, sh, *sd = la.stride_args
            row = f"bb * {sb} + tt * {st} + h * {sh}"
        off = self.expand(f"({row})", ROW)
        for d, s in zip(la.dims, sd):
            off += f" + {self.expand('o_' + self.dn(d), d)} * {s}"
        axes = frozenset([ROW, *la.dims])
        self.note_axes(axes)
        what = {"input": "input", "param": "param", "state": "cotangent of piece"}[n.op]
        self.emit(f"# {t}: {what} {la.name}{list(la.dims)}")
        self.emit(f"{t} = tl.load({la.arg} + {off}, mask={self.mask(axes)}, other=0.0).to(tl.float32)")
        return _Val(t, axes)

    def reduce(self, n: ir.Node, a: _Val) -> _Val:
        t = self.fresh()
        red = list(n.arg)
        neutral = "0.0" if n.op == "sum" else '-float("inf")'
        axes = a.axes | frozenset(red)
        self.note_axes(axes)
        mask = " & ".join(self.expand(f"m_{self.dn(d)}", d) for d in red)
        self.emit(f"{t} = tl.where({mask}, {self.f(a)}, {neutral})  "
                  f"# {n.op} over {red}: padded lanes neutral")
        # tl.reduce with the standard combine functions (not tl.sum / tl.max, which are jit
        # functions: the interpreter maps these combines to NumPy, and calls no other jit function)
        fn = "tl.standard._sum_combine" if n.op == "sum" else "tl.standard._elementwise_max"
        for d in red:
            self.emit(f"{t} = tl.reduce({t}, {self.axis(d)}, {fn}, keep_dims=True)")
        return _Val(t, axes - frozenset(red))

    def unary(self, op, a: _Val, axes, tile) -> _Val:
        t = self.fresh()
        x = self.f(a)
        e = self.emit
        if op == "neg":
            e(f"{t} = -{x}")
        elif op in ("exp", "log", "sqrt", "abs", "cos", "sin"):
            e(f"{t} = tl.{op}({x})")
        elif op == "rsqrt":
            e(f"{t} = 1.0 / tl.sqrt({x})")
        elif op == "recip":
            e(f"{t} = 1.0 / {x}")
        elif op == "sigmoid":
            e(f"{t}_e = tl.exp(-tl.abs({x}))")
            e(f"{t} = tl.where({x} >= 0.0, 1.0 / (1.0 + {t}_e), {t}_e / (1.0 + {t}_e))")
        elif op in ("softplus", "logsigmoid"):
            # softplus(x) = max(x, 0) + log1p(exp(-|x|)); logsigmoid(x) = min(x, 0) - log1p(...)
            # log1p(e) = log(u) * e / (u - 1) with u = 1 + e (exact to a few ulps; e when u == 1)
            e(f"{t}_e = tl.exp(-tl.abs({x}))")
            e(f"{t}_u = 1.0 + {t}_e")
            e(f"{t}_l = tl.where({t}_u == 1.0, {t}_e, tl.log({t}_u) * ({t}_e / ({t}_u - 1.0)))")
            if op == "softplus":
                e(f"{t} = tl.maximum({x}, 0.0) + {t}_l")
            else:
                e(f"{t} = tl.minimum({x}, 0.0) - {t}_l")
        elif op == "tanh":
            # |x| < 0.25: odd Taylor polynomial (rel. error < 1e-8); else (1 - e) / (1 + e)
            e(f"{t}_a = tl.abs({x})")
            e(f"{t}_e = tl.exp(-2.0 * {t}_a)")
            e(f"{t}_s = {x} * {x}")
            e(f"{t}_p = {t}_a * (1.0 + {t}_s * ({_lit(-1 / 3)} + {t}_s * ({_lit(2 / 15)} + {t}_s * "
              f"({_lit(-17 / 315)} + {t}_s * {_lit(62 / 2835)}))))")
            e(f"{t}_r = tl.where({t}_a < 0.25, {t}_p, (1.0 - {t}_e) / (1.0 + {t}_e))")
            e(f"{t} = tl.where({x} < 0.0, -{t}_r, {t}_r)")
        else:
            raise AssertionError(op)
        return _Val(t, axes, tile=tile)

    def binary(self, op, a: _Val, b: _Val, axes, tile) -> _Val:
        t = self.fresh()
        x, y = self.f(a), self.f(b)
        if op in ("add", "sub", "mul", "div"):
            sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
            self.emit(f"{t} = {x} {sym} {y}")
        else:  # max, min: keep a tensor first
            if a.lit is not None:
                x, y = y, x
            fn = "tl.maximum" if op == "max" else "tl.minimum"
            self.emit(f"{t} = {fn}({x}, {y})")
        return _Val(t, axes, tile=tile)

    def compare(self, op, a: _Val, b: _Val, axes, tile) -> _Val:
        t = self.fresh()
        if op in ("and", "or"):
            expr = f"{self.b(a)} {'&' if op == 'and' else '|'} {self.b(b)}"
        else:
            sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[op]
            expr = f"{self.f(a)} {sym} {self.f(b)}"
        self.emit(f"{t}_b = {expr}")
        return _Val(t, axes, tile=tile, bool_expr=f"{t}_b", pending=True)

    def pow(self, a: _Val, b: _Val, axes, tile) -> _Val:
        t = self.fresh()
        x, y = self.f(a), self.f(b)
        e = self.emit
        if b.lit is not None:
            p = b.lit
            special = {2.0: f"{x} * {x}", 3.0: f"{x} * {x} * {x}", 1.0: f"{x}",
                       0.5: f"tl.sqrt({x})", -0.5: f"1.0 / tl.sqrt({x})", -1.0: f"1.0 / {x}",
                       -2.0: f"1.0 / ({x} * {x})"}
            if p == 0.0:
                return self.literal(1.0)
            if p in special:
                e(f"{t} = {special[p]}")
            elif float(p).is_integer():
                e(f"{t}_r = tl.exp({_lit(p)} * tl.log(tl.abs({x})))")
                if int(p) % 2:
                    e(f"{t} = tl.where({x} < 0.0, -{t}_r, {t}_r)")
                else:
                    e(f"{t} = {t}_r")
            else:
                e(f"{t} = tl.exp({_lit(p)} * tl.log({x}))")
            return _Val(t, axes, tile=tile)
        if a.lit is not None and a.lit > 0:
            if a.lit == 2.0:
                e(f"{t} = tl.exp2({y})")
            else:
                e(f"{t} = tl.exp2({y} * {_lit(math.log2(a.lit))})")
            return _Val(t, axes, tile=tile)
        # general: |x|**y, the sign for integral y, nan for negative x and fractional y, 1 at y == 0
        e(f"{t}_r = tl.exp({y} * tl.log(tl.abs({x})))")
        e(f"{t}_i = tl.floor({y}) == {y}")
        e(f"{t}_o = {t}_i & (({y} - 2.0 * tl.floor(0.5 * {y})) == 1.0)")
        e(f"{t}_r = tl.where({x} < 0.0, tl.where({t}_i, tl.where({t}_o, -{t}_r, {t}_r), "
          f'float("nan")), {t}_r)')
        e(f"{t} = tl.where({y} == 0.0, 1.0, {t}_r)")
        return _Val(t, axes, tile=tile)

    # -- outputs --------------------------------------------------------------------------
    def store(self, sa: StoreArg):
        v = self.vals[sa.node]
        axes = frozenset([ROW, *sa.dims])
        self.note_axes(axes)
        if not v.axes <= axes:
            raise MixirError(f"internal: {sa.kind} {sa.name} varies along {sorted(map(str, v.axes))}")
        # contiguous [rows, *dims] offsets: rows * prod(sizes) + sum_i o_i * prod(sizes after i)
        parts = [self.expand("rows", ROW) + "".join(f" * n_{self.dn(x)}" for x in sa.dims)]
        for i, d in enumerate(sa.dims):
            parts.append(self.expand("o_" + self.dn(d), d)
                         + "".join(f" * n_{self.dn(x)}" for x in sa.dims[i + 1:]))
        val = self.f(v)
        if v.axes != axes:
            val = f"{val} + tl.full({self.shape(axes)}, 0.0, tl.float32)"
        self.emit(f"tl.store({sa.arg} + {' + '.join(parts)}, {val}, mask={self.mask(axes)})")
