"""CUDA C lowering of the fused RNN forward: source generated from the cell's IR (``RNNForm``).

One thread block per (sequence, head). The head's recurrent weights ``R_g`` ([D, D] per gate)
are copied to **shared memory** once and stay there for all T steps (so head sizes whose R does
not fit in registers still run fused, up to the shared-memory limit: ``G·D²·sizeof(T_R)`` bytes);
the hidden state lives in shared memory too, the other states in registers (thread ``d`` owns
unit ``d``; blocks of ``D`` threads, D ≤ 1024). Per step: ``a_g[d] = Σ_e h[e] R_g[e, d]``
(fp32 accumulation), then the user's pointwise cell, emitted as C from the IR.

In CI the source is compiled with ``nvcc -arch=sm_80|sm_90 -c`` when nvcc is present
(tests/test_rnn_cuda.py). Not yet done: the ``torch.utils.cpp_extension.load_inline`` wrapper
that launches it from ``CompiledRNN`` on a GPU (no GPU was available to validate it), a
split-R cooperative variant for G·D² beyond one block's shared memory, and a CUDA backward.
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
         "  rtype* Rs = reinterpret_cast<rtype*>(smem_raw);                 // [G, D, D]",
         "  float* hs = reinterpret_cast<float*>(Rs + (size_t)" + str(G) + " * D * D);  // [D]",
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


def shared_bytes(gates: int, D: int, r_bytes: int) -> int:
    """Shared memory of one block: the resident R (G·D²) plus the hidden state (D fp32)."""
    return gates * D * D * r_bytes + 4 * D
