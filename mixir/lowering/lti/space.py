"""The tuning spaces of the LTI kernels (``mixir.lowering.lti.kernels``): the Vandermonde pair
(``lti_vandermonde_fwd`` + its adjoint ``lti_vandermonde_red``) and the Cauchy pair
(``lti_cauchy_fwd`` + ``lti_cauchy_bwd``). Parameters: ``BN`` (block over the N modes), ``BL``
(block over the length L, or the M points of the Cauchy kernel), ``num_warps``, ``num_stages``;
one config drives both kernels of a pair, so the resource constraints hold for the maximum over
them and the cost is the sum of one training step (the forward kernel, then its adjoint).

Shape symbols (those of ``autotune/space.py``, re-read for these kernels): ``H`` = rows R (heads, or
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


def default_config(kind: str, compute: str = "fp32", *, R: int = 8, Q: int = 1, N: int = 64,
                   L: int = 4096, gpu=None) -> dict:
    """The cost model's best feasible config for ``gpu`` (default ``REFERENCE_GPU``) at
    ``lookup_shape`` (R and L bucketed to powers of two, N to a power of two ≥ 8);
    ``TuningError`` naming the binding constraint when nothing is feasible."""
    from ...autotune.select import model_best
    gpu = REFERENCE_GPU if gpu is None else hardware.get(gpu)
    shp = lookup_shape(R, Q, N, L, compute)
    best = model_best(space(kind), shp, gpu)
    if best is None:
        from ...autotune.solver import explain_infeasible
        from ...errors import TuningError
        raise TuningError(explain_infeasible(space(kind), shp, gpu, space(kind).constraints(shp, gpu)))
    return best


def lookup_shape(R: int, Q: int, N: int, L: int, compute: str = "fp32") -> LTIShape:
    """The launch shape the model choice sees: R and L bucketed to powers of two, N to a power of
    two >= 8 (``default_config``'s buckets)."""
    from ...autotune.db import bucket
    return shape(bucket(R), int(Q), max(8, bucket(N)), bucket(L), compute)


def tuned(kind: str, compute: str, R: int, Q: int, N: int, L: int, device) -> dict | None:
    """The kernel-level tiles on CUDA ``device`` (``autotune.select.tuned_config``): the tuning
    database's entry (fingerprint and strategy ``lti_<kind>``, K = N, V = Q, T = L, B·H = R rows;
    fp32 compute only: the database has no fp64 key) → the space's cost-model best at
    ``lookup_shape`` → None. Never raises."""
    from ...autotune.db import Key
    from ...autotune.select import tuned_config
    name = f"lti_{kind}"
    key = Key(name, name, "fp32", 1, int(L), int(R), int(N), int(Q)) if compute == "fp32" else None
    return tuned_config(space(kind), key, lookup_shape(R, Q, N, L, compute), device)


@functools.lru_cache(maxsize=1024)
def gpu_config(device_index: int, kind: str, compute: str, R: int, Q: int, N: int, L: int) -> dict:
    """The tiles of a GPU launch: on CUDA device ``device_index`` the tuning database's entry →
    the cost model's best for that GPU (``tuned``); ``device_index`` -1 (a recording for the AOT
    builder: no GPU) → the cost model's best for ``REFERENCE_GPU``."""
    from ...autotune.db import bucket
    cfg = None
    if device_index >= 0:
        cfg = tuned(kind, compute, bucket(R), int(Q), int(N), bucket(L), int(device_index))
    if not cfg:
        cfg = default_config(kind, compute, R=R, Q=Q, N=N, L=L)
    return {k: int(cfg[k]) for k in ("BN", "BL", "num_warps", "num_stages")}


# ---- the tuning targets (mixir tune <an LTI mixer>) ----------------------------------------------
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


def state_size(mixer, plan, request) -> int:
    """The mixer's state size N for the request's head sizes (the library maps them to its feature
    dims: ``request.feature_sizes``)."""
    sizes = request.feature_sizes(mixer, set(getattr(plan, "key_dims", ())))
    return int(sizes.get(plan.dim, request.K))


def kernel_signature(mixer, plan, request) -> tuple:
    """What decides an LTI mixer's AOT results: the kernel pair and the launch shape's (Q, N), and
    the dtype. Two LTI mixers with equal signatures launch the same kernels with the same tiles for
    every config (``mixir tune --all`` tunes them once)."""
    shp = launch_shape(plan, 1, 4096, 1, state_size(mixer, plan, request))
    return ("lti", kind_of(plan), shp.V, shp.K, request.dtype_name)


def _is_template(rec) -> bool:
    return f".{KERNEL_MODULE}." in rec.kernel.name or rec.kernel.name.split(".")[-1] in (
        "lti_vandermonde_fwd", "lti_vandermonde_red", "lti_cauchy_fwd", "lti_cauchy_bwd")


def record_config(mixer, config: dict, request, *, K: int = 8, V: int = 8, T: int = 12,
                  backward: bool = True) -> list:
    """The LTI kernels' ``LaunchRecord``s that running ``mixer`` (strategy "conv") with ``config``
    makes on tiny fp32 CPU inputs (the request's example inputs at head sizes K, V; the kernels
    compute in fp32 for 16-bit inputs too), forward and backward, with launch parameters as on a
    GPU (``record_launches``)."""
    import numpy as np
    import torch

    from ..common.candidates import record
    from ..family import compile_mixer
    arrays, _ = request.example_inputs(mixer, B=1, T=T, H=1, K=K, V=V)
    compiled = compile_mixer(mixer, strategy="conv", config=dict(config))

    def run():
        xs = [torch.tensor(np.asarray(a), dtype=torch.float32).requires_grad_(backward)
              for a in arrays]
        o = compiled(*xs, strategy="conv")
        if backward:
            o.float().sum().backward()
    return record(run, keep=lambda r: _is_template(r) and "recurrent" not in r.kernel.name)


def compile_configs(mixer, strategy: str, configs: list, arch: str, request, *, backward=True,
                    workers=None, timeout_s: float = 300, progress=None) -> list:
    """The LTI kernel pair of every config built for ``arch`` (``strategy``: "lti_<kind>", unused:
    the mixer's plan decides the pair): one ``CompiledConfig`` per config. The recording uses tiny
    head sizes; the tiles are constexprs, so the kernels are those of the real shape."""
    from ..common.candidates import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, cfg, request, backward=backward), arch,
        workers=workers, timeout_s=timeout_s, progress=progress)


def targets(mixer, plan, request) -> list:
    """The kernel pair the conv strategy runs (``kind_of``) at the launch shape of the request's
    B, T, H with the mixer's state size N (``launch_shape``): one ``TuningTarget`` with database
    strategy "lti_<kind>" (K = N, V = Q); timed as strategy "conv" against "recurrent".
    ``request.strategies``: None, or naming the kind ("vandermonde" / "lti_vandermonde") or
    "conv"; anything else is a ``TuningError``."""
    from ...autotune.pipeline import TuningTarget
    from ...errors import TuningError
    from ..common.candidates import timer
    kind = kind_of(plan)
    name = f"lti_{kind}"
    if request.strategies is not None and not ({kind, name, "conv"} & set(request.strategies)):
        raise TuningError(f"{mixer.name}: its conv strategy runs the {kind} kernels ({name}); "
                          f"nothing to tune for strategies {list(request.strategies)}")
    shp = launch_shape(plan, request.B, request.T, request.H, state_size(mixer, plan, request))
    return [TuningTarget(name, space(kind), shp,
                         compile=lambda configs, arch, **kw: compile_configs(mixer, name, configs, arch,
                                                                             request, **kw),
                         time=timer(mixer, request, strategy="conv", reference="recurrent"))]


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


__all__ = ["space", "shape", "feasible", "predicted", "default_config", "lookup_shape", "tuned",
           "gpu_config", "to_config", "BN", "BL", "KINDS", "REFERENCE_GPU", "LTIShape", "kind_of",
           "launch_shape", "state_size", "kernel_signature", "record_config", "compile_configs",
           "targets"]
