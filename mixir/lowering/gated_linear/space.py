"""The tuning spaces of the gated-linear core's templates (``kernels/chunked.py``,
``kernels/recurrent.py``, launched by ``core.py``): one config (chunked: BT, BC, BK, BKS, BV, BVS,
num_warps, num_stages; BKS x BVS is the state passes' tile, BK the output kernel's K-loop tile and
BV its V-tile; scalar decays' fused dq/dk kernel takes K-tiles of BKS and V-loop tiles of BK)
drives every kernel of a strategy, forward and backward, so the resource constraints
hold for the maximum over the kernels and the cost is the sum over one training step's launches.
Resource needs are sympy expressions of the parameters and the shape (``autotune.space``).

The family's tuning targets (``targets``: one per strategy, the form's head sizes) and the AOT
recording of one config (``record_config``: the template launches of a forward + backward on tiny
CPU inputs) are here too; ``kernel_signature`` groups mixers whose template kernels are identical
(``mixir tune --all`` tunes them once)."""
from __future__ import annotations

import sympy as sp

from ...autotune.db import bucket
from ...autotune.pipeline import TuningTarget
from ...autotune.space import (BC, BK, BT, BV, LOG2_16_OVER_W, PK, PV, Constraint, KernelModel, Shape,
                               Space, B, H, K, S, T, V, W, cdiv_expr, db, ob)
from ...tiles import padded, pow2

# ---- the chunked GLA space -----------------------------------------------------------------------
NT = cdiv_expr(T, BT)
# The cumsum kernels run over the decay's channels: K for a per-key decay (gk), V for a per-value
# decay (gv, e.g. HGRN's), 1 for a scalar one (g). The formulas take the larger head size (an
# upper bound for every gate combination; K for GLA, V for HGRN, where K = 1).
DD = sp.Max(K, V)                 # decay channels (bound)
BD = sp.Min(64, sp.Max(PK, PV))   # the cumsum kernels' channel tile (fixed by core.py: tile(D, 64))
BKD = 16                          # diagonal-block key channels (core.py default)
BVD = sp.Min(BV, 32)              # diagonal-block V tile when a V decay is used
BX = sp.Max(BK, BV)               # the output kernel runs with K and V swapped for dq / dk

_chunk_cumsum = KernelModel(
    "chunk_gla_cumsum",
    grid=B * NT * H * cdiv_expr(DD, BD),
    smem=BT * BD * 4,                                   # associative_scan scratch
    live_fp32=3 * BT * BD / 2,
    bytes_moved=B * T * H * DD * 4 * 3,
    tc_flops=sp.Integer(0),
    fp32_flops=B * T * H * DD * 4,
    serial_steps=sp.Integer(1), count=2)

#: the K-tile of the sequential state passes, apart from the output kernel's BK (a K-loop tile
#: there): the passes run one program per (K-tile, V-tile) and read v once per K-tile
BKS = sp.Symbol("BKS", integer=True, positive=True)
#: the V-tile of the sequential state passes, apart from the output kernel's BV: a 64 x 128 state
#: tile spills at 8 warps (sm_90) where the output kernel's 128-wide V-tile does not, and that reads
#: its x / y tiles once instead of once per V-tile
BVS = sp.Symbol("BVS", integer=True, positive=True)

#: registers of chunk_gla_states: the generic model (2 x live / threads + 96) with the intercept
#: taken at 74, from 24 sm_90 builds (2026-12-07; simple_gla and gla, K = V = 128, bf16, BT 32/64,
#: BKS 32-128, BV 32-128, 4-16 warps; the most of its three launches): RMS error 42 registers
#: (the generic one: 54), at most 35 under. The generic intercept excluded the 64 x 64 state tile
#: at 8 warps (predicted 256, compiled 226-231 without spills), which halves the forward's
#: rereads of v against BKS = 32; the AOT check and its feedback catch the under-estimates.
STATES_REGS_FIT = sp.ceiling(2 * (2 * BKS * BVS + 2 * BT * BKS + BT * BVS) / (32 * W)) + 74

_chunk_states = KernelModel(
    "chunk_gla_states",
    grid=B * H * cdiv_expr(K, BKS) * cdiv_expr(V, BVS),
    # tl.dot(trans(kx), vx): the kx tile is pipelined over num_stages, vx staged once
    smem=(BT * BKS * S + BT * BVS) * ob,
    # running matrix h, kx and its decay fb, vx (fp32), dot result
    live_fp32=2 * BKS * BVS + 2 * BT * BKS + BT * BVS,
    # k (+ its fp32 decay) once per V-tile, v once per K-tile; the chunk-boundary states are
    # stored in the dtype of the dots that read them: db in the forward, ob in the two backward
    # launches (the per-launch mean)
    bytes_moved=(B * T * H * (K * cdiv_expr(V, BVS) * (db + 4) + V * cdiv_expr(K, BKS) * db)
                 + B * NT * H * K * V * (db + 2 * ob) / 3),
    tc_flops=2 * B * T * H * K * V,
    fp32_flops=3 * B * T * H * K * V / BT + B * T * H * K * 2,
    serial_steps=NT, count=3, regs_fit=STATES_REGS_FIT)

def _output_regs(per_channel: bool):
    """Registers per thread of the output kernel, fitted to ptxas builds for sm_90 (2026-12-07;
    simple_gla and gla at K = V = 128, bf16, BT 64, BC 16-64, BK/BV 32/64, 4-16 warps, 1-2 stages;
    the most of its four launches): 90 + 41 log2(16 / W) + 1.69 X / threads with X = the accumulator,
    operand and diagonal tile elements (RMS error 23 registers; the generic model erred by up to 84,
    and excluded every 16-warp whole-chunk sub-chunk, which compiles to 107). The intercept is taken
    12 lower: near the limits the compiler decides (the AOT check), and a config that spills raises
    the estimate through the AOT feedback (autotune/feedback.py)."""
    X = 2 * BC * BV + 3 * BC * BK + (BC * BC * BKD / 4 if per_channel else 0)
    return 78 + 41 * LOG2_16_OVER_W + sp.ceiling(sp.Rational(169, 100) * X / (32 * W))


def _output_bytes(per_channel: bool):
    """HBM bytes of one output launch (the mean over its launches). Per-channel decays: x, y once
    per V-tile for the inter term and for the diagonal's exact factors, and per earlier sub-chunk;
    the state tile once per sub-chunk (db in the forward, ob in the 3 backward launches); z read and
    the output stored in db; the dq and dk launches' decay-gradient epilogue (w read, fp32 terms
    stored, dk's read back). Scalar decays (the forward and dv only: dq and dk are
    ``chunk_gla_dqk``'s): x, y once per V-tile and per earlier sub-chunk (the diagonal's scores take
    the inter term's x tiles); the state tile in db and ob."""
    if per_channel:
        return (B * T * H * K * db * cdiv_expr(V, BV) * (1 + (BT / BC) / 2) * 2
                + B * NT * H * K * V * (db + 3 * ob) / 4 * (BT / BC) + B * T * H * V * 2 * db
                + B * T * H * K * (2 * db + 12) / 4)
    return (B * T * H * K * db * cdiv_expr(V, BV) * (1 + (BT / BC - 1) / 2) * 2
            + B * NT * H * K * V * (db + ob) / 2 * (BT / BC) + B * T * H * V * 2 * db)


def _output_model(per_channel: bool) -> KernelModel:
    """The output kernel; ``per_channel``: a per-key decay, whose diagonal sub-chunk factors live on a
    [BC, BC, BKD] tile (a scalar-decayed one is a [BC, BC] dot). Per-channel decays run it four
    times per training step (o; dq, dk, dv), scalar ones twice (o, dv)."""
    return KernelModel(
        "chunk_gla_output",
        grid=B * NT * (BT / BC) * cdiv_expr(V, BV) * H,
        # the staged state tile and x / y tiles (num_stages per pipelined loop), the [BC, BC]
        # score tile, and the per-channel diagonal's reduction scratch: an upper bound fitted to
        # ptxas builds for sm_90 (2026-12-07: BT 32/64, BC 16-64, BK/BV 32/64, 1-3 stages; 1.1-4x
        # the compiled shared memory of the backward, the larger of the two passes)
        smem=(BX * BX * S + BC * BX * S / 2 + BC * BC / 2
              + (BC * BC * BKD / 4 if per_channel else 0)) * ob,
        # acc, acc_o [BC, BV]; A [BC, BC]; x, y, fb tiles [BC, BK]; hs [BK, BV]; the diagonal's
        # pairwise factors [BC, BC, BKD] (per-channel decay) or its [BC, BC] scores
        live_fp32=(2 * BC * BV + BC * BC + 3 * BC * BK + BK * BV // 2
                   + (BC * BC * BKD if per_channel else BC * BC)),
        bytes_moved=_output_bytes(per_channel),
        tc_flops=2 * B * T * H * K * V + B * T * H * BT * (K * cdiv_expr(V, BV) + V),
        fp32_flops=3 * B * T * H * BC * K,
        serial_steps=BT / BC, count=4 if per_channel else 2, regs_fit=_output_regs(per_channel))


#: live fp32 elements of chunk_gla_dqk: dq, dk [BT, BKS], the score tile [BT, BT], q / k [BT, BKS],
#: do, v [BT, BK] and the two state tiles [BK, BKS]
_DQK_LIVE = 2 * BT * BKS + BT * BT + BT * BKS + 2 * BT * BK + 2 * BK * BKS

#: the fused dq / dk kernel of scalar decays (whole chunks; K-tiles of BKS, the contraction over V
#: in BK-tiles). Registers fitted to 13 sm_90 builds (2026-12-07; simple_gla K = V = 128, bf16 with
#: the backward's fp32 operands, BT 32/64, BKS 32-128, BK 16-64, 4-16 warps): 150 + live / threads
#: is within 44 over and 2 under the compiled count of the 5 spill-free builds, and rules out 7 of
#: the 8 that spilled (docs/autotune.md).
_dqk = KernelModel(
    "chunk_gla_dqk",
    grid=B * NT * cdiv_expr(K, BKS) * H,
    smem=((2 * BT * BK + 2 * BK * BKS) * S + BT * BT) * ob,
    live_fp32=_DQK_LIVE,
    # do, v once per K-tile; both state tiles (ob) once; q, k read and dq, dk stored (db); the
    # fp32 decay-gradient row sums, one per K-tile
    bytes_moved=(B * T * H * V * 2 * db * cdiv_expr(K, BKS) + 2 * B * NT * H * K * V * ob
                 + 4 * B * T * H * K * db + 4 * B * T * H * cdiv_expr(K, BKS)),
    tc_flops=(2 * B * T * H * BT * V * cdiv_expr(K, BKS) + 4 * B * T * H * K * V
              + 4 * B * T * H * BT * K),
    fp32_flops=4 * B * T * H * BT,
    serial_steps=sp.Integer(1), count=1,
    regs_fit=150 + sp.ceiling(_DQK_LIVE / (32 * W)))


_chunk_rev_cumsum = KernelModel(
    "chunk_gla_rev_cumsum",
    grid=B * H * cdiv_expr(DD, BD),
    smem=64 * BD * 4,
    live_fp32=96 * BD,
    bytes_moved=B * T * H * DD * 8,
    tc_flops=sp.Integer(0),
    fp32_flops=B * T * H * DD * 4,
    serial_steps=T / 64, count=1)


def _chunked_extra(shape, gpu):
    return [
        Constraint("bc_le_bt", BC, "le", BT, "sub-chunk BC <= chunk BT (BT % BC == 0)"),
        Constraint("bk_le_padded_k", BK, "le", sp.Integer(padded(shape.K)),
                   f"BK <= padded K = {padded(shape.K)}"),
        Constraint("bks_le_padded_k", BKS, "le", sp.Integer(padded(shape.K)),
                   f"BKS <= padded K = {padded(shape.K)}"),
        Constraint("bv_le_padded_v", BV, "le", sp.Integer(padded(shape.V)),
                   f"BV <= padded V = {padded(shape.V)}"),
        Constraint("bvs_le_padded_v", BVS, "le", sp.Integer(padded(shape.V)),
                   f"BVS <= padded V = {padded(shape.V)}"),
        # the split exists for a state tile narrower than the output kernel's V-tile (64 x 64
        # beside BV = 128); a wider one only trades the passes' rereads of k for the output
        # kernel's, and keeping it out halves the space the tuner enumerates
        Constraint("bvs_le_bv", BVS, "le", BV, "the state passes' V-tile BVS <= the output kernel's BV"),
        Constraint("bt_le_padded_t", BT, "le", sp.Integer(max(16, pow2(shape.T))),
                   f"BT <= padded T = {max(16, pow2(shape.T))}"),
    ]


def _chunked_config(values: dict, shape: Shape) -> dict:
    cfg = {k: int(values[k]) for k in ("BT", "BC", "BK", "BKS", "BV", "BVS", "num_warps", "num_stages")}
    return cfg


def _chunked_space(name: str, per_channel: bool) -> Space:
    return Space(
        name=name, strategy="chunked",
        params={BT: (16, 32, 64, 128), BC: (16, 32, 64), BK: (16, 32, 64, 128, 256),
                BKS: (16, 32, 64, 128, 256), BV: (16, 32, 64, 128, 256),
                BVS: (16, 32, 64, 128, 256), W: (1, 2, 4, 8, 16), S: (1, 2, 3, 4)},
        kernels=(_chunk_cumsum, _chunk_states, _output_model(per_channel))
        + (() if per_channel else (_dqk,)) + (_chunk_rev_cumsum,),
        dot_dims=(BT, BC, BK, BKS, BV, BVS), arange_dims=(BT, BC, BK, BKS, BV, BVS),
        extra=_chunked_extra, to_config=_chunked_config,
        fp32_dot_passes=1)     # the backward's fp32 operands run as "tf32" (core._dot_mode)


#: forms with a per-channel decay (gk or gv) / with scalar decays only (g, or none)
CHUNKED = _chunked_space("gla_chunked", True)
CHUNKED_SCALAR = _chunked_space("gla_chunked_scalar", False)


# ---- the fused GLA space (scalar decays, the state on chip: fused.py) -----------------------------
#: the sweeps: o and dv hold a [PK, BV] state tile (q, k whole, v / do tiled), dq and dk a [PV, BK]
#: one (do, v whole, k / q tiled); per launch the mean of the two tilings, its resources their max
_SWEEP_LIVE = sp.Max(PK * BV + 2 * BT * PK + 2 * BT * BV, PV * BK + 2 * BT * PV + 2 * BT * BK) + BT * BT

_fused_sweep = KernelModel(
    "fused_gla_sweep",
    grid=B * H * (cdiv_expr(V, BV) + cdiv_expr(K, BK)) / 2,
    # the x / y tiles of the contracted dimension and the z tile, staged per stage; the score tile
    smem=(2 * BT * sp.Max(PK, PV) + BT * sp.Max(BK, BV)) * S * ob + BT * BT * 4,
    live_fp32=_SWEEP_LIVE,
    # o / dv: two [T, K] inputs once per V-tile, one [T, V] input, the output; dq / dk: two [T, V]
    # inputs once per K-tile, two [T, K] inputs (z and the decay-gradient weight), the output and
    # the fp32 row sums (the mean of the four launches)
    bytes_moved=B * T * H * (2 * K * db * cdiv_expr(V, BV) + 2 * V * db
                             + 2 * V * db * cdiv_expr(K, BK) + 3 * K * db + 4 * cdiv_expr(K, BK)) / 2,
    tc_flops=B * T * H * (2 * BT * K * cdiv_expr(V, BV) + 2 * BT * V * cdiv_expr(K, BK)
                          + 8 * K * V + 2 * BT * (K + V)) / 2,
    fp32_flops=B * T * H * (4 * BT + K + V),
    serial_steps=NT, count=4,
    # fitted to 54 sm_90 builds (2026-12-07, Triton 3.9; simple_gla bf16, all four sweeps,
    # K = V = 64 and 128, BT 16-64, BK = BV 16-128, 4-16 warps): it separates the 12 spill-free
    # configs from the spilling ones without error. The [BT, BT] score tiles (scores, mask,
    # pairwise decays and their layout copies) weigh most; at K = V = 128 only 16-token chunks at
    # 8 warps with tiles up to 64 build without spills (docs/gla_math.md, section 5)
    regs_fit=80 + sp.ceiling(sp.Rational(11, 5) * (sp.Max(PK * BV, PV * BK) + 3 * BT * sp.Max(PK, PV)
                                                   + 12 * BT * BT) / (32 * W)))


def _fused_extra(shape, gpu):
    return [
        Constraint("bk_le_padded_k", BK, "le", sp.Integer(padded(shape.K)),
                   f"BK <= padded K = {padded(shape.K)}"),
        Constraint("bv_le_padded_v", BV, "le", sp.Integer(padded(shape.V)),
                   f"BV <= padded V = {padded(shape.V)}"),
        Constraint("bt_le_padded_t", BT, "le", sp.Integer(max(16, pow2(shape.T))),
                   f"BT <= padded T = {max(16, pow2(shape.T))}"),
    ]


def _fused_config(values: dict, shape: Shape) -> dict:
    return {k: int(values[k]) for k in ("BT", "BK", "BV", "num_warps", "num_stages")}


FUSED = Space(
    name="gla_fused", strategy="fused",
    params={BT: (16, 32, 64, 128), BK: (16, 32, 64, 128, 256), BV: (16, 32, 64, 128, 256),
            W: (1, 2, 4, 8, 16), S: (1, 2, 3, 4)},
    # the decay gradient's reverse cumsum runs with the fused config's num_warps too
    kernels=(_fused_sweep, _chunk_rev_cumsum),
    dot_dims=(BT, BK, BV), arange_dims=(BT, BK, BV),
    extra=_fused_extra, to_config=_fused_config,
    fp32_dot_passes=1)


# ---- the recurrent GLA space ---------------------------------------------------------------------
_rec_fwd = KernelModel(
    "recurrent_gla_fwd",
    grid=B * H * cdiv_expr(V, BV),
    smem=BV * 4 * W,                                    # cross-warp reduction scratch over K
    live_fp32=2 * BK * BV + 3 * BK + 2 * BV,
    bytes_moved=B * T * H * (K * cdiv_expr(V, BV) * (2 * db + 4) + V * 2 * db),   # o in db
    tc_flops=sp.Integer(0),
    fp32_flops=4 * B * T * H * K * V,
    serial_steps=T, count=1)

_rec_bwd = KernelModel(
    "recurrent_gla_bwd",
    grid=B * H * cdiv_expr(V, BV),
    smem=(BV + BK) * 4 * W,
    live_fp32=3 * BK * BV + 4 * BK + 4 * BV,
    # per V-tile: q, k twice, dq / dk partials and the decay terms q*dq, -k*dk (fp32), gk twice;
    # v, do twice, dv in db, the value-side terms o*do, -v*dv (fp32)
    bytes_moved=B * T * H * (K * cdiv_expr(V, BV) * (4 * db + 24) + V * (5 * db + 8)),
    tc_flops=sp.Integer(0),
    fp32_flops=10 * B * T * H * K * V,
    serial_steps=2 * T, count=1)


def _recurrent_extra(shape, gpu):
    return [Constraint("bv_le_padded_v", BV, "le", sp.Integer(padded(shape.V)),
                       f"BV <= padded V = {padded(shape.V)}")]


def _recurrent_config(values: dict, shape: Shape) -> dict:
    return {k: int(values[k]) for k in ("BK", "BV", "num_warps", "num_stages")}


RECURRENT = Space(
    name="gla_recurrent", strategy="recurrent",
    params={BK: lambda shape: (padded(shape.K),),     # the whole K extent is one register tile
            BV: (16, 32, 64, 128, 256), W: (1, 2, 4, 8, 16), S: (1, 2, 3)},
    # the decay gradients' reverse cumsum also runs with the recurrent config's num_warps
    kernels=(_rec_fwd, _rec_bwd, _chunk_rev_cumsum),
    dot_dims=(), arange_dims=(BK, BV),
    extra=_recurrent_extra, to_config=_recurrent_config)

SPACES = {"chunked": CHUNKED, "recurrent": RECURRENT}


def spaces_for(form) -> dict:
    """The spaces of one gated-linear form by strategy: a form whose decays are all scalar tunes in
    ``CHUNKED_SCALAR`` (no per-channel diagonal factors: whole-chunk sub-chunks fit) and has the
    ``FUSED`` strategy's too."""
    scalar = form.gk is None and form.gv is None
    return dict(SPACES, chunked=CHUNKED_SCALAR, fused=FUSED) if scalar else SPACES

#: the template modules whose launches an AOT check compiles
TEMPLATE_MODULES = ("gated_linear.kernels.chunked", "gated_linear.kernels.fused",
                    "gated_linear.kernels.recurrent", "gated_linear.kernels.maxplus")


def core_shape(B_: int, T_: int, H_: int, K_: int, V_: int, dtype) -> Shape:
    """The shape the runtime's model choice sees for a call of shape B, T, H with the form's head
    sizes K, V: T in its database bucket (the next power of two)."""
    return Shape(int(B_), bucket(int(T_)), int(H_), int(K_), int(V_), dtype)


def form_sizes(mixer, plan, request) -> tuple:
    """(K, V) of the plan's main form for the request's head sizes (the library maps them to its
    feature dims: ``request.feature_sizes``)."""
    sizes = request.feature_sizes(mixer, {f.k_dim for _, f in list(plan.aux) + [(None, plan.main)]
                                          if f.k_dim})
    f = plan.main
    return (sizes[f.k_dim] if f.k_dim else 1), (sizes[f.v_dim] if f.v_dim else 1)


def _is_template(rec) -> bool:
    return any(f".{m}." in rec.kernel.name for m in TEMPLATE_MODULES)


def record_config(mixer, strategy: str, config: dict, request, *, T: int | None = None,
                  backward: bool = True) -> list:
    """The template ``LaunchRecord``s that running ``mixer`` with ``config`` makes on tiny CPU
    inputs (the request's example inputs with its head sizes K, V), as a GPU makes them
    (``candidates.gpu_faithful``: bf16 recorded as fp16)."""
    from ..common.candidates import gpu_faithful, record, state_tensors, tensors, torch_dtype
    from ..family import compile_mixer
    dtype = request.dtype_name
    if T is None:
        T = int(config.get("BT", 16)) + 3 if strategy in ("chunked", "fused") else 3
    arrays, h0 = request.example_inputs(mixer, B=1, T=T, H=1, K=request.K, V=request.V)
    rec_dtype = torch_dtype("fp16" if dtype == "bf16" else dtype)
    compiled = compile_mixer(mixer, strategy=strategy, config=dict(config))

    def run():
        xs = tensors(mixer, arrays, rec_dtype, requires_grad=backward)
        init = state_tensors(h0, requires_grad=backward)
        o, S = compiled(*xs, initial_state=init, output_final_state=True, strategy=strategy)
        if backward:
            loss = o.float().sum() + sum(s.sum() for s in (S if isinstance(S, tuple) else (S,)))
            loss.backward()
    return record(run, keep=_is_template, rewrite=lambda r: gpu_faithful(r, dtype))


def compile_configs(mixer, strategy: str, configs: list, arch: str, request, *, backward=True,
                    workers=None, timeout_s: float = 300, progress=None) -> list:
    """Every config's template kernels built for ``arch``: one ``CompiledConfig`` per config."""
    from ..common.candidates import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, strategy, cfg, request, backward=backward), arch,
        workers=workers, timeout_s=timeout_s, progress=progress)


def probe_config(strategy: str, fK: int, fV: int) -> dict:
    """A small valid config whose launches show which template kernels a mixer runs."""
    PK, PV = padded(fK), padded(fV)
    if strategy == "chunked":
        return {"BT": 32, "BC": 16, "BK": min(64, PK), "BKS": min(64, PK), "BV": min(64, PV),
                "BVS": min(64, PV),
                "num_warps": 4, "num_stages": 1}
    if strategy == "fused":
        return {"BT": 32, "BK": min(64, PK), "BV": min(64, PV), "num_warps": 4, "num_stages": 1}
    return {"BK": PK, "BV": min(32, PV), "num_warps": 4, "num_stages": 1}


#: strategies tuned only when a request names them (``mixir tune --strategy fused``), so the
#: shipped database and ``mixir tune --all`` leave them out. The runtime's default picks fused on
#: a GPU where ``fused.suits``; without an entry its config is the cost model's best, else the
#: template default (both the spill-free 16-token chunks, 64-wide tiles, 8 warps at K = V = 128)
OPT_IN = ("fused",)


def _requested(request, avail) -> tuple:
    return tuple(request.strategies or (s for s in avail if s not in OPT_IN))


def kernel_signature(mixer, plan, request) -> tuple:
    """What decides a mixer's AOT results: the form's (K, V), its strategies and, per strategy, the
    set of template launches (kernel, argument types, constexprs such as USE_G / USE_GK / USE_GV,
    warps, stages) that a probe config records. Two mixers with equal signatures compile to the
    same template kernels for every config (the config only sets the block sizes, warps and
    stages of the same launches), so one AOT run serves both."""
    fK, fV = form_sizes(mixer, plan, request)
    avail = tuple(plan.strategies)
    request.say(f"recording {mixer.name}'s template launches")
    sig = [("form", fK, fV, avail, request.dtype_name)]
    for s in _requested(request, avail):
        if s in avail:
            recs = record_config(mixer, s, probe_config(s, fK, fV), request)
            sig.append((s, frozenset(r.key() for r in recs)))
    return tuple(sig)


def _compiler(mixer, strategy, request):
    return lambda configs, arch, **kw: compile_configs(mixer, strategy, configs, arch, request, **kw)


def targets(mixer, plan, request) -> list:
    """One ``TuningTarget`` per strategy of the request that the plan runs: the strategy's space at
    the user-level B, T, H with the form's head sizes (database strategy = the strategy name);
    timed against the recurrent strategy."""
    from ..common.candidates import timer
    fK, fV = form_sizes(mixer, plan, request)
    avail = tuple(plan.strategies)
    shape = Shape(request.B, request.T, request.H, fK, fV, request.dtype_name)
    spaces = spaces_for(plan.main)
    return [TuningTarget(s, spaces[s], shape, compile=_compiler(mixer, s, request),
                         time=timer(mixer, request, strategy=s, reference="recurrent"))
            for s in _requested(request, avail) if s in avail and s in spaces]


__all__ = ["CHUNKED", "CHUNKED_SCALAR", "FUSED", "RECURRENT", "SPACES", "spaces_for", "TEMPLATE_MODULES", "core_shape", "form_sizes",
           "record_config", "compile_configs", "probe_config", "kernel_signature", "targets"]
