"""The tuning spaces of the LTI kernels (``mixir.lowering.lti.kernels``): the Vandermonde pair
(``lti_vandermonde_fwd`` + its adjoint ``lti_vandermonde_red``) and the Cauchy pair
(``lti_cauchy_fwd`` + ``lti_cauchy_bwd``). Parameters: ``BN`` (block over the N modes), ``BL``
(block over the length L, or the M points of the Cauchy kernel), ``num_warps``, ``num_stages``;
one config drives both kernels of a pair, so the resource constraints hold for the maximum over
them and the cost is the sum of one training step (the forward kernel, then its adjoint).

Shape symbols (those of ``spaces.py``, re-read for these kernels): ``H`` = rows R (heads, or
batch·heads with an initial state), ``V`` = Q (vectors per row: 1 for the Vandermonde kernels,
the (1 + r)·r + (1 + r) Woodbury numerators of a rank-r S4 for the Cauchy kernels), ``K`` = N
(modes of one conjugate half), ``T`` = L, ``B`` = 1; ``db`` = bytes per real number of the compute
dtype (4: fp32, for fp32/bf16/fp16 models; 8: fp64). ``WD = db / 4``: 32-bit registers per real.

Registers per thread: ``ceil(live / (32·num_warps)) + REG_OVERHEAD·WD`` with ``live`` the 32-bit
words of the CTA's register tiles: ``TILES_k`` live ``BN × BL`` temporaries per kernel (the
magnitudes, angles, cos/sin of the Vandermonde tiles; the differences, denominator, reciprocal
and terms of the Cauchy tiles), the accumulators of the re/im pairs (1 × BL for the Vandermonde
product, 2 × BL for the Cauchy forward, 4 × BN for both adjoints: S, P or dv, dλ as re/im pairs)
and the per-mode vectors loaded per step, all times WD. The constants are fitted as an upper bound
to ptxas (sm_80 and sm_90, fp32 and fp64; ``tests/test_lti_space.py`` confirms the default
configs build with no spills). Shared memory: only the cross-warp reductions (``tl.sum`` over
the tile) use it: ``num_warps·BL·db`` when reducing over N (forward kernels: one BL row per warp
along N), ``2(BN + BL)·db`` when reducing over L (adjoints), upper bounds of the measured scratch.
Three fp32 Vandermonde tiles that ptxas spills at low register counts are excluded by measured
``forbid`` constraints (``VANDERMONDE_FP32_SPILLS``).

FLOPs: per tile element ``F_VANDERMONDE`` (exp, cos, sin through libdevice, ~8 FLOPs each, and
the products), ``F_CAUCHY_FWD`` (one complex division per conjugate pair), ``F_CAUCHY_BWD`` (two
divisions, the squares, four complex products), plus ``F_STEP`` per element of each vector a loop
step reduces the tile to (the cross-thread ``tl.sum``, the step's loads: small tiles along the
reduced axis pay more); fp64 counts twice (A100 / H100 fp64 runs at half
the fp32 rate). HBM bytes: the per-mode vectors re-read by every L tile, the length-L vectors
read or written once per N tile. Nothing of size N × L is ever stored: memory O(R·Q·(N + L)).
"""
from __future__ import annotations

import dataclasses
import functools

import sympy as sp

from ...autotune import cost, hardware, space as spaces
from ...autotune.space import H, K, KernelModel, S, Shape, Space, T, V, W, db

BN, BL = sp.symbols("BN BL", integer=True, positive=True)
WD = db / 4                          # 32-bit registers per real number
NL = sp.ceiling(T / BL)              # L tiles
NN = sp.ceiling(K / BN)              # N tiles

KINDS = ("vandermonde", "cauchy")
#: fixed registers per thread per 32-bit word of the dtype (addresses, offsets, masks, loop
#: counters; the Vandermonde kernels' libdevice exp / cos / sin need many more), per kernel
REG_OVERHEAD = {"lti_vandermonde_fwd": 64, "lti_vandermonde_red": 64, "lti_cauchy_fwd": 16,
                "lti_cauchy_bwd": 16}
#: live BN x BL temporaries per kernel (fitted to ptxas: docstring)
TILES = {"vandermonde_fwd": 6, "vandermonde_red": 6, "cauchy_fwd": 9, "cauchy_bwd": 13}
#: FLOP-equivalents per tile element
F_VANDERMONDE, F_REDUCE, F_CAUCHY_FWD, F_CAUCHY_BWD = 30, 36, 20, 48
#: FLOP-equivalents per element of a reduced vector per loop step (the tl.sum of a BN x BL tile
#: across threads, the per-step loads and the loop): small tiles along the reduced axis pay more
F_STEP = 8
#: the GPU a recording (no GPU: the AOT builder) and the CPU-less fallback use: sm_80, the smaller
#: of the two AOT targets' register and shared-memory budgets
REFERENCE_GPU = hardware.get("A100-80GB")
PARAMS = {BN: (8, 16, 32, 64, 128), BL: (32, 64, 128, 256, 512, 1024), W: (1, 2, 4, 8),
          S: (1, 2)}
for _k in KINDS:      # per serial loop step (one BN x BL tile) of a program
    cost.STEP_LATENCY_S.setdefault(f"lti_{_k}", 0.2e-6)


@dataclasses.dataclass(frozen=True)
class LTIKernel(KernelModel):
    """A ``KernelModel`` whose ``live_fp32`` counts 32-bit registers of the CTA:
    regs = ceil(live / (32·num_warps)) + REG_OVERHEAD[name]·WD."""

    @functools.cached_property
    def regs(self):
        return sp.ceiling(self.live_fp32 / (32 * W)) + REG_OVERHEAD[self.name] * WD


@dataclasses.dataclass(frozen=True)
class LTIShape(Shape):
    """``spaces.Shape`` of an LTI launch (H = rows, V = Q, K = N, T = L, B = 1). ``dtype`` stays
    "fp32" (the cost model's peak: CUDA-core FLOPs); ``compute`` is the kernels' real dtype."""
    compute: str = "fp32"

    @property
    def db(self):
        return 8 if self.compute == "fp64" else 4

    @property
    def ob(self):
        return self.db


def shape(R: int, Q: int, N: int, L: int, compute: str = "fp32") -> LTIShape:
    if compute not in ("fp32", "fp64"):
        raise ValueError(f"compute dtype must be fp32 or fp64, got {compute!r}")
    return LTIShape(1, int(L), int(R), int(N), int(Q), "fp32", True, compute)


def _vandermonde_kernels():
    fwd = LTIKernel(
        "lti_vandermonde_fwd",
        grid=H * NL,
        smem=W * BL * db,
        live_fp32=WD * (TILES["vandermonde_fwd"] * BN * BL + BL + 4 * BN),
        bytes_moved=H * (NL * 4 * K * db + T * db),
        tc_flops=sp.Integer(0),
        fp32_flops=(F_VANDERMONDE * K * T + F_STEP * NN * T) * H * WD,
        serial_steps=NN)
    red = LTIKernel(
        "lti_vandermonde_red",
        grid=H * NN,
        smem=2 * (BN + BL) * db,
        live_fp32=WD * (TILES["vandermonde_red"] * BN * BL + 4 * BN + 2 * BL),
        bytes_moved=H * (NN * T * db + 6 * K * db),
        tc_flops=sp.Integer(0),
        fp32_flops=(F_REDUCE * K * T + 4 * F_STEP * NL * K) * H * WD,
        serial_steps=NL)
    return fwd, red


def _cauchy_kernels():
    fwd = LTIKernel(
        "lti_cauchy_fwd",
        grid=H * V * NL,
        smem=W * BL * db,
        live_fp32=WD * (TILES["cauchy_fwd"] * BN * BL + 5 * BL + 4 * BN),
        bytes_moved=H * V * (NL * 4 * K * db + 2 * T * db),
        tc_flops=sp.Integer(0),
        fp32_flops=(F_CAUCHY_FWD * K * T + 2 * F_STEP * NN * T) * H * V * WD,
        serial_steps=NN)
    bwd = LTIKernel(
        "lti_cauchy_bwd",
        grid=H * V * NN,
        smem=2 * (BN + BL) * db,
        live_fp32=WD * (TILES["cauchy_bwd"] * BN * BL + 4 * BL + 8 * BN),
        bytes_moved=H * V * (NN * 4 * T * db + 8 * K * db),
        tc_flops=sp.Integer(0),
        fp32_flops=(F_CAUCHY_BWD * K * T + 4 * F_STEP * NL * K) * H * V * WD,
        serial_steps=NL)
    return fwd, bwd


#: measured AOT exclusions (fp32 Vandermonde pair): ptxas spills 8-16 B at 80-128 registers in
#: these tiles (sm_80: fwd 32x64, 4 warps; sm_90: red 16x64 and 8x128, 4 warps) — far below the
#: register limit, so no register formula excludes them
VANDERMONDE_FP32_SPILLS = ((32, 64, 4), (16, 64, 4), (8, 128, 4))


def _extra_for(kind):
    def extra(shape_, gpu):
        pn, pl = max(8, spaces.pow2(shape_.K)), max(32, spaces.pow2(shape_.T))
        cs = [spaces.Constraint("bn_le_padded_n", BN, "le", sp.Integer(pn), f"BN <= padded N = {pn}"),
              spaces.Constraint("bl_le_padded_l", BL, "le", sp.Integer(pl), f"BL <= padded L = {pl}")]
        if kind == "vandermonde" and getattr(shape_, "compute", "fp32") == "fp32":
            for bn, bl, w in VANDERMONDE_FP32_SPILLS:
                cs.append(spaces.Constraint(
                    f"aot_spill_{bn}x{bl}x{w}", sp.Integer(0), "forbid", sp.Integer(0),
                    f"BN={bn}, BL={bl}, num_warps={w} spills in fp32 (measured AOT)",
                    terms=((BN, "==", bn), (BL, "==", bl), (W, "==", w))))
        return cs
    return extra


def to_config(values: dict, shape_=None) -> dict:
    return {k: int(values[k]) for k in ("BN", "BL", "num_warps", "num_stages")}


@functools.lru_cache(maxsize=None)
def space(kind: str) -> Space:
    """The tuning space of the ``kind`` ("vandermonde" | "cauchy") kernel pair."""
    if kind not in KINDS:
        raise ValueError(f"LTI kernel kind must be one of {KINDS}, got {kind!r}")
    kernels = _vandermonde_kernels() if kind == "vandermonde" else _cauchy_kernels()
    return Space(name=f"lti_{kind}", strategy=f"lti_{kind}", params=dict(PARAMS), kernels=kernels,
                 dot_dims=(), arange_dims=(BN, BL), extra=_extra_for(kind),
                 to_config=to_config)


def feasible(kind: str, shape_: LTIShape, gpu) -> list:
    """Every feasible config (pure Python enumeration over the 240 points of the space; the
    CP-SAT enumeration of ``solver`` gives the same set)."""
    return spaces.feasible_bruteforce(space(kind), shape_, gpu)


def predicted(kind: str, shape_: LTIShape, config: dict) -> dict:
    """Predicted shared memory (bytes), registers per thread and threads of one config."""
    return spaces.resources(space(kind), shape_, config)


@functools.lru_cache(maxsize=1024)
def _best(gpu_name: str, kind: str, compute: str, R: int, Q: int, N: int, L: int) -> tuple:
    gpu = hardware.get(gpu_name)
    shp = shape(R, Q, N, L, compute)
    feas = feasible(kind, shp, gpu)
    if not feas:
        from ...autotune.solver import explain_infeasible
        from ...errors import TuningError
        raise TuningError(explain_infeasible(space(kind), shp, gpu, space(kind).constraints(shp, gpu)))
    best = cost.rank(space(kind), shp, gpu, feas)[0][0]
    return tuple(sorted(to_config(best).items()))


def default_config(kind: str, compute: str = "fp32", *, R: int = 8, Q: int = 1, N: int = 64,
                   L: int = 4096, gpu=None) -> dict:
    """The cost model's best feasible config for ``gpu`` (default ``REFERENCE_GPU``); R and L are
    bucketed to powers of two, N to a power of two ≥ 8."""
    from ...autotune.db import bucket
    gpu = REFERENCE_GPU if gpu is None else hardware.get(gpu)
    return dict(_best(gpu.name, kind, compute, bucket(R), int(Q), max(8, bucket(N)), bucket(L)))


def model_best(gpu, kind, compute, R, Q, N, L) -> dict | None:
    try:
        return default_config(kind, compute, R=R, Q=Q, N=N, L=L, gpu=gpu)
    except Exception:
        return None


@functools.lru_cache(maxsize=1024)
def gpu_config(device_index: int, kind: str, compute: str, R: int, Q: int, N: int, L: int) -> dict:
    """The tiles of a GPU launch: on CUDA device ``device_index`` the tuning database's entry
    (``select.tuned_lti_config``) → the cost model's best for that GPU; ``device_index`` -1 (a
    recording for the AOT builder: no GPU) → the cost model's best for ``REFERENCE_GPU``."""
    from ...autotune import select
    from ...autotune.db import bucket
    cfg = None
    if device_index >= 0:
        cfg = select.tuned_lti_config(kind, compute, bucket(R), int(Q), int(N), bucket(L),
                                      device_index)
    if not cfg:
        cfg = default_config(kind, compute, R=R, Q=Q, N=N, L=L)
    return {k: int(cfg[k]) for k in ("BN", "BL", "num_warps", "num_stages")}


# ---- the pipeline (mixir tune <an LTI mixer>) ---------------------------------------------------
#: the LTI kernels' module: its launches are the ones a tuning run compiles ahead of time
KERNEL_MODULE = "lti.kernels"


def kind_of(plan) -> str:
    """The kernel pair an LTI plan's conv strategy runs: "vandermonde" (diagonal, rank 0) or
    "cauchy" (diagonal plus low rank)."""
    return "cauchy" if plan.lowrank else "vandermonde"


def launch_shape(plan, B_: int, T_: int, H_: int, N_: int, compute: str = "fp32") -> LTIShape:
    """The kernel-level shape of the main launch of a training call of user-level shape B, T, H
    with N modes (no initial state): the kernel ``k`` of length T − 1 over the H heads. Vandermonde:
    R = H, Q = 1, L = T − 1; Cauchy (rank r): R = H, Q = (1 + r)·r Woodbury numerators, L = the
    (T − 1)//2 + 1 points of the real FFT. B does not enter (the kernel is per head)."""
    M = max(1, int(T_) - 1)
    if kind_of(plan) == "vandermonde":
        return shape(int(H_), 1, int(N_), M, compute)
    r = len(plan.lowrank)
    return shape(int(H_), (1 + r) * r, int(N_), M // 2 + 1, compute)


def state_size(mixer, K_: int, V_: int) -> tuple:
    """(plan, N): the mixer's LTI plan and its state size for user-level head sizes K, V (the
    library maps them to its feature dims, as ``pipeline.form_sizes`` does)."""
    from ..family import analyse
    from ...autotune.pipeline import feature_sizes
    plan = analyse(mixer)
    sizes = feature_sizes(mixer, set(getattr(plan, "key_dims", ())), K_, V_)
    return plan, int(sizes.get(plan.dim, K_))


def kernel_signature(mixer, K_: int = 128, V_: int = 128) -> tuple:
    """What decides an LTI mixer's AOT results: the kernel pair and the launch shape's (Q, N).
    Two LTI mixers with equal signatures launch the same kernels with the same tiles for every
    config (``pipeline.group_by_kernels`` tunes them once)."""
    plan, N_ = state_size(mixer, K_, V_)
    shp = launch_shape(plan, 1, 4096, 1, N_)
    return ("lti", kind_of(plan), shp.V, shp.K)


def _is_template(rec) -> bool:
    return f".{KERNEL_MODULE}." in rec.kernel.name or rec.kernel.name.split(".")[-1] in (
        "lti_vandermonde_fwd", "lti_vandermonde_red", "lti_cauchy_fwd", "lti_cauchy_bwd")


def record_config(mixer, config: dict, *, K: int = 8, V: int = 8, T: int = 12,
                  backward: bool = True) -> list:
    """The LTI kernels' ``LaunchRecord``s that running ``mixer`` (strategy "conv") with ``config``
    makes on tiny fp32 CPU inputs (the kernels compute in fp32 for 16-bit inputs too), forward and
    backward, with launch parameters as on a GPU (``record_launches``)."""
    import numpy as np
    import torch

    import mixir
    from ..common.launch import record_launches
    from ...verify import example_inputs
    arrays, _ = example_inputs(mixer, B=1, T=T, H=1, K=K, V=V)
    compiled = mixir.compile(mixer, strategy="conv", config=dict(config))
    with record_launches() as records:
        xs = [torch.tensor(np.asarray(a), dtype=torch.float32).requires_grad_(backward)
              for a in arrays]
        o = compiled(*xs, strategy="conv")
        if backward:
            o.float().sum().backward()
    out = {}
    for r in records.values():
        if _is_template(r) and "recurrent" not in r.kernel.name:
            out.setdefault(r.key(), r)
    return list(out.values())


def compile_configs(mixer, strategy: str, configs: list, arch: str, *, dtype: str = "bf16",
                    K: int = 64, V: int = 64, backward: bool = True, workers=None,
                    timeout_s: float = 300, progress=None) -> list:
    """``aot_check.compile_configs`` for the LTI kernels (``strategy``: "lti_<kind>", unused: the
    mixer's plan decides the pair): one ``CompiledConfig`` per config. The recording uses tiny
    head sizes; the tiles are constexprs, so the kernels are those of the real shape."""
    from ...autotune.aot_check import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, cfg, backward=backward), arch, workers=workers,
        timeout_s=timeout_s, progress=progress)


def _time(mixer, r, B_, T_, H_, K_, V_, dtype, gpu, say):
    """Time the AOT survivors on the GPU (strategy "conv"; checked against "recurrent")."""
    import math

    from ...autotune.timing import time_configs
    survivors = [c for c in r.candidates if c.ok] if r.source == "aot" else list(r.candidates)
    if not survivors:
        return
    ts = time_configs(mixer, "conv", [c.config for c in survivors], B=B_, T=T_, H=H_, K=K_, V=V_,
                      dtype=dtype, l2_bytes=gpu.l2_bytes, progress=lambda m: say(f"[{r.strategy}] {m}"))
    for c, t in zip(survivors, ts):
        c.measured_s = t
    good = sorted((c for c in survivors if c.measured_s is not None and math.isfinite(c.measured_s)),
                  key=lambda c: c.measured_s)
    r.best, r.source = (good[0], "timed") if good else (None, r.source)


def tune(mixer, gpu="h100", *, B=8, T=4096, H=16, K=64, V=64, N=None, dtype="bf16",
         strategies=None, top_k=4, aot=True, timed=False, write=True, directory=None, workers=None,
         progress=None, feedback=None, max_rounds=None):
    """``pipeline.tune`` for an LTI mixer: the kernel pair its conv strategy runs (``kind_of``)
    is solved with CP-SAT for ``gpu`` at the launch shape of user-level (B, T, H, N)
    (``launch_shape``; N defaults to the mixer's state size for head sizes K, V) → ranked by the
    cost model → the top-k AOT-compiled for the GPU's arch (spilling configs dropped and fed back
    as constraints, re-solved) → (timed on CUDA) → the best written to the tuning database under
    (mixer fingerprint, dtype, strategy "lti_<kind>", K = N, V = Q, user-level T and B·H).
    ``strategies``: None, or a list naming the kind ("vandermonde" / "lti_vandermonde", ...)."""
    from ...errors import TuningError
    from ...autotune import db
    from ...autotune import pipeline as pl
    from ...autotune.feedback import Store
    if timed:
        pl.require_cuda()
    say = progress or (lambda msg: None)
    gpu = hardware.get(gpu)
    dtype = db.dtype_name(dtype)
    plan, n_modes = state_size(mixer, K, V)
    if N is not None:
        n_modes = int(N)
    kind = kind_of(plan)
    name = f"lti_{kind}"
    if strategies is not None and not ({kind, name, "conv"} & set(strategies)):
        raise TuningError(f"{mixer.name}: its conv strategy runs the {kind} kernels ({name}); "
                          f"nothing to tune for strategies {list(strategies)}")
    store = feedback if feedback is not None else Store()
    shp = launch_shape(plan, B, T, H, n_modes)
    r = pl._tune_strategy(mixer, name, gpu, B, T, H, K, V, n_modes, shp.V, dtype, top_k, aot,
                          workers, say, store, max_rounds or pl.MAX_ROUNDS, space_=space(kind),
                          shape=shp, compile_fn=compile_configs)
    if timed:
        _time(mixer, r, B, T, H, K, V, dtype, gpu, say)
    if r.best is not None and write:
        r.db_path = pl._write(mixer, gpu, dtype, B, T, H, r, directory)
    return pl.TuneResult(mixer.name, gpu, [r])


def formulas_markdown() -> str:
    out = []
    for kind in KINDS:
        for k in space(kind).kernels:
            out.append(f"**{k.name}**\n\n| quantity | formula |\n|---|---|")
            for name, e in spaces.formulas(space(kind))[k.name].items():
                if name != "launches per step":
                    out.append(f"| {name} | `{sp.sstr(sp.sympify(e))}` |")
            out.append("")
    return "\n".join(out)


__all__ = ["space", "shape", "feasible", "predicted", "default_config", "model_best", "gpu_config",
           "to_config", "BN", "BL", "KINDS", "REFERENCE_GPU", "LTIShape", "kind_of", "launch_shape",
           "state_size", "kernel_signature", "record_config", "compile_configs", "tune"]
