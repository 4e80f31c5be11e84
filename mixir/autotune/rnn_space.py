"""Tuning spaces of the nonlinear RNN templates (``rnn_codegen``): fused vs alternating.

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

Registers per thread follow ``spaces``' model (``REG_PER_ELEMENT · live / threads +
REG_OVERHEAD``). A config is feasible when every kernel fits the GPU's 255 registers per thread,
its register file and its shared memory per block; **the fused strategy is chosen when some
config is feasible, else the alternating one** (per-step cuBLAS matmul + generated pointwise
kernel, whose step kernels need ``(S + G + 6)·BR·PK`` live elements and no shared memory).
Shape symbols are those of ``spaces`` with ``K = V = D`` (the hidden size).
"""
from __future__ import annotations

import functools

import sympy as sp

from . import spaces
from .spaces import KernelModel, Shape, Space, W, _cdiv, padded

B, T, H, K, PK, db = spaces.B, spaces.T, spaces.H, spaces.K, spaces.PK, spaces.db
BR = sp.Symbol("BR", integer=True, positive=True)
G, S = sp.symbols("G S", integer=True, positive=True)     # gates (recurrent matmuls), states

NUM_WARPS = (4, 8, 16)
ROWS = (16, 32, 64)                     # fused: tl.dot needs >= 16 rows
STEP_ROWS = (1, 2, 4, 8, 16, 32, 64)    # alternating: pointwise step kernels, no dot


def _fused_kernels():
    fwd = KernelModel(
        "rnn_fwd_fused", grid=_cdiv(B, BR) * H,
        smem=(G * PK * PK + BR * PK) * db,
        live_fp32=G * PK * PK * db / 4 + (S + G + 4) * BR * PK,
        bytes_moved=B * T * H * K * (G * db + db + 4 * S + 4 * G) + G * H * K * K * db,   # saves a_g
        tc_flops=2 * G * B * T * H * K * K,
        fp32_flops=20 * G * B * T * H * K,
        serial_steps=T, count=1)
    bwd = KernelModel(
        "rnn_bwd_fused", grid=_cdiv(B, BR) * H,
        smem=(G * PK * PK + 4 * BR * PK) * db,
        live_fp32=G * PK * PK * db / 8 + (2 * S + G + 6) * BR * PK,
        bytes_moved=B * T * H * K * (G * (db + 8) + db + 4 * S) + G * H * K * K * db,
        tc_flops=2 * G * B * T * H * K * K,
        fp32_flops=60 * G * B * T * H * K,
        serial_steps=T, count=1)
    return fwd, bwd


def _step_kernels():
    fwd = KernelModel(
        "rnn_fwd_step", grid=_cdiv(B, BR) * H * T,
        smem=sp.Integer(0),
        live_fp32=(S + G + 6) * BR * PK,
        bytes_moved=B * T * H * K * (G * (db + 8) + db + 8 * S),
        tc_flops=2 * G * B * T * H * K * K,       # the per-step torch matmuls
        fp32_flops=20 * G * B * T * H * K,
        serial_steps=2 * T, count=1)
    bwd = KernelModel(
        "rnn_bwd_step", grid=_cdiv(B, BR) * H * T,
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


def choose_strategy(gates, D, dtype, device, states=2, backward=True) -> str:
    """"fused" when R fits on chip of the current GPU (the space's formulas; only the forward
    kernel's when no gradient is needed), else "alternating"."""
    from . import hardware
    gpu = hardware.detect() if device is not None and device.type == "cuda" else None
    if gpu is None:
        gpu = hardware.get("H100-SXM")
    name = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}[str(dtype)]
    return "fused" if fits_on_chip(gates, states, D, name, gpu, backward=backward) else "alternating"


__all__ = ["rnn_space", "feasible", "predicted", "best_config", "fits_on_chip", "choose_strategy",
           "shape_of", "BR", "G", "S"]
