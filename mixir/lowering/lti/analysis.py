"""Analysis of linear time-invariant (LTI) mixers: a constant transition read off the traced IR.

A mixer is LTI when its state update and its output are *linear* in the states and in one scalar
per-token input ``u``, with coefficients that are free of per-token inputs (they depend only on
``Param``s, scalars, constants and ``head()``). Then, per head,

    x_t = Ā x_{t-1} + B̄ u_t,        y_t = C' x_{t-1} + D' u_t

and the output is a causal convolution ``y = K * u`` with ``K_0 = D'`` and ``K_l = C' Ā^{l-1} B̄``.

**Linear normal form.** ``linearise`` rewrites every IR node into

    e = c + Σ_leaf d_leaf ⊙ leaf + Σ_k a_k · F_k,       F_k = Σ_N (w_k ⊙ leaf_k)   (a scalar)

where the leaves are the state leaves and ``u``, every coefficient (``c``, ``d``, ``a``, ``w``) is a
parameter-only IR tree, and the *functionals* ``F_k`` are what a sum over the state dim makes of
a state. Products of two state-dependent factors, a state under ``exp``/``where``/..., or an
input inside a coefficient are refused with the offending sub-expression named.

**Transition structure.** One state ``x[N]`` (real modes) or a pair ``x_re[N], x_im[N]`` whose
elementwise coupling is a rotation-scale ``[[a, -b], [b, a]]`` (complex modes ``z = x_re + i x_im``,
``λ = a + i b``), plus the rank-r term ``Σ_k U_k F_k``. In the conjugate-symmetric complex basis
``(z, z̄)`` of size 2N this is ``Ā = diag(Λ, Λ̄) + Ũ Ṽᵀ`` (diagonal plus low rank): r = 0 gives the
Vandermonde kernel (S4D, diagonal LSSL), r > 0 the Cauchy kernel with a Woodbury correction (S4).
A functional over the real part, ``Σ w x_re = Σ (w/2) z + (w/2) z̄``, has half-weight ``V = w/2``;
over the imaginary part, ``Σ w x_im``, ``V = -i w/2``; a real state is ``z = x`` (``V = w/2``).
"""
from __future__ import annotations

import dataclasses

from ...dsl import ir
from ...errors import UnsupportedMixerError

STRATEGIES = ("conv", "recurrent")


class NotLinear(Exception):
    def __init__(self, node, why):
        super().__init__(why)
        self.node, self.why = node, why


# --------------------------------------------------------------------------- the linear form

@dataclasses.dataclass(frozen=True)
class Fun:
    """``F = Σ_{dim} (weight ⊙ leaf)``: a scalar, linear in one state leaf."""
    leaf: ir.Node
    weight: ir.Node
    dim: str


@dataclasses.dataclass(frozen=True)
class LinForm:
    """``const + Σ diag[leaf] ⊙ leaf + Σ funs[F] · F`` (coefficients: parameter-only IR)."""
    const: ir.Node
    diag: tuple = ()          # ((leaf, coef), ...)
    funs: tuple = ()          # ((Fun, coef), ...)

    @property
    def is_const(self):
        return not self.diag and not self.funs

    def d(self):
        return dict(self.diag)

    def f(self):
        return dict(self.funs)


def _merge(a: dict, b: dict, op):
    out = dict(a)
    for k, v in b.items():
        out[k] = ir.binary(op, out[k], v) if k in out else (v if op == "add" else ir.unary("neg", v))
    return out


def _scale(form: LinForm, s: ir.Node, op="mul") -> LinForm:
    return LinForm(ir.binary(op, form.const, s),
                   tuple((k, ir.binary(op, v, s)) for k, v in form.diag),
                   tuple((k, ir.binary(op, v, s)) for k, v in form.funs))


def _free_of(node: ir.Node, leaves) -> bool:
    return not any(n in leaves for n in ir.toposort(node))


def linearise(root: ir.Node, linear_leaves, inputs) -> LinForm:
    """The linear normal form of ``root`` in ``linear_leaves`` (state leaves and ``u``).
    ``inputs``: every per-token input leaf; one may appear in a coefficient → ``NotLinear``."""
    linear_leaves = set(linear_leaves)
    bad_inputs = set(inputs) - linear_leaves
    memo: dict = {}
    for n in ir.toposort(root):
        if n in memo:
            continue
        if n in linear_leaves:
            memo[n] = LinForm(ir.const(0.0), ((n, ir.const(1.0)),))
            continue
        if n in bad_inputs:
            raise NotLinear(n, f"the per-token input {n.arg!r} enters the update other than as the "
                               f"linearly driven input")
        if not n.src:
            memo[n] = LinForm(n)
            continue
        src = [memo[s] for s in n.src]
        if all(s.is_const for s in src):
            memo[n] = LinForm(ir.rebuild(n, tuple(s.const for s in src)))
            continue
        memo[n] = _lin_op(n, src)
    return memo[root]


def _lin_op(n: ir.Node, src) -> LinForm:
    op = n.op
    if op in ("add", "sub"):
        a, b = src
        return LinForm(ir.binary(op, a.const, b.const), tuple(_merge(a.d(), b.d(), op).items()),
                       tuple(_merge(a.f(), b.f(), op).items()))
    if op == "neg":
        return _scale(src[0], ir.const(-1.0))
    if op == "mul":
        a, b = src
        if a.is_const:
            return _scale(b, a.const)
        if b.is_const:
            return _scale(a, b.const)
        raise NotLinear(n, f"a product of two state-dependent factors: {ir.render(n)}")
    if op == "div":
        a, b = src
        if b.is_const:
            return _scale(a, b.const, "div")
        raise NotLinear(n, f"a division by a state-dependent value: {ir.render(n)}")
    if op == "sum":
        (a,) = src
        dims = tuple(d for d in n.arg if d in n.src[0].dims)

        def total(coef):
            """Σ over ``dims`` of a coefficient broadcast to the summand's dims: a coefficient
            without the summed dim counts once per element (Σ_N c = |N| c)."""
            missing = tuple(d for d in dims if d not in coef.dims)
            if missing:
                coef = ir.binary("mul", coef, ir.const(1.0, missing))
            return ir.reduce("sum", coef, dims)
        const = total(a.const)
        diag, funs = {}, {}
        for leaf, coef in a.diag:
            summed = [d for d in dims if d in leaf.dims]
            if not summed:                     # a scalar-per-token leaf: sum its coefficient
                diag[leaf] = total(coef)
                continue
            if len(summed) != 1 or len(dims) != 1 or len(leaf.dims) != 1:
                raise NotLinear(n, f"a reduction over {list(dims)} of a state with dims "
                                   f"{list(leaf.dims)} (only a sum over a vector state's one dim)")
            if set(coef.dims) - set(leaf.dims):
                raise NotLinear(n, f"a dense (not diagonal-plus-low-rank) transition: the weight "
                                   f"{ir.render(coef)} has dims {list(coef.dims)}")
            funs[Fun(leaf, coef, summed[0])] = ir.const(1.0)
        for fun, coef in a.funs:
            c = total(coef)
            funs[fun] = ir.binary("add", funs[fun], c) if fun in funs else c
        return LinForm(const, tuple(diag.items()), tuple(funs.items()))
    raise NotLinear(n, f"{op}(...) of a state-dependent value: {ir.render(n)}")


# --------------------------------------------------------------------------- the plan

@dataclasses.dataclass(frozen=True)
class LowRankTerm:
    """``U_k F_k`` in the update: ``U = u_re + i u_im`` (half basis), ``F = Σ_parts Σ weight ⊙
    x_part`` (a real functional; reading x_re, x_im or both)."""
    u_re: ir.Node
    u_im: ir.Node
    parts: tuple               # (("re" | "im", weight), ...): which state each piece reads


@dataclasses.dataclass(frozen=True)
class ReadOut:
    """``coef · Σ weight ⊙ x_part`` in the output."""
    coef: ir.Node
    part: str
    weight: ir.Node


@dataclasses.dataclass(frozen=True)
class LTIPlan:
    mixer_name: str
    u: str                     # the driving per-token input
    dim: str                   # the state dim (N)
    x_re: str                  # the (real part) state
    x_im: str | None           # the imaginary-part state (None: real modes)
    lam_re: ir.Node
    lam_im: ir.Node
    beta_re: ir.Node
    beta_im: ir.Node
    lowrank: tuple             # LowRankTerm, ...
    readout: tuple             # ReadOut, ...
    feed: ir.Node              # D': the coefficient of u_t in y_t
    family: str = "lti"
    strategies: tuple = STRATEGIES
    key_dims: tuple = ()

    @property
    def rank(self) -> int:
        return len(self.lowrank)

    @property
    def kernel(self) -> str:
        return "Vandermonde" if not self.lowrank else "Cauchy (Woodbury, rank %d)" % self.rank

    @property
    def transition(self) -> str:
        modes = "complex" if self.x_im else "real"
        shape = "diagonal" if not self.lowrank else f"diagonal plus rank {self.rank}"
        return f"LTI: constant {shape} transition over {self.dim} ({modes} modes), {self.kernel} kernel"

    def describe(self) -> str:
        """The plan with its parameter trees; subterms shared between them are named once
        (``%k``, ``ir.render_shared``): S4's trees repeat ``d = 1/(2/Δ − Λ)`` many times."""
        st = self.x_re + (f" + i·{self.x_im}" if self.x_im else "")
        named = {"λ_re": self.lam_re, "λ_im": self.lam_im, "B̄_re": self.beta_re, "B̄_im": self.beta_im}
        for k, t in enumerate(self.lowrank):
            named[f"U{k}_re"], named[f"U{k}_im"] = t.u_re, t.u_im
            for j, (part, w) in enumerate(t.parts):
                named[f"F{k}.w{j} (on x_{part})"] = w
        for j, r in enumerate(self.readout):
            named[f"y.c{j}"], named[f"y.w{j} (on x_{r.part})"] = r.coef, r.weight
        named["D'"] = self.feed
        lines = [f"class: linear time-invariant (constant transition), {self.transition}",
                 f"state z = {st} over {self.dim}; input u = {self.u}",
                 "x_t = λ ⊙ x_{t−1} + Σ_k U_k F_k + B̄ u_t,  F_k = Σ_j Σ w_j ⊙ x_part;  "
                 "y_t = Σ_j c_j Σ w_j ⊙ x_part + D' u_t"]
        lines += ["  " + line for line in ir.render_shared(named)]
        lines.append(f"strategies: {', '.join(self.strategies)}")
        return "\n".join(lines)

    def input_ranges(self):
        return {}


def _unsupported(mixer, why):
    return UnsupportedMixerError(f"mixer {mixer.name}: not LTI: {why}")


def _random_values(mixer, roots, trials: int = 2):
    """The values of parameter-only trees at ``trials`` random parameter points (float64, two
    heads, dims of size 3): a list per trial, one tensor per root."""
    import torch
    from .params import eval_param_trees
    gen = torch.Generator().manual_seed(0)
    sizes = {d: 3 for spec in mixer.inputs for d in spec.dims}
    for d in mixer.states[0].dims:
        sizes.setdefault(d, 3)
    out = []
    for _ in range(trials):
        env = {}
        for spec in mixer.inputs:
            if spec.kind == "param":
                shape = (2,) + tuple(sizes[d] for d in spec.dims)
                env[ir.leaf("param", spec.name, spec.dims)] = 0.2 + 0.6 * torch.rand(
                    shape, generator=gen, dtype=torch.float64)
        for spec in mixer.scalars:
            env[ir.leaf("scalar", spec.name)] = 0.5
        out.append(eval_param_trees(list(roots), env, 2, sizes, torch.float64, "cpu"))
    return out


def _same_values(mixer, pairs, trials: int = 2) -> bool:
    """Whether each pair of parameter-only trees is the same function: structurally, or (for
    algebraically equal but differently built trees) at random parameter values in float64."""
    if all(a == b for a, b in pairs):
        return True
    import torch
    roots = [n for pair in pairs for n in pair]
    for vals in _random_values(mixer, roots, trials):
        for i in range(0, len(vals), 2):
            x, y = vals[i], vals[i + 1]
            if not bool(torch.isfinite(x).all()) or not torch.allclose(x, y, rtol=1e-9, atol=1e-12):
                return False
    return True


def analyse(mixer) -> LTIPlan:
    """The ``LTIPlan`` of ``mixer``, or ``UnsupportedMixerError`` saying why it is not LTI."""
    inputs = [a for a in mixer.inputs if a.kind == "input"]
    if len(inputs) != 1 or inputs[0].dims != ():
        raise _unsupported(mixer, "an LTI mixer has exactly one per-token input, a scalar In[()] "
                                  f"(got {[(a.name, a.dims) for a in inputs]})")
    u = ir.leaf("input", inputs[0].name, ())
    states = mixer.states
    if len(states) not in (1, 2) or any(len(s.dims) != 1 for s in states) \
            or len({s.dims for s in states}) != 1:
        raise _unsupported(mixer, "the state must be one vector State[N] or a (re, im) pair of "
                                  f"vectors over the same dim (got {[(s.name, s.dims) for s in states]})")
    if mixer.output.dims != ():
        raise _unsupported(mixer, f"the output must be a scalar per head and token, has dims "
                                  f"{list(mixer.output.dims)}")
    leaves = [ir.leaf("state", s.name, s.dims) for s in states]
    try:
        forms = [linearise(r, leaves + [u], [u]) for r in mixer.updates]
        out = linearise(mixer.output, leaves + [u], [u])
    except NotLinear as e:
        raise _unsupported(mixer, e.why) from None
    for f, s in zip(forms + [out], list(states) + [None]):
        if not ir.is_const(f.const, 0.0):
            where = f"the update of {s.name!r}" if s else "the output"
            raise _unsupported(mixer, f"{where} has a term without state or input "
                                      f"({ir.render(f.const)}): affine, not linear")
        for fun, _ in f.funs:
            if fun.leaf not in leaves:
                raise _unsupported(mixer, "a reduction of the input")
    dim = states[0].dims[0]
    zero = ir.const(0.0)
    x_re, x_im = leaves[0], (leaves[1] if len(leaves) == 2 else None)

    def coef(form, leaf):
        return form.d().get(leaf, zero)

    # the elementwise (diagonal) coupling
    if x_im is None:
        lam_re, lam_im = coef(forms[0], x_re), zero
    else:
        a, b = coef(forms[0], x_re), coef(forms[1], x_re)
        if not _same_values(mixer, [(coef(forms[1], x_im), a), (coef(forms[0], x_im), ir.unary("neg", b))]):
            raise _unsupported(mixer, f"the elementwise coupling of ({x_re.arg}, {x_im.arg}) is not a "
                                      f"rotation-scale [[a, -b], [b, a]] (a complex mode): "
                                      f"{ir.render(coef(forms[0], x_re))}, {ir.render(coef(forms[0], x_im))}, "
                                      f"{ir.render(coef(forms[1], x_re))}, {ir.render(coef(forms[1], x_im))}")
        lam_re, lam_im = a, b
    for node in (lam_re, lam_im):
        if node.dims not in ((), (dim,)):
            raise _unsupported(mixer, f"a transition coefficient with dims {list(node.dims)}")
    beta_re = coef(forms[0], u)
    beta_im = coef(forms[1], u) if x_im is not None else zero

    def part(fun):
        return "re" if fun.leaf == x_re else "im"

    funs = []
    for f in forms:
        for fun, _ in f.funs:
            if fun not in funs:
                funs.append(fun)
    lowrank = _low_rank_terms(mixer, [(forms[0].f().get(fun, zero),
                                        forms[1].f().get(fun, zero) if x_im is not None else zero,
                                        part(fun), fun.weight) for fun in funs], dim)
    readout = tuple(ReadOut(c, part(fun), fun.weight) for fun, c in out.funs)
    feed = coef(out, u)
    if any(leaf in (x_re, x_im) for leaf, _ in out.diag):
        raise _unsupported(mixer, "the output reads the state without reducing it over its dim")
    return LTIPlan(mixer.name, u.arg, dim, x_re.arg, None if x_im is None else x_im.arg,
                   lam_re, lam_im, beta_re, beta_im, lowrank, readout, feed, key_dims=(dim,))


# --------------------------------------------------------------------------- the rank

def _low_rank_terms(mixer, cols, dim) -> tuple:
    """The low-rank part ``Σ_k U_k F_k`` with as few terms as the traced columns allow.

    ``cols``: one ``(u_re, u_im, part, weight)`` per functional the update reads. A column that is
    a *real* multiple ``U_j = α U_k`` (α a per-head scalar) of an earlier one adds ``α F_j`` to
    that term's functional instead of a term of its own: ``U_k F_k + U_j F_j = U_k (F_k + α F_j)``
    (α real keeps ``F`` real, so the conjugate half ``Ū_k`` stays paired). A column that is zero
    for every parameter value is dropped. S4 declared as Woodbury's rank-one solve reads four
    functionals (Re and Im of ``P*·x`` twice) whose columns are all multiples of ``d P``: rank 1.
    Proportionality is tested at random parameter points (the identity test of polynomial
    algebra: two random points of a non-identity agree with probability zero); α is then built
    as an IR tree, ``Σ Re(U_j Ū_k) / Σ |U_k|²`` over the state dim."""
    if not cols:
        return ()
    import torch
    roots = [n for c in cols for n in c[:2]]
    trials = []
    for vals in _random_values(mixer, roots):
        us = []
        for i in range(len(cols)):
            re, im = (v if v.dim() == 2 else v[:, None].expand(-1, 3) for v in vals[2 * i:2 * i + 2])
            us.append(torch.complex(re, im))
        trials.append(us)

    def zero(j):
        return all(bool(torch.isfinite(us[j]).all()) and float(us[j].abs().max()) == 0.0 for us in trials)

    def real_multiple(j, k):
        for us in trials:
            a, b = us[j], us[k]
            den = (b.abs() ** 2).sum(-1, keepdim=True)
            alpha = (a * b.conj()).real.sum(-1, keepdim=True) / den
            if not (bool(torch.isfinite(alpha).all()) and bool((den > 0).all())):
                return False
            if float((a - alpha * b).abs().max()) > 1e-9 * (float(a.abs().max()) + 1e-300):
                return False
        return True

    def alpha_tree(cj, ck):
        if cj[:2] == ck[:2]:                  # the same column: α = 1
            return ir.const(1.0)
        ones = ir.const(1.0, (dim,))

        def total(x):
            return ir.reduce("sum", ir.binary("mul", x, ones), (dim,))
        num = ir.binary("add", ir.binary("mul", cj[0], ck[0]), ir.binary("mul", cj[1], ck[1]))
        den = ir.binary("add", ir.binary("mul", ck[0], ck[0]), ir.binary("mul", ck[1], ck[1]))
        return ir.binary("div", total(num), total(den))

    groups = []                # [rep column index, [(part, weight), ...]]
    for j, (_, _, part, w) in enumerate(cols):
        if zero(j):
            continue
        for g in groups:
            if real_multiple(j, g[0]):
                g[1].append((part, ir.binary("mul", alpha_tree(cols[j], cols[g[0]]), w)))
                break
        else:
            groups.append([j, [(part, w)]])
    return tuple(LowRankTerm(cols[k][0], cols[k][1], tuple(parts)) for k, parts in groups)
