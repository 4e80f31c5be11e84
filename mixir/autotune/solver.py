"""CP-SAT model of a tuning space: enumerate every feasible config; explain infeasibility.

This is the only module that imports ``ortools`` (lazily, inside the functions): compiling with a
shipped tuning database needs no solver.

The sympy formulas of ``autotune/space.py`` are translated by ``_Translator``: sums stay linear, integer
coefficients scale, products (and positive integer powers) get auxiliary variables through
``AddMultiplicationEquality``, ``ceiling(p / q)`` and ``floor(p / q)`` through
``AddDivisionEquality``, ``Max`` / ``Min`` through ``AddMaxEquality`` / ``AddMinEquality``. Every
auxiliary variable gets the interval-arithmetic bounds of its expression. Power-of-two parameters
are an exponent variable tied to the value by ``AddAllowedAssignments``.
"""
from __future__ import annotations

import math

import sympy as sp

from ..errors import TuningError


def available() -> bool:
    try:
        import ortools.sat.python.cp_model  # noqa: F401
        return True
    except Exception:
        return False


def _cp():
    try:
        from ortools.sat.python import cp_model
    except Exception as e:  # pragma: no cover - ortools is a tuning extra
        raise TuningError(f"the autotuner's solver needs ortools (pip install ortools): {e}") from e
    return cp_model


def _solver():
    """A single-threaded ``CpSolver`` that leaves SIGINT alone: by default CP-SAT installs its own
    SIGINT handler, after which Ctrl-C kills the process (exit 130) instead of raising
    ``KeyboardInterrupt`` - in a user's training script too (the runtime's model choice solves)."""
    s = _cp().CpSolver()
    s.parameters.catch_sigint_signal = False
    s.parameters.num_workers = 1
    return s


class _Translator:
    """sympy expression (shape already substituted) -> (CP-SAT linear expression or int, lo, hi)."""

    def __init__(self, model, vars_: dict, bounds: dict):
        self.m = model
        self.vars = vars_            # sympy Symbol -> IntVar
        self.bnd = bounds            # sympy Symbol -> (lo, hi)
        self.n_aux = 0
        self.cache = {}

    def _new(self, lo, hi, tag):
        self.n_aux += 1
        return self.m.NewIntVar(int(lo), int(hi), f"{tag}{self.n_aux}")

    def var(self, e):
        """Like ``lin`` but a single IntVar (or an int constant)."""
        x, lo, hi = self.lin(e)
        if isinstance(x, int) or isinstance(e, sp.Symbol):
            return x, lo, hi
        key = ("var", e)
        if key in self.cache:
            return self.cache[key]
        v = self._new(lo, hi, "t")
        self.m.Add(v == x)
        self.cache[key] = (v, lo, hi)
        return self.cache[key]

    def lin(self, e):
        e = sp.sympify(e)
        if e in self.cache:
            return self.cache[e]
        out = self._lin(e)
        self.cache[e] = out
        return out

    def _lin(self, e):
        if e.is_Integer:
            return int(e), int(e), int(e)
        if e.is_Rational:
            raise TuningError(f"cannot translate the non-integer constant {e} (use ceiling/floor)")
        if isinstance(e, sp.Symbol):
            if e not in self.vars:
                raise TuningError(f"formula symbol {e} is neither a parameter nor a shape value")
            lo, hi = self.bnd[e]
            return self.vars[e], lo, hi
        if isinstance(e, sp.Add):
            tot, lo, hi = 0, 0, 0
            for a in e.args:
                x, l, h = self.lin(a)
                tot, lo, hi = tot + x, lo + l, hi + h
            return tot, lo, hi
        if isinstance(e, sp.Mul):
            c, rest = e.as_coeff_Mul()
            if c != 1:
                if not c.is_Integer:
                    raise TuningError(f"cannot translate the non-integer coefficient {c} in {e}")
                x, l, h = self.lin(rest)
                c = int(c)
                return c * x, min(c * l, c * h), max(c * l, c * h)
            factors = []
            for a in e.args:
                if isinstance(a, sp.Pow) and a.exp.is_Integer and a.exp > 0:
                    factors += [a.base] * int(a.exp)
                else:
                    factors.append(a)
            return self._product(factors)
        if isinstance(e, sp.Pow):
            if e.exp.is_Integer and e.exp > 0:
                return self._product([e.base] * int(e.exp))
            raise TuningError(f"cannot translate {e}: only positive integer powers (put divisions "
                              f"inside ceiling() or floor())")
        if isinstance(e, (sp.ceiling, sp.floor)):
            num, den = sp.fraction(sp.together(e.args[0]))
            if den == 1:
                return self.lin(num)
            n, nl, nh = self.var(num)
            d, dl, dh = self.var(den)
            if dl <= 0:
                raise TuningError(f"cannot translate {e}: the divisor may be <= 0")
            if isinstance(e, sp.ceiling):
                n2 = self._new(nl + dl - 1, nh + dh - 1, "n")
                self.m.Add(n2 == n + d - 1)
                n, nl, nh = n2, nl + dl - 1, nh + dh - 1
            lo, hi = nl // dh, nh // dl
            q = self._new(lo, hi, "q")
            if isinstance(n, int):
                n = self.m.NewConstant(n)
            if isinstance(d, int):
                d = self.m.NewConstant(d)
            self.m.AddDivisionEquality(q, n, d)
            return q, lo, hi
        if isinstance(e, (sp.Max, sp.Min)):
            parts = [self.lin(a) for a in e.args]
            f = max if isinstance(e, sp.Max) else min
            lo, hi = f(p[1] for p in parts), f(p[2] for p in parts)
            t = self._new(lo, hi, "mx")
            (self.m.AddMaxEquality if isinstance(e, sp.Max) else self.m.AddMinEquality)(t, [p[0] for p in parts])
            return t, lo, hi
        raise TuningError(f"cannot translate {type(e).__name__} in the formula {e}")

    def _product(self, factors):
        acc, lo, hi = self.var(factors[0])
        for f in factors[1:]:
            x, l, h = self.var(f)
            if isinstance(acc, int) or isinstance(x, int):
                c, (y, yl, yh) = (acc, (x, l, h)) if isinstance(acc, int) else (x, (acc, lo, hi))
                acc, lo, hi = c * y, min(c * yl, c * yh), max(c * yl, c * yh)
                continue
            cands = [lo * l, lo * h, hi * l, hi * h]
            nlo, nhi = min(cands), max(cands)
            t = self._new(nlo, nhi, "p")
            self.m.AddMultiplicationEquality(t, [acc, x])
            acc, lo, hi = t, nlo, nhi
        return acc, lo, hi


def _build(space, shape, gpu, constraints):
    cp_model = _cp()
    m = cp_model.CpModel()
    doms = space.domains(shape)
    vars_, bounds = {}, {}
    for s, dom in doms.items():
        x = m.NewIntVar(min(dom), max(dom), str(s))
        if all(v > 0 and v & (v - 1) == 0 for v in dom):
            # power-of-two domain: exponent variable tied to the value
            e = m.NewIntVar(int(math.log2(min(dom))), int(math.log2(max(dom))), f"log2_{s}")
            m.AddAllowedAssignments([e, x], [(int(math.log2(v)), v) for v in dom])
        else:
            m.AddAllowedAssignments([x], [(v,) for v in dom])
        vars_[s], bounds[s] = x, (min(dom), max(dom))
    tr = _Translator(m, vars_, bounds)
    subs = shape.subs()
    handles = []
    by_name = {str(s): x for s, x in vars_.items()}
    lits = {}

    def lit(p, op, v):
        """A Boolean literal equivalent to ``param op v`` (cached)."""
        key = (str(p), op, int(v))
        if key not in lits:
            x, b = by_name[str(p)], m.NewBoolVar(f"{p}{'eq' if op == '==' else 'ge'}{v}")
            if op == "==":
                m.Add(x == int(v)).OnlyEnforceIf(b)
                m.Add(x != int(v)).OnlyEnforceIf(b.Not())
            else:
                m.Add(x >= int(v)).OnlyEnforceIf(b)
                m.Add(x < int(v)).OnlyEnforceIf(b.Not())
            lits[key] = b
        return lits[key]

    for c in constraints:
        if c.kind == "forbid":
            unknown = [p for p, _, _ in c.terms if str(p) not in by_name]
            if unknown:
                raise TuningError(f"constraint {c.name} names unknown parameters {unknown}")
            handles.append(m.AddBoolOr([lit(p, op, v).Not() for p, op, v in c.terms]))
            continue
        guard = [lit(p, "==", v) for p, v in c.when]
        lhs, _, _ = tr.lin(sp.sympify(c.lhs).subs(subs))
        rhs_e = sp.sympify(c.rhs).subs(subs)
        if c.kind == "mod":
            if not rhs_e.is_Integer:
                raise TuningError(f"constraint {c.name}: the modulus must be a constant")
            x, _, _ = tr.var(sp.sympify(c.lhs).subs(subs))
            if c.when:
                raise TuningError(f"constraint {c.name}: a modulo constraint cannot be guarded")
            if isinstance(x, int):
                ok = x % int(rhs_e) == 0
                handles.append(m.Add(0 == (0 if ok else 1)))
            else:
                handles.append(m.AddModuloEquality(0, x, int(rhs_e)))
            continue
        rhs, _, _ = tr.lin(rhs_e)
        h = m.Add(lhs <= rhs) if c.kind == "le" else m.Add(lhs >= rhs)
        if guard:
            h.OnlyEnforceIf(guard)
        handles.append(h)
    return m, vars_, tr


def _enumerate(m, vars_):
    cp_model = _cp()
    names = [str(s) for s in vars_]
    found = []

    class _Collect(cp_model.CpSolverSolutionCallback):
        def __init__(self):
            super().__init__()

        def on_solution_callback(self):
            found.append(tuple(self.Value(v) for v in vars_.values()))

    solver = _solver()
    solver.parameters.enumerate_all_solutions = True
    status = solver.Solve(m, _Collect())
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.INFEASIBLE):
        raise TuningError(f"CP-SAT stopped without a complete enumeration ({solver.StatusName(status)})")
    return [dict(zip(names, t)) for t in sorted(set(found))]


def enumerate_feasible(space, shape, gpu, constraints=None, explain: bool = True) -> list[dict]:
    """Every feasible config of ``space`` for ``shape`` on ``gpu`` (dicts of parameter values,
    sorted). An empty result raises ``TuningError`` naming the binding constraint when ``explain``.
    Results are kept per (space, shape, GPU, constraints) for the process: a tuning run re-solves
    the same problem after feedback that changed nothing, and the full enumeration of a chunked
    space takes seconds."""
    cs = space.constraints(shape, gpu) if constraints is None else list(constraints)
    key = (id(space), space.name, shape, gpu, tuple(cs))
    out = _ENUMERATED.get(key)
    if out is None:
        m, vars_, _ = _build(space, shape, gpu, cs)
        out = _ENUMERATED[key] = _enumerate(m, vars_)
        while len(_ENUMERATED) > 64:           # a bounded memo, oldest first
            _ENUMERATED.pop(next(iter(_ENUMERATED)))
    if not out and explain:
        raise TuningError(explain_infeasible(space, shape, gpu, cs))
    return [dict(c) for c in out]


_ENUMERATED: dict = {}


def first_feasible(space, shape, gpu, constraints=None) -> dict | None:
    """One feasible config of ``space`` (a dict of parameter values), or None: a single CP-SAT
    solve, for callers that only ask whether the space is empty."""
    cp_model = _cp()
    cs = space.constraints(shape, gpu) if constraints is None else list(constraints)
    m, vars_, _ = _build(space, shape, gpu, cs)
    solver = _solver()
    if solver.Solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return {str(s): solver.Value(v) for s, v in vars_.items()}


RESOURCE_CONSTRAINTS = ("threads", "shared_memory", "registers_per_thread", "register_file")


def _message(c, what, gpu, lv, rv):
    if c.name == "shared_memory":
        return (f"{what} needs >= {lv / 1024:.0f} KiB of shared memory per block; "
                f"{gpu.name} has {rv / 1024:.0f} KiB")
    if c.name == "registers_per_thread":
        return f"{what} needs >= {lv} registers per thread (predicted); {gpu.name} allows {rv}"
    if c.name == "register_file":
        return f"{what} needs >= {lv} registers per block; {gpu.name} has {rv} per SM"
    op = "<=" if c.kind == "le" else ">="
    return f"{what}: constraint {c.name} ({c.what}) needs {lv} {op} {rv}"


def _min_gap(space, shape, gpu, c, others):
    """The smallest violation (lhs, rhs) of ``c`` over the configs satisfying ``others``; None if
    those are infeasible."""
    cp_model = _cp()
    subs = shape.subs()
    m, vars_, tr = _build(space, shape, gpu, others)
    lhs, _, _ = tr.lin(sp.sympify(c.lhs).subs(subs))
    rhs, _, _ = tr.lin(sp.sympify(c.rhs).subs(subs))
    gap = lhs - rhs if c.kind == "le" else rhs - lhs
    if isinstance(gap, int):
        return lhs, rhs
    m.Minimize(gap)
    solver = _solver()
    if solver.Solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    lv = solver.Value(lhs) if not isinstance(lhs, int) else lhs
    rv = solver.Value(rhs) if not isinstance(rhs, int) else rhs
    return lv, rv


def explain_infeasible(space, shape, gpu, constraints) -> str:
    """Relax the constraints one at a time and name those whose removal makes the problem
    feasible, with the smallest value the rest of the model allows; when no single one does, name
    each resource constraint that no config meeting the structural constraints can satisfy."""
    cp_model = _cp()
    what = (f"{space.name} with B={shape.B}, T={shape.T}, H={shape.H}, K={shape.K}, V={shape.V} "
            f"in {shape.dtype}")
    binding = []
    for i, c in enumerate(constraints):
        rest = constraints[:i] + constraints[i + 1:]
        if c.kind in ("mod", "forbid") or c.when:
            m, _, _ = _build(space, shape, gpu, rest)
            if _solver().Solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                binding.append(f"{what}: {c.what} cannot hold")
            continue
        r = _min_gap(space, shape, gpu, c, rest)
        if r is not None:
            binding.append(_message(c, what, gpu, *r))
    if not binding:
        structural = [c for c in constraints if c.name not in RESOURCE_CONSTRAINTS]
        for c in constraints:
            if c.name in RESOURCE_CONSTRAINTS and not c.when:
                r = _min_gap(space, shape, gpu, c, structural)
                if r is not None and (r[0] > r[1] if c.kind == "le" else r[0] < r[1]):
                    binding.append(_message(c, what, gpu, *r))
    if binding:
        return "no feasible config: " + "; and ".join(binding)
    return (f"no feasible config for {what} on {gpu.name}, and no single constraint is binding "
            f"(constraints: {', '.join(c.name for c in constraints)})")


__all__ = ["available", "enumerate_feasible", "explain_infeasible"]
