"""Tuning spaces of the Householder (delta-rule) templates: the chunked WY/UT kernels
(``lowering/householder/kernels/chunked.py``) and the fused token loop
(``lowering/householder/kernels/recurrent.py``), both launched by ``lowering/householder/core.py``.

Built from the machinery of ``autotune.space`` (``Space``, ``KernelModel``, ``Constraint``; the
CP-SAT solver, the brute-force filter, the cost model, the AOT feedback and the database work on
them unchanged); the family's tuning targets (``targets``) and AOT recording are at the end.

Shape symbols (``autotune.space``): B, T, H; K, V head sizes of the core (T is the core's sequence:
T·n_h for DeltaProduct); PK, PV padded (max(16, next_pow2)); db bytes per input element.

**Chunked**: ``space_chunked`` (its docstring: parameters, the dots, the fitted register and
shared-memory envelopes and the constraints the envelope cannot express).

**Recurrent** parameters: BK = PK, BV (forward V-tile), bwd_BV (backward V-tile) ∈ {16, …, 256}
≤ PV, checkpoint_every C ∈ {8, 16, 32, 64}, num_warps ∈ {1, 2, 4}, num_stages = 1. Register model
(per kernel): ``regs = ceil(live / (32·num_warps)) + base`` with ``live`` the 32-bit registers of
the CTA's tiles at the kernel's peak.
"""
from __future__ import annotations

import sympy as sp

from ...errors import TuningError
from ...autotune import hardware, space as spaces
from ...autotune.space import BK, BV, H, K, B, Constraint, S, Shape, Space, T, V, W, cdiv_expr, db, padded
from . import space_chunked as _sc

BVB, C = sp.symbols("bwd_BV checkpoint_every", integer=True, positive=True)

#: the chunked kernels hold K in one tile (``core.MAX_HEAD_K``)
MAX_HEAD_K = _sc.MAX_HEAD_K


DeltaKernel = _sc.DeltaKernel


# ---- the chunked (WY/UT) space: space_chunked ---------------------------------------------------
CHUNKED_KERNELS = _sc.kernels()
CHUNKED = _sc.make_space(CHUNKED_KERNELS)


# ---- the recurrent (fused token loop) space --------------------------------------------------
NVF = cdiv_expr(V, BV)               # forward V-tiles
NVB = cdiv_expr(V, BVB)              # backward V-tiles
NC = cdiv_expr(T, C)                 # checkpoints per sequence

_rec_fwd = DeltaKernel(
    "delta_recurrent_fwd",
    grid=B * H * NVF,
    # the state S [BK, BV] in registers; per token a = Sᵀk, the rank-1 update, o = Sᵀq; the
    # K-reductions cross warps through shared memory
    smem=4 * BK + 4 * BV * W,
    live_fp32=2 * BK * BV + 2 * BK,
    bytes_moved=B * H * (T * (2 * K * db * NVF + V * (db + 4) + 8) + 4 * NC * K * V),
    tc_flops=sp.Integer(0),
    fp32_flops=7 * B * H * T * K * V,
    serial_steps=T, count=2, base=40)

_rec_bwd = DeltaKernel(
    "delta_recurrent_bwd",
    grid=B * H * NVB,
    # dS, S_{t-1} (from the scratch slab) and the recomputed S [BK, bwd_BV], with the slab's
    # store and load offsets; per-V-tile partial sums of dq, dk, dbeta, dg
    smem=4 * (BVB + BK) * W,
    live_fp32=4 * BK * BVB,
    bytes_moved=B * H * (T * (2 * (2 * K * db + V * (db + 4)) * NVB + 8 * K * NVB + 4 * V + 8 * NVB)
                         + 4 * NC * K * V + 2 * T * K * V),
    tc_flops=sp.Integer(0),
    fp32_flops=19 * B * H * T * K * V,
    serial_steps=2 * T, count=1, base=104)

RECURRENT_KERNELS = (_rec_fwd, _rec_bwd)
#: num_warps of the recurrent kernels: 8 warps do not relieve registers (measured with bf16,
#: K = V = 128: forward BV = 32 needs 108 registers at 8 warps, 80 at 4) and the forward spills at
#: 128 registers with BV = 64 at 8 warps (ptxas on sm_80 / sm_90), so the space stops at 4
RECURRENT_WARPS = (1, 2, 4)


def _slab_cap(shape, gpu) -> int:
    """The largest checkpoint interval whose scratch slabs (B·H·C·K·V·4 bytes) fit in L2, never
    below the template's default 16 (``delta_recurrent.default_config``)."""
    per = max(1, shape.B * shape.H * padded(shape.K) * padded(shape.V) * 4)
    cap = 16
    while cap * 2 * per <= gpu.l2_bytes and cap < 64:
        cap *= 2
    return cap


def _recurrent_extra(shape, gpu):
    pv = padded(shape.V)
    cap = _slab_cap(shape, gpu)
    return [
        Constraint("bv_le_padded_v", BV, "le", sp.Integer(pv), f"BV <= padded V = {pv}"),
        Constraint("bwd_bv_le_padded_v", BVB, "le", sp.Integer(pv), f"bwd_BV <= padded V = {pv}"),
        Constraint("scratch_in_l2", C, "le", sp.Integer(cap),
                   f"checkpoint_every <= {cap}: above 16 only while the backward's scratch slabs "
                   f"(B·H·C·K·V·4 bytes) fit in {gpu.name}'s L2 ({gpu.l2_bytes >> 20} MiB)"),
    ]


def _recurrent_config(values: dict, shape=None) -> dict:
    return {k: int(values[k]) for k in ("BK", "BV", "bwd_BV", "checkpoint_every", "num_warps",
                                        "num_stages")}


RECURRENT = Space(
    name="delta_recurrent", strategy="recurrent",
    params={BK: lambda shape: (padded(shape.K),), BV: (16, 32, 64, 128, 256),
            BVB: (16, 32, 64, 128, 256), C: (8, 16, 32, 64), W: RECURRENT_WARPS, S: (1,)},
    kernels=RECURRENT_KERNELS, dot_dims=(), arange_dims=(BK, BV, BVB),
    extra=_recurrent_extra, to_config=_recurrent_config)

SPACES = {"chunked": CHUNKED, "recurrent": RECURRENT}


def space(strategy: str) -> Space:
    if strategy not in SPACES:
        raise TuningError(f"no delta tuning space for strategy {strategy!r}; known: {', '.join(SPACES)}")
    return SPACES[strategy]


def shape(B_: int, T_: int, H_: int, K_: int, V_: int, dtype: str) -> Shape:
    """The ``spaces.Shape`` of the delta core (``fp32_dots=False``: the cost model then takes the
    16-bit tensor peak for every launch, which ``TC_UNITS`` converts to tf32)."""
    from ...autotune.db import dtype_name
    return Shape(int(B_), int(T_), int(H_), int(K_), int(V_), dtype_name(dtype), fp32_dots=False)


# ---- feasibility and the model's best config ---------------------------------------------------
def _check_head(strategy, shape_):
    if strategy == "chunked" and padded(shape_.K) > MAX_HEAD_K:
        raise TuningError(f"no feasible config for delta_chunked with K={shape_.K}: the chunked delta "
                          f"kernels hold K in one tile (padded K = {padded(shape_.K)} > {MAX_HEAD_K}); "
                          f"use the recurrent strategy")


def feasible(strategy: str, shape_: Shape, gpu, constraints=None) -> list:
    """Every feasible config (CP-SAT when ortools is installed, else the brute-force filter);
    ``TuningError`` naming the binding constraint when there is none."""
    from ...autotune import solver
    sp_ = space(strategy)
    gpu = hardware.get(gpu)
    _check_head(strategy, shape_)
    if solver.available():
        return solver.enumerate_feasible(sp_, shape_, gpu, constraints=constraints)
    out = spaces.feasible_bruteforce(sp_, shape_, gpu, constraints=constraints)
    if not out:
        raise TuningError(f"no feasible config for {sp_.name} with K={shape_.K}, V={shape_.V} in "
                          f"{shape_.dtype} on {gpu.name} (install ortools for an explanation)")
    return out


def core_shape(B_: int, T_: int, H_: int, K_: int, V_: int, dtype, num_householder: int = 1) -> Shape:
    """The shape the runtime's model choice sees for a call of shape B, T, H: the core's sequence
    T·n_h and B·H rows, both in their database buckets (next powers of two), B = 1."""
    from ...autotune.db import bucket
    return shape(1, bucket(int(T_) * int(num_householder)), bucket(int(B_) * int(H_)), K_, V_, dtype)


def model_best(strategy: str, gpu, dtype, K_: int, V_: int, B_: int, T_: int, H_: int) -> dict | None:
    """The cost model's best feasible config for the core shape (T and B·H bucketed to powers of
    two: ``core_shape``), or None when nothing is feasible."""
    from ...autotune.select import model_best as best
    return best(space(strategy), core_shape(B_, T_, H_, K_, V_, dtype), gpu)


# ---- AOT: record the template launches of one config and compile them -----------------------
TEMPLATE_MODULES = ("householder.kernels.chunked", "householder.kernels.chunked_grads",
                    "householder.kernels.recurrent")


def _is_template(rec) -> bool:
    return any(f".{m}." in rec.kernel.name for m in TEMPLATE_MODULES)


def record_config(mixer, strategy: str, config: dict, request, *, backward: bool = True) -> list:
    """The delta template ``LaunchRecord``s that running ``mixer`` with ``config`` makes on tiny
    CPU inputs (the request's example inputs, head sizes K, V; launch parameters as on a GPU:
    ``targets_gpu`` holds while recording, so the dots are recorded as "tf32" / "tf32x3"). 16-bit
    inputs are recorded in their own dtype: the kernels convert every load to fp32, so the
    interpreter's bf16 dot issue does not arise."""
    from ..common.candidates import record, state_tensors, tensors, torch_dtype
    from ..family import compile_mixer
    T_ = int(config.get("BT", 16)) + 3 if strategy == "chunked" else 3
    arrays, h0 = request.example_inputs(mixer, B=1, T=T_, H=1, K=request.K, V=request.V)
    dt = torch_dtype(request.dtype_name)
    compiled = compile_mixer(mixer, strategy=strategy, config=dict(config))

    def run():
        xs = tensors(mixer, arrays, dt, requires_grad=backward)
        init = state_tensors(h0, requires_grad=backward)
        o, hT = compiled(*xs, initial_state=init, output_final_state=True, strategy=strategy)
        if backward:
            (o.float().sum() + hT.sum()).backward()
    return record(run, keep=_is_template)


def compile_configs(mixer, strategy: str, configs: list, arch: str, request, *, backward=True,
                    workers=None, timeout_s: float = 300, progress=None) -> list:
    """The delta templates of every config built for ``arch``: one ``CompiledConfig`` per config
    (kernels shared between configs compile once)."""
    from ..common.candidates import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, strategy, cfg, request, backward=backward), arch,
        workers=workers, timeout_s=timeout_s, progress=progress)


# ---- the tuning targets (mixir tune <a Householder mixer>) -------------------------------------
def core_sizes(mixer, plan, request) -> tuple:
    """(K, V) of the core for the request's head sizes (the library maps them to its feature
    dims: ``request.feature_sizes``)."""
    sizes = request.feature_sizes(mixer, {plan.k_dim})
    return sizes[plan.k_dim], sizes[plan.v_dim]


def targets(mixer, plan, request) -> list:
    """Per strategy of the request the plan runs, the delta space at the core's shape (sequence
    T·n_h, the core's K and V): the model sees the core, the database key is the user-level
    B, T, H. Without a strategy named, a K too large for the chunked kernels tunes the recurrent
    one only (the runtime refuses chunked too); naming chunked then is a ``TuningError``."""
    from ...autotune.pipeline import TuningTarget
    from ..common.candidates import timer
    dtype = request.dtype_name
    cK, cV = core_sizes(mixer, plan, request)
    avail = tuple(plan.strategies)
    if request.strategies is None and padded(cK) > MAX_HEAD_K:
        avail = tuple(s for s in avail if s != "chunked")
    chosen = [s for s in (request.strategies or avail) if s in avail]
    for s in chosen:
        _check_head(s, shape(request.B, request.T, request.H, cK, cV, dtype))
    shp = shape(request.B, request.T * plan.num_householder, request.H, cK, cV, dtype)
    return [TuningTarget(s, space(s), shp, compile=_compiler(mixer, s, request),
                         time=timer(mixer, request, strategy=s, reference="recurrent"))
            for s in chosen]


def _compiler(mixer, strategy, request):
    return lambda configs, arch, **kw: compile_configs(mixer, strategy, configs, arch, request, **kw)


def formulas_markdown() -> str:
    """The formulas of both spaces as markdown (docs/autotune.md)."""
    out = []
    for sp_ in (CHUNKED, RECURRENT):
        out.append(f"#### `{sp_.name}`\n")
        for k in sp_.kernels:
            out.append(f"**{k.name}** (launches per training step: {k.count})\n\n| quantity | formula |\n|---|---|")
            for name, e in spaces.formulas(sp_)[k.name].items():
                if name != "launches per step":
                    out.append(f"| {name} | `{sp.sstr(sp.sympify(e))}` |")
            out.append("")
    return "\n".join(out)


__all__ = ["CHUNKED", "RECURRENT", "SPACES", "space", "shape", "core_shape", "feasible", "model_best",
           "record_config", "compile_configs", "targets", "core_sizes", "formulas_markdown"]
