"""CUDA C lowering of the fused RNN forward: source generated from the cell's IR (``RNNPlan``).

One thread block per (sequence, head). The head's recurrent weights ``R_g`` ([D, D] per gate)
are copied to **shared memory** once and stay there for all T steps (so head sizes whose R does
not fit in registers still run fused, up to the shared-memory limit: ``G·D²·sizeof(T_R)`` bytes);
the hidden state lives in shared memory too, the other states in registers (thread ``d`` owns
unit ``d``; blocks of ``D`` threads, D ≤ 1024). Per step: ``a_g[d] = Σ_e h[e] R_g[e, d]``
(fp32 accumulation), then the user's pointwise cell, emitted as C from the IR.

In CI the source is compiled with ``nvcc -arch=sm_80|sm_90 -c`` when nvcc is present
(tests/test_rnn_cuda.py, which also compiles the ``load_inline`` launcher source against torch's
headers). ``run_forward`` builds it with ``torch.utils.cpp_extension.load_inline`` and launches it;
``CompiledRNN`` uses it for ``strategy="fused_cuda"`` on CUDA tensors (inference).

Training: ``generate_training`` emits the forward that also saves every step's states and gate
pre-activations, and a BPTT kernel (``R_gᵀ`` resident in shared memory, the cell's VJP from
``mixir.dsl.vjp``, ``dh`` carried through ``R_gᵀ``; ``dR`` is a batched GEMM after the kernel).
Its numerics are tested on the CPU by ``mixir.lowering.rnn.cuda_emulation`` (g++, one thread per CUDA
thread, real barriers; tests/test_rnn_cuda_emulated.py) and it compiles with nvcc; it is **not**
wired into ``CompiledRNN`` (no launcher, never run on a GPU). Not yet done: tensor-core MMA, a
split-R cooperative variant for G·D² beyond one block's shared memory, ``cu_seqlens`` in the CUDA
kernels.
"""
from __future__ import annotations

import dataclasses
import math
import re

from ...dsl import ir
from ...dsl.vjp import multi_toposort, vjp
from ...errors import UnsupportedMixerError
from .analysis import RNNPlan

_IDENT = re.compile(r"[^A-Za-z0-9_]")


def _c(name: str) -> str:
    return "u_" + _IDENT.sub("_", name)


def _lit(v: float) -> str:
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{float(v)!r}f"


_UN = {"neg": "(-{0})", "exp": "__expf({0})", "log": "__logf({0})", "sqrt": "sqrtf({0})",
       "rsqrt": "rsqrtf({0})", "abs": "fabsf({0})", "recip": "(1.0f / {0})", "tanh": "tanhf({0})",
       "sigmoid": "(1.0f / (1.0f + __expf(-({0}))))",
       "softplus": "(fmaxf({0}, 0.0f) + log1pf(__expf(-fabsf({0}))))",
       "logsigmoid": "(fminf({0}, 0.0f) - log1pf(__expf(-fabsf({0}))))",
       "silu": "({0} / (1.0f + __expf(-({0}))))"}
_BIN = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
        "max": "fmaxf({0}, {1})", "min": "fminf({0}, {1})", "pow": "powf({0}, {1})",
        "lt": "(float)({0} < {1})", "le": "(float)({0} <= {1})", "gt": "(float)({0} > {1})",
        "ge": "(float)({0} >= {1})", "eq": "(float)({0} == {1})", "ne": "(float)({0} != {1})",
        "and": "(float)(({0} != 0.0f) && ({1} != 0.0f))", "or": "(float)(({0} != 0.0f) || ({1} != 0.0f))"}


def _expr_lines(roots, leaf_expr: dict) -> tuple:
    """C statements computing every node of the DAG of ``roots`` (one ``float`` per node, per
    thread); ``leaf_expr`` names the values already in scope (leaves, loaded inputs)."""
    lines, name = [], {}
    for n in multi_toposort(roots):
        if n in leaf_expr:
            name[n] = leaf_expr[n]
            continue
        if n.op == "const":
            name[n] = _lit(n.arg)
            continue
        if n.op in ("sum", "amax"):
            raise UnsupportedMixerError(f"the CUDA lowering has no reductions yet: `{ir.render(n)}`")
        s = [name[x] for x in n.src]
        if n.op in _UN:
            e = _UN[n.op].format(*s)
        elif n.op in _BIN:
            e = _BIN[n.op].format(*s)
        elif n.op == "where":
            e = f"(({s[0]} != 0.0f) ? {s[1]} : {s[2]})"
        else:
            raise UnsupportedMixerError(f"the CUDA lowering cannot emit `{n.op}`")
        v = f"v{len(lines)}"
        lines.append(f"const float {v} = {e};")
        name[n] = v
    return lines, name


def _cell_lines(form: RNNPlan, leaf_expr: dict) -> tuple:
    """C statements computing every node of the cell (one ``float`` per node, per thread)."""
    return _expr_lines(form.cell_roots(), leaf_expr)


def _input_loads(inputs) -> tuple:
    """(leaf → C name, load statements, kernel parameters) of the cell's inputs and params."""
    leaf_expr, loads, args = {}, [], []
    for name, kind, dims in inputs:
        p = _c(name)
        args.append(f"const float* __restrict__ {p}")
        lf = ir.leaf(kind, name, dims)
        if kind == "input":
            idx = "((b * T + t) * H + hh)" + (" * D + d" if dims else "")
        else:
            idx = "hh" + (" * D + d" if dims else "")
        leaf_expr[lf] = f"x_{p}"
        loads.append(f"const float x_{p} = {p}[{idx}];")
    return leaf_expr, loads, args


def _forward_kernel(form: RNNPlan, inputs, fn: str, save: bool) -> list:
    """The lines of the forward kernel ``fn``; with ``save`` it also writes every step's states
    (``save{i}``) and gate pre-activations (``asave{g}``), fp32 ``[B, T, H, D]``, for the backward."""
    S, G = len(form.states), len(form.gates)
    leaf_expr, loads, args = _input_loads(inputs)
    for i, lf in enumerate(form.state_leaves):
        leaf_expr[lf] = f"s{i}"
    for g, gate in enumerate(form.gates):
        leaf_expr[gate.leaf] = f"a{g}"
    body, name = _cell_lines(form, leaf_expr)
    hs = form.hidden_index
    saves = ([f"float* __restrict__ save{i}" for i in range(S)]
             + [f"float* __restrict__ asave{g}" for g in range(G)]) if save else []
    L = [f"extern \"C\" __global__ void {fn}(",
         "    " + ",\n    ".join(args + [f"const rtype* __restrict__ R{g}" for g in range(G)]
                                + [f"float* __restrict__ state{i}" for i in range(S)]
                                + ["float* __restrict__ out"] + saves + ["int T", "int H", "int D"]) + ") {",
         "  extern __shared__ unsigned char smem_raw[];",
         "  float* hs = reinterpret_cast<float*>(smem_raw);                          // [D] first: aligned",
         "  rtype* Rs = reinterpret_cast<rtype*>(smem_raw + 4 * (size_t)D);            // [G, D, D]",
         "  const int b = blockIdx.x, hh = blockIdx.y, d = threadIdx.x;",
         f"  for (int k = d; k < {G} * D * D; k += blockDim.x) {{   // R resident for all T",
         "    const int g = k / (D * D), r = k % (D * D);"]
    for g in range(G):
        L.append(f"    if (g == {g}) Rs[k] = R{g}[(size_t)hh * D * D + r];")
    L += ["  }"]
    for i in range(S):
        L.append(f"  float s{i} = d < D ? state{i}[((size_t)b * H + hh) * D + d] : 0.0f;")
    L += [f"  if (d < D) hs[d] = s{hs};", "  __syncthreads();",
          "  for (int t = 0; t < T; ++t) {", "    if (d < D) {"]
    for g in range(G):
        L += [f"      float a{g} = 0.0f;",
              f"      for (int e = 0; e < D; ++e) a{g} += hs[e] * (float)Rs[((size_t){g} * D + e) * D + d];"]
    L += ["      " + x for x in loads + body]
    L += [f"      out[((size_t)(b * T + t) * H + hh) * D + d] = {name[form.output]};"]
    for i, u in enumerate(form.updates):
        L.append(f"      s{i} = {name[u]};")
    if save:
        L.append("      const size_t tok = ((size_t)(b * T + t) * H + hh) * D + d;")
        L += [f"      save{i}[tok] = s{i};" for i in range(S)]
        L += [f"      asave{g}[tok] = a{g};" for g in range(G)]
    L += ["    }", "    __syncthreads();", f"    if (d < D) hs[d] = s{hs};", "    __syncthreads();", "  }"]
    for i in range(S):
        L.append(f"  if (d < D) state{i}[((size_t)b * H + hh) * D + d] = s{i};")
    L += ["}", ""]
    return L


def _header(form: RNNPlan, what: str, r_type: str) -> list:
    return [f"// mixir generated CUDA C ({what}) for mixer " + repr(form.mixer_name) + ". Do not edit.",
            "#include <cuda_fp16.h>", "#include <cuda_bf16.h>", "#include <math.h>", "",
            f"typedef {r_type} rtype;", ""]


def generate(form: RNNPlan, inputs, r_type: str = "__nv_bfloat16") -> str:
    """The CUDA C++ source of ``rnn_fwd_<mixer>`` (kernel) and its launcher for R of ``r_type``
    ("float", "__half" or "__nv_bfloat16"); inputs are read as ``float`` views of contiguous
    fp32 tensors ``[B, T, H, (D)]`` / ``[H, (D)]``, states ``[B, H, D]`` fp32."""
    fn = "rnn_fwd_" + _IDENT.sub("_", form.mixer_name)
    return "\n".join(_header(form, "fused RNN forward", r_type) + _forward_kernel(form, inputs, fn, False))


@dataclasses.dataclass(frozen=True)
class TrainingKernels:
    """The CUDA C of training: ``source`` holds ``fwd`` (the forward that also saves every step's
    states and gate pre-activations) and ``bwd`` (BPTT). ``din`` / ``dpar``: names of the cell's
    inputs (``[B, T, H, D]`` gradients) and params (per-sequence partials ``[B, H, D]``, summed by
    the caller) that get a gradient, in the order of the backward kernel's ``d_*`` parameters."""
    source: str
    fwd: str
    bwd: str
    din: tuple
    dpar: tuple


def cell_vjp(form: RNNPlan, inputs):
    """The cell's VJP as IR (``mixir.dsl.vjp``): cotangent leaves of the new states and of the
    output, and the gradient trees w.r.t. the old states, the gate pre-activations ``a_g`` and the
    cell's inputs/params (in ``inputs`` order)."""
    cts = tuple(ir.leaf("state", f"__ct_{s}", u.dims) for s, u in zip(form.states, form.updates))
    cto = ir.leaf("state", "__ct_out", form.output.dims)
    leaves = [ir.leaf(kind, name, dims) for name, kind, dims in inputs]
    wrt = list(form.state_leaves) + [g.leaf for g in form.gates] + leaves
    gs = vjp(form.cell_roots(), list(cts) + [cto], wrt)
    S, G = len(form.states), len(form.gates)
    return cts, cto, gs[:S], gs[S:S + G], dict(zip(leaves, gs[S + G:]))


def _backward_kernel(form: RNNPlan, inputs, fn: str) -> tuple:
    """BPTT, one block per (sequence, head), thread ``d`` owns unit ``d``. ``R_gᵀ`` is resident in
    shared memory (``Rt[g][o·D + i] = R_g[i, o]``: thread ``d`` reads consecutive words). From
    ``t = T−1`` down: the previous states (saved, or the initial ones at ``t = 0``) and ``a_g``
    (saved) are loaded, the cell's VJP gives ``da_g``, the pointwise part of the previous states'
    gradients and the input/param gradients; ``da_g`` goes to global memory (for
    ``dR_g = Σ h_{t−1}ᵀ da_g``, a batched GEMM after the kernel) and to a double-buffered shared
    ``[2, G, D]`` array, and after one ``__syncthreads`` thread ``d`` adds
    ``Σ_g Σ_o da_g[o] R_g[d, o]`` to ``dh_{t−1}[d]``. Param gradients accumulate in registers over
    T and are written per sequence."""
    S, G = len(form.states), len(form.gates)
    cts, cto, gstate, ggate, gleaf = cell_vjp(form, inputs)
    leaf_expr, loads, args = _input_loads(inputs)
    for i, lf in enumerate(form.state_leaves):
        leaf_expr[lf] = f"s{i}"
    for g, gate in enumerate(form.gates):
        leaf_expr[gate.leaf] = f"a{g}"
    for i, c in enumerate(cts):
        leaf_expr[c] = f"dc{i}"
    leaf_expr[cto] = "dout_v"
    for lf, gr in gleaf.items():
        if not lf.dims and not ir.is_const(gr, 0.0):
            raise UnsupportedMixerError(f"the CUDA backward has no gradient of the per-token scalar "
                                        f"`{lf.arg}` (a reduction over the hidden dim)")
    roots = [x for x in list(gstate) + list(ggate) + list(gleaf.values()) if not ir.is_const(x, 0.0)]
    body, name = _expr_lines(roots, leaf_expr)

    def val(node):
        return "0.0f" if ir.is_const(node, 0.0) else name[node]

    din = [(lf, gr) for lf, gr in gleaf.items() if lf.op == "input" and not ir.is_const(gr, 0.0)]
    dpar = [(lf, gr) for lf, gr in gleaf.items() if lf.op == "param" and not ir.is_const(gr, 0.0)]
    hi = form.hidden_index
    params = (args + [f"const rtype* __restrict__ R{g}" for g in range(G)]
              + [f"const float* __restrict__ init{i}" for i in range(S)]
              + [f"const float* __restrict__ save{i}" for i in range(S)]
              + [f"const float* __restrict__ asave{g}" for g in range(G)]
              + ["const float* __restrict__ dout"]
              + [f"const float* __restrict__ dfinal{i}" for i in range(S)]
              + [f"float* __restrict__ d_{_c(lf.arg)}" for lf, _ in din + dpar]
              + [f"float* __restrict__ da{g}" for g in range(G)]
              + [f"float* __restrict__ dinit{i}" for i in range(S)]
              + ["int T", "int H", "int D"])
    L = [f"extern \"C\" __global__ void {fn}(", "    " + ",\n    ".join(params) + ") {",
         "  extern __shared__ unsigned char smem_raw[];",
         "  float* das = reinterpret_cast<float*>(smem_raw);                        // [2, G, D] first",
         f"  rtype* Rt = reinterpret_cast<rtype*>(smem_raw + 4 * (size_t)(2 * {G} * D));   // [G, D, D] = R_gᵀ",
         "  const int b = blockIdx.x, hh = blockIdx.y, d = threadIdx.x;",
         f"  for (int k = d; k < {G} * D * D; k += blockDim.x) {{   // R_gᵀ resident for all T",
         "    const int g = k / (D * D), r = k % (D * D), o = r / D, i = r % D;"]
    for g in range(G):
        L.append(f"    if (g == {g}) Rt[k] = R{g}[(size_t)hh * D * D + (size_t)i * D + o];")
    L += ["  }", "  const size_t sidx = ((size_t)b * H + hh) * D + d;"]
    for i in range(S):
        L.append(f"  float dc{i} = d < D ? dfinal{i}[sidx] : 0.0f;")
    for lf, _ in dpar:
        L.append(f"  float acc_{_c(lf.arg)} = 0.0f;")
    L += ["  __syncthreads();", "  for (int t = T - 1; t >= 0; --t) {",
          f"    float* dbuf = das + (t & 1) * {G} * D;"]
    L += [f"    float dn{i} = 0.0f;" for i in range(S)]
    L += ["    if (d < D) {",
          "      const size_t tok = ((size_t)(b * T + t) * H + hh) * D + d;",
          "      const size_t ptok = tok - (size_t)H * D;           // (b, t - 1), read when t > 0"]
    for i in range(S):
        L.append(f"      const float s{i} = t > 0 ? save{i}[ptok] : init{i}[sidx];")
    for g in range(G):
        L.append(f"      const float a{g} = asave{g}[tok];")
    L.append("      const float dout_v = dout[tok];")
    L += ["      " + x for x in loads + body]
    for g in range(G):
        L += [f"      da{g}[tok] = {val(ggate[g])};", f"      dbuf[{g} * D + d] = {val(ggate[g])};"]
    for lf, gr in din:
        L.append(f"      d_{_c(lf.arg)}[tok] = {val(gr)};")
    for lf, gr in dpar:
        L.append(f"      acc_{_c(lf.arg)} += {val(gr)};")
    for i in range(S):
        L.append(f"      dn{i} = {val(gstate[i])};")
    L += ["    }", "    __syncthreads();   // dbuf complete; the other buffer is free for step t - 1",
          "    if (d < D) {"]
    for g in range(G):
        L.append(f"      for (int o = 0; o < D; ++o) dn{hi} += dbuf[{g} * D + o] * "
                 f"(float)Rt[((size_t){g} * D + o) * D + d];")
    L += [f"      dc{i} = dn{i};" for i in range(S)]
    L += ["    }", "  }", "  if (d < D) {"]
    L += [f"    dinit{i}[sidx] = dc{i};" for i in range(S)]
    L += [f"    d_{_c(lf.arg)}[sidx] = acc_{_c(lf.arg)};" for lf, _ in dpar]
    L += ["  }", "}", ""]
    return L, tuple(lf.arg for lf, _ in din), tuple(lf.arg for lf, _ in dpar)


def generate_training(form: RNNPlan, inputs, r_type: str = "__nv_bfloat16") -> TrainingKernels:
    """The CUDA C of training ``form``: ``rnn_fwd_save_<m>`` (``generate``'s forward plus the saved
    states ``save{i}`` and pre-activations ``asave{g}``, fp32 ``[B, T, H, D]``) and
    ``rnn_bwd_<m>`` (``_backward_kernel``). Shared memory: forward ``G·D²·sizeof(R) + 4·D``,
    backward ``G·D²·sizeof(R) + 8·G·D`` bytes (``training_shared_bytes``)."""
    base = _IDENT.sub("_", form.mixer_name)
    fwd, bwd = f"rnn_fwd_save_{base}", f"rnn_bwd_{base}"
    bl, din, dpar = _backward_kernel(form, inputs, bwd)
    L = _header(form, "fused RNN forward with saves, and BPTT backward", r_type)
    L += _forward_kernel(form, inputs, fwd, True) + bl
    return TrainingKernels("\n".join(L), fwd, bwd, din, dpar)


def training_shared_bytes(gates: int, D: int, r_bytes: int) -> tuple:
    """(forward, backward) dynamic shared memory of one block when training (+16 slack, as the
    launcher allocates): the resident R (or Rᵀ) plus ``h`` (forward) / the double-buffered
    ``da`` (backward, ``2·G·D`` fp32)."""
    return (gates * D * D * r_bytes + 4 * D + 16, gates * D * D * r_bytes + 8 * gates * D + 16)


R_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}


def launcher_source(form: RNNPlan, inputs, r_type: str = "__nv_bfloat16") -> tuple:
    """(C++ declaration, CUDA source) for ``torch.utils.cpp_extension.load_inline``: the kernel of
    ``generate`` plus ``void launch(xs, Rs, states, out, B, T, H, D)`` that launches it on the
    current stream, grid ``(B, H)``, ``ceil32(D)`` threads, ``G·D²·sizeof(R) + 4·D`` bytes of
    dynamic shared memory (opted in above 48 KiB). ``xs``: the cell's inputs in ``inputs`` order,
    contiguous fp32; ``Rs``: ``[H, D, D]`` (``R[h, e, d]``) in the R type; ``states``: ``[B, H, D]``
    fp32, the initial states on entry and the final states on return; ``out``: fp32 ``[B, T, H, D]``."""
    S, G = len(form.states), len(form.gates)
    kernel = generate(form, inputs, r_type)
    fn = "rnn_fwd_" + _IDENT.sub("_", form.mixer_name)
    decl = ("void launch(std::vector<at::Tensor> xs, std::vector<at::Tensor> Rs, "
            "std::vector<at::Tensor> states, at::Tensor out, int64_t B, int64_t T, int64_t H, int64_t D);")
    args = ([f"xs[{i}].data_ptr<float>()" for i in range(len(inputs))]
            + [f"reinterpret_cast<const rtype*>(Rs[{g}].data_ptr())" for g in range(G)]
            + [f"states[{i}].data_ptr<float>()" for i in range(S)]
            + ["out.data_ptr<float>()", "(int)T", "(int)H", "(int)D"])
    L = ["#include <vector>", "#include <ATen/core/Tensor.h>", "#include <c10/cuda/CUDAStream.h>",
         "#include <c10/cuda/CUDAException.h>", kernel,
         decl[:-1] + " {",
         f"  TORCH_CHECK((int64_t)xs.size() == {len(inputs)} && (int64_t)Rs.size() == {G} && "
         f"(int64_t)states.size() == {S}, \"{fn}: wrong number of tensors\");",
         f"  TORCH_CHECK(D >= 1 && D <= 1024, \"{fn}: the head size must be in [1, 1024]\");",
         "  const int threads = (int)((D + 31) / 32 * 32);",
         f"  const size_t smem = (size_t){G} * D * D * sizeof(rtype) + 4 * (size_t)D + 16;",
         "  if (smem > 48 * 1024) {",
         f"    C10_CUDA_CHECK(cudaFuncSetAttribute({fn}, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));",
         "  }",
         "  if (B == 0 || H == 0) return;",
         "  const dim3 grid((unsigned)B, (unsigned)H);",
         f"  {fn}<<<grid, threads, smem, c10::cuda::getCurrentCUDAStream()>>>(",
         "      " + ",\n      ".join(args) + ");",
         "  C10_CUDA_KERNEL_LAUNCH_CHECK();", "}", ""]
    return decl, "\n".join(L)


_LOADED: dict = {}


def load_launcher(form: RNNPlan, inputs, r_type: str):
    """The compiled extension module (``load_inline``, cached per source) with ``launch``."""
    import hashlib
    decl, src = launcher_source(form, inputs, r_type)
    key = hashlib.sha256(src.encode()).hexdigest()[:20]
    if key not in _LOADED:
        from torch.utils.cpp_extension import load_inline
        _LOADED[key] = load_inline(name=f"mixir_rnn_{_IDENT.sub('_', form.mixer_name)}_{key}",
                                   cpp_sources=["#include <torch/extension.h>\n" + decl],
                                   cuda_sources=[src], functions=["launch"],
                                   extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)
    return _LOADED[key]


def run_forward(form: RNNPlan, cell_specs, cell, weights_by_gate, inits, B, T, H, D, dtype):
    """The fused CUDA C forward on CUDA tensors: (out fp32 [B, T, H, D], final states [B, H, D]).
    ``weights_by_gate``: ``R_g`` as ``[H, D_in, D_out]``; ``inits``: fp32 ``[B, H, D]`` or None."""
    import torch
    r_type = R_TYPES[str(dtype).split(".")[-1]]
    rt = {"float": torch.float32, "__half": torch.float16, "__nv_bfloat16": torch.bfloat16}[r_type]
    mod = load_launcher(form, cell_specs, r_type)
    dev = cell[0].device
    xs = [x.float().contiguous() for x in cell]
    Rs = [R.to(rt).contiguous() for R in weights_by_gate]
    states = [(s.float().clone() if s is not None else torch.zeros((B, H, D), device=dev)).contiguous()
              for s in inits]
    out = torch.empty((B, T, H, D), device=dev, dtype=torch.float32)
    mod.launch(xs, Rs, states, out, B, T, H, D)
    return out, states


def shared_bytes(gates: int, D: int, r_bytes: int) -> int:
    """Shared memory of one block: the resident R (G·D²) plus the hidden state (D fp32)."""
    return gates * D * D * r_bytes + 4 * D
