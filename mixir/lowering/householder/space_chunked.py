"""The tuning space of the chunked (WY/UT) delta kernels (``kernels/chunked.py``,
``kernels/chunked_grads.py``), built from ``autotune.space``'s machinery; ``space.py`` exports it
as ``CHUNKED`` beside the recurrent space.

Parameters: BT (chunk) ∈ {16, 32, 64}, BK = padded K (the sequential passes' state tile; K ≤ 256),
BV (V-tile) ∈ {16, 32, 64} ≤ padded V, BKT (the K-tile of the loops over K) ∈ {16, 32, 64} ≤ BK,
num_warps = 8, num_stages = 1. One config drives the five kernels of a training step (forward:
prep, states, output; backward: prep (with A⁻¹) and states recomputed, dstates, grads), so the
resource constraints hold for the maximum over them.

Dots (``core._dot_mode``): 16-bit inputs take 16-bit operands (tensor cores at the 16-bit peak),
the inverse's block merges three bf16 passes; fp32 inputs take tf32x3 everywhere (three tf32
passes, ~ 8× the fp32 CUDA-core peak per pass on A100/H100).

Registers and shared memory: ``regs = ceil(live / (32·num_warps)) + base`` and
``smem = Σ d·area + d0``, ``live = Σ c·area`` over the tile areas BT², BT·BV, BT·BKT, BK·BV, BT·BK,
BKT·BV, with coefficients per kernel and per class (16-bit inputs at BT = 64: sm_90 builds;
16-bit at BT ≤ 32 and fp32: sm_90 and sm_80 builds), fitted by linear programs as the tightest
upper envelope of ptxas' counts (Triton 3.9) over the calibration grid — K = V = 64 and 128,
16-bit: BT ∈ {32, 64}, BV ∈ {16, 32, 64}, BKT ∈ {32, 64}; fp32: BT ∈ {16, 32}, BV ∈ {16, 32, 64},
BKT ∈ {16, 32}; 8 warps; 64 (config, arch) builds of the 8 kernel variants — with every build that did not spill at ≤ 255 and every build that
spilled at ≥ 256 (so the model calls it infeasible). The builds show ptxas taking up to 255
registers in delta_chunk_grads whatever the tiles (it trades registers for ILP when not capped),
so the envelope rates that kernel near the limit: the spill boundary is what it encodes.

Constraints outside the envelope (``extra``), each from the calibration: 16-bit inputs run
BT ≥ 32, BV ≥ 32 (BV = 16 spilled in delta_chunk_grads at BT = 32, K = 128), BKT ≥ 32 (BKT = 16
took 254 registers there); 64-token chunks need warpgroup MMA (sm_90: on sm_8x delta_chunk_grads
spills at BT = 64), and their loops over K and V keep two or more iterations (with one, ptxas
schedules a whole chunk at once: delta_chunk_grads spilled 464 B at K = V = 64, BV = BKT = 64);
fp32 inputs run BT = 16 (BT = 32 spilled in delta_chunk_grads and delta_chunk_dstates) with
BV = BKT = 32 up to K = 64 and BV = BKT = 16 above (the spill-free points on sm_80 and sm_90); 8 warps (4 warps spilled in delta_chunk_grads at BT = 64: one warpgroup holds the whole
chunk).
"""
from __future__ import annotations

import dataclasses
import functools

import sympy as sp

from ...autotune.space import (
    BK,
    BT,
    BV,
    B,
    Constraint,
    H,
    K,
    KernelModel,
    S,
    Space,
    T,
    V,
    W,
    cdiv_expr,
    db,
    padded,
    pow2,
)

BKT = sp.symbols("BKT", integer=True, positive=True)


@dataclasses.dataclass(frozen=True)
class DeltaKernel(KernelModel):
    """A ``KernelModel`` whose ``live_fp32`` counts 32-bit registers of the CTA's tiles (in units
    of 1/scale): regs = ceil(live / (32 · num_warps · scale)) + base (both spaces of the family)."""
    base: int = 64
    scale: int = 1

    @functools.cached_property
    def regs(self):
        return sp.ceiling(self.live_fp32 / (32 * W * self.scale)) + self.base

#: the chunked kernels hold K in one tile (``core.MAX_HEAD_K``)
MAX_HEAD_K = 256
F32 = sp.floor(db / 4)                   # 1 for fp32 inputs, 0 for 16-bit
PASSES = 1 + 2 * F32                     # tensor-core passes per nominal dot FLOP: 1 or 3 (tf32x3)
#: the cost model divides tensor-core FLOPs by the 16-bit peak for 16-bit inputs and by the fp32
#: (CUDA-core) peak for fp32 inputs (``cost.predict``, ``Shape.fp32_dots=False``): 16-bit dots run
#: at the 16-bit peak (x1), a tf32x3 pass at ~ 8x the fp32 peak (x1/8)
TC_UNITS = 1 - sp.Rational(7, 8) * F32
INV_PASSES = 3                           # the inverse's block merges: bf16x3 or tf32x3

NT = cdiv_expr(T, BT)                    # chunks per sequence
NV = cdiv_expr(V, BV)                    # V-tiles (programs of the sequential passes)
NK = cdiv_expr(K, BKT)                   # K-tiles (delta_chunk_grads reads dO, du, u once per K-tile)
#: block-merge levels of the inverse (log2(BT/16): 0, 1, 2), two [BT, BT] dots each
_LEVELS = sp.floor(BT / 32)
_INV_PER_TOKEN = 4 * BT * BT * _LEVELS * INV_PASSES


def _tc(nominal, inverse=0):
    return TC_UNITS * (PASSES * nominal + inverse)


#: the classes of the fitted coefficients and their indicators (0 / 1)
_B64 = sp.floor(BT / 64)
CLASSES = {"b64": (1 - F32) * _B64, "b32": (1 - F32) * (1 - _B64), "f32": F32}
AREAS = (BT * BT, BT * BV, BT * BKT, BK * BV, BT * BK, BKT * BV)

#: {kernel: {class: (live coefficients per area, base registers, smem bytes per area, smem bytes)}}:
#: the calibration's envelope (module docstring; docs/delta_rule.md "Tiles and the tuning space")
FIT = {
    'prep': {
        'b64': ((0.001, 0.0, 0.0, 0.0, 0.5, 0.0), 147, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 50176),
        'b32': ((0.003, 0.0, 0.0, 0.0, 2.875, 0.0), 56, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 9216),
        'f32': ((0.005, 0.005, 0.0, 0.0, 0.0, 13.0), 56, (0.001, 0.0, 0.0, 0.0, 0.0, 2.667), 2389),
    },
    'states': {
        'b64': ((0.0, 2.001, 0.0, 4.125, 0.0, 0.001), 37, (0.0, 0.0, 0.0, 3.0, 1.5, 0.0), 5120),
        'b32': ((0.003, 16.0, 0.0, 0.0, 1.0, 0.0), 93, (0.0, 0.0, 0.0, 4.0, 0.0, 0.0), 1024),
        'f32': ((0.005, 0.005, 0.0, 0.0, 6.0, 0.0), 197, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 17408),
    },
    'output': {
        'b64': ((0.001, 4.0, 0.0, 0.0, 0.0, 0.0), 39, (0.0, 2.0, 0.0, 0.0, 1.0, 0.0), 9216),
        'b32': ((0.002, 0.0, 1.5, 0.75, 0.5, 0.001), 31, (0.0, 0.0, 2.0, 0.5, 0.0, 1.0), 3072),
        'f32': ((0.0, 26.003, 0.0, 8.25, 0.001, 0.0), 0, (0.0, 0.0, 0.0, 0.0, 0.0, 4.0), 1024),
    },
    'dstates': {
        'b64': ((0.002, 7.622, 0.123, 0.0, 2.189, 0.0), 61, (0.0, 0.0, 0.0, 3.0, 1.5, 0.0), 13312),
        'b32': ((0.002, 9.5, 0.5, 0.0, 1.75, 0.001), 137, (0.0, 0.0, 0.0, 3.667, 0.0, 0.0), 3755),
        'f32': ((254.01, 0.0, 0.0, 0.0, 0.0, 0.0), 0, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 17408),
    },
    'grads': {
        # b64 re-fitted for the single loop over V per K-tile (sm_90 builds at K = V = 64 / 128,
        # BV, BKT in {32, 64}: 151-252 registers, 41984-58368 B of shared memory)
        'b64': ((0.001, 0.0, 0.0, 0.0, 0.125, 0.0), 247, (0.0, 4.0, 4.0, 0.0, 0.0, 0.0), 24576),
        'b32': ((0.003, 0.0, 0.0, 0.0, 0.875, 0.0), 240, (0.0, 3.0, 7.0, 0.0, 0.0, 0.0), 0),
        'f32': ((0.005, 0.005, 0.0, 0.0, 3.75, 0.0), 204, (0.0, 0.0, 0.0, 0.0, 0.0, 8.0), 1024),
    },
}


def _fitted(kernel):
    """(live, base, smem) of a kernel: integer coefficients (thousandths of a register or byte per
    element, for the CP-SAT translation), ``DeltaKernel.scale`` = 1000."""
    live, base, smem = sp.Integer(0), sp.Integer(0), sp.Integer(0)
    for cls, ind in CLASSES.items():
        c, b, d, d0 = FIT[kernel][cls]
        live += ind * sum(int(round(1000 * x)) * a for x, a in zip(c, AREAS))
        base += ind * int(b)
        smem += ind * (sp.ceiling(sum(int(round(1000 * x)) * a for x, a in zip(d, AREAS)) / 1000) + int(d0))
    return live, base, smem


def _kernel(name, **kw):
    live, base, smem = _fitted(name)
    return DeltaKernel(f"delta_chunk_{name}", live_fp32=live, base=base, smem=smem, scale=1000, **kw)


def kernels():
    """The five chunked kernel models (bytes per token from what each kernel loads and stores:
    ``householder.traffic`` counts the same from the kernels themselves). The kernels read the
    call's q, v, β and g (``direct.py``: the library's mixers need no pieces kernel), β and g in
    the input dtype, and write dβ and dg in it."""
    return (
        _kernel("prep", grid=B * H * NT,
                # K, V, β, g read; W, Ũ written (input dtype); A⁻¹ written in the backward's pass
                bytes_moved=B * H * T * db * (2 * K + 2 * V + BT / 2 + 2),
                tc_flops=B * H * T * _tc(4 * BT * K + 2 * BT * V, _INV_PER_TOKEN),
                fp32_flops=B * H * T * (4 * BT + 2 * K + 480),
                serial_steps=sp.Integer(1), count=2),
        _kernel("states", grid=B * H * NV,
                # per V-tile program: W and K of every chunk; Ũ, u (its columns); h per chunk
                bytes_moved=B * H * (T * (2 * K * db * NV + 2 * V * db + db * NV) + NT * K * V * db),
                tc_flops=B * H * T * _tc(4 * K * V),
                fp32_flops=B * H * (NT * 3 * K * V + T * 2 * V),
                serial_steps=NT, count=2),
        _kernel("output", grid=B * H * NT,
                # Q, K, u, O once per chunk, h per chunk
                bytes_moved=B * H * (T * db * (2 * K + 2 * V + 1) + NT * K * V * db),
                tc_flops=B * H * T * _tc(2 * BT * K + 2 * K * V + 2 * BT * V),
                fp32_flops=B * H * T * (6 * BT + 2 * V),
                serial_steps=sp.Integer(1), count=1),
        _kernel("dstates", grid=B * H * NV,
                # per V-tile program: Q, K, W of every chunk (QKᵀ per program); dO, du; dh per chunk
                bytes_moved=B * H * (T * (3 * K * db * NV + 2 * V * db + db * NV) + NT * K * V * db),
                tc_flops=B * H * T * _tc(2 * BT * K * NV + 2 * BT * V + 6 * K * V),
                fp32_flops=B * H * T * (4 * BT + 4 * V),
                serial_steps=NT, count=1),
        _kernel("grads", grid=B * H * NT,
                # A⁻¹, β, g; dO, du, u, V then dv written (the loop over V); Q, K (the grams);
                # per K-tile Q, K and dO, du, u again, dq, dk written; h, dh once per chunk
                bytes_moved=B * H * (T * db * (BT + 5 * V + 6 * K + 3 * V * NK + 4) + 2 * NT * K * V * db),
                tc_flops=B * H * T * _tc(6 * BT * V + 6 * K * V + 12 * BT * K),
                fp32_flops=B * H * T * (20 * BT + 10 * K),
                serial_steps=sp.Integer(1), count=1),
    )


def _dot_constraints(dims, shape):
    out = []
    for d in dims:
        out.append(Constraint(f"dot_min_{d}", d, "ge", sp.Integer(16), f"tl.dot operand dim {d} >= 16"))
        out.append(Constraint(f"dot_mma_{d}", d, "mod", sp.Integer(16), f"tl.dot operand dim {d} a multiple of 16"))
    return out


def _forbid(name, what, *terms):
    return Constraint(name, sp.Integer(0), "forbid", sp.Integer(0), what, terms=tuple(terms))


def extra(shape, gpu):
    pk, pv, pt = padded(shape.K), padded(shape.V), max(16, pow2(shape.T))
    out = _dot_constraints((BT, BK, BV, BKT), shape) + [
        Constraint("bk_le_max_head_k", BK, "le", sp.Integer(MAX_HEAD_K),
                   f"the chunked delta kernels hold K in one tile: padded K <= {MAX_HEAD_K}"),
        Constraint("bkt_le_bk", BKT, "le", BK, "K-tile BKT <= padded K"),
        Constraint("bv_le_padded_v", BV, "le", sp.Integer(pv), f"BV <= padded V = {pv}"),
        Constraint("bt_le_padded_t", BT, "le", sp.Integer(pt), f"BT <= padded T = {pt}"),
    ]
    if shape.dtype == "fp32":
        out += [Constraint("fp32_bt_16", BT, "le", sp.Integer(16),
                           "fp32 inputs: BT = 16 (tf32x3 tiles: delta_chunk_grads spills at BT = 32)"),
        ]
        # the calibrated spill-free points (sm_80 and sm_90): BV = BKT = 32 up to K = 64, 16 above
        bv, bkt = (min(32, pv), min(32, pk)) if pk <= 64 else (16, 16)
        for name, sym, val in (("fp32_bv", BV, bv), ("fp32_bkt", BKT, bkt)):
            what = f"fp32 inputs at padded K = {pk}: {sym} = {val} (calibrated; larger tiles spill)"
            out += [Constraint(name + "_le", sym, "le", sp.Integer(val), what),
                    Constraint(name + "_ge", sym, "ge", sp.Integer(val), what)]
        return out
    out += [Constraint("half_bt_ge_32", BT, "ge", sp.Integer(min(32, pt)),
                       "16-bit inputs: BT >= 32 unless T is shorter (calibrated; 16-token chunks "
                       "waste the tensor cores)"),
            Constraint("half_bv_ge_32", BV, "ge", sp.Integer(min(32, pv)),
                       "16-bit inputs: BV >= 32 unless V is smaller (BV = 16 spilled in "
                       "delta_chunk_grads at BT = 32, K = 128)"),
            Constraint("half_bkt_ge_32", BKT, "ge", sp.Integer(min(32, pk)),
                       "16-bit inputs: BKT >= 32 unless K is smaller (calibrated; BKT = 16 took "
                       "254 registers in delta_chunk_grads)")]
    if gpu.cc < 90:
        out.append(Constraint("bt64_needs_wgmma", BT, "le", sp.Integer(32),
                              f"64-token chunks need warpgroup MMA (sm_90); {gpu.name} is sm_{gpu.cc}"))
    else:
        out += [_forbid("bt64_one_pass_k", f"BT = 64 needs >= 2 K-tiles (BKT < padded K = {pk})",
                        ("BT", ">=", 64), ("BKT", ">=", pk)),
                _forbid("bt64_one_pass_v", f"BT = 64 needs >= 2 V-tiles (BV < padded V = {pv})",
                        ("BT", ">=", 64), ("BV", ">=", pv))]
    return out


def to_config(values: dict, shape=None) -> dict:
    return {k: int(values[k]) for k in ("BT", "BK", "BV", "BKT", "num_warps", "num_stages")}


def make_space(kernel_models):
    return Space(
        name="delta_chunked", strategy="chunked",
        params={BT: (16, 32, 64), BK: lambda shape: (padded(shape.K),), BV: (16, 32, 64),
                BKT: (16, 32, 64), W: (8,), S: (1,)},
        kernels=kernel_models, dot_dims=(), arange_dims=(BT, BK, BV, BKT),
        extra=extra, to_config=to_config)
