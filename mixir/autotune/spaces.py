"""Tuning spaces of the lowering templates: integer parameters with power-of-two domains, and the
resource needs of every kernel as **sympy expressions** of the parameters and the problem shape.

These expressions are the single source for the CP-SAT solver (``solver.py`` translates them),
the brute-force filter (``feasible_bruteforce``), the cost model (``cost.py``) and the docs.

Shape symbols: B, T, H (batch, time, heads), K, V (head sizes), PK, PV (padded head sizes,
max(16, next_pow2(K))), db (bytes per input element), ob (bytes per tl.dot operand element: 4 when
the dots take fp32 operands - fp32 inputs, or the 16-bit backward with ``bwd_dot_fp32``), NT
(chunks per sequence, ceil(T / BT), treated as a formula of BT).

One config (BT, BC, BK, BV, num_warps, num_stages) drives every kernel of a strategy, forward and
backward, so the resource *constraints* hold for the maximum over the kernels, and the cost is the
sum over the launches of one training step (forward + backward).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable

import sympy as sp

from ..errors import TuningError

# ---- symbols ------------------------------------------------------------------------------------
B, T, H, K, V, PK, PV, db, ob = sp.symbols("B T H K V PK PV db ob", integer=True, positive=True)
BT, BC, BK, BV, W, S = sp.symbols("BT BC BK BV num_warps num_stages", integer=True, positive=True)
SHAPE_SYMBOLS = (B, T, H, K, V, PK, PV, db, ob)

# register model: fp32 tile elements live at the kernel's peak, spread over the threads, times
# REG_PER_ELEMENT (the value plus its share of pointer / mask registers), plus a fixed overhead for
# addresses, loop counters and the tf32x3 operand splits. Coarse: fitted by hand to ten random
# chunked configs compiled for sm_90 (K = V = 64, bf16, forward + backward; see docs/autotune.md).
REG_PER_ELEMENT = 2
REG_OVERHEAD = 96
# shared memory Triton reserves beyond the tiles (barriers, static 1 KiB on sm_90)
SMEM_RESERVED = 1024


def _cdiv(a, b):
    return sp.ceiling(a / b)


def pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def padded(n: int) -> int:
    return max(16, pow2(n))


@dataclasses.dataclass(frozen=True)
class KernelModel:
    """Resource formulas of one kernel launch (all sympy expressions)."""
    name: str
    grid: sp.Expr            # programs (CTAs)
    smem: sp.Expr            # bytes per CTA
    live_fp32: sp.Expr       # fp32 tile elements live at the peak (register model)
    bytes_moved: sp.Expr     # HBM bytes read + written
    tc_flops: sp.Expr        # tensor-core FLOPs
    fp32_flops: sp.Expr      # scalar (CUDA-core) FLOPs
    serial_steps: sp.Expr    # dependent loop iterations per program (latency chain)
    count: int = 1           # launches per training step (forward + backward)

    @functools.cached_property
    def regs(self):
        return sp.ceiling(REG_PER_ELEMENT * self.live_fp32 / (32 * W)) + REG_OVERHEAD


@dataclasses.dataclass(frozen=True)
class Constraint:
    """lhs <= rhs (kind "le"), lhs >= rhs ("ge"), lhs % rhs == 0 ("mod"), or a forbidden
    combination of parameter values (kind "forbid": ``terms`` ((param, op, value), ...) with op
    "==" or ">=", violated when every term holds; lhs / rhs unused).

    ``when`` ((param, value), ...) guards an "le" / "ge" constraint: it applies only to configs
    whose parameters take those values (the AOT feedback's per-warp-count corrections)."""
    name: str
    lhs: sp.Expr
    kind: str
    rhs: sp.Expr
    what: str                # human-readable, used in errors and docs
    when: tuple = ()         # ((param name, value), ...): the constraint applies only there
    terms: tuple = ()        # kind "forbid": ((param name, "==" | ">=", value), ...)

    def guard_holds(self, env: dict) -> bool:
        return all(int(env[str(p)]) == int(v) for p, v in self.when)

    def holds(self, env: dict) -> bool:
        if self.kind == "forbid":
            return not all(_term(env, *t) for t in self.terms)
        if not self.guard_holds(env):
            return True
        a, b = int(_num(self.lhs, env)), int(_num(self.rhs, env))
        return a <= b if self.kind == "le" else a >= b if self.kind == "ge" else a % b == 0

    def render(self) -> str:
        if self.kind == "forbid":
            return "not (" + " and ".join(f"{p} {op} {v}" for p, op, v in self.terms) + ")"
        guard = "".join(f" if {p} == {v}" for p, v in self.when)
        if self.kind == "mod":
            return f"{sp.sstr(self.lhs)} % {sp.sstr(self.rhs)} == 0"
        op = "<=" if self.kind == "le" else ">="
        return f"{sp.sstr(self.lhs)} {op} {sp.sstr(self.rhs)}{guard}"


def _term(env, p, op, v) -> bool:
    x = int(env[str(p)])
    return x == int(v) if op == "==" else x >= int(v)


@dataclasses.dataclass
class Space:
    name: str                       # "gla_chunked" / "gla_recurrent"
    strategy: str                   # gla_core strategy
    params: dict                    # symbol -> tuple of allowed values (powers of two)
    kernels: tuple                  # KernelModel, ...
    dot_dims: tuple = ()            # (symbol or expr) used as tl.dot operand dims
    arange_dims: tuple = ()         # tl.arange extents
    extra: Callable | None = None   # (shape, gpu) -> list[Constraint] specific to the template
    to_config: Callable | None = None

    # ---- derived formulas (max over kernels; built once: sympy's Max is slow to construct)
    @functools.cached_property
    def smem(self):
        return sp.Max(*[k.smem for k in self.kernels]) + SMEM_RESERVED

    @functools.cached_property
    def regs(self):
        return sp.Max(*[k.regs for k in self.kernels])

    @functools.cached_property
    def live_fp32(self):
        return sp.Max(*[k.live_fp32 for k in self.kernels])

    @property
    def threads(self):
        return 32 * W

    def symbols(self):
        return tuple(self.params)

    def param_names(self):
        return [str(s) for s in self.params]

    def domains(self, shape: "Shape") -> dict:
        """Domains after shape-dependent fixing (e.g. the recurrent BK is the whole padded K)."""
        out = {}
        for s, dom in self.params.items():
            dom = dom(shape) if callable(dom) else dom
            out[s] = tuple(sorted(set(int(v) for v in dom)))
        return out

    def constraints(self, shape: "Shape", gpu) -> list:
        mma_k = gpu.mma[shape.dot_dtype][2]
        cs = []
        for d in self.dot_dims:
            cs.append(Constraint(f"dot_min_{d}", d, "ge", sp.Integer(16),
                                 f"tl.dot operand dim {d} >= 16"))
            cs.append(Constraint(f"dot_mma_{d}", d, "mod", sp.Integer(mma_k),
                                 f"tl.dot operand dim {d} a multiple of the {shape.dot_dtype} MMA K={mma_k}"))
        if self.extra is not None:
            cs += self.extra(shape, gpu)
        cs += [
            Constraint("threads", self.threads, "le", sp.Integer(gpu.max_threads_block),
                       f"threads per block <= {gpu.max_threads_block}"),
            Constraint("shared_memory", self.smem, "le", sp.Integer(gpu.smem_block),
                       f"shared memory per block <= {gpu.smem_block} B ({gpu.name} opt-in limit)"),
            Constraint("registers_per_thread", self.regs, "le", sp.Integer(gpu.regs_per_thread),
                       f"registers per thread <= {gpu.regs_per_thread} (no spills)"),
            Constraint("register_file", self.regs * self.threads, "le", sp.Integer(gpu.regs_per_sm),
                       f"registers x threads <= {gpu.regs_per_sm} (>= 1 block per SM)"),
        ]
        return cs

    def substitutions(self, shape: "Shape") -> dict:
        return shape.subs()


@dataclasses.dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    K: int
    V: int
    dtype: str = "bf16"       # input dtype: "bf16" | "fp16" | "fp32"
    fp32_dots: bool = True    # whether some kernels take fp32 dot operands (fp32, or bwd_dot_fp32)

    @property
    def db(self):
        return 4 if self.dtype == "fp32" else 2

    @property
    def ob(self):
        return 4 if (self.dtype == "fp32" or self.fp32_dots) else 2

    @property
    def dot_dtype(self):
        return "fp32" if self.ob == 4 else self.dtype

    def subs(self) -> dict:
        return {B: self.B, T: self.T, H: self.H, K: self.K, V: self.V, PK: padded(self.K),
                PV: padded(self.V), db: self.db, ob: self.ob}


def _num(expr, env):
    v = sp.sympify(expr).subs(env)
    v = sp.nsimplify(v) if not v.is_number else v
    if not v.is_number:
        raise TuningError(f"formula {expr} has free symbols {v.free_symbols} after substitution")
    return v


# ---- the chunked GLA space -----------------------------------------------------------------------
NT = _cdiv(T, BT)
# The cumsum kernels run over the decay's channels: K for a per-key decay (gk), V for a per-value
# decay (gv, e.g. HGRN's), 1 for a scalar one (g). The formulas take the larger head size (an
# upper bound for every gate combination; K for GLA, V for HGRN, where K = 1).
DD = sp.Max(K, V)                 # decay channels (bound)
BD = sp.Min(64, sp.Max(PK, PV))   # the cumsum kernels' channel tile (fixed by gla_core: _tile(D, 64))
BKD = 16                          # diagonal-block key channels (gla_core default)
BVD = sp.Min(BV, 32)              # diagonal-block V tile when a V decay is used
BX = sp.Max(BK, BV)               # the output kernel runs with K and V swapped for dq / dk

_chunk_cumsum = KernelModel(
    "chunk_gla_cumsum",
    grid=B * NT * H * _cdiv(DD, BD),
    smem=BT * BD * 4,                                   # associative_scan scratch
    live_fp32=3 * BT * BD / 2,
    bytes_moved=B * T * H * DD * 4 * 3,
    tc_flops=sp.Integer(0),
    fp32_flops=B * T * H * DD * 4,
    serial_steps=sp.Integer(1), count=2)

_chunk_states = KernelModel(
    "chunk_gla_states",
    grid=B * H * _cdiv(K, BK) * _cdiv(V, BV),
    # tl.dot(trans(kx), vx): the kx tile is pipelined over num_stages, vx staged once
    smem=(BT * BK * S + BT * BV) * ob,
    # running matrix h, kx and its decay fb, vx (fp32), dot result
    live_fp32=2 * BK * BV + 2 * BT * BK + BT * BV,
    bytes_moved=B * T * H * (K * _cdiv(V, BV) * (db + 4) + V * _cdiv(K, BK) * db) + B * NT * H * K * V * 4,
    tc_flops=2 * B * T * H * K * V,
    fp32_flops=3 * B * T * H * K * V / BT + B * T * H * K * 2,
    serial_steps=NT, count=3)

_chunk_output = KernelModel(
    "chunk_gla_output",
    grid=B * NT * (BT / BC) * _cdiv(V, BV) * H,
    # operands of x@hs, x@y^T, A@z (num_stages per pipelined loop) + the [BC, BC] score tile
    smem=((BC * BX + BX * BX + BC * BC) * S + BC * BC + BC * BX) * ob,
    # acc, acc_o [BC, BV]; A [BC, BC]; x, y, fb tiles [BC, BK]; hs [BK, BV]; diag [BC, BC, BKD]
    live_fp32=2 * BC * BX + BC * BC + 3 * BC * BX + BX * BX // 2 + BC * BC * BKD,
    bytes_moved=(B * T * H * K * db * _cdiv(V, BV) * (1 + (BT / BC) / 2) * 2
                 + B * NT * H * K * V * 4 * (BT / BC) + B * T * H * V * (db + 4)),
    tc_flops=2 * B * T * H * K * V + B * T * H * BT * (K * _cdiv(V, BV) + V),
    fp32_flops=3 * B * T * H * BC * K,
    serial_steps=BT / BC, count=4)

_chunk_rev_cumsum = KernelModel(
    "chunk_gla_rev_cumsum",
    grid=B * H * _cdiv(DD, BD),
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
        Constraint("bv_le_padded_v", BV, "le", sp.Integer(padded(shape.V)),
                   f"BV <= padded V = {padded(shape.V)}"),
        Constraint("bt_le_padded_t", BT, "le", sp.Integer(max(16, pow2(shape.T))),
                   f"BT <= padded T = {max(16, pow2(shape.T))}"),
    ]


def _chunked_config(values: dict, shape: Shape) -> dict:
    cfg = {k: int(values[k]) for k in ("BT", "BC", "BK", "BV", "num_warps", "num_stages")}
    return cfg


CHUNKED = Space(
    name="gla_chunked", strategy="chunked",
    params={BT: (16, 32, 64, 128), BC: (16, 32, 64), BK: (16, 32, 64, 128, 256),
            BV: (16, 32, 64, 128, 256), W: (1, 2, 4, 8, 16), S: (1, 2, 3, 4)},
    kernels=(_chunk_cumsum, _chunk_states, _chunk_output, _chunk_rev_cumsum),
    dot_dims=(BT, BC, BK, BV), arange_dims=(BT, BC, BK, BV),
    extra=_chunked_extra, to_config=_chunked_config)


# ---- the recurrent GLA space ---------------------------------------------------------------------
_rec_fwd = KernelModel(
    "recurrent_gla_fwd",
    grid=B * H * _cdiv(V, BV),
    smem=BV * 4 * W,                                    # cross-warp reduction scratch over K
    live_fp32=2 * BK * BV + 3 * BK + 2 * BV,
    bytes_moved=B * T * H * (K * _cdiv(V, BV) * (2 * db + 4) + V * (db + 4)),
    tc_flops=sp.Integer(0),
    fp32_flops=4 * B * T * H * K * V,
    serial_steps=T, count=1)

_rec_bwd = KernelModel(
    "recurrent_gla_bwd",
    grid=B * H * _cdiv(V, BV),
    smem=(BV + BK) * 4 * W,
    live_fp32=3 * BK * BV + 4 * BK + 4 * BV,
    bytes_moved=B * T * H * (K * _cdiv(V, BV) * (4 * db + 16) + V * (4 * db + 8)),
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


def space(strategy: str) -> Space:
    if strategy == "attention":   # block-sparse softmax attention: attention_space.py (kept out of
        from .attention_space import ATTENTION   # SPACES, which the gated-linear reports iterate)
        return ATTENTION
    if strategy in ("delta_chunked", "delta_recurrent"):   # the Householder (delta-rule) templates:
        from .delta_space import SPACES as _DELTA          # delta_space.py (also kept out of SPACES)
        return _DELTA[strategy.split("_", 1)[1]]
    if strategy in ("lti_vandermonde", "lti_cauchy"):   # the LTI kernel pairs: lti_space.py
        from .lti_space import space as _lti_space       # (also kept out of SPACES)
        return _lti_space(strategy[len("lti_"):])
    if strategy not in SPACES:
        raise TuningError(f"no tuning space for strategy {strategy!r}; known: {', '.join(SPACES)}")
    return SPACES[strategy]


# ---- evaluation (no solver) ----------------------------------------------------------------------
_LAMBDA_CACHE: dict = {}


def compile_expr(expr, space_: Space):
    """A fast numeric function f(shape_values..., param_values...) of a sympy expression."""
    key = (expr, space_.name)
    fn = _LAMBDA_CACHE.get(key)
    if fn is None:
        syms = list(SHAPE_SYMBOLS) + list(space_.params)
        mods = [{"ceiling": lambda x: math.ceil(x - 1e-9), "Max": max, "Min": min,
                 "floor": math.floor}, "math"]
        fn = _LAMBDA_CACHE[key] = sp.lambdify(syms, expr, modules=mods)
    return fn


def evaluate(expr, space_: Space, shape: Shape, values: dict):
    subs = shape.subs()
    args = [subs[s] for s in SHAPE_SYMBOLS] + [values[str(p)] for p in space_.params]
    return compile_expr(expr, space_)(*args)


def _checker(c: Constraint, space_, shape):
    """A fast predicate values-tuple -> bool for one constraint under one shape."""
    names = [str(p) for p in space_.params]
    if c.kind == "forbid":
        idx = [(names.index(str(p)), op, int(v)) for p, op, v in c.terms]
        return lambda vals: not all((vals[i] == v) if op == "==" else (vals[i] >= v) for i, op, v in idx)
    subs = shape.subs()
    head = [subs[x] for x in SHAPE_SYMBOLS]
    fl, fr = compile_expr(c.lhs, space_), compile_expr(c.rhs, space_)
    if c.kind == "le":
        check = lambda vals: fl(*head, *vals) <= fr(*head, *vals) + 1e-9  # noqa: E731
    elif c.kind == "ge":
        check = lambda vals: fl(*head, *vals) + 1e-9 >= fr(*head, *vals)  # noqa: E731
    else:
        check = lambda vals: int(round(fl(*head, *vals))) % int(round(fr(*head, *vals))) == 0  # noqa: E731
    if not c.when:
        return check
    guard = [(names.index(str(p)), int(v)) for p, v in c.when]
    return lambda vals: any(vals[i] != v for i, v in guard) or check(vals)


def _check(c: Constraint, space_, shape, values) -> bool:
    return _checker(c, space_, shape)(tuple(values[str(p)] for p in space_.params))


def all_configs(space_: Space, shape: Shape):
    doms = space_.domains(shape)
    names = [str(s) for s in doms]
    for combo in itertools.product(*doms.values()):
        yield dict(zip(names, combo))


def feasible_bruteforce(space_: Space, shape: Shape, gpu, constraints=None) -> list[dict]:
    """Every config of the space that satisfies every constraint (pure Python; the reference the
    CP-SAT enumeration is tested against)."""
    cs = space_.constraints(shape, gpu) if constraints is None else constraints
    checks = [_checker(c, space_, shape) for c in cs]
    doms = space_.domains(shape)
    names = [str(p) for p in doms]
    out = []
    for combo in itertools.product(*doms.values()):
        if all(ch(combo) for ch in checks):
            out.append(dict(zip(names, combo)))
    return out


def violated(space_: Space, shape: Shape, gpu, values: dict) -> list:
    return [c for c in space_.constraints(shape, gpu) if not _check(c, space_, shape, values)]


def resources(space_: Space, shape: Shape, values: dict) -> dict:
    """Predicted shared memory (bytes), registers per thread and threads of one config."""
    return {"smem": int(evaluate(space_.smem, space_, shape, values)),
            "regs": int(evaluate(space_.regs, space_, shape, values)),
            "threads": 32 * int(values["num_warps"])}


def formulas(space_: Space) -> dict:
    """{kernel: {quantity: sympy expr}} plus the space-wide maxima (for docs and ``mixir show``)."""
    out = {}
    for k in space_.kernels:
        out[k.name] = {"grid": k.grid, "shared memory (B)": k.smem, "registers/thread": k.regs,
                       "HBM bytes": k.bytes_moved, "tensor-core FLOPs": k.tc_flops,
                       "fp32 FLOPs": k.fp32_flops, "serial steps": k.serial_steps,
                       "launches per step": k.count}
    return out


__all__ = ["Space", "Shape", "KernelModel", "Constraint", "CHUNKED", "RECURRENT", "SPACES", "space",
           "feasible_bruteforce", "all_configs", "violated", "resources", "formulas", "evaluate",
           "padded", "pow2"]
