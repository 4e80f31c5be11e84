"""Roofline cost model of a config: ranks the feasible configs (no solver, no GPU).

Per kernel launch (formulas from ``autotune/space.py``):
  occupancy   blocks/SM = min(max blocks, regs/SM // (regs x threads), smem/SM // smem,
              max threads/SM // threads);  slots = SMs x blocks/SM;  waves = ceil(grid / slots)
  efficiency  grid / (waves x slots) when the grid fills a wave (the tail wave is penalised),
              min(grid, SMs) / SMs otherwise; times min(1, resident warps per SM x min(stages, 2)
              / WARPS_SATURATE) (a pipelined warp has twice the loads in flight)
  roofline    compute = tensor-core FLOPs / tensor peak + fp32 FLOPs / fp32 peak,
              memory = bytes / HBM bandwidth;
              max(compute, memory) + (1 - hidden) x min(compute, memory)
  pipelining  hidden = the share of the loads that overlaps the compute: 1 with num_stages >= 2
              (the next tiles' cp.async / TMA loads are in flight while the current ones are
              multiplied), 1 - 1 / blocks per SM with num_stages = 1 (only the other resident
              blocks' compute hides a block's loads: one block per SM runs them back to back)
  time        max(roofline / efficiency, waves x serial steps x STEP_LATENCY_S / min(stages, 2))
              + waves x TILE_OVERHEAD_S + LAUNCH_OVERHEAD_S
              (a serial step - one chunk of a state recurrence - waits for its loads unless they
              were prefetched during the previous step: pipelining halves its latency)
The step is the launches of one training step (each kernel's ``count``: the first launch is the
forward pass, the rest the backward). 16-bit inputs: forward dots at the bf16/fp16 tensor peak;
backward dots with fp32 operands (``bwd_dot_fp32``) at the tf32 peak divided by the space's
``fp32_dot_passes`` (3 for tf32x3, 1 for tf32).
fp32 inputs: "ieee" fp32 dots on the CUDA cores (fp32 peak).
"""
from __future__ import annotations

import dataclasses
import math

from . import space as _sp

LAUNCH_OVERHEAD_S = 4e-6
TILE_OVERHEAD_S = 1.5e-6
STEP_LATENCY_S = {"chunked": 1.0e-6, "recurrent": 0.25e-6, "fused": 1.0e-6}
WARPS_SATURATE = 16
#: per-strategy override of WARPS_SATURATE (attention: tensor-core tiles with enough
#: instruction-level parallelism per warp, see attention_space.py)
WARPS_SATURATE_BY_STRATEGY: dict = {}


@dataclasses.dataclass
class KernelCost:
    name: str
    time_s: float
    grid: int
    waves: int
    blocks_per_sm: int
    efficiency: float
    bound: str          # "compute" | "memory" | "latency"


@dataclasses.dataclass
class Cost:
    time_s: float
    kernels: list

    def summary(self) -> str:
        return ", ".join(f"{k.name.rsplit('_', 1)[-1]} {k.time_s * 1e6:.0f}us/{k.bound}" for k in self.kernels)


def _blocks_per_sm(gpu, regs, threads, smem):
    by_regs = gpu.regs_per_sm // max(1, regs * threads)
    by_smem = gpu.smem_sm // max(1, smem)
    by_threads = gpu.max_threads_sm // threads
    return max(0, min(gpu.max_blocks_sm, by_regs, by_smem, by_threads))


_FNS: dict = {}


_QUANTITIES = ("grid", "regs", "smem", "tc_flops", "fp32_flops", "bytes_moved", "serial_steps")


def _fns(space):
    """Numeric functions of every kernel formula of ``space`` (compiled once), by (kernel name,
    quantity). (Not by ``id`` of the expression: ``KernelModel.regs`` builds a new one per access,
    and sympy's cache does not always hand back the same object.)"""
    key = (space.name, tuple(k.name for k in space.kernels), tuple(map(str, space.params)))
    f = _FNS.get(key)
    if f is None:
        f = _FNS[key] = {(k.name, q): _sp.compile_expr(getattr(k, q), space)
                         for k in space.kernels for q in _QUANTITIES}
    return f


def predict(space, shape: "_sp.Shape", gpu, values: dict) -> Cost:
    fns = _fns(space)
    subs = shape.subs()
    args = [subs[x] for x in _sp.SHAPE_SYMBOLS] + [values[str(p)] for p in space.params]
    ev = lambda k, q: float(fns[(k.name, q)](*args))  # noqa: E731
    threads = 32 * int(values["num_warps"])
    stages = int(values.get("num_stages", 1))
    kernels, total = [], 0.0
    for k in space.kernels:
        grid = max(1, int(math.ceil(ev(k, "grid") - 1e-9)))
        regs = min(gpu.regs_per_thread, int(ev(k, "regs")))
        smem = int(ev(k, "smem")) + _sp.SMEM_RESERVED
        bps = max(1, _blocks_per_sm(gpu, regs, threads, smem))
        slots = gpu.sms * bps
        waves = math.ceil(grid / slots)
        if grid >= slots:
            eff = grid / (waves * slots)
            resident = bps * int(values["num_warps"])
        else:
            eff = min(grid, gpu.sms) / gpu.sms
            resident = min(bps, math.ceil(grid / gpu.sms)) * int(values["num_warps"])
        # bytes in flight: resident warps times the tiles each has outstanding - num_stages of
        # them when the loads are pipelined (Little's law: fewer warps saturate HBM)
        eff *= min(1.0, resident * min(stages, 2)
                   / WARPS_SATURATE_BY_STRATEGY.get(space.strategy, WARPS_SATURATE))
        hidden = 1.0 if stages >= 2 else 1.0 - 1.0 / bps
        tc = ev(k, "tc_flops")
        fp = ev(k, "fp32_flops")
        mem = ev(k, "bytes_moved") / gpu.hbm_bw
        t_launch = 0.0
        for i in range(k.count):
            if shape.dtype == "fp32":
                peak = gpu.fp32_flops
            elif i == 0 or shape.ob == 2:
                peak = gpu.tensor_flops(shape.dtype)
            else:
                peak = gpu.tf32_flops / space.fp32_dot_passes
            comp = tc / peak + fp / gpu.fp32_flops
            roof = (max(comp, mem) + (1.0 - hidden) * min(comp, mem)) / max(eff, 1e-4)
            lat = waves * ev(k, "serial_steps") * STEP_LATENCY_S[space.strategy] / min(stages, 2)
            t = max(roof, lat) + waves * TILE_OVERHEAD_S + LAUNCH_OVERHEAD_S
            bound = "latency" if lat > roof else ("compute" if comp > mem else "memory")
            t_launch += t
        total += t_launch
        kernels.append(KernelCost(k.name, t_launch, grid, waves, bps, eff, bound))
    return Cost(total, kernels)


def rank(space, shape, gpu, configs: list) -> list:
    """[(config, Cost)] sorted by predicted time (ties: fewer warps, then the config tuple)."""
    scored = [(c, predict(space, shape, gpu, c)) for c in configs]
    scored.sort(key=lambda x: (x[1].time_s, x[0].get("num_warps", 0), tuple(x[0].values())))
    return scored


__all__ = ["Cost", "KernelCost", "predict", "rank"]
