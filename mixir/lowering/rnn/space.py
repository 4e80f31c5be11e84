"""Tuning spaces of the nonlinear RNN templates (``codegen.py``): fused vs alternating.

The question these formulas answer is FlashRNN's: **does a head's recurrent weight fit on chip?**
The fused kernel holds ``R_g`` ([PK, PK] per gate, PK = max(16, next_pow2(D))) for all T steps:

* forward, registers: ``G·PK²·db/4`` (16-bit operands pack two per 32-bit register) plus the
  states, gate pre-activations and cell temporaries of a ``BR``-row tile (``(S + G + 4)·BR·PK``);
  shared memory: Triton stages the dot operands' layout conversions through shared memory,
  ``(G·PK² + BR·PK)·db`` bytes (the forward's dot operands are in the input dtype, ``db`` bytes) (matches the AOT builds: LSTM D = 32 bf16 BR = 16 → 10 KiB,
  GRU D = 24 fp32 → 14 KiB);
* backward (BPTT): only ``R_gᵀ`` stays on chip, in the dot dtype (``dh = Σ_g da_g R_gᵀ``); the
  pre-activations ``a_g`` are saved by the forward (not recomputed) and ``dR_g = Σ_t h_{t-1}ᵀ da_g``
  is one batched GEMM over all tokens after the kernel (the kernel stores ``da_g``), so no ``dR``
  accumulator is live. Triton stages the loop-invariant ``R_gᵀ`` in shared memory,
  ``(G·PK² + 4·BR·PK)·db`` bytes, and loads per-step fragments of it: registers
  ``G·PK²·db/8 + (2S + G + 6)·BR·PK``. Calibrated on sm_90 builds (BR = 16, 32-bit offsets):
  LSTM D = 64 bf16 8 warps 216 registers, no spills (predicted 240), 4 warps spills (predicted
  352), 16 warps capped at 128 (predicted register file exceeded); sLSTM D = 64 8 warps spills 24 B
  (predicted 272: infeasible); GRU D = 64 179 (predicted 208); LSTM D = 128 spills at 8 and 16
  warps (predicted infeasible). fp32 is predicted conservatively (LSTM D = 64: 256 vs 188).

Registers per thread follow ``autotune.space``' model (``REG_PER_ELEMENT · live / threads +
REG_OVERHEAD``). A config is feasible when every kernel fits the GPU's 255 registers per thread,
its register file and its shared memory per block; **the fused strategy is chosen when some
config is feasible, else the alternating one** (per-step cuBLAS matmul + generated pointwise
kernel, whose step kernels need ``(S + G + 6)·BR·PK`` live elements and no shared memory).
Shape symbols are those of ``autotune.space`` with ``K = V = D`` (the hidden size).
"""
from __future__ import annotations

import functools

import sympy as sp

from ...autotune import space as spaces
from ...autotune.space import KernelModel, Shape, Space, W, cdiv_expr

B, T, H, K, PK, db = spaces.B, spaces.T, spaces.H, spaces.K, spaces.PK, spaces.db
BR = sp.Symbol("BR", integer=True, positive=True)
G, S = sp.symbols("G S", integer=True, positive=True)     # gates (recurrent matmuls), states

NUM_WARPS = (4, 8, 16)
ROWS = (16, 32, 64)                     # fused: tl.dot needs >= 16 rows
STEP_ROWS = (1, 2, 4, 8, 16, 32, 64)    # alternating: pointwise step kernels, no dot


def _fused_kernels():
    fwd = KernelModel(
        "rnn_fwd_fused", grid=cdiv_expr(B, BR) * H,
        smem=(G * PK * PK + BR * PK) * db,
        live_fp32=G * PK * PK * db / 4 + (S + G + 4) * BR * PK,
        bytes_moved=B * T * H * K * (G * db + db + 4 * S + 4 * G) + G * H * K * K * db,   # saves a_g
        tc_flops=2 * G * B * T * H * K * K,
        fp32_flops=20 * G * B * T * H * K,
        serial_steps=T, count=1)
    bwd = KernelModel(
        "rnn_bwd_fused", grid=cdiv_expr(B, BR) * H,
        smem=(G * PK * PK + 4 * BR * PK) * db,
        live_fp32=G * PK * PK * db / 8 + (2 * S + G + 6) * BR * PK,
        bytes_moved=B * T * H * K * (G * (db + 8) + db + 4 * S) + G * H * K * K * db,
        tc_flops=2 * G * B * T * H * K * K,
        fp32_flops=60 * G * B * T * H * K,
        serial_steps=T, count=1)
    return fwd, bwd


def _step_kernels():
    fwd = KernelModel(
        "rnn_fwd_step", grid=cdiv_expr(B, BR) * H * T,
        smem=sp.Integer(0),
        live_fp32=(S + G + 6) * BR * PK,
        bytes_moved=B * T * H * K * (G * (db + 8) + db + 8 * S),
        tc_flops=2 * G * B * T * H * K * K,       # the per-step torch matmuls
        fp32_flops=20 * G * B * T * H * K,
        serial_steps=2 * T, count=1)
    bwd = KernelModel(
        "rnn_bwd_step", grid=cdiv_expr(B, BR) * H * T,
        smem=sp.Integer(0),
        live_fp32=(2 * S + 2 * G + 8) * BR * PK,
        bytes_moved=B * T * H * K * (G * (db + 12) + db + 12 * S),
        tc_flops=4 * G * B * T * H * K * K,
        fp32_flops=60 * G * B * T * H * K,
        serial_steps=3 * T, count=1)
    return fwd, bwd


def _extra(shape, gpu):
    return [spaces.Constraint("br_le_padded_b", BR, "le", sp.Integer(max(16, spaces.pow2(shape.B))),
                              f"BR <= padded B = {max(16, spaces.pow2(shape.B))}")]


def _config(values, shape):
    return {"BR": int(values["BR"]), "num_warps": int(values["num_warps"]), "num_stages": 1}


@functools.lru_cache(maxsize=None)
def rnn_space(strategy: str, gates: int, states: int, backward: bool = True) -> Space:
    """The tuning space of ``strategy`` ("fused" | "alternating") for a cell with ``gates``
    recurrent matmuls and ``states`` states (G and S substituted into every formula); with
    ``backward=False`` only the forward kernel constrains (inference: no BPTT kernel runs)."""
    kernels = _fused_kernels() if strategy == "fused" else _step_kernels()
    if not backward:
        kernels = kernels[:1]
    sub = {G: gates, S: states}
    kernels = tuple(KernelModel(k.name, *(sp.sympify(getattr(k, f)).subs(sub) for f in (
        "grid", "smem", "live_fp32", "bytes_moved", "tc_flops", "fp32_flops", "serial_steps")),
        count=k.count) for k in kernels)
    return Space(name=f"rnn_{strategy}" + ("" if backward else "_fwd"), strategy=strategy,
                 params={BR: ROWS if strategy == "fused" else STEP_ROWS, W: NUM_WARPS, spaces.S: (1,)},
                 kernels=kernels,
                 dot_dims=(BR, PK) if strategy == "fused" else (), arange_dims=(BR, PK),
                 extra=_extra, to_config=_config)


def shape_of(B_: int, T_: int, H_: int, D: int, dtype: str) -> Shape:
    return Shape(B_, T_, H_, D, D, dtype)


def feasible(strategy, gates, states, shape: Shape, gpu, backward=True) -> list:
    """Every feasible config (pure Python enumeration: the domains are tiny; no solver needed)."""
    return spaces.feasible_bruteforce(rnn_space(strategy, gates, states, backward), shape, gpu)


def predicted(strategy, gates, states, shape: Shape, config: dict, backward=True) -> dict:
    """Predicted shared memory, registers per thread and threads of one config (max over kernels)."""
    return spaces.resources(rnn_space(strategy, gates, states, backward), shape, {
        "BR": config["BR"], "num_warps": config["num_warps"], "num_stages": 1})


def _cost(space, shape, gpu, cfg):
    """Coarse time model: waves of programs × (serial steps × per-step work of one program)."""
    env = dict(shape.subs())
    env.update({BR: cfg["BR"], W: cfg["num_warps"], spaces.S: 1})
    total = 0.0
    for k in space.kernels:
        grid = float(sp.sympify(k.grid).subs(env))
        per_sm = max(1, min(gpu.max_blocks_sm, gpu.max_threads_sm // (32 * cfg["num_warps"])))
        waves = -(-grid // (gpu.sms * per_sm))
        work = float(sp.sympify(k.tc_flops).subs(env)) / max(grid, 1.0)
        total += waves * (float(sp.sympify(k.serial_steps).subs(env)) * 1e-6 + work / (gpu.bf16_flops / gpu.sms))
    return total


def best_config(strategy, gates, states, shape: Shape, gpu, backward=True):
    """The feasible config with the lowest modelled time, or None when none is feasible."""
    cands = feasible(strategy, gates, states, shape, gpu, backward)
    if not cands:
        return None
    space = rnn_space(strategy, gates, states, backward)
    return min(cands, key=lambda c: (_cost(space, shape, gpu, c), -c["BR"], c["num_warps"]))


def fits_on_chip(gates, states, D, dtype, gpu, B_=16, backward=True) -> bool:
    """Whether the fused kernels can keep R resident for hidden size D on ``gpu``."""
    return bool(feasible("fused", gates, states, shape_of(B_, 1024, 1, D, dtype), gpu, backward))


def cuda_fits_on_chip(gates, D, dtype, gpu, backward=True) -> bool:
    """Whether the generated CUDA C kernels (``strategy="fused_cuda"``: R in **shared memory**,
    one block of ``ceil32(D)`` threads per (sequence, head)) fit ``gpu``: the forward's
    ``G·D²·sizeof(R) + 4·D + 16`` and, training, the backward's ``G·D²·sizeof(R) + 8·G·D + 16``
    bytes (``cuda.training_shared_bytes``) within the opt-in shared memory per block, and
    ``ceil32(D) ≤ 1024`` threads. This is where the CUDA template takes over from the Triton fused
    one, whose R must fit in registers (``fits_on_chip``): e.g. LSTM D = 128 bf16 on H100 needs
    128 KiB + 4 KiB of the 227 KiB a block may use."""
    from .cuda import training_shared_bytes
    r_bytes = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    fwd, bwd = training_shared_bytes(int(gates), int(D), r_bytes)
    need = max(fwd, bwd) if backward else gates * D * D * r_bytes + 4 * D + 16
    return (int(D) + 31) // 32 * 32 <= 1024 and need <= gpu.smem_block


def choose_strategy(gates, D, dtype, device, states=2, backward=True) -> str:
    """"fused" when R fits on chip of the current GPU (the space's formulas; only the forward
    kernel's when no gradient is needed), else "alternating"."""
    from ...autotune import hardware
    gpu = hardware.detect() if device is not None and device.type == "cuda" else None
    if gpu is None:
        gpu = hardware.get("H100-SXM")
    name = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}[str(dtype)]
    return "fused" if fits_on_chip(gates, states, D, name, gpu, backward=backward) else "alternating"


# ---- the tuning targets (mixir tune <an RNN mixer>) ----------------------------------------------
#: per serial step (one token of the recurrence) of a program, for ``cost.rank`` (the same 1 µs
#: per step as ``_cost``)
for _s in ("fused", "alternating"):
    from ...autotune import cost as _cost_mod
    _cost_mod.STEP_LATENCY_S.setdefault(_s, 1.0e-6)


def hidden_size(mixer, plan, request) -> int:
    """The mixer's hidden size D for the request's head sizes (the library maps them to its feature
    dims: ``request.feature_sizes``)."""
    sizes = request.feature_sizes(mixer, set(getattr(plan, "key_dims", ())))
    return int(sizes.get(plan.dim, request.V))


def record_config(mixer, strategy: str, config: dict, request, *, D: int = 32,
                  backward: bool = True) -> list:
    """The generated RNN kernels' ``LaunchRecord``s that running ``mixer`` with ``strategy`` and
    ``config`` makes on tiny CPU inputs of hidden size ``D`` (the request's example inputs and
    dtype; forward and backward), with launch parameters as on a GPU (``record_launches``: 16-bit
    dots as on tensor cores)."""
    import numpy as np
    import torch

    from ..common.candidates import record, state_tensors, torch_dtype
    from ..family import compile_mixer
    arrays, h0 = request.example_inputs(mixer, B=2, T=3, H=1, K=D, V=D)
    dt = torch_dtype(request.dtype_name)
    compiled = compile_mixer(mixer, strategy=strategy, config=dict(config))

    def run():
        xs = [torch.tensor(np.asarray(a), dtype=dt).requires_grad_(backward) for a in arrays]
        o, _ = compiled(*xs, initial_state=state_tensors(h0), output_final_state=True,
                        strategy=strategy)
        if backward:
            o.float().sum().backward()
    return record(run, keep=lambda r: r.kernel.name.startswith("mixir.rnn."))


def compile_configs(mixer, strategy: str, configs: list, arch: str, request, *, backward=True,
                    workers=None, timeout_s: float = 300, progress=None) -> list:
    """The generated RNN kernels of ``strategy`` for every config, built for ``arch``: one
    ``CompiledConfig`` per config, recorded at the real hidden size (the resident R's tile
    [PK, PK] is what decides registers and shared memory)."""
    from ..common.candidates import compile_recorded
    from .analysis import analyse_rnn
    D = hidden_size(mixer, analyse_rnn(mixer), request)
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, strategy, cfg, request, D=D, backward=backward),
        arch, workers=workers, timeout_s=timeout_s, progress=progress)


def targets(mixer, plan, request) -> list:
    """Per strategy ("fused", "alternating") the space of the mixer's cell (G gates, S states,
    hidden size D from the request's head sizes) at the user-level B, T, H (database key K = V =
    D); timed against the alternating strategy. A strategy with no feasible config (fused when R
    does not fit on chip: the runtime runs alternating then) is skipped unless named in
    ``request.strategies``; ``TuningError`` when none is left."""
    from ...autotune import hardware
    from ...autotune.pipeline import TuningTarget
    from ...errors import TuningError
    from ..common.candidates import timer
    gpu = hardware.get(request.gpu)
    dtype = request.dtype_name
    D = hidden_size(mixer, plan, request)
    G_, S_ = len(plan.gates), len(plan.states)
    avail = tuple(plan.strategies)
    named = request.strategies
    if named is not None and not set(named) & set(avail):
        raise TuningError(f"{mixer.name}: no RNN strategy among {list(named)} (strategies: "
                          f"{', '.join(avail)})")
    shp = shape_of(request.B, request.T, request.H, D, dtype)
    out = []
    for strategy in [s for s in (named or avail) if s in avail]:
        if not feasible(strategy, G_, S_, shp, gpu):
            msg = (f"{mixer.name}: no feasible {strategy} config for D={D} in {dtype} on {gpu.name} "
                   f"(the recurrent weights do not fit on chip)")
            if named is not None:
                raise TuningError(msg)
            request.say(f"[{strategy}] skipped: {msg}")
            continue
        out.append(TuningTarget(strategy, rnn_space(strategy, G_, S_), shp,
                                compile=_compiler(mixer, strategy, request),
                                time=timer(mixer, request, strategy=strategy, reference="alternating",
                                           K=D, V=D)))
    if not out:
        raise TuningError(f"{mixer.name}: no RNN strategy has a feasible config for D={D} on {gpu.name}")
    return out


def _compiler(mixer, strategy, request):
    return lambda configs, arch, **kw: compile_configs(mixer, strategy, configs, arch, request, **kw)


__all__ = ["rnn_space", "feasible", "predicted", "best_config", "fits_on_chip", "choose_strategy",
           "shape_of", "BR", "G", "S", "hidden_size", "record_config", "compile_configs", "targets"]
