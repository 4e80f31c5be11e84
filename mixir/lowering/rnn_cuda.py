"""CUDA C lowering of the fused RNN forward: source generated from the cell's IR (``RNNForm``).

One thread block per (sequence, head). The head's recurrent weights ``R_g`` ([D, D] per gate)
are copied to **shared memory** once and stay there for all T steps (so head sizes whose R does
not fit in registers still run fused, up to the shared-memory limit: ``G·D²·sizeof(T_R)`` bytes);
the hidden state lives in shared memory too, the other states in registers (thread ``d`` owns
unit ``d``; blocks of ``D`` threads, D ≤ 1024). Per step: ``a_g[d] = Σ_e h[e] R_g[e, d]``
(fp32 accumulation), then the user's pointwise cell, emitted as C from the IR.

In CI the source is compiled with ``nvcc -arch=sm_80|sm_90 -c`` when nvcc is present
(tests/test_rnn_cuda.py, which also compiles the ``load_inline`` launcher source against torch's
headers). ``run_forward`` builds it with ``torch.utils.cpp_extension.load_inline`` and launches it;
``CompiledRNN`` uses it for ``strategy="fused_cuda"`` on CUDA tensors (inference: there is no CUDA
backward). Not yet done: a CUDA backward, tensor-core MMA, a split-R cooperative variant for G·D²
beyond one block's shared memory, ``cu_seqlens`` in the CUDA kernel.
"""
from __future__ import annotations

import math
import re

from ..dsl import ir
from ..dsl.vjp import multi_toposort
from ..errors import UnsupportedMixerError
from .rnn_analysis import RNNForm

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


def _cell_lines(form: RNNForm, leaf_expr: dict) -> tuple:
    """C statements computing every node of the cell (one ``float`` per node, per thread)."""
    lines, name = [], {}
    for n in multi_toposort(form.cell_roots()):
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


def generate(form: RNNForm, inputs, r_type: str = "__nv_bfloat16") -> str:
    """The CUDA C++ source of ``rnn_fwd_<mixer>`` (kernel) and its launcher for R of ``r_type``
    ("float", "__half" or "__nv_bfloat16"); inputs are read as ``float`` views of contiguous
    fp32 tensors ``[B, T, H, (D)]`` / ``[H, (D)]``, states ``[B, H, D]`` fp32."""
    S, G = len(form.states), len(form.gates)
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
    for i, lf in enumerate(form.state_leaves):
        leaf_expr[lf] = f"s{i}"
    for g, gate in enumerate(form.gates):
        leaf_expr[gate.leaf] = f"a{g}"
    body, name = _cell_lines(form, leaf_expr)
    fn = "rnn_fwd_" + _IDENT.sub("_", form.mixer_name)
    hs = form.hidden_index
    L = ["// mixir generated CUDA C (fused RNN forward) for mixer " + repr(form.mixer_name) + ". Do not edit.",
         "#include <cuda_fp16.h>", "#include <cuda_bf16.h>", "#include <math.h>", "",
         f"typedef {r_type} rtype;", "",
         f"extern \"C\" __global__ void {fn}(",
         "    " + ",\n    ".join(args + [f"const rtype* __restrict__ R{g}" for g in range(G)]
                                + [f"float* __restrict__ state{i}" for i in range(S)]
                                + ["float* __restrict__ out", "int T", "int H", "int D"]) + ") {",
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
    L += ["    }", "    __syncthreads();", f"    if (d < D) hs[d] = s{hs};", "    __syncthreads();", "  }"]
    for i in range(S):
        L.append(f"  if (d < D) state{i}[((size_t)b * H + hh) * D + d] = s{i};")
    L += ["}", ""]
    return "\n".join(L)


R_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}


def launcher_source(form: RNNForm, inputs, r_type: str = "__nv_bfloat16") -> tuple:
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


def load_launcher(form: RNNForm, inputs, r_type: str):
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


def run_forward(form: RNNForm, cell_specs, cell, weights_by_gate, inits, B, T, H, D, dtype):
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
