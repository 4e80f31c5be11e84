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

from ..tiles import padded, pow2
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


def cdiv_expr(a, b):
    return sp.ceiling(a / b)


#: log2(16 / num_warps) for num_warps in {1, 2, 4, 8, 16}, in terms the CP-SAT translator takes
LOG2_16_OVER_W = sum(sp.Min(1, sp.floor(sp.Integer(j) / W)) for j in (8, 4, 2, 1))


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
    #: registers per thread fitted to ptxas builds of this kernel (an integer-valued expression),
    #: where the generic model (``REG_PER_ELEMENT`` x live elements per thread + ``REG_OVERHEAD``)
    #: misjudges it; None: the generic model
    regs_fit: sp.Expr | None = None

    @functools.cached_property
    def regs(self):
        if self.regs_fit is not None:
            return self.regs_fit
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


@dataclasses.dataclass(eq=False)
class Space:
    """One tuning space: the parameters with their domains, the kernel models of one config's
    launches and the template's extra constraints. Compared and hashed by identity (a family builds
    each space once), so the runtime's model-best lookup can cache by space."""
    name: str                       # e.g. "gla_chunked", "delta_recurrent", "lti_cauchy"
    strategy: str                   # the strategy (cost.STEP_LATENCY_S looks it up)
    params: dict                    # symbol -> tuple of allowed values (powers of two)
    kernels: tuple                  # KernelModel, ...
    dot_dims: tuple = ()            # (symbol or expr) used as tl.dot operand dims
    arange_dims: tuple = ()         # tl.arange extents
    extra: Callable | None = None   # (shape, gpu) -> list[Constraint] specific to the template
    to_config: Callable | None = None
    #: tensor-core passes of a 16-bit input's backward dot with fp32 operands: 3 for "tf32x3"
    #: (about fp32 accuracy), 1 for "tf32" (cost.predict divides the tf32 peak by it)
    fp32_dot_passes: int = 3

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


def size(space_: Space, shape: Shape) -> int:
    """The number of points of the space at ``shape`` (the product of its domains)."""
    return math.prod(len(d) for d in space_.domains(shape).values())


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


__all__ = ["Space", "Shape", "KernelModel", "Constraint", "size",
           "feasible_bruteforce", "all_configs", "violated", "resources", "formulas", "evaluate",
           "padded", "pow2"]
