"""The tuning space of block-sparse softmax attention (``mixir.attention``): parameters
``BM`` x ``BN`` (query x key tile of the block mask), ``num_warps``, ``num_stages``; one config
drives the three kernels (forward, dQ, dK/dV), so the resource constraints hold for the maximum
over them and the cost is the sum of one training step (forward + backward).

Resource formulas (sympy, shape symbols of ``autotune/space.py``: B, T, H; K = head dim D, PK = padded D
= max(16, next_pow2(D)); db bytes per input element; ob bytes per dot operand: 4 for fp32 inputs
("ieee" fp32 dots), else 2). Self-attention (Tq = Tkv = T); ``NM = ceil(T/BM)``, ``NN =
ceil(T/BN)`` tile rows / columns; ``RHO`` the fraction of tiles the mask makes the kernels visit
(``tile_profile``: 1 for a dense mask, ~1/2 for causal, per (BM, BN) for a given mask):

* shared memory per CTA: ``num_stages`` x (the two streamed operand tiles of the loop) + the
  resident tiles, e.g. the forward ``(S * (BN*PK K-tile + BN*PK V-tile) + BM*PK Q-tile) * ob``;
* registers per thread: ``ceil(live / (32 * num_warps)) + base`` with ``live`` the 32-bit
  values of the CTA's register tiles. 16-bit inputs (tensor-core dots): ``2 rows*PK + BM*BN +
  2 streamed*PK`` (rows = BM for the forward and dQ, BN for dK/dV; streamed the other one), base
  96, fitted to ptxas builds for sm_80 and sm_90; BM, BN >= 8 num_warps (``ROWS_PER_WARP_MIN``:
  tiles replicated over more warps spill under ptxas' own register caps) and the measured
  spilling configs the formula admits excluded (``MEASURED_SPILLS``).
  fp32 inputs ("ieee" FMA dots, operands in registers): the resident tiles, score tiles, streamed
  tiles and the FMA dot layouts, base 48, with num_warps = 8 (``FP32_WARPS``) and >= 2 stages
  (measured AOT exclusions);
* tensor-core work over the visited tiles only: ``RHO * NM * NN`` tiles per (batch, head), 4
  (forward), 6 (dQ), 8 (dK/dV) x BM*BN*D FLOPs per tile divided by the MMA fraction
  ``min(1, rows / (16 num_warps))`` (``mma_fraction``: each warp computes 16 rows; fewer rows
  than that leave warps repeating each other), plus ``_SMEM_OPS`` FLOP-equivalents per byte of
  the streamed operand tiles every warp reads from shared memory;
* CUDA-core work per tile: ``SCORE_OPS`` per score element and 2 per accumulator element
  (rescale), over the MMA fraction, plus ``TILE_FIXED_INSTR`` instructions per thread (block
  index, addresses, loop, barriers; + ``EXPOSED_LOAD_INSTR`` without pipelining, num_stages = 1);
* HBM-equivalent bytes: Q/O (forward), Q/dO/dQ (dQ), K/V/dK/dV (dK/dV) and the streamed operands
  once per (batch, head) from HBM (times RHO), plus every query (key) tile streaming its visited
  K/V (Q/dO) tiles from L2: ``RHO * NM * NN * BN * 2 * D * db / L2_OVER_HBM``;
* occupancy and waves as in ``cost.py``, with 8 resident warps saturating the SM
  (``cost.WARPS_SATURATE_BY_STRATEGY``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import sympy as sp

from ...errors import TuningError
from ...autotune import cost, hardware, space as spaces
from ...autotune.space import B, Constraint, H, K, KernelModel, PK, S, Shape, Space, T, W, db, ob

BM, BN = sp.symbols("BM BN", integer=True, positive=True)
NM = sp.ceiling(T / BM)
NN = sp.ceiling(T / BN)

#: fixed registers per thread (addresses, loop counters, row statistics, mask code)
REG_OVERHEAD = 48
#: the GPU whose model-best config a recording (no GPU: AOT builds) and the CPU-less fallback use:
#: sm_80, the smaller shared memory of the two AOT targets
REFERENCE_GPU = hardware.get("A100-80GB")
STRATEGY = "attention"
# per serial tile step of a program (one BM x BN x D step of the online softmax); the cost model
# looks it up by the space's strategy
cost.STEP_LATENCY_S.setdefault(STRATEGY, 0.1e-6)
# resident warps per SM that saturate the tensor cores: FlashAttention-2 reaches ~70 % of the A100
# peak with one or two CTAs of 4 warps per SM (255 registers per thread at D = 128); the shared
# default (16) is for the CUDA-core recurrences
cost.WARPS_SATURATE_BY_STRATEGY.setdefault(STRATEGY, 8)


#: fp32 inputs run with exactly this many warps (measured on sm_80: with 4 warps the fp32 dK/dV
#: kernel spills even at 80-130 registers per thread, e.g. D=64 with 32x16 tiles; with 16 it is
#: held to 64 registers and spills)
FP32_WARPS = 8
#: 16-bit inputs: BM, BN >= ROWS_PER_WARP_MIN x num_warps (unless T pads to less than 32): at
#: most two warps per 16-row MMA tile (mma_fraction >= 1/2). Below that the rows are replicated
#: over 4-8 warps and ptxas caps the registers at 80-168 and spills 8-36 B (measured, sm_80 and
#: sm_90: D=128 16x16 and 64x16 with 4 warps, 16x32 and 32x16 with 8; D=64 128x16 with 4 warps,
#: 32x32 and 16x16 with 8)
ROWS_PER_WARP_MIN = 8
#: configs the register formula admits but ptxas builds spill (measured at num_stages = 2 on
#: sm_80 / sm_90 with Triton 3.9, causal mask, partial last tile; excluded at every stage count):
#: {(input class "16" or "fp32", padded D): ((BM, BN, num_warps, "what spilled"), ...)}
MEASURED_SPILLS = {
    ("16", 32): ((32, 128, 4, "384 B"), (128, 32, 4, "1596 B"), (128, 128, 8, "dK/dV at 255 regs")),
    ("16", 64): ((64, 64, 8, "24 B"), (64, 128, 8, "1048 B"), (128, 64, 8, "528 B"),
                 (32, 64, 4, "756 B in dK/dV with a data mask and a score_mod, sm_80")),
    ("fp32", 64): ((32, 32, 8, "dQ at 64 regs on sm_80"),),
}


@dataclasses.dataclass(frozen=True)
class AttentionKernel(KernelModel):
    """A ``KernelModel`` whose ``live_fp32`` counts 32-bit registers of the CTA (not fp32 tile
    elements): regs = ceil(live / (32 num_warps)) + REG_BASE_MMA (16-bit inputs) or
    REG_OVERHEAD (fp32 inputs)."""

    @functools.cached_property
    def regs(self):
        return sp.ceiling(self.live_fp32 / (32 * W)) + _MMA * REG_BASE_MMA + _FMA * REG_OVERHEAD


# fp32 "ieee" dots run as FMA on the CUDA cores with both operands in registers: the streamed
# tiles count in full (1 for fp32 inputs, 0 for 16-bit inputs, whose MMA operands stream from
# shared memory)
_FMA = sp.floor(ob / 4)
_MMA = 1 - _FMA
# 16-bit inputs (tensor-core dots), fitted to ptxas builds for sm_80 and sm_90 (docs/attention.md,
# "Registers"): per CTA, A_ROWS 32-bit registers per element of the rows x PK tiles (fp32
# accumulators, the resident operand tile and its dot-operand copies), A_SCORE per element of the
# BM x BN score tiles, A_STREAM per element of the streamed (K/V or Q/dO) tile (each warp holds
# its dot-operand slices), spread over all the warps, plus REG_BASE_MMA per thread
A_ROWS, A_SCORE, A_STREAM, REG_BASE_MMA = 2, 1, 2, 96


def _live(rows, streamed, res, score):
    """Live 32-bit registers of a CTA: the fitted 16-bit form, or the fp32 (FMA) form: resident
    rows x PK tiles (``res`` per element), ``score`` BM x BN tiles, the streamed tiles in full
    and the FMA dot operand layouts."""
    mma = A_ROWS * rows * PK + A_SCORE * BM * BN + A_STREAM * streamed * PK
    fma = res * rows * PK + score * BM * BN + 2 * streamed * PK + _DOT_FMA
    return _MMA * mma + _FMA * fma


# an FMA dot of a BM x BN x PK tile: each thread holds its rows of A and columns of B in the dot
# operand layout; modelled as BM*BN*PK/4 per CTA (fitted: fp32 64x64 tiles at D=64 spill with 8
# warps, 16x16 tiles at D=256 do not)
_DOT_FMA = BM * BN * PK / 4
# fp32 inputs: registers per element of the resident (BM or BN) x PK tiles (the fp32
# accumulators, the resident operand tiles and their pipelined copies) and live BM x BN score
# tiles (s, p forward; s, p, dp, ds + 1 backward); an upper bound of the measured fp32 points
_RES_FWD, _RES_DQ, _RES_DKDV = 5, 4, 5
_SCORE_FWD, _SCORE_BWD = 2, 5
# ---- the cost terms of a FlashAttention-2 style pass (docs/attention.md, "Cost model") ----------
# FLOP-equivalents per byte of dot operands read from shared memory: tensor peak / shared-memory
# bandwidth per SM (A100: 2048 FLOP/clk / 128 B/clk = 16; H100: ~4096 / 128 = 32)
_SMEM_OPS = 24
# the L2 -> SM bandwidth as a multiple of the HBM bandwidth (A100 whitepaper: 5120 B/clk of L2
# read bandwidth, ~7.2 TB/s at 1.41 GHz, vs 1.6-2.0 TB/s HBM); the streamed K/V (Q/dO) tiles of
# every query (key) tile come from L2, HBM sees them once per (batch, head)
L2_OVER_HBM = 3
#: PTX instructions per thread of one loop iteration that do not scale with the tile (block-index
#: load, addresses, loop, barriers, row-statistic shuffles): the intercept of a fit of the forward
#: loop's PTX instruction count (Triton 3.9, sm_80, D=64, 16x16 ... 128x128 tiles, 4 and 8 warps)
#: against the per-thread tile elements; the slope is ~12 instructions per score element
TILE_FIXED_INSTR = 100
#: CUDA-core FLOP-equivalents per score element: ~10 PTX instructions per element and thread
#: besides the MMAs (scale, mask, max, exp, sum, casts; same fit), 2 FLOP-equivalents each
SCORE_OPS = 20
#: rows of the tensor-core tile one warp computes: 16 (mma.sync m16n8k16 on sm_80/sm_89; a
#: Hopper wgmma warpgroup of 4 warps takes 64 = 4 x 16 rows)
MMA_ROWS_PER_WARP = 16
#: per-thread instruction-equivalents a tile waits for its K/V (Q/dO) loads when num_stages = 1
#: (no software pipelining: the L2 latency, several hundred cycles, is exposed once per tile;
#: co-resident CTAs hide part of it, which is ignored)
EXPOSED_LOAD_INSTR = 300


def mma_fraction(rows):
    """The fraction of the CTA's warps doing distinct MMA work: Triton splits the ``rows`` of the
    chained dots (BM for the forward and dQ, BN for dK/dV) over the warps, 16 rows each, so with
    rows < 16 num_warps the layout wraps and warps repeat each other's tiles (Triton 3.9 TTGIR:
    warpsPerCTA [num_warps, 1]; for rows < 16 num_warps it may split along N instead, which moves
    P and the row statistics through shared memory at a similar cost). 1 for fp32 "ieee" dots
    (CUDA-core FMA: no MMA rows). The elementwise work is replicated with the MMAs."""
    return sp.Min(1, rows / (MMA_ROWS_PER_WARP * W) + _FMA)


def _tile_costs(rows, flops, reads, streamed):
    """(tensor-core FLOP-equivalents, CUDA-core FLOP-equivalents) of one visited tile: the dot
    FLOPs over the MMA fraction, plus every warp reading the ``reads`` streamed operand tiles
    (``streamed`` elements each) from shared memory; the softmax / gradient elementwise work over
    the MMA fraction, plus the fixed per-iteration instructions of every thread."""
    f = mma_fraction(rows)
    tc = flops / f + _SMEM_OPS * W * reads * streamed * ob
    fixed = TILE_FIXED_INSTR + EXPOSED_LOAD_INSTR * sp.floor(1 / S)
    fp = (SCORE_OPS * BM * BN + 2 * rows * PK) / f + 2 * fixed * 32 * W
    return tc, fp


def _kernels(rho):
    tiles = rho * NM * NN                                # visited tiles per (batch, head)
    tc_f, fp_f = _tile_costs(BM, 4 * BM * BN * K, 2, BN * PK)
    tc_q, fp_q = _tile_costs(BM, 6 * BM * BN * K, 3, BN * PK)
    tc_kv, fp_kv = _tile_costs(BN, 8 * BM * BN * K, 4, BM * PK)
    fwd = AttentionKernel(
        "attn_fwd",
        grid=B * H * NM,
        smem=(S * 2 * BN * PK + BM * PK) * ob,
        live_fp32=_live(BM, BN, _RES_FWD, _SCORE_FWD),
        # Q, O, lse once; K, V once from HBM; every query tile streams its K/V tiles from L2
        bytes_moved=B * H * (2 * T * K * db + 4 * T + rho * 2 * T * K * db
                             + tiles * BN * 2 * K * db / L2_OVER_HBM),
        tc_flops=B * H * tiles * tc_f,
        fp32_flops=B * H * tiles * fp_f,
        serial_steps=rho * NN)
    dq = AttentionKernel(
        "attn_bwd_dq",
        grid=B * H * NM,
        smem=(S * 2 * BN * PK + 2 * BM * PK) * ob,
        live_fp32=_live(BM, BN, _RES_DQ, _SCORE_BWD),
        bytes_moved=B * H * (T * K * (2 * db + 4) + 8 * T + rho * 2 * T * K * db
                             + tiles * BN * 2 * K * db / L2_OVER_HBM),
        tc_flops=B * H * tiles * tc_q,
        fp32_flops=B * H * tiles * fp_q,
        serial_steps=rho * NN)
    dkdv = AttentionKernel(
        "attn_bwd_dkdv",
        grid=B * H * NN,
        smem=(S * 2 * BM * PK + 2 * BN * PK) * ob,
        live_fp32=_live(BN, BM, _RES_DKDV, _SCORE_BWD),
        bytes_moved=B * H * (T * K * (2 * db + 8) + rho * T * (2 * K * db + 8)
                             + tiles * BM * (2 * K * db + 8) / L2_OVER_HBM),
        tc_flops=B * H * tiles * tc_kv,
        fp32_flops=B * H * tiles * fp_kv,
        serial_steps=rho * NM)
    return fwd, dq, dkdv


def _extra(shape, gpu):
    pt = max(16, spaces.pow2(shape.T))
    cs = [Constraint("bm_le_padded_t", BM, "le", sp.Integer(pt), f"BM <= padded T = {pt}"),
          Constraint("bn_le_padded_t", BN, "le", sp.Integer(pt), f"BN <= padded T = {pt}")]
    if shape.dtype != "fp32" and pt >= 2 * 16 and spaces.padded(shape.K) <= 128:   # measured range
        cs += [Constraint(f"mma_rows_{n}", sym, "ge", ROWS_PER_WARP_MIN * W,
                          f"16-bit dots: {n} >= {ROWS_PER_WARP_MIN} num_warps (at most 2 warps per "
                          f"16 MMA rows; below, ptxas spills 8-36 B at 80-168 registers, measured)")
               for n, sym in (("BM", BM), ("BN", BN))]
    cls = "fp32" if shape.dtype == "fp32" else "16"
    for bm, bn, w, spill in MEASURED_SPILLS.get((cls, spaces.padded(shape.K)), ()):
        cs.append(Constraint(f"measured_spill_{bm}x{bn}_w{w}", sp.Integer(0), "forbid",
                             sp.Integer(0), f"{bm}x{bn} tiles with {w} warps spill ({spill}) "
                             f"at D={shape.K} {shape.dtype} (ptxas, measured)",
                             terms=((BM, "==", bm), (BN, "==", bn), (W, "==", w))))
    if shape.dtype == "fp32":
        cs += [Constraint("fp32_warps_ge", W, "ge", sp.Integer(FP32_WARPS),
                          f"fp32 'ieee' dots: num_warps = {FP32_WARPS} (with 4 the dK/dV kernel "
                          f"spills on sm_80, measured)"),
               Constraint("fp32_warps_le", W, "le", sp.Integer(FP32_WARPS),
                          f"fp32 'ieee' dots: num_warps = {FP32_WARPS} (with 16 ptxas caps the "
                          f"dK/dV kernel at 64 registers on sm_80 and spills, measured)"),
               Constraint("fp32_stages_ge", S, "ge", sp.Integer(2),
                          "fp32 'ieee' dots: num_stages >= 2 (with 1, ptxas spills 16-48 B in the "
                          "dK/dV kernel at 48-80 registers, measured for D=64 on sm_80 and sm_90)")]
    return cs


def to_config(values: dict, shape=None) -> dict:
    return {k: int(values[k]) for k in ("BM", "BN", "num_warps", "num_stages")}


PARAMS = {BM: (16, 32, 64, 128), BN: (16, 32, 64, 128), W: (4, 8, 16), S: (1, 2, 3, 4)}


def _rho_expr(profile):
    """RHO as a sympy expression of BM, BN: 1 (dense) or a Piecewise over the profiled tiles."""
    if not profile:
        return sp.Integer(1)
    pieces = [(sp.Rational(int(round(f * 10**6)), 10**6), sp.And(sp.Eq(BM, bm), sp.Eq(BN, bn)))
              for (bm, bn), f in sorted(profile.items())]
    return sp.Piecewise(*pieces, (sp.Integer(1), True))


def make_space(profile: dict | None = None) -> Space:
    """The attention space; ``profile`` {(BM, BN): visited fraction} (``tile_profile``) makes the
    cost the mask's (None: dense). Each profile is its own space (name ``attention:<digest>``)."""
    name = "attention"
    if profile:
        text = ";".join(f"{a},{b}:{f:.6f}" for (a, b), f in sorted(profile.items()))
        name += ":" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return Space(name=name, strategy=STRATEGY, params=dict(PARAMS), kernels=_kernels(_rho_expr(profile)),
                 dot_dims=(BM, BN, PK), arange_dims=(BM, BN, PK), extra=_extra, to_config=to_config)


ATTENTION = make_space()


def shape(B_: int, T_: int, H_: int, D: int, dtype: str) -> Shape:
    """The ``spaces.Shape`` of attention (K = V = head dim; 16-bit dots take 16-bit operands)."""
    return Shape(int(B_), int(T_), int(H_), int(D), int(D), dtype, fp32_dots=False)


def resources(space: Space, shape_: Shape, values: dict) -> dict:
    return spaces.resources(space, shape_, values)


# ---- the mask's tile profile ------------------------------------------------------------------
def tile_profile(mask, B_: int, H_: int, T_: int, data=None, tiles=(16, 32, 64, 128)) -> dict:
    """{(BM, BN): fraction of tiles visited} for every tile shape of the space: the mask is
    classified once at 16 x 16 (``block_mask.classify_tiles``) and a BM x BN tile is visited iff
    one of its 16 x 16 sub-tiles is (max-pooling)."""
    import torch

    from .block_mask import EMPTY, classify_tiles
    vis = (classify_tiles(mask, B_, H_, T_, T_, 16, 16, data) != EMPTY).float()
    out = {}
    for bm in tiles:
        for bn in tiles:
            pooled = torch.nn.functional.max_pool2d(vis, (bm // 16, bn // 16), ceil_mode=True)
            out[(bm, bn)] = float(pooled.mean())
    return out


# ---- feasibility, explanation, default config ------------------------------------------------
def _fix(constraints, fixed):
    """Constraints pinning parameters (``fixed`` {"BM": 64, ...}) to values."""
    syms = {str(s): s for s in PARAMS}
    out = list(constraints)
    for k, v in (fixed or {}).items():
        out += [Constraint(f"fixed_{k}_le", syms[k], "le", sp.Integer(v), f"{k} = {v} (given)"),
                Constraint(f"fixed_{k}_ge", syms[k], "ge", sp.Integer(v), f"{k} = {v} (given)")]
    return out


def _what(shape_, gpu):
    return (f"attention with head dim D={shape_.K} in {shape_.dtype} (B={shape_.B}, T={shape_.T}, "
            f"H={shape_.H}) on {gpu.name}")


def explain(space: Space, shape_: Shape, gpu, constraints) -> str:
    """Why nothing is feasible, naming the binding constraint(s) with the smallest value any
    config reaches (pure Python over the small space; the CP-SAT explanation of ``solver`` gives
    the same answer when ortools is installed)."""
    from ...autotune.solver import _message
    checks = [(c, spaces._checker(c, space, shape_)) for c in constraints]
    doms = space.domains(shape_)
    combos = [dict(zip([str(p) for p in doms], v)) for v in _product(doms)]
    names = [str(p) for p in space.params]
    vals = [tuple(c[n] for n in names) for c in combos]
    what = _what(shape_, gpu)
    binding = []
    for c, _ in checks:
        if c.kind not in ("le", "ge"):
            continue
        rest = [ch for d, ch in checks if d is not c]
        ok = [(cfg, v) for cfg, v in zip(combos, vals) if all(ch(v) for ch in rest)]
        if ok:
            lhs = [_ev(c.lhs, space, shape_, cfg) for cfg, _ in ok]
            rv = _ev(c.rhs, space, shape_, ok[0][0])
            binding.append(_message(c, what, gpu, min(lhs) if c.kind == "le" else max(lhs), rv))
    if not binding:   # several bind at once: each resource no structurally valid config meets
        from ...autotune.solver import RESOURCE_CONSTRAINTS
        structural = [ch for c, ch in checks if c.name not in RESOURCE_CONSTRAINTS]
        ok = [cfg for cfg, v in zip(combos, vals) if all(ch(v) for ch in structural)]
        for c, _ in checks:
            if c.name in RESOURCE_CONSTRAINTS and c.kind == "le" and ok:
                lv = min(_ev(c.lhs, space, shape_, cfg) for cfg in ok)
                rv = _ev(c.rhs, space, shape_, ok[0])
                if lv > rv:
                    binding.append(_message(c, what, gpu, lv, rv))
    if binding:
        return "no feasible config: " + "; and ".join(binding)
    return (f"no feasible config for {what}: several constraints bind at once "
            f"({', '.join(c.name for c in constraints)})")


def _ev(expr, space, shape_, cfg) -> int:
    return int(round(spaces.evaluate(sp.sympify(expr), space, shape_, cfg)))


def _product(doms):
    import itertools
    return itertools.product(*doms.values())


def feasible(space: Space, shape_: Shape, gpu, fixed=None) -> list:
    """Every feasible config (dicts of parameter values); ``TuningError`` naming the binding
    constraint when there is none."""
    cs = _fix(space.constraints(shape_, gpu), fixed)
    out = spaces.feasible_bruteforce(space, shape_, gpu, constraints=cs)
    if not out:
        raise TuningError(explain(space, shape_, gpu, cs))
    return out


@functools.lru_cache(maxsize=512)
def _best(gpu_name, dtype, D, BH, T_, fixed):
    gpu = hardware.get(gpu_name)
    shp = shape(1, T_, BH, D, dtype)
    try:
        feas = feasible(ATTENTION, shp, gpu, dict(fixed))
    except TuningError as e:
        if not fixed:
            raise
        return _least_bad(gpu, shp, dict(fixed), e)
    return to_config(cost.rank(ATTENTION, shp, gpu, feas)[0][0])


def _least_bad(gpu, shp, fixed, err):
    """Tiles given by the caller (``block_size``, a prebuilt block mask) that no config makes
    feasible: the config with those tiles violating the fewest constraints (most warps, fewest
    stages), with a warning - unless it cannot launch (shared memory), then ``err``."""
    import warnings
    cands = [c for c in spaces.all_configs(ATTENTION, shp) if all(c[k] == v for k, v in fixed.items())]
    scored = sorted(cands, key=lambda c: (len(spaces.violated(ATTENTION, shp, gpu, c)),
                                          -c["num_warps"], c["num_stages"]))
    if not scored:
        raise err
    best = scored[0]
    bad = spaces.violated(ATTENTION, shp, gpu, best)
    if any(c.name == "shared_memory" for c in bad):
        raise err
    warnings.warn(f"mixir attention: tiles {fixed} are predicted to spill for D={shp.K} {shp.dtype} "
                  f"on {gpu.name} ({'; '.join(c.what for c in bad)}); using {to_config(best)}")
    return to_config(best)


def default_config(gpu=None, dtype="bf16", D=64, *, B=8, T=4096, H=16, fixed=None) -> dict:
    """The cost model's best feasible config (dense profile) for ``gpu`` (default
    ``REFERENCE_GPU``); T and B*H are bucketed to powers of two. ``fixed`` pins BM / BN.
    ``TuningError`` naming the binding constraint when nothing fits (e.g. shared memory)."""
    from ...autotune.db import bucket
    gpu = REFERENCE_GPU if gpu is None else hardware.get(gpu)
    return dict(_best(gpu.name, dtype, int(D), bucket(int(B) * int(H)), bucket(int(T)),
                      tuple(sorted((fixed or {}).items()))))


def model_best(gpu, dtype, D, B, T, H, fixed=None) -> dict | None:
    """``default_config`` or None when nothing is feasible."""
    try:
        return default_config(gpu, dtype, D, B=B, T=T, H=H, fixed=fixed)
    except TuningError:
        return None


def formulas_markdown(D_name="D") -> str:
    """The formulas of the space as markdown (docs/attention.md)."""
    out = []
    for k in ATTENTION.kernels:
        out.append(f"**{k.name}**\n\n| quantity | formula |\n|---|---|")
        for name, e in spaces.formulas(ATTENTION)[k.name].items():
            if name != "launches per step":
                out.append(f"| {name} | `{sp.sstr(sp.sympify(e))}` |")
        out.append("")
    return "\n".join(out)


__all__ = ["ATTENTION", "make_space", "shape", "tile_profile", "feasible", "explain",
           "default_config", "model_best", "to_config", "resources", "REFERENCE_GPU", "STRATEGY"]
