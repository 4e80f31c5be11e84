"""IR → Triton source for a nonlinear head-wise RNN cell (``RNNPlan``): four kernels in one module.

* ``<m>_rnn_fwd_fused``: a program owns ``BR`` sequences of one head; it loads the head's recurrent
  weights ``R_g`` ([D, D], one per gate) **once** and keeps them on chip for all T steps; each step
  is ``a_g = tl.dot(h, R_g)`` (tensor cores; fp32 accumulation) followed by the user's cell,
  spliced in from its IR by ``codegen_expr._Body``. States stay in registers (fp32) across steps;
  every step's states are saved (fp32 [B, T, H, D]) for the backward.
* ``<m>_rnn_fwd_step``: the pointwise cell of one step (alternating strategy): reads the previous
  states and the matmul results ``a_g`` (computed by torch) from memory, writes the new states.
* ``<m>_rnn_bwd_fused``: backpropagation through time in one kernel: from ``t = T-1`` down to 0 it
  recomputes ``a_g`` from the saved ``h_{t-1}``, evaluates ``vjp`` of the cell (cotangents: the
  carried state gradients and ``do_t``), accumulates ``dR_g += h_{t-1}ᵀ da_g`` on chip and carries
  ``dh_{t-1} = ∂cell/∂h + Σ_g da_g R_gᵀ``. Parameter gradients are accumulated per row on chip and
  written per program (summed by torch: deterministic, no atomics).
* ``<m>_rnn_bwd_step``: the cell's vjp for one step (alternating): writes ``da_g`` and the pointwise
  part of the previous states' gradients; torch does the matmul parts.

Rows are sequences: row ``n`` reads batch ``row_b[n]`` from time ``row_t0[n]`` for ``row_len[n]``
steps (``cu_seqlens`` packs sequences along T of batch 0), so rows with different lengths share a
program; a row past its length keeps its state. The hidden dim is padded to ``BD`` (power of two,
≥ 16 for ``tl.dot``) with masked lanes that stay zero in the states.
"""
from __future__ import annotations

import dataclasses
import hashlib

from ...dsl import ir
from ...dsl.vjp import vjp
from ..common.codegen_expr import ROW, _Body, _Names, _Val
from .analysis import RNNPlan

CODEGEN_VERSION = "2"


@dataclasses.dataclass(frozen=True)
class RNNGenerated:
    source: str
    sha: str
    names: dict             # kernel role -> function name
    cell_inputs: tuple      # ((name, kind, dims, arg, stride args), ...) the cell reads
    scalars: tuple          # ((scalar name, arg name), ...)
    grads: dict             # input/param name -> IR gradient tree (const 0 when none)
    dim_name: str           # sanitised hidden-dim name (constexpr BD_<dn>, size n_<dn>)


class _Gen:
    def __init__(self, form: RNNPlan):
        self.form = form
        self.names = _Names()
        self.dn = self.names("dim", form.dim)
        self.BD = f"BD_{self.dn}"
        self.nD = f"n_{self.dn}"
        self.load_args = {}
        from ..common.codegen import LoadArg
        for name, kind, dims in form.inputs:
            an = self.names("arg", name)
            strides = ((f"in_{an}_sb", f"in_{an}_st") if kind == "input" else ()) + (f"in_{an}_sh",) \
                + tuple(f"in_{an}_s{self.names('dim', x)}" for x in dims)
            self.load_args[ir.leaf(kind, name, dims)] = LoadArg(name, kind, dims, f"in_{an}", strides)
        scal = []
        for n in _all_nodes(form.cell_roots()):
            if n.op == "scalar" and n.arg not in scal:
                scal.append(n.arg)
        self.scalar_args = {s: "sc_" + self.names("scalar", s) for s in scal}
        self.S = len(form.states)
        self.G = len(form.gates)

    # ---- argument lists -------------------------------------------------------------------
    def cell_args(self):
        args = []
        for la in self.load_args.values():
            args += [la.arg, *la.stride_args]
        args += list(self.scalar_args.values())
        return args

    def weight_args(self):
        out = []
        for g in range(self.G):
            out += [f"w{g}", f"w{g}_sh", f"w{g}_si", f"w{g}_so"]
        return out

    def body(self, pre: dict) -> _Body:
        b = _Body([self.form.dim], self.names, dict(self.load_args), dict(self.scalar_args))
        b.vals.update(pre)
        return b

    def tile(self, name):
        return _Val(name, frozenset([ROW, self.form.dim]))

    def full(self, body: _Body, v: _Val) -> str:
        x = body.f(v)
        if v.axes != frozenset([ROW, self.form.dim]):
            x = f"({x} + tl.full([BR, {self.BD}], 0.0, tl.float32))"
        return x

    # ---- shared prologue lines ------------------------------------------------------------
    def prologue(self):
        D, BD = self.dn, self.BD
        return [
            "pid = tl.program_id(0)",
            "hid = tl.program_id(1)",
            # 32-bit offsets unless a tensor has 2^31 elements (I64): 64-bit index tiles cost
            # registers the resident R needs (LSTM D = 64 backward: 255 + spills → 216 registers)
            "if I64:",
            "    rows = pid.to(tl.int64) * BR + tl.arange(0, BR)",
            "    bb = tl.load(row_b + rows, mask=rows < N, other=0).to(tl.int64)",
            "    tstart = tl.load(row_t0 + rows, mask=rows < N, other=0).to(tl.int64)",
            "    ln = tl.load(row_len + rows, mask=rows < N, other=0).to(tl.int64)",
            "else:",
            "    rows = pid * BR + tl.arange(0, BR)",
            "    bb = tl.load(row_b + rows, mask=rows < N, other=0)",
            "    tstart = tl.load(row_t0 + rows, mask=rows < N, other=0)",
            "    ln = tl.load(row_len + rows, mask=rows < N, other=0)",
            "rvalid = rows < N",
            "h = rows * 0 + hid",
            f"o_{D} = tl.arange(0, {BD})",
            f"m_{D} = o_{D} < {self.nD}",
            f"sidx = (rows[:, None] * H + hid) * {self.nD} + o_{D}[None, :]   # [N, H, D] states",
            f"smask = rvalid[:, None] & m_{D}[None, :]",
        ]

    def load_weights(self, transposed=False):
        """``R_g`` [in, out] (forward: ``a = h @ R``), or with ``transposed`` ``RT_g = R_gᵀ``
        [out, in] loaded straight from memory (backward: ``dh = da @ Rᵀ``, no in-register
        transpose), in the dot dtype (``DOT16``)."""
        D, BD = self.dn, self.BD
        lines = [f"o_in = tl.arange(0, {BD})", "o_out = tl.arange(0, BD_" + D + ")",
                 f"wmask = (o_in[:, None] < {self.nD}) & (o_out[None, :] < {self.nD})"]
        name = "RT" if transposed else "R"
        for g in range(self.G):
            if transposed:   # RT[o, i] = R[i, o]
                lines.append(f"RT{g} = tl.load(w{g} + hid * w{g}_sh + o_out[:, None] * w{g}_so + "
                             f"o_in[None, :] * w{g}_si, mask=wmask, other=0.0)")
            else:
                lines.append(f"R{g} = tl.load(w{g} + hid * w{g}_sh + o_in[:, None] * w{g}_si + "
                             f"o_out[None, :] * w{g}_so, mask=wmask, other=0.0)")
            lines += ["if DOT16 == 1:", f"    {name}{g} = {name}{g}.to(tl.float16)",
                      "elif DOT16 == 2:", f"    {name}{g} = {name}{g}.to(tl.bfloat16)",
                      "else:", f"    {name}{g} = {name}{g}.to(tl.float32)"]
        return lines

    def matmuls(self, hname):
        lines = []
        for g in range(self.G):
            lines += ["if DOT16 == 1:", f"    a{g} = tl.dot({hname}.to(tl.float16), R{g})",
                      "elif DOT16 == 2:", f"    a{g} = tl.dot({hname}.to(tl.bfloat16), R{g})",
                      "else:", f"    a{g} = tl.dot({hname}, R{g}, input_precision=PREC)"]
        return lines

    def out_store(self, body, expr_val, active):
        D = self.dn
        return (f"tl.store(out + ((bb * T + tt) * H + hid)[:, None] * {self.nD} + o_{D}[None, :], "
                f"{self.full(body, expr_val)}.to(out.dtype.element_ty), "
                f"mask={active}[:, None] & m_{D}[None, :])")

    def tok_idx(self):
        return f"((bb * T + tt) * H + hid)[:, None] * {self.nD} + o_{self.dn}[None, :]"

    # ---- forward --------------------------------------------------------------------------
    def fwd(self, fused: bool, fn: str):
        f = self.form
        st = [f"st{i}" for i in range(self.S)]
        pre = {lf: self.tile(n) for lf, n in zip(f.state_leaves, st)}
        pre.update({g.leaf: self.tile(f"a{i}") for i, g in enumerate(f.gates)})
        body = self.body(pre)
        body.build(f.cell_roots())
        upd = [self.full(body, body.vals[u]) for u in f.updates]
        outv = body.vals[f.output]
        args = self.cell_args()
        if fused:
            args += self.weight_args()
            args += [f"init{i}" for i in range(self.S)] + ["out"] + [f"save{i}" for i in range(self.S)]
            args += [f"asave{g}" for g in range(self.G)] + [f"final{i}" for i in range(self.S)]
            args += ["row_b", "row_t0", "row_len", "N", "T", "H", self.nD, "T_steps"]
            cons = ["BR", self.BD, "HAS_INIT", "SAVE", "DOT16", "PREC", "I64"]
        else:
            args += [f"prev{i}" for i in range(self.S)] + [f"a{g}_in" for g in range(self.G)]
            args += ["out"] + [f"next{i}" for i in range(self.S)]
            args += ["row_b", "row_t0", "row_len", "N", "T", "H", self.nD, "t"]
            cons = ["BR", self.BD, "I64"]
        sig = ", ".join(args) + "".join(f", {c}: tl.constexpr" for c in cons)
        L = [f"def {fn}({sig}):"]
        ind = "    "
        for line in self.prologue():
            L.append(ind + line)
        if fused:
            for line in self.load_weights():
                L.append(ind + line)
            for i in range(self.S):
                L += [ind + "if HAS_INIT:",
                      ind + f"    st{i} = tl.load(init{i} + sidx, mask=smask, other=0.0).to(tl.float32)",
                      ind + "else:",
                      ind + f"    st{i} = tl.full([BR, {self.BD}], 0.0, tl.float32)"]
            L.append(ind + "for ti in range(0, T_steps):")
            ind2 = ind + "    "
            L.append(ind2 + "tt = tstart + ti")
            L.append(ind2 + "rmask = rvalid & (ti < ln)")
            for line in self.matmuls(f"st{f.hidden_index}"):
                L.append(ind2 + line)
        else:
            ind2 = ind
            L.append(ind2 + "tt = tstart + t")
            L.append(ind2 + "rmask = rvalid & (t < ln)")
            for i in range(self.S):
                L.append(ind2 + f"st{i} = tl.load(prev{i} + sidx, mask=smask, other=0.0)")
            for g in range(self.G):
                L.append(ind2 + f"a{g} = tl.load(a{g}_in + sidx, mask=smask, other=0.0)")
        L += [ind2 + line[4:] for line in body.lines]
        L.append(ind2 + f"upd = rmask[:, None] & m_{self.dn}[None, :]")
        L.append(ind2 + self.out_store(body, outv, "rmask"))
        for i, u in enumerate(upd):
            L.append(ind2 + f"st{i} = tl.where(upd, {u}, st{i})")
        if fused:
            L.append(ind2 + "if SAVE:")
            for i in range(self.S):
                L.append(ind2 + f"    tl.store(save{i} + {self.tok_idx()}, st{i}, mask=upd)")
            for g in range(self.G):
                L.append(ind2 + f"    tl.store(asave{g} + {self.tok_idx()}, a{g}, mask=upd)")
            for i in range(self.S):
                L.append(ind + f"tl.store(final{i} + sidx, st{i}, mask=smask)")
        else:
            for i in range(self.S):
                L.append(ind2 + f"tl.store(next{i} + sidx, st{i}, mask=smask)")
        return "\n".join(L) + "\n"

    # ---- backward -------------------------------------------------------------------------
    def grads(self):
        f = self.form
        cts = [ir.leaf("state", f"__ct_{s}", u.dims) for s, u in zip(f.states, f.updates)]
        cto = ir.leaf("state", "__ct_out", f.output.dims)
        wrt = list(f.state_leaves) + [g.leaf for g in f.gates] + list(self.load_args)
        gs = vjp(f.cell_roots(), cts + [cto], wrt)
        S, G = self.S, self.G
        return cts, cto, gs[:S], gs[S:S + G], dict(zip(self.load_args, gs[S + G:]))

    def bwd(self, fused: bool, fn: str):
        f = self.form
        D, BD = self.dn, self.BD
        cts, cto, gstate, ggate, gleaf = self.grads()
        st = [f"st{i}" for i in range(self.S)]
        pre = {lf: self.tile(n) for lf, n in zip(f.state_leaves, st)}
        pre.update({g.leaf: self.tile(f"a{i}") for i, g in enumerate(f.gates)})
        pre.update({c: self.tile(f"dc{i}") for i, c in enumerate(cts)})
        pre[cto] = self.tile("dout")
        body = self.body(pre)
        roots = [x for x in gstate + ggate + list(gleaf.values()) if not ir.is_const(x, 0.0)]
        body.build(roots)

        def val(node):
            if ir.is_const(node, 0.0):
                return "0.0"
            return self.full(body, body.vals[node])

        din = [(lf, g) for lf, g in gleaf.items() if lf.op == "input" and not ir.is_const(g, 0.0)]
        dpar = [(lf, g) for lf, g in gleaf.items() if lf.op == "param" and not ir.is_const(g, 0.0)]
        args = self.cell_args()
        dname = {lf: "d_" + self.names("arg", lf.arg) for lf in gleaf}
        if fused:
            args += self.weight_args()
            args += [f"init{i}" for i in range(self.S)] + [f"save{i}" for i in range(self.S)]
            args += [f"asave{g}" for g in range(self.G)]
            args += ["dout_p"] + [f"dfinal{i}" for i in range(self.S)]
            args += [dname[lf] for lf, _ in din] + [dname[lf] for lf, _ in dpar]
            args += [f"da{g}_out" for g in range(self.G)] + [f"dinit{i}" for i in range(self.S)]
            args += ["row_b", "row_t0", "row_len", "N", "T", "H", self.nD, "T_steps"]
            cons = ["BR", BD, "HAS_INIT", "DOT16", "PREC", "I64"]
        else:
            args += [f"prev{i}" for i in range(self.S)] + [f"a{g}_in" for g in range(self.G)]
            args += ["dout_p"] + [f"dnext{i}" for i in range(self.S)]
            args += [dname[lf] for lf, _ in din] + [dname[lf] for lf, _ in dpar]
            args += [f"da{g}_out" for g in range(self.G)] + [f"dprev{i}" for i in range(self.S)]
            args += ["row_b", "row_t0", "row_len", "N", "T", "H", self.nD, "t"]
            cons = ["BR", BD, "I64"]
        sig = ", ".join(args) + "".join(f", {c}: tl.constexpr" for c in cons)
        L = [f"def {fn}({sig}):"]
        ind = "    "
        L += [ind + x for x in self.prologue()]
        pidx = f"(rows[:, None] * H + hid) * {self.nD} + o_{D}[None, :]"   # per-row param partials
        if fused:
            L += [ind + x for x in self.load_weights(transposed=True)]
            for lf, _ in dpar:
                L.append(ind + f"{dname[lf]}_acc = tl.full([BR, {BD if lf.dims else 1}], 0.0, tl.float32)")
            for i in range(self.S):
                L.append(ind + f"dc{i} = tl.load(dfinal{i} + sidx, mask=smask, other=0.0)")
            L.append(ind + "for tr in range(0, T_steps):")
            ind2 = ind + "    "
            L += [ind2 + "ti = T_steps - 1 - tr",
                  ind2 + "tt = tstart + ti",
                  ind2 + "rmask = rvalid & (ti < ln)",
                  ind2 + f"upd = rmask[:, None] & m_{D}[None, :]",
                  ind2 + "pm = upd & (tt > tstart)[:, None]",
                  ind2 + f"prev_idx = ((bb * T + tt - 1) * H + hid)[:, None] * {self.nD} + o_{D}[None, :]"]
            for i in range(self.S):
                L.append(ind2 + f"st{i} = tl.load(save{i} + prev_idx, mask=pm, other=0.0)")
                L += [ind2 + "if HAS_INIT:",
                      ind2 + f"    st{i} += tl.load(init{i} + sidx, mask=upd & (tt == tstart)[:, None], other=0.0)"]
            for g in range(self.G):      # the forward's pre-activations (not recomputed: no R @)
                L.append(ind2 + f"a{g} = tl.load(asave{g} + {self.tok_idx()}, mask=upd, other=0.0)")
        else:
            ind2 = ind
            L += [ind2 + "ti = t", ind2 + "tt = tstart + t", ind2 + "rmask = rvalid & (t < ln)",
                  ind2 + f"upd = rmask[:, None] & m_{D}[None, :]"]
            for i in range(self.S):
                L.append(ind2 + f"st{i} = tl.load(prev{i} + sidx, mask=smask, other=0.0)")
                L.append(ind2 + f"dc{i} = tl.load(dnext{i} + sidx, mask=smask, other=0.0)")
            for g in range(self.G):
                L.append(ind2 + f"a{g} = tl.load(a{g}_in + sidx, mask=smask, other=0.0)")
        L.append(ind2 + f"dout = tl.load(dout_p + {self.tok_idx()}, mask=upd, other=0.0).to(tl.float32)")
        L += [ind2 + line[4:] for line in body.lines]
        hi = f.hidden_index
        for g in range(self.G):
            L.append(ind2 + f"da{g} = tl.where(upd, {val(ggate[g])}, 0.0)")
        if fused:
            for g in range(self.G):   # dR_g = Σ_t h_{t-1}ᵀ da_g: one batched matmul after the kernel
                L.append(ind2 + f"tl.store(da{g}_out + {self.tok_idx()}, da{g}, mask=upd)")
        def rowval(node):   # a per-row scalar as a [BR, 1] tile
            v = body.vals[node]
            x = body.f(v)
            if self.form.dim in v.axes:
                raise AssertionError("internal: a scalar gradient varies along the hidden dim")
            return x if ROW in v.axes else f"({x} + tl.full([BR, 1], 0.0, tl.float32))"

        for lf, g in din:
            if lf.dims:
                L.append(ind2 + f"tl.store({dname[lf]} + {self.tok_idx()}, {val(g)}, mask=upd)")
            else:
                L.append(ind2 + f"tl.store({dname[lf]} + ((bb * T + tt) * H + hid)[:, None], "
                         f"{rowval(g)}, mask=rmask[:, None])")
        prow = "(rows * H + hid)[:, None]"
        for lf, g in dpar:
            gv = f"tl.where(upd, {val(g)}, 0.0)" if lf.dims else \
                f"tl.where(rmask[:, None], {rowval(g)}, 0.0)"
            if fused:
                L.append(ind2 + f"{dname[lf]}_acc += {gv}")
            else:
                L.append(ind2 + f"tl.store({dname[lf]} + {pidx if lf.dims else prow}, {gv}, "
                         f"mask={'smask' if lf.dims else 'rvalid[:, None]'})")
        for i in range(self.S):
            dprev = val(gstate[i])
            if fused and i == hi:     # dh_{t-1} = ∂cell/∂h + Σ_g da_g R_gᵀ (tensor cores)
                for g in range(self.G):
                    L += [ind2 + "if DOT16 == 1:",
                          ind2 + f"    dh{g} = tl.dot(da{g}.to(tl.float16), RT{g})",
                          ind2 + "elif DOT16 == 2:",
                          ind2 + f"    dh{g} = tl.dot(da{g}.to(tl.bfloat16), RT{g})",
                          ind2 + "else:",
                          ind2 + f"    dh{g} = tl.dot(da{g}, RT{g}, input_precision=PREC)"]
                    dprev = f"{dprev} + dh{g}"
            L.append(ind2 + f"dn{i} = {dprev}")
        if fused:
            for i in range(self.S):
                L.append(ind2 + f"dc{i} = tl.where(upd, dn{i}, dc{i})")
            for i in range(self.S):
                L.append(ind + f"tl.store(dinit{i} + sidx, dc{i}, mask=smask)")
            for lf, _ in dpar:
                L.append(ind + f"tl.store({dname[lf]} + {pidx if lf.dims else '(rows * H + hid)[:, None]'}, "
                         f"{dname[lf]}_acc, mask={'smask' if lf.dims else 'rvalid[:, None]'})")
        else:
            for g in range(self.G):
                L.append(ind2 + f"tl.store(da{g}_out + sidx, da{g}, mask=smask)")
            for i in range(self.S):
                L.append(ind2 + f"tl.store(dprev{i} + sidx, tl.where(upd, dn{i}, dc{i}), mask=smask)")
        info = {"din": [(lf.arg, lf.dims, dname[lf]) for lf, _ in din],
                "dpar": [(lf.arg, lf.dims, dname[lf]) for lf, _ in dpar],
                "grads": {lf.arg: g for lf, g in gleaf.items()}}
        return "\n".join(L) + "\n", info


def _all_nodes(roots):
    from ...dsl.vjp import multi_toposort
    return multi_toposort(roots)


def generate(form: RNNPlan):
    """The module text (and metadata) of the four kernels of ``form``."""
    gen = _Gen(form)
    base = gen.names("fn", form.mixer_name)
    names = {"fwd_fused": f"{base}_rnn_fwd_fused", "fwd_step": f"{base}_rnn_fwd_step",
             "bwd_fused": f"{base}_rnn_bwd_fused", "bwd_step": f"{base}_rnn_bwd_step"}
    header = [f"# mixir generated module (rnn codegen v{CODEGEN_VERSION}): nonlinear RNN cell of "
              f"mixer {form.mixer_name!r}. Do not edit.",
              "# cell (a_g = h_prev @ R_g):"]
    for s, u in zip(form.states, form.updates):
        header.append(f"#   {s}' = {_short(ir.render(u))}")
    header.append(f"#   output = {_short(ir.render(form.output))}")
    chunks = ["\n".join(header), "import triton.language as tl"]
    chunks.append(gen.fwd(True, names["fwd_fused"]))
    chunks.append(gen.fwd(False, names["fwd_step"]))
    bf, info = gen.bwd(True, names["bwd_fused"])
    bs, _ = gen.bwd(False, names["bwd_step"])
    chunks += [bf, bs]
    source = "\n\n\n".join(chunks) + "\n"
    sha = hashlib.sha256(source.encode()).hexdigest()
    cell_inputs = tuple((la.name, la.kind, la.dims, la.arg, la.stride_args)
                        for la in gen.load_args.values())
    return RNNGenerated(source, sha, names, cell_inputs, tuple(gen.scalar_args.items()),
                        info, gen.dn)


def _short(text: str, limit: int = 300) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."
