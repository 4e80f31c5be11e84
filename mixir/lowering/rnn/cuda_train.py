"""Training through the generated CUDA C RNN kernels (``strategy="fused_cuda"`` with gradients).

``cuda.generate_training`` emits two kernels: ``rnn_fwd_save_<m>`` (the fused forward that
also saves every step's states and gate pre-activations) and ``rnn_bwd_<m>`` (BPTT, ``R_gᵀ`` in
shared memory, the cell's VJP from the IR). This module is the host side around them, shared by
the GPU and by the CPU emulator (``mixir.lowering.rnn.cuda_emulation``), so that the emulated tests run
the same glue the GPU runs:

- ``RNNTraining``: allocates the buffers, launches both kernels through a ``launch(kernel, grid,
  block, smem, *args)`` callable, and finishes on the host what the Triton fused path also does
  there: ``dR_g = Σ_{b,t} h_{t−1}ᵀ da_g`` as one batched GEMM (``einsum``) and the per-sequence
  parameter partials summed over the batch;
- ``FusedCudaFunction``: the autograd function (forward saves, backward launches BPTT);
- ``cuda_launch``: the ``launch`` callable on a GPU — one ``load_inline`` extension per source,
  whose ``launch_kernel`` casts every pointer argument by the kernel's parsed signature and
  launches on the current stream (dynamic shared memory opted in above 48 KiB).

The kernels read the cell's inputs as fp32 and R in the R type (fp32, fp16 or bf16); every
gradient is computed in fp32 and cast to its input's dtype. Not handled: ``cu_seqlens``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re

import torch

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_TYPEDEF = re.compile(r"typedef\s+([\w ]+?)\s+(\w+)\s*;")


@dataclasses.dataclass(frozen=True)
class KernelParam:
    name: str
    ctype: str          # the base C type after typedef resolution ("float", "__nv_bfloat16", "int")
    pointer: bool
    const: bool


def kernel_params(source: str, kernel: str) -> tuple:
    """The parameters of ``extern "C" __global__ void <kernel>(...)`` in a generated source."""
    typedefs = {alias: base.strip() for base, alias in _TYPEDEF.findall(source)}
    for name, params in _SIG.findall(source):
        if name != kernel:
            continue
        out = []
        for p in (x.strip() for x in params.split(",") if x.strip()):
            toks = p.replace("*", " * ").split()
            base = " ".join(t for t in toks[:-1] if t not in ("const", "*", "__restrict__"))
            out.append(KernelParam(toks[-1], typedefs.get(base, base), "*" in toks, "const" in toks))
        return tuple(out)
    raise ValueError(f"no `extern \"C\" __global__ void {kernel}(...)` in the generated source")


def threads_for(D: int) -> int:
    return (int(D) + 31) // 32 * 32


class RNNTraining:
    """The host side of the CUDA training kernels ``kernels`` (``cuda.TrainingKernels``)
    generated for ``form`` with the cell inputs ``inputs`` ((name, kind, dims), in the kernels'
    order) and R stored as ``r_dtype``; ``launch(kernel, grid, block, smem, *args)`` runs one."""

    def __init__(self, form, inputs, kernels, launch, r_dtype):
        from . import cuda as rnn_cuda
        self.form, self.inputs, self.k, self.launch, self.r_dtype = form, list(inputs), kernels, launch, r_dtype
        r_bytes = torch.empty((), dtype=r_dtype).element_size()
        self.smem = lambda D: rnn_cuda.training_shared_bytes(len(form.gates), D, r_bytes)

    def mats(self, weights):
        """``R_g`` as ``[H, D_in, D_out]`` per gate, from the mixer's weight tensors."""
        by = dict(zip(self.form.weights, weights))
        return [by[g.weight] if g.in_axis == 0 else by[g.weight].transpose(1, 2) for g in self.form.gates]

    def forward(self, cell, mats, inits, B, T, H, D):
        """(out, final states, saved states + pre-activations): fp32 ``[B, T, H, D]`` each."""
        S, G = len(self.form.states), len(self.form.gates)
        dev = cell[0].device
        xs = [x.float().contiguous() for x in cell]
        Rs = [R.to(self.r_dtype).contiguous() for R in mats]
        states = [(s.float().clone() if s is not None else torch.zeros((B, H, D), device=dev)).contiguous()
                  for s in inits]
        out = torch.empty((B, T, H, D), dtype=torch.float32, device=dev)
        saves = [torch.empty((B, T, H, D), dtype=torch.float32, device=dev) for _ in range(S + G)]
        self.launch(self.k.fwd, (B, H), threads_for(D), self.smem(D)[0], *xs, *Rs, *states, out, *saves,
                    T, H, D)
        return out, states, saves

    def backward(self, cell, mats, inits, saved, dout, dfinals, B, T, H, D):
        """``(dcell by input name, dR [H, D_in, D_out] per gate, d initial states)``, fp32."""
        f, S, G = self.form, len(self.form.states), len(self.form.gates)
        dev = cell[0].device
        z = lambda *shape: torch.zeros(shape, dtype=torch.float32, device=dev)      # noqa: E731
        xs = [x.float().contiguous() for x in cell]
        Rs = [R.to(self.r_dtype).contiguous() for R in mats]
        init = [(s.float() if s is not None else z(B, H, D)).contiguous() for s in inits]
        dout = dout.float().contiguous()
        dfin = [d.float().contiguous() for d in dfinals]
        din = {n: z(B, T, H, D) for n in self.k.din}
        dpar = {n: z(B, H, D) for n in self.k.dpar}
        das = [z(B, T, H, D) for _ in range(G)]
        dinit = [z(B, H, D) for _ in range(S)]
        self.launch(self.k.bwd, (B, H), threads_for(D), self.smem(D)[1], *xs, *Rs, *init, *saved, dout,
                    *dfin, *din.values(), *dpar.values(), *das, *dinit, T, H, D)
        h = saved[f.hidden_index]
        hprev = torch.cat([init[f.hidden_index][:, None], h[:, :-1]], 1)
        dmats = [torch.einsum("bthe,bthd->hed", hprev, da) for da in das]
        dcell = dict(din)
        dcell.update({n: v.sum(0) for n, v in dpar.items()})
        return dcell, dmats, dinit


class FusedCudaFunction(torch.autograd.Function):
    """``apply(training, (B, T, H, D), has_init, *cell, *weights, *inits)`` → (out fp32,
    *final states); the backward runs the BPTT kernel. ``cell`` in ``training.inputs`` order,
    ``weights`` in ``form.weights`` order."""

    @staticmethod
    def forward(ctx, training, shape, has_init, *tensors):
        f = training.form
        B, T, H, D = shape
        nc, nw, S = len(training.inputs), len(f.weights), len(f.states)
        cell, weights = tensors[:nc], tensors[nc:nc + nw]
        inits = tensors[nc + nw:] if has_init else (None,) * S
        out, finals, saved = training.forward(cell, training.mats(weights), inits, B, T, H, D)
        ctx.training, ctx.shape, ctx.has_init, ctx.n = training, shape, has_init, len(tensors)
        ctx.save_for_backward(*tensors, *saved)
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        training = ctx.training
        f = training.form
        B, T, H, D = ctx.shape
        every = ctx.saved_tensors
        tensors, saved = every[:ctx.n], every[ctx.n:]
        nc, nw, S = len(training.inputs), len(f.weights), len(f.states)
        cell, weights = tensors[:nc], tensors[nc:nc + nw]
        inits = tensors[nc + nw:] if ctx.has_init else (None,) * S
        dev = cell[0].device
        dout = torch.zeros((B, T, H, D), device=dev) if dout is None else dout
        dfinals = [torch.zeros((B, H, D), device=dev) if d is None else d for d in dfinals]
        dcell, dmats, dinit = training.backward(cell, training.mats(weights), inits, saved, dout,
                                                dfinals, B, T, H, D)
        grads = [None if name not in dcell else dcell[name].reshape(x.shape).to(x.dtype)
                 for (name, _, _), x in zip(training.inputs, cell)]
        by = {}
        for g, gate in zip(dmats, f.gates):
            g = g if gate.in_axis == 0 else g.transpose(1, 2)
            by[gate.weight] = g if gate.weight not in by else by[gate.weight] + g
        grads += [by[w].to(x.dtype) for w, x in zip(f.weights, weights)]
        if ctx.has_init:
            grads += [d.to(x.dtype) for d, x in zip(dinit, inits)]
        return (None, None, None, *grads)


# ---- the GPU launcher ----------------------------------------------------------------------------

def launcher_source(kernels) -> tuple:
    """(C++ declaration, CUDA source) of ``launch_kernel(which, ptrs, ints, gx, gy, block, smem)``
    for ``load_inline``: ``which`` 0 launches ``kernels.fwd``, 1 ``kernels.bwd``; pointer
    arguments are cast by the parsed kernel signature, integer arguments come in order."""
    decl = ("void launch_kernel(int64_t which, std::vector<at::Tensor> ptrs, std::vector<int64_t> ints, "
            "int64_t gx, int64_t gy, int64_t block, int64_t smem);")
    L = ["#include <vector>", "#include <ATen/core/Tensor.h>", "#include <c10/cuda/CUDAStream.h>",
         "#include <c10/cuda/CUDAException.h>", kernels.source, decl[:-1] + " {",
         "  const dim3 grid((unsigned)gx, (unsigned)gy);",
         "  if (gx == 0 || gy == 0) return;",
         "  auto stream = c10::cuda::getCurrentCUDAStream();"]
    for which, name in enumerate((kernels.fwd, kernels.bwd)):
        params = kernel_params(kernels.source, name)
        args, ip, pp = [], 0, 0
        for p in params:
            if p.pointer:
                args.append(f"reinterpret_cast<{'const ' if p.const else ''}{p.ctype}*>(ptrs[{pp}].data_ptr())")
                pp += 1
            else:
                args.append(f"({p.ctype})ints[{ip}]")
                ip += 1
        L += [f"  if (which == {which}) {{",
              f"    TORCH_CHECK((int64_t)ptrs.size() == {pp} && (int64_t)ints.size() == {ip}, "
              f"\"{name}: wrong number of arguments\");",
              "    if (smem > 48 * 1024) {",
              f"      C10_CUDA_CHECK(cudaFuncSetAttribute({name}, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));",
              "    }",
              f"    {name}<<<grid, (unsigned)block, (size_t)smem, stream>>>(",
              "        " + ",\n        ".join(args) + ");",
              "  }"]
    L += ["  C10_CUDA_KERNEL_LAUNCH_CHECK();", "}", ""]
    return decl, "\n".join(L)


_LOADED: dict = {}


def cuda_launch(kernels):
    """The ``launch`` callable of ``RNNTraining`` on a GPU (the extension built once per source)."""
    decl, src = launcher_source(kernels)
    key = hashlib.sha256(src.encode()).hexdigest()[:20]
    if key not in _LOADED:
        from torch.utils.cpp_extension import load_inline
        _LOADED[key] = load_inline(name=f"mixir_rnn_train_{key}",
                                   cpp_sources=["#include <torch/extension.h>\n" + decl],
                                   cuda_sources=[src], functions=["launch_kernel"],
                                   extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)
    mod = _LOADED[key]
    which = {kernels.fwd: 0, kernels.bwd: 1}

    def launch(kernel, grid, block, smem, *args):
        ptrs = [a for a in args if isinstance(a, torch.Tensor)]
        ints = [int(a) for a in args if not isinstance(a, torch.Tensor)]
        gx, gy = grid
        mod.launch_kernel(which[kernel], ptrs, ints, int(gx), int(gy), int(block), int(smem))
    return launch
