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

The expression emitter is ``codegen_expr`` and the cache ``kernel_cache`` (its names are
re-exported here). ``load(generated)`` writes the module to the content-addressed cache
(``$MIXIR_CACHE_DIR/kernels/<sha>.py``, default ``~/.cache/mixir/kernels``; atomic write through a
temp file and ``os.replace``; an existing file is reused), imports it from there with importlib
(Triton reads a kernel's source file) and wraps both functions with ``launch.Kernel``.
"""
from __future__ import annotations

import dataclasses
import hashlib

from ...dsl import ir
from ...dsl.vjp import multi_toposort, vjp
from ...errors import MixirError
from .codegen_expr import ROW, _Body, _Names  # noqa: F401 - ROW re-exported
# the cache, re-exported: codegen.load / cache_dir / write_source / import_source / Loaded
from .kernel_cache import Loaded, cache_dir, import_source, load, write_source  # noqa: F401

CODEGEN_VERSION = "1"

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
