"""``CompiledRNN``: run a nonlinear head-wise RNN cell (``RNNPlan``) forward and backward.

Strategies (both agree with the reference, forward and backward):

* ``fused``: one Triton kernel loops over all T steps with each head's recurrent weights resident
  on chip (``codegen.py``: ``tl.dot`` per gate and step, the cell spliced in); the backward is one
  reverse-time kernel (BPTT) with ``dR`` accumulated on chip.
* ``alternating``: per step, the recurrent matmuls in torch (cuBLAS / CPU BLAS) and the generated
  pointwise cell kernel; the backward alternates the same way in reverse time. The fallback when
  R does not fit on chip (``autotune.rnn_space.choose``).

Each call (either strategy) is one custom op ``mixir::rnn_fwd`` with its backward
``mixir::rnn_bwd`` (``ops.py``: traceable by ``torch.compile``); ``run_forward`` /
``run_backward`` here are their bodies.

Layouts follow fla/FlashRNN: pre-activations ``[B, T, H, D]`` (or ``[B, T, H]``), per-head
params ``[H, ...]``, recurrent weights ``[H, E, D]`` (``a_d = Σ_e h_e R[e, d]``), states
``[N, H, D]`` fp32, output in the input dtype.
"""
from __future__ import annotations

import torch

from ...tiles import pow2
from ...errors import InputError, UnsupportedMixerError
from ..common.call import CompiledBase, assume_constant, check_call, check_strategy
from ..common.kernel_cache import import_source
from ..common.launch import Kernel, targets_gpu
from .analysis import RNNPlan
from .codegen import generate


CUDA_STRATEGIES = ("fused_cuda",)    # accepted on CUDA tensors only, so not in ``strategies``


class CompiledRNN(CompiledBase):
    """A nonlinear RNN mixer compiled for torch tensors; call it like the reference."""

    def __init__(self, mixer, plan: RNNPlan, strategy: str | None = None, config: dict | None = None):
        super().__init__(mixer, plan, strategy, config)
        self.generated = g = generate(plan)
        self.source_path, module = import_source(g.source, g.sha)
        tag = f"mixir.rnn.{mixer.name}.{g.sha[:12]}"
        self.kernels = {role: Kernel(getattr(module, fn), name=f"{tag}.{role}")
                        for role, fn in g.names.items()}
        from . import ops as rnn_ops
        self.key = rnn_ops.register(self)    # the string the custom ops find this instance by

    kind = "CompiledRNN"

    def source_files(self):
        return [self.source_path]

    # ---- the call -----------------------------------------------------------------------------
    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, group=None, **scalars):
        m, f = self.mixer, self.plan
        if group is not None:
            raise UnsupportedMixerError(
                f"{m.name}: group= (context parallelism) is not supported for nonlinear RNNs: the "
                "state update is nonlinear in the state, so a slice's effect on the state is not a "
                "transition that can be combined before the state entering it is known (run the "
                "sequence on one rank, or pass the state rank to rank yourself)")
        b, N, device, dtype = check_call(m, arrays, initial_state, cu_seqlens, scalars)
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
        # one custom op per call (``ops.py``): opaque to torch.compile, autograd registered
        res = torch.ops.mixir.rnn_fwd(self.key, strategy, cell, weights, init_t, cu_seqlens, scalars,
                                      [b.B, b.T, b.H, D, N], dtype, backward)
        o, finals = res[0], res[1:1 + S]
        if not output_final_state:
            return o
        return o, (finals[0] if S == 1 else tuple(finals))

    def _fused_cuda(self, b, D, dtype, device, backward, cu_seqlens, cell, weights, inits, final):
        """``strategy="fused_cuda"``: the generated CUDA C (``cuda.py``, R in shared memory), built
        with ``load_inline``: the forward alone, or with gradients the training kernels (forward
        saving states, BPTT; ``cuda_train.py``). No cu_seqlens."""
        from . import cuda as rnn_cuda
        if device.type != "cuda":
            raise InputError(f"{self.mixer.name}: strategy 'fused_cuda' runs the CUDA C kernel and needs "
                             f"CUDA tensors, got {device}; use 'fused' or 'alternating'")
        if cu_seqlens is not None:
            raise InputError(f"{self.mixer.name}: strategy 'fused_cuda' does not take cu_seqlens yet")
        f = self.plan
        specs = [(name, kind, dims) for name, kind, dims, *_ in self.generated.cell_inputs]
        if backward:       # the CUDA training kernels (forward with saves, BPTT): rnn_cuda_train
            from . import cuda_train as ct
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
        from . import cuda as rnn_cuda, cuda_train as ct
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
        (its resource formulas ranked by ``space.best_config`` at T = 1024, H = 1;
        ``autotune.select.tuned_config``, never raising), a fixed default elsewhere; ``config=``
        overrides."""
        BD = max(16, pow2(D))
        cfg = {"BR": 16, "num_warps": 4 if BD <= 32 else 8, "num_stages": 1}
        if device.type == "cuda":
            from . import space as rnn_space
            from ...autotune.db import Key, dtype_name
            from ...autotune.select import tuned_config
            G, S = len(self.plan.gates), len(self.plan.states)
            key = None if T is None or H is None else Key(
                self.mixer.fingerprint, strategy, dtype, int(B), int(T), int(H), int(D), int(D))

            def model(gpu):
                shape = rnn_space.shape_of(int(B), 1024, 1, int(D), dtype_name(dtype))
                return rnn_space.best_config(strategy, G, S, shape, gpu, bool(backward))
            # the space and shape validate a database entry (an invalid one is ignored, warned)
            best = tuned_config(rnn_space.rnn_space(strategy, G, S, bool(backward)), key,
                                rnn_space.shape_of(int(B), 1024, 1, int(D), dtype_name(dtype)),
                                device, model=model)
            if best:
                cfg.update(BR=best["BR"], num_warps=best["num_warps"])
        cfg.update({k: v for k, v in self.config.items() if k in cfg})
        cfg["BD"] = BD
        return cfg


@assume_constant
def _choose_strategy(gates: int, states: int, D: int, dtype: str, device_type: str,
                     device_index: int, backward: bool) -> str:
    """The default strategy: ``fused`` in the interpreter (no on-chip limit), else the tuning
    space's choice (``space.choose_strategy``: fused when R fits on chip)."""
    device = torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type)
    if device_type != "cuda" and not targets_gpu(device):
        return "fused"
    from .space import choose_strategy
    return choose_strategy(gates, D, getattr(torch, dtype.split(".")[-1]), device, states, backward)
