"""IR → Triton source for the per-token pieces of a mixer, forward and backward.

``generate(mixer_name, pieces, input_specs)`` turns the pieces (``{name: Node}``, see
``GatedLinearForm.pieces``) into the text of one Python module holding two Triton kernels:

* ``<mixer>_pieces_fwd``: evaluates every non-constant piece in one pass over the tokens;
* ``<mixer>_pieces_bwd``: takes the cotangent of every piece and writes the gradient of every
  input and parameter the pieces read (``vjp`` of ``mixir.dsl.vjp``; the forward nodes the
  gradient needs are recomputed, not stored).

Layout. A program handles ``BR`` token rows of the flattened ``B·T·H`` rows (row ``r`` is batch
``r // (T·H)``, time ``(r // H) % T``, head ``h = r % H``) and the whole extent of every feature dim
``X``, padded to the power of two ``BD_X`` with the mask ``o_X < n_X``. A value is a tile of rank
``1 + #feature dims`` (axis 0: rows, one axis per feature dim in a fixed order, size 1 where the
value does not vary), or a plain scalar (a literal, a scalar keyword). Inputs ``[B, T, H, *dims]``
and parameters ``[H, *dims]`` are loaded through their strides (any layout: transposed, expanded
with stride 0) and converted to fp32; everything is computed in fp32; the pieces are stored fp32
contiguous ``[B, T, H, *dims]``. Reductions over a feature dim replace the padded lanes by the
neutral element first. In the backward kernel a parameter's gradient is written *per row*
(``[B·T·H, *dims]``, fp32) and summed over ``B·T`` by the caller - deterministic, no atomics.

Every IR node is emitted once (the DAG is shared; names ``t<i>``); sub-DAGs of constants are
folded at generation time in float64; sigmoid, softplus, logsigmoid and tanh use numerically stable
forms (``exp(-|x|)`` and an accurate ``log1p``), ``pow`` follows torch's semantics for negative
bases and zero exponents. Generated code is built from IR trees only (names are sanitised, numbers
printed with ``repr``), never from user strings.

``load(generated)`` writes the module to the content-addressed cache
(``$MIXIR_CACHE_DIR/kernels/<sha>.py``, default ``~/.cache/mixir/kernels``; atomic write through a
temp file and ``os.replace``; an existing file is reused), imports it from there with importlib
(Triton reads a kernel's source file) and wraps both functions with ``launch.Kernel``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import re
import sys
import tempfile
import threading

import numpy as np

from ..dsl import ir
from ..dsl.vjp import multi_toposort, vjp
from ..errors import MixirError

CODEGEN_VERSION = "1"
ROW = "__row__"          # the axis of token rows in a tile

__all__ = ["generate", "load", "cache_dir", "Generated", "KernelInfo", "LoadArg", "StoreArg",
           "CODEGEN_VERSION"]


# ----------------------------------------------------------------------------------------------
# what a generated kernel reads and writes (the wrapper builds its arguments from this)

@dataclasses.dataclass(frozen=True)
class LoadArg:
    """A tensor the kernel loads. ``kind``: "input" [B, T, H, *dims], "param" [H, *dims] or
    "cotangent" [B, T, H, *dims] (of the piece ``name``). Kernel arguments: ``arg`` (pointer),
    then ``arg_sb, arg_st`` (inputs and cotangents only), ``arg_sh``, one ``arg_s<dim>`` per dim."""
    name: str
    kind: str
    dims: tuple
    arg: str
    stride_args: tuple


@dataclasses.dataclass(frozen=True)
class StoreArg:
    """A tensor the kernel writes, fp32 contiguous [B·T·H, *dims] (``arg`` is the pointer).
    ``kind``: "piece", "grad_input" or "grad_param" (per-row partials, summed by the caller)."""
    name: str
    kind: str
    dims: tuple
    arg: str
    node: ir.Node


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    fn_name: str
    loads: tuple            # LoadArg
    scalars: tuple          # (scalar name, arg name)
    stores: tuple           # StoreArg
    dims: tuple             # feature dims, in tile-axis order
    dim_args: tuple         # ((dim, size arg "n_X", block constexpr "BD_X"), ...)
    arg_names: tuple        # the kernel's parameters, in order
    tiles: tuple            # feature dims of the tiles, maximal sets only (for choosing BR)


@dataclasses.dataclass(frozen=True)
class Generated:
    mixer_name: str
    source: str
    sha: str
    pieces: dict            # every piece {name: Node}
    kernel_pieces: tuple    # names of the pieces the kernels compute (the others are constants)
    const_pieces: dict      # {name: float} for the constant pieces
    passthrough: dict       # {name: input name} for the pieces that are an input or param as is
    inputs: tuple           # ((name, kind, dims), ...) of the inputs/params the pieces read
    grads: dict             # {input name: Node} gradient trees (const 0 where no influence)
    fwd: KernelInfo | None
    bwd: KernelInfo | None


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
    from ..reference.evaluate import NumpyBackend, evaluate
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
        elif op in ("exp", "log", "sqrt", "abs"):
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


# ----------------------------------------------------------------------------------------------
# whole module

def _spec_tuple(s):
    if isinstance(s, (tuple, list)):
        name, kind, dims = s
    else:
        name, kind, dims = s.name, s.kind, s.dims
    return str(name), str(kind), tuple(dims)


def _feature_dims(roots) -> list:
    dims = []
    for n in multi_toposort(roots):
        for d in n.dims:
            if d not in dims:
                dims.append(d)
    return dims


def _kernel(fn_name, roots, stores, leaf_nodes, names, load_args, scalar_names, comment):
    """Generate one kernel function. ``roots``: the nodes the stores need."""
    used = multi_toposort(roots)
    fdims = _feature_dims(roots)
    leaves = [n for n in leaf_nodes if n in set(used)]
    scal = []
    for n in used:
        if n.op == "scalar" and n.arg not in scal:
            scal.append(n.arg)
    scal = [s for s in scalar_names if s in scal]
    scalar_args = {s: "sc_" + names("scalar", s) for s in scal}
    body = _Body(fdims, names, {n: load_args[n] for n in leaves}, scalar_args)
    args = []
    for n in leaves:
        la = load_args[n]
        args += [la.arg, *la.stride_args]
    args += [scalar_args[s] for s in scal]
    args += [sa.arg for sa in stores]
    dim_args = tuple((d, f"n_{names('dim', d)}", f"BD_{names('dim', d)}") for d in fdims)
    args += ["n_rows", "T", "H"] + [a for _, a, _ in dim_args]
    sig = ", ".join(args) + ", BR: tl.constexpr" + "".join(f", {b}: tl.constexpr" for _, _, b in dim_args)

    body.emit("pid = tl.program_id(0)")
    body.emit("rows = pid.to(tl.int64) * BR + tl.arange(0, BR)")
    body.emit("rmask = rows < n_rows")
    body.emit("h = rows % H")
    body.emit("tt = (rows // H) % T")
    body.emit("bb = rows // H // T")
    for d, n_arg, b_arg in dim_args:
        dn = names("dim", d)
        body.emit(f"o_{dn} = tl.arange(0, {b_arg})  # feature dim {d!r}")
        body.emit(f"m_{dn} = o_{dn} < {n_arg}")
    for sa in stores:           # each output right after its DAG: fewer live tiles
        body.build([sa.node])
        body.store(sa)
    text = [f"def {fn_name}({sig}):"]
    text += ["    " + line for line in comment]
    text += body.lines
    info = KernelInfo(fn_name=fn_name, loads=tuple(load_args[n] for n in leaves),
                      scalars=tuple((s, scalar_args[s]) for s in scal), stores=tuple(stores),
                      dims=tuple(fdims), dim_args=dim_args, arg_names=tuple(args) + ("BR",) + tuple(
                          b for _, _, b in dim_args),
                      tiles=tuple(t for t in body.tiles if not any(
                          set(t) < set(u) for u in body.tiles)))
    return "\n".join(text) + "\n", info


def _short(text: str, limit: int = 400) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


def generate(mixer_name: str, pieces: dict, input_specs, backward: bool = True) -> Generated:
    """The Triton module (text and metadata) evaluating ``pieces`` of mixer ``mixer_name``.

    ``input_specs``: the mixer's tensor arguments (``ArgSpec`` with ``.name, .kind, .dims``, or
    ``(name, kind, dims)`` tuples), kinds "input" ([B, T, H, *dims]) and "param" ([H, *dims])."""
    specs = [_spec_tuple(s) for s in input_specs]
    by_key = {(k, n): (n, k, d) for n, k, d in specs}
    names = _Names()
    pieces = dict(pieces)
    for pname, node in pieces.items():
        for lf in ir.leaves(node):
            if lf.op in ("input", "param"):
                spec = by_key.get((lf.op, lf.arg))
                if spec is None:
                    raise MixirError(f"piece {pname!r} reads {lf.op} {lf.arg!r}, which is not among "
                                     f"the mixer's tensor arguments {[s[0] for s in specs]}")
                if spec[2] != lf.dims:
                    raise MixirError(f"piece {pname!r} reads {lf.op} {lf.arg!r} with dims {lf.dims}, "
                                     f"declared {spec[2]}")
            elif lf.op not in ("scalar", "head", "const"):
                raise MixirError(f"piece {pname!r} reads a {lf.op} leaf {lf.arg!r}; pieces may read "
                                 "inputs, params, scalars, the head index and constants only")
    const_pieces = {p: float(n.arg) for p, n in pieces.items() if n.op == "const"}
    passthrough = {p: n.arg for p, n in pieces.items() if n.op in ("input", "param")}
    kp = {p: n for p, n in pieces.items() if p not in const_pieces and p not in passthrough}
    fn_base = names("fn", mixer_name)

    # leaves, in declaration order
    leaf_nodes, load_args = [], {}
    for n, k, d in specs:
        node = ir.leaf(k, n, d)
        leaf_nodes.append(node)
        an = names("arg", n)
        dn = [names("dim", x) for x in d]
        strides = ((f"in_{an}_sb", f"in_{an}_st") if k == "input" else ()) + (f"in_{an}_sh",) + \
            tuple(f"in_{an}_s{x}" for x in dn)
        load_args[node] = LoadArg(n, k, d, f"in_{an}", strides)
    scalar_names = []
    for node in kp.values():
        for lf in ir.leaves(node):
            if lf.op == "scalar" and lf.arg not in scalar_names:
                scalar_names.append(lf.arg)
    used_leaves = [n for n in leaf_nodes if any(n in set(ir.leaves(r)) for r in kp.values())]

    header = [f"# mixir generated module (codegen v{CODEGEN_VERSION}): pointwise pieces of mixer "
              f"{mixer_name!r}. Do not edit.",
              "# Tensors are [B, T, H, *dims] (inputs, cotangents, outputs) or [H, *dims] (params);",
              "# outputs are fp32 contiguous, flattened rows r = (b * T + t) * H + h.",
              "# pieces:"]
    for p, n in pieces.items():
        header.append(f"#   {p}{list(n.dims)} = {_short(ir.render(n))}")
    chunks = ["\n".join(header), "import triton.language as tl"]

    fwd = bwd = None
    grads = {}
    if kp:
        stores = [StoreArg(p, "piece", n.dims, f"out_{names('piece', p)}", n) for p, n in kp.items()]
        comment = ["# forward: one pass over BR token rows, every piece"]
        text, fwd = _kernel(f"{fn_base}_pieces_fwd", list(kp.values()), stores, leaf_nodes, names,
                            load_args, scalar_names, comment)
        chunks.append(text)
        if backward and used_leaves:
            cts = {}
            for p, n in kp.items():
                ct = ir.leaf("state", "ct_" + p, n.dims)   # "state": never a piece's leaf
                cts[p] = ct
                pn = names("piece", p)
                load_args[ct] = LoadArg(p, "cotangent", n.dims, f"ct_{pn}",
                                        (f"ct_{pn}_sb", f"ct_{pn}_st", f"ct_{pn}_sh")
                                        + tuple(f"ct_{pn}_s{names('dim', x)}" for x in n.dims))
            g = vjp(list(kp.values()), list(cts.values()), used_leaves)
            grads = {lf.arg: gi for lf, gi in zip(used_leaves, g)}
            bstores = [StoreArg(lf.arg, "grad_" + lf.op, lf.dims, f"grad_{names('arg', lf.arg)}", gi)
                       for lf, gi in zip(used_leaves, g) if not ir.is_const(gi, 0.0)]
            if bstores:
                comment = ["# backward: cotangents of the pieces -> gradients (params: per row)"]
                for sa in bstores:
                    comment.append(f"#   d{sa.name} = {_short(ir.render(sa.node), 300)}")
                text, bwd = _kernel(f"{fn_base}_pieces_bwd", [sa.node for sa in bstores], bstores,
                                    leaf_nodes + list(cts.values()), names, load_args,
                                    scalar_names, comment)
                chunks.append(text)
    source = "\n\n\n".join(chunks) + "\n"
    sha = hashlib.sha256(source.encode()).hexdigest()
    return Generated(mixer_name=mixer_name, source=source, sha=sha, pieces=pieces,
                     kernel_pieces=tuple(kp), const_pieces=const_pieces, passthrough=passthrough,
                     inputs=tuple((n.arg, n.op, n.dims) for n in used_leaves), grads=grads,
                     fwd=fwd, bwd=bwd)


# ----------------------------------------------------------------------------------------------
# the cache

def cache_dir() -> str:
    """Directory of generated kernel modules: ``$MIXIR_CACHE_DIR/kernels`` (default
    ``~/.cache/mixir/kernels``)."""
    root = os.environ.get("MIXIR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixir")
    return os.path.join(root, "kernels")


def write_source(source: str, sha: str | None = None) -> str:
    """Write ``source`` to ``<cache_dir>/<sha>.py`` unless an identical file is there; return the
    path. Falls back to a per-user temp directory when the cache directory is not writable."""
    sha = sha or hashlib.sha256(source.encode()).hexdigest()
    try:
        return _write(cache_dir(), source, sha)
    except OSError:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return _write(os.path.join(tempfile.gettempdir(), f"mixir-{uid}", "kernels"), source, sha)


def _write(d: str, source: str, sha: str) -> str:
    path = os.path.join(d, f"{sha}.py")
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == source:
                return path
    except OSError:
        pass
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sha[:16]}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


_modules: dict = {}
_lock = threading.Lock()


def import_source(source: str, sha: str | None = None):
    """(path, module): the cached module of ``source``, written and imported once per process."""
    sha = sha or hashlib.sha256(source.encode()).hexdigest()
    with _lock:
        path = write_source(source, sha)
        key = (sha, path)
        if key in _modules:
            return path, _modules[key]
        modname = f"mixir_generated_{sha[:24]}"
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
        _modules[key] = module
        return path, module


@dataclasses.dataclass(frozen=True)
class Loaded:
    generated: Generated
    path: str
    module: object
    fwd: object          # launch.Kernel or None
    bwd: object          # launch.Kernel or None


def load(generated: Generated) -> Loaded:
    """Write (once) and import the module of ``generated``; wrap its kernels with ``Kernel``."""
    from .launch import Kernel
    path, module = import_source(generated.source, generated.sha)
    tag = f"mixir.pointwise.{generated.mixer_name}.{generated.sha[:12]}"
    fwd = Kernel(getattr(module, generated.fwd.fn_name), name=tag + ".fwd") if generated.fwd else None
    bwd = Kernel(getattr(module, generated.bwd.fn_name), name=tag + ".bwd") if generated.bwd else None
    return Loaded(generated, path, module, fwd, bwd)
