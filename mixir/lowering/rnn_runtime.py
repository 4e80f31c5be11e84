"""``CompiledRNN``: run a nonlinear head-wise RNN cell (``RNNForm``) forward and backward.

Strategies (both agree with the reference, forward and backward):

* ``fused``: one Triton kernel loops over all T steps with each head's recurrent weights resident
  on chip (``rnn_codegen``: ``tl.dot`` per gate and step, the cell spliced in); the backward is one
  reverse-time kernel (BPTT) with ``dR`` accumulated on chip.
* ``alternating``: per step, the recurrent matmuls in torch (cuBLAS / CPU BLAS) and the generated
  pointwise cell kernel; the backward alternates the same way in reverse time. The fallback when
  R does not fit on chip (``autotune.rnn_space.choose``).

Each call (either strategy) is one custom op ``mixir::rnn_fwd`` with its backward
``mixir::rnn_bwd`` (``rnn_ops``: traceable by ``torch.compile``); ``run_forward`` /
``run_backward`` here are their bodies.

Layouts follow fla/FlashRNN: pre-activations ``[B, T, H, D]`` (or ``[B, T, H]``), per-head
params ``[H, ...]``, recurrent weights ``[H, E, D]`` (``a_d = Σ_e h_e R[e, d]``), states
``[N, H, D]`` fp32, output in the input dtype.
"""
from __future__ import annotations

import torch
import triton

from ..errors import InputError
from .families import check_strategy
from .kernel_cache import import_source
from .launch import Kernel, targets_gpu
from .rnn_analysis import RNNForm
from .rnn_codegen import generate


CUDA_STRATEGIES = ("fused_cuda",)    # accepted on CUDA tensors only, so not in ``strategies``


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class CompiledRNN:
    """A nonlinear RNN mixer compiled for torch tensors; call it like the reference."""

    def __init__(self, mixer, plan: RNNForm, strategy: str | None = None, config: dict | None = None):
        self.mixer = mixer
        self.plan = plan
        self.strategies = plan.strategies
        if strategy is not None:
            check_strategy(self.strategies, strategy)
        self.strategy = strategy
        self.config = dict(config or {})
        self.__name__ = mixer.name
        self.generated = g = generate(plan)
        self.source_path, module = import_source(g.source, g.sha)
        tag = f"mixir.rnn.{mixer.name}.{g.sha[:12]}"
        self.kernels = {role: Kernel(getattr(module, fn), name=f"{tag}.{role}")
                        for role, fn in g.names.items()}
        from . import rnn_ops
        self.key = rnn_ops.register(self)    # the string the custom ops find this instance by

    def __repr__(self):
        return f"<mixir.CompiledRNN {self.mixer.name} ({self.plan.transition}; {', '.join(self.strategies)})>"

    def source_files(self):
        return [self.source_path]

    # ---- the call -----------------------------------------------------------------------------
    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, **scalars):
        from .runtime import CompiledMixer
        m, f = self.mixer, self.plan
        b, N, device, dtype = CompiledMixer._check(self, arrays, initial_state, cu_seqlens, scalars)
        D = b.sizes[f.dim]
        if b.sizes.get(f.rdim, D) != D:
            raise InputError(f"{m.name}: the recurrent weights' dim {f.rdim!r} (size "
                             f"{b.sizes[f.rdim]}) must equal the hidden dim {f.dim!r} (size {D})")
        backward = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in list(arrays) + list(
                initial_state if isinstance(initial_state, (tuple, list)) else [initial_state]))
        strategy = strategy or self.strategy or self._choose(D, dtype, device, backward)
        check_strategy(self.strategies + CUDA_STRATEGIES, strategy)
        S = len(f.states)
        if initial_state is not None and S > 1 and not isinstance(initial_state, (tuple, list)):
            raise InputError(f"initial_state: {m.name} has {S} states ({', '.join(f.states)}); pass a tuple")
        inits = tuple(initial_state) if isinstance(initial_state, (tuple, list)) else (initial_state,) * S \
            if initial_state is not None else (None,) * S
        env = {spec.name: a for spec, a in zip(m.inputs, arrays)}
        cell = [env[name] for name, *_ in self.generated.cell_inputs]
        weights = [env[w] for w in f.weights]
        if strategy == "fused_cuda":
            return self._fused_cuda(b, D, dtype, device, backward, cu_seqlens, cell, weights, inits,
                                    output_final_state)
        has_init = any(s is not None for s in inits)
        init_t = [] if not has_init else [s.float() if s is not None else
                                          torch.zeros((N, b.H, D), device=device) for s in inits]
        scalars = [float(b.scalars[name]) for name, _ in self.generated.scalars]
        # one custom op per call (``rnn_ops``): opaque to torch.compile, autograd registered
        res = torch.ops.mixir.rnn_fwd(self.key, strategy, cell, weights, init_t, cu_seqlens, scalars,
                                      [b.B, b.T, b.H, D, N], dtype, backward)
        o, finals = res[0], res[1:1 + S]
        if not output_final_state:
            return o
        return o, (finals[0] if S == 1 else tuple(finals))

    def _fused_cuda(self, b, D, dtype, device, backward, cu_seqlens, cell, weights, inits, final):
        """``strategy="fused_cuda"``: the generated CUDA C (``rnn_cuda``, R in shared memory), built
        with ``load_inline``: the forward alone, or with gradients the training kernels (forward
        saving states, BPTT; ``rnn_cuda_train``). No cu_seqlens."""
        from . import rnn_cuda
        if device.type != "cuda":
            raise InputError(f"{self.mixer.name}: strategy 'fused_cuda' runs the CUDA C kernel and needs "
                             f"CUDA tensors, got {device}; use 'fused' or 'alternating'")
        if cu_seqlens is not None:
            raise InputError(f"{self.mixer.name}: strategy 'fused_cuda' does not take cu_seqlens yet")
        f = self.plan
        specs = [(name, kind, dims) for name, kind, dims, *_ in self.generated.cell_inputs]
        if backward:       # the CUDA training kernels (forward with saves, BPTT): rnn_cuda_train
            from . import rnn_cuda_train as ct
            training = self._cuda_training(specs, dtype)
            has_init = any(s is not None for s in inits)
            init_t = [] if not has_init else [s if s is not None else torch.zeros(
                (b.B, b.H, D), device=device) for s in inits]
            res = ct.FusedCudaFunction.apply(training, (b.B, b.T, b.H, D), has_init, *cell, *weights,
                                             *init_t)
            out, finals = res[0], list(res[1:])
        else:
            by = dict(zip(f.weights, weights))
            mats = [by[g.weight] if g.in_axis == 0 else by[g.weight].transpose(1, 2) for g in f.gates]
            out, finals = rnn_cuda.run_forward(f, specs, cell, mats, inits, b.B, b.T, b.H, D, dtype)
        o = out.to(dtype)
        if not final:
            return o
        return o, (finals[0] if len(finals) == 1 else tuple(finals))

    def _cuda_training(self, specs, dtype):
        """``rnn_cuda_train.RNNTraining`` for R of ``dtype`` on the GPU (built once per R type)."""
        from . import rnn_cuda, rnn_cuda_train as ct
        r_type = rnn_cuda.R_TYPES[str(dtype).split(".")[-1]]
        cache = self.__dict__.setdefault("_cuda_trainers", {})
        if r_type not in cache:
            k = rnn_cuda.generate_training(self.plan, specs, r_type)
            cache[r_type] = ct.RNNTraining(self.plan, specs, k, ct.cuda_launch(k), dtype)
        return cache[r_type]

    def _choose(self, D, dtype, device, backward=True):
        return _choose_strategy(len(self.plan.gates), len(self.plan.states), int(D), str(dtype),
                                device.type, device.index if device.index is not None else -1,
                                bool(backward))

    def launch_config(self, D, device, dtype, B=16, strategy="fused", backward=True, T=None, H=None):
        """BR (rows per program) and num_warps: on CUDA the tuning database's entry for this mixer,
        strategy and shape (``mixir tune``; needs T and H), else the tuning space's best config
        (its resource formulas, rnn_space; ``select.tuned_rnn_config``, never raising), a fixed
        default elsewhere; ``config=`` overrides."""
        BD = max(16, _pow2(D))
        cfg = {"BR": 16, "num_warps": 4 if BD <= 32 else 8, "num_stages": 1}
        if device.type == "cuda":
            from ..autotune import select
            name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
            best = select.tuned_rnn_config(
                self.mixer.fingerprint, strategy, len(self.plan.gates), len(self.plan.states), int(D),
                name, int(B), None if T is None else int(T), None if H is None else int(H),
                device.index if device.index is not None else torch.cuda.current_device(), bool(backward))
            if best:
                cfg.update(BR=best["BR"], num_warps=best["num_warps"])
        cfg.update({k: v for k, v in self.config.items() if k in cfg})
        cfg["BD"] = BD
        return cfg


def _assume_constant(fn):
    """``torch.compiler.assume_constant_result``: under torch.compile the call runs once at trace
    time (constant arguments) and its result is a constant of the graph."""
    mark = getattr(torch.compiler, "assume_constant_result", None)
    if mark is None:  # pragma: no cover - old torch
        from torch._dynamo import assume_constant_result as mark
    return mark(fn)


@_assume_constant
def _choose_strategy(gates: int, states: int, D: int, dtype: str, device_type: str,
                     device_index: int, backward: bool) -> str:
    """The default strategy: ``fused`` in the interpreter (no on-chip limit), else the tuning
    space's choice (``rnn_space.choose_strategy``: fused when R fits on chip)."""
    device = torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type)
    if device_type != "cuda" and not targets_gpu(device):
        return "fused"
    from ..autotune.rnn_space import choose_strategy
    return choose_strategy(gates, D, getattr(torch, dtype.split(".")[-1]), device, states, backward)


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
    from .runtime import _shift
    return _shift(saved, init, cu_seqlens, N)


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
    """Gradients of one call (fp32): one per cell input (``None`` where it has none), one per
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
    din_bufs = {name: torch.zeros((b.B, b.T, H) + tuple(run.D for _ in dims), device=dev)
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
        das = [torch.zeros((b.B, b.T, H, D), device=dev) for _ in f.gates]
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
