"""One call of a compiled RNN inside its custom ops (``ops.py``): the rows of the call
(``make_run``), then the forward (``run_forward``: the fused kernel, or the alternating loop of
recurrent GEMMs and pointwise step kernels) and the backward through time (``run_backward``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton

from ..common.call import shift_by_one
from ..common.chunks import empty
from ..common.launch import targets_gpu

if TYPE_CHECKING:
    from .runtime import CompiledRNN


def make_run(c: CompiledRNN, strategy: str, shape, dtype, device, cu_seqlens, scalars,
             backward: bool) -> "_Run":
    """The ``_Run`` of a call from the custom ops' arguments (``shape`` = [B, T, H, D, N],
    ``scalars`` the values of ``generated.scalars``). The sequence rows come from ``cu_seqlens``
    here, inside the op (their longest length is read on the host)."""
    B, T, H, D, N = (int(x) for x in shape)
    if cu_seqlens is None:
        row_b = torch.arange(B, device=device, dtype=torch.int32)
        row_t0 = torch.zeros(B, device=device, dtype=torch.int32)
        row_len = torch.full((B,), T, device=device, dtype=torch.int32)
        T_steps = T
    else:
        cu = cu_seqlens.long()
        row_b = torch.zeros(N, device=device, dtype=torch.int32)
        row_t0 = cu[:-1].to(torch.int32)
        row_len = (cu[1:] - cu[:-1]).to(torch.int32)
        T_steps = int(row_len.max()) if N else 0
    dims = _Dims(B, T, H, {name: float(v) for (name, _), v in zip(c.generated.scalars, scalars)})
    return _Run(c, dims, N, D, dtype, device, strategy, (row_b, row_t0, row_len), T_steps, backward,
                cu_seqlens)


class _Dims:
    """The sizes and scalar values of a call (what ``_Run`` reads of the bound call)."""

    def __init__(self, B, T, H, scalars):
        self.B, self.T, self.H, self.scalars = B, T, H, scalars


def _previous(saved, init, cu_seqlens, N):
    """The hidden state before every token (``saved`` [B, T, H, D] shifted by one step, each
    sequence's initial state or 0 at its first token)."""
    return shift_by_one(saved, init, cu_seqlens, N)


class _Run:
    """Everything one call needs besides the tensors (shared by forward and backward)."""

    def __init__(self, c: CompiledRNN, b, N, D, dtype, device, strategy, rows, T_steps, backward,
                 cu_seqlens=None):
        self.c, self.b, self.N, self.D, self.dtype, self.device = c, b, N, D, dtype, device
        self.strategy, self.rows, self.T_steps = strategy, rows, T_steps
        self.backward, self.cu_seqlens = backward, cu_seqlens
        self.cfg = c.launch_config(D, device, dtype, max(N, 1), strategy, backward, T=b.T, H=b.H)
        gpu = device.type == "cuda" or targets_gpu(device)
        self.dot16 = {torch.float16: 1, torch.bfloat16: 2}.get(dtype, 0) if gpu else \
            (1 if dtype == torch.float16 else 0)
        self.prec = "ieee" if (dtype == torch.float32 or not gpu) else "tf32"
        self.grid = (triton.cdiv(max(N, 1), self.cfg["BR"]), b.H)

    # -- argument dicts ----------------------------------------------------------------------
    def common(self, cell):
        g = self.c.generated
        kw = {}
        for (name, kind, dims, arg, strides), x in zip(g.cell_inputs, cell):
            kw[arg] = x
            for s, v in zip(strides, x.stride()):
                kw[s] = v
        for name, arg in g.scalars:
            kw[arg] = float(self.b.scalars[name])
        row_b, row_t0, row_len = self.rows
        kw.update(row_b=row_b, row_t0=row_t0, row_len=row_len, N=self.N, T=self.b.T, H=self.b.H)
        kw[f"n_{g.dim_name}"] = self.D
        kw["BR"] = self.cfg["BR"]
        # 64-bit offsets only when some offset can reach 2^31 (tokens × units, or a strided view
        # into a larger storage); the 32-bit index tiles leave registers to the resident R
        b, big = self.b, 2 ** 31 - 1
        extent = max([b.B * b.T * b.H * self.D, self.N * b.H * self.D]
                     + [x.untyped_storage().nbytes() // x.element_size() for x in cell])
        kw["I64"] = extent >= big
        kw[f"BD_{g.dim_name}"] = self.cfg["BD"]
        return kw

    def weights(self, weights):
        kw = {}
        f = self.c.plan
        by = dict(zip(f.weights, weights))
        for i, gate in enumerate(f.gates):
            R = by[gate.weight]
            kw[f"w{i}"] = R
            kw[f"w{i}_sh"] = R.stride(0)
            kw[f"w{i}_si"] = R.stride(1 + gate.in_axis)
            kw[f"w{i}_so"] = R.stride(2 - gate.in_axis)
        return kw

    def matrices(self, weights):
        """R_g as [H, in, out] fp32 (for the torch matmuls of the alternating strategy)."""
        f = self.c.plan
        by = dict(zip(f.weights, weights))
        return [by[g.weight].float() if g.in_axis == 0 else by[g.weight].float().transpose(1, 2)
                for g in f.gates]

    def opts(self):
        return {"num_warps": self.cfg["num_warps"], "num_stages": self.cfg["num_stages"]}

    def matmul(self, h, R):
        """a[n, h, d] = Σ_e h[n, h, e] R[h, e, d], with 16-bit operands where the kernel has them."""
        if self.dot16 and self.device.type == "cuda":
            h, R = h.to(self.dtype), R.to(self.dtype)
        return torch.matmul(h.transpose(0, 1), R).transpose(0, 1).float().contiguous()


def run_forward(run: _Run, cell, weights, inits):
    """The forward of one call: ``(out, finals, saved)``. ``inits`` is empty (zero initial
    states) or one fp32 [N, H, D] tensor per state. ``saved`` is what the backward reads: for
    ``fused`` every step's states and gate pre-activations (fp32 [B, T, H, D], S + G tensors;
    [1, 1, 1, 1] placeholders without a backward), for ``alternating`` every step's states
    (fp32 [T, N, H, D], S tensors; [0, N, H, D] without a backward)."""
    c, b, f = run.c, run.b, run.c.plan
    S, H, D, N = len(f.states), b.H, run.D, run.N
    dev = run.device
    has_init = len(inits) > 0
    out = torch.empty((b.B, b.T, H, D), device=dev, dtype=run.dtype)
    finals = [torch.empty((N, H, D), device=dev, dtype=torch.float32) for _ in range(S)]
    kw = run.common(cell)
    if run.strategy == "fused":
        # for the backward: every step's states and gate pre-activations a_g (fp32)
        shape = (b.B, b.T, H, D) if run.backward else (1, 1, 1, 1)
        saves = [torch.empty(shape, device=dev, dtype=torch.float32) for _ in range(S)]
        asaves = [torch.empty(shape, device=dev, dtype=torch.float32) for _ in f.gates]
        kw.update(run.weights(weights))
        for i in range(S):
            kw[f"init{i}"] = inits[i] if has_init else finals[i]
            kw[f"save{i}"] = saves[i]
            kw[f"final{i}"] = finals[i]
        for g in range(len(f.gates)):
            kw[f"asave{g}"] = asaves[g]
        kw.update(out=out, T_steps=run.T_steps, HAS_INIT=has_init, SAVE=run.backward,
                  DOT16=run.dot16, PREC=run.prec)
        if N and run.T_steps:
            c.kernels["fwd_fused"][run.grid](**kw, **run.opts())
        elif N:
            for i in range(S):
                finals[i].copy_(inits[i] if has_init else torch.zeros_like(finals[i]))
        return out, finals, saves + asaves
    mats = run.matrices(weights)
    prev = [inits[i] if has_init else torch.zeros((N, H, D), device=dev) for i in range(S)]
    hist = [torch.empty((b.T if run.backward else 0, N, H, D), device=dev, dtype=torch.float32)
            for _ in range(S)]
    for t in range(run.T_steps):
        a = [run.matmul(prev[f.hidden_index], R) for R in mats]
        nxt = [hist[i][t] if run.backward else torch.empty((N, H, D), device=dev, dtype=torch.float32)
               for i in range(S)]
        step = dict(kw, out=out, t=t)
        for i in range(S):
            step[f"prev{i}"], step[f"next{i}"] = prev[i], nxt[i]
        for g in range(len(a)):
            step[f"a{g}_in"] = a[g]
        c.kernels["fwd_step"][run.grid](**step, **run.opts())
        prev = nxt
    for i in range(S):
        finals[i].copy_(prev[i])
    return out, finals, hist


def run_backward(run: _Run, cell, weights, inits, saved, dout, dfinals):
    """Gradients of one call: one per cell input (``None`` where it has none; an input's in its
    dtype, a parameter's fp32), one per
    recurrent weight, one per initial state (none when ``inits`` is empty). ``saved`` is
    ``run_forward``'s; ``dout`` / ``dfinals`` may be ``None`` (zero cotangents)."""
    c, b, f = run.c, run.b, run.c.plan
    inits = list(inits) if len(inits) else None
    S, H, D, N, dev = len(f.states), b.H, run.D, run.N, run.device
    g = c.generated
    dout = (torch.zeros((b.B, b.T, H, D), device=dev, dtype=run.dtype) if dout is None
            else dout.contiguous())
    dfin = [torch.zeros((N, H, D), device=dev) if d is None else d.float().contiguous()
            for d in dfinals]
    # every token's row is stored by the backward kernels (empty: NaN under MIXIR_POISON), in the
    # cell input's dtype (the kernels round their fp32 values once, in the store)
    dtype_of = {spec[0]: x.dtype for spec, x in zip(g.cell_inputs, cell)}
    din_bufs = {name: empty(b.B, b.T, H, *(run.D for _ in dims), device=dev, dtype=dtype_of[name])
                for name, dims, _ in g.grads["din"]}
    kw = run.common(cell)
    arg_of = {name: arg for name, _, arg in g.grads["din"] + g.grads["dpar"]}
    for name, buf in din_bufs.items():
        kw[arg_of[name]] = buf
    dpar_sum = {}
    dW = [None] * len(f.gates)
    if run.strategy == "fused":
        dpar_bufs = {name: torch.zeros((N, H) + tuple(D for _ in dims), device=dev)
                     for name, dims, _ in g.grads["dpar"]}
        for name, buf in dpar_bufs.items():
            kw[arg_of[name]] = buf
        saves, asaves = saved[:S], saved[S:]
        # the gates' pre-activation gradients: every token's row is stored by the kernel
        das = [empty(b.B, b.T, H, D, device=dev) for _ in f.gates]
        dinit = [torch.empty((N, H, D), device=dev) for _ in range(S)]
        kw.update(run.weights(weights))
        for i in range(S):
            kw[f"init{i}"] = inits[i] if inits is not None else dfin[i]
            kw[f"save{i}"] = saves[i]
            kw[f"dfinal{i}"] = dfin[i]
            kw[f"dinit{i}"] = dinit[i]
        for j in range(len(f.gates)):
            kw[f"asave{j}"], kw[f"da{j}_out"] = asaves[j], das[j]
        kw.update(dout_p=dout, T_steps=run.T_steps, HAS_INIT=inits is not None, DOT16=run.dot16,
                  PREC=run.prec)
        if N and run.T_steps:
            c.kernels["bwd_fused"][run.grid](**kw, **run.opts())
        else:
            dinit = dfin
        # dR_g[h] = Σ_{b,t} h_{t-1}ᵀ da_g: one batched GEMM over all tokens, outside the loop
        hprev = _previous(saves[f.hidden_index], None if inits is None else inits[f.hidden_index],
                          run.cu_seqlens, N)
        # (per gate: each operand is a strided view a batched GEMM reads without a copy; one
        # einsum over the stacked gates would copy them to merge the gate and unit axes)
        dW = [torch.einsum("bthe,bthd->hed", hprev, da) for da in das]
        dpar_sum = {name: buf.sum(0) for name, buf in dpar_bufs.items()}
    else:
        hist = saved
        mats = run.matrices(weights)
        zeros = [torch.zeros((N, H, D), device=dev) for _ in range(S)]
        dc = dfin
        dW = [torch.zeros((H, D, D), device=dev) for _ in f.gates]
        dpar_sum = {name: torch.zeros((H,) + tuple(D for _ in dims), device=dev)
                    for name, dims, _ in g.grads["dpar"]}
        for t in reversed(range(run.T_steps)):
            prev = [h[t - 1] for h in hist] if t > 0 else (inits if inits is not None else zeros)
            hp = prev[f.hidden_index]
            a = [torch.matmul(hp.transpose(0, 1), R).transpose(0, 1).contiguous() for R in mats]
            step = dict(kw, dout_p=dout, t=t)
            dprev = [torch.empty((N, H, D), device=dev) for _ in range(S)]
            da = [torch.empty((N, H, D), device=dev) for _ in f.gates]
            bufs = {name: torch.zeros((N, H) + tuple(D for _ in dims), device=dev)
                    for name, dims, _ in g.grads["dpar"]}
            for name, buf in bufs.items():
                step[arg_of[name]] = buf
            for i in range(S):
                step[f"prev{i}"], step[f"dnext{i}"], step[f"dprev{i}"] = prev[i], dc[i], dprev[i]
            for j in range(len(a)):
                step[f"a{j}_in"], step[f"da{j}_out"] = a[j], da[j]
            c.kernels["bwd_step"][run.grid](**step, **run.opts())
            for name, buf in bufs.items():
                dpar_sum[name] += buf.sum(0)
            for j, R in enumerate(mats):
                dprev[f.hidden_index] = dprev[f.hidden_index] + torch.matmul(
                    da[j].transpose(0, 1), R.transpose(1, 2)).transpose(0, 1)
                dW[j] += torch.matmul(hp.permute(1, 2, 0), da[j].transpose(0, 1))
            dc = [x.contiguous() for x in dprev]
        dinit = dc
    # gradients in the order of the inputs
    grads = []
    for (name, kind, dims, _, _), x in zip(g.cell_inputs, cell):
        gx = din_bufs.get(name) if kind == "input" else dpar_sum.get(name)
        grads.append(None if gx is None else gx.reshape(x.shape))
    by = {}
    for j, gate in enumerate(f.gates):
        d = dW[j] if gate.in_axis == 0 else dW[j].transpose(1, 2)
        by[gate.weight] = d if gate.weight not in by else by[gate.weight] + d
    grads += [by[w] for w in f.weights]
    if inits is not None:
        grads += list(dinit)
    return grads
