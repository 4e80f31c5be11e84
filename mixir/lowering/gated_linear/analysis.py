"""Analysis: classify a mixer's state update from its traced IR (never from its name).

The gated-linear family is every update of the form

    S_t = exp(g_t) · exp(gk_t)[K, None] · exp(gv_t)[None, V] ⊙ S_{t-1} + k_t v_tᵀ,   o_t = e_t ⊙ (S_tᵀ q_t) + d_t

found by symbolic differentiation: the transition is ``A = ∂S_new/∂S`` (pointwise, must not depend
on S), the input term is ``U = S_new |_{S=0}`` (must be one outer product), and the output must be
affine in one read-out ``q @ S_new``. Every piece (q, k, v, the log-decays, e, d) is an IR tree
over the inputs, which the lowering evaluates per token. Transition factors that may be negative
are kept as ``log|a|`` plus a sign, which the runtime folds into q, k (or v) and o.
"""
from __future__ import annotations

import dataclasses

from ...dsl import ir
from ...dsl.grad import NotPointwise, tangent
from ...errors import UnsupportedMixerError
from ..common.algebra import Decay, decay, factors, product, readout, render_plan

STRATEGIES = ("recurrent", "chunked")


@dataclasses.dataclass(frozen=True)
class GatedLinearForm:
    state: object              # StateSpec
    k_dim: str | None          # the state dim the read-out contracts (None: a unit dim)
    v_dim: str | None          # the other state dim (None: a unit dim)
    q: ir.Node
    k: ir.Node
    v: ir.Node
    g: Decay | None            # scalar per head and token
    gk: Decay | None           # along k_dim
    gv: Decay | None           # along v_dim
    out_scale: ir.Node         # e
    out_bias: ir.Node          # d
    family: str = "gated_linear"
    strategies: tuple = STRATEGIES

    def pieces(self):
        out = {"q": self.q, "k": self.k, "v": self.v}
        for name in ("g", "gk", "gv"):
            d = getattr(self, name)
            if d is not None:
                out[name] = d.log
                if d.sign is not None:
                    out[name + "_sign"] = d.sign
        out["e"] = self.out_scale
        out["d"] = self.out_bias
        return out

    @property
    def transition(self) -> str:
        kinds = [n for n, d in (("scalar", self.g), (f"diagonal along {self.k_dim}", self.gk),
                                (f"diagonal along {self.v_dim}", self.gv)) if d is not None]
        signed = any(d is not None and d.sign is not None for d in (self.g, self.gk, self.gv))
        text = " × ".join(kinds) if kinds else "identity"
        return text + (" (may be negative: sign tracked)" if signed else "")

    def describe(self) -> str:
        return render_plan([f"class: affine state update, {self.transition} transition",
                            f"state {self.state.name}{list(self.state.dims)}: K = {self.k_dim or '1'}, "
                            f"V = {self.v_dim or '1'}"], self.pieces(), self.strategies)


def _unsupported(mixer, why: str):
    return UnsupportedMixerError(f"mixer {mixer.name}: not supported by any strategy yet: {why}")


def analyse_state(mixer, spec, F, output) -> GatedLinearForm:
    """Classify one state ``spec`` with update ``F`` read out by ``output``."""
    S = ir.leaf("state", spec.name, spec.dims)
    if len(spec.dims) > 2:
        raise _unsupported(mixer, f"state {spec.name!r} has {len(spec.dims)} dims; at most 2 are supported")
    try:
        A = tangent(F, S)
    except NotPointwise as err:
        raise _unsupported(mixer, f"the update contracts the state in `{ir.render(err.node)}`: "
                                  "transitions that mix state entries (identity minus low rank, "
                                  "dense) belong to other families") from None
    if ir.contains(A, S):
        raise _unsupported(mixer, f"the update is nonlinear in the state: its derivative "
                                  f"`{ir.render(A)}` depends on {spec.name}")
    U = ir.substitute(F, {S: ir.const(0.0, S.dims)})
    snew = ir.leaf("state", spec.name + "'", S.dims)
    out = ir.substitute(output, {F: snew})
    q, k_dim, e, d = readout(mixer, out, snew, S, _unsupported)
    v_dim = next((x for x in spec.dims if x != k_dim), None)
    # transition factors → scalar / along K / along V
    groups = {(): [], (k_dim,): [], (v_dim,): []}
    for f in factors(A):
        key = tuple(x for x in spec.dims if x in f.dims)
        if len(key) > 1:
            raise _unsupported(mixer, f"the transition factor `{ir.render(f)}` varies along both state "
                                      "dims; only scalar, row or column decays (a ⊙ S ⊙ b) are supported")
        if bad := [x for x in f.dims if x not in spec.dims]:
            raise _unsupported(mixer, f"the transition factor `{ir.render(f)}` has dims {bad} outside the state")
        groups[key].append(f)
    # input term: one outer product
    if U.op in ("add", "sub"):
        raise _unsupported(mixer, f"the input term `{ir.render(U)}` is a sum; this family needs one "
                                  "outer product k ⊗ v (times gates)")
    kf, vf = [], []
    for f in factors(U):
        key = tuple(x for x in spec.dims if x in f.dims)
        if len(key) > 1:
            raise _unsupported(mixer, f"the input term's factor `{ir.render(f)}` varies along both state dims; "
                                      "write it as mixir.outer(k, v)")
        (kf if key == (k_dim,) and k_dim is not None else vf).append(f)
    for name, node in (("output scale", e), ("output bias", d)):
        if bad := [x for x in node.dims if x != v_dim]:
            raise _unsupported(mixer, f"the {name} `{ir.render(node)}` has dims {bad} beyond the read-out's")
    gk = decay(mixer, groups[(k_dim,)], _unsupported) if k_dim else None
    gv = decay(mixer, groups[(v_dim,)], _unsupported) if v_dim else None
    return GatedLinearForm(
        state=spec, k_dim=k_dim, v_dim=v_dim, q=q, k=product(kf), v=product(vf),
        g=decay(mixer, groups[()], _unsupported), gk=gk, gv=gv, out_scale=e, out_bias=d,
        # scalar decays only: the state-on-chip sweeps (core's "fused" strategy) apply too
        strategies=STRATEGIES + (("fused",) if gk is None and gv is None else ()))


@dataclasses.dataclass(frozen=True)
class MaxPlusForm:
    """A stabiliser state: a max-plus linear recurrence, elementwise over the state's dims,

        m_t = max(m_{t-1} + a_t, b_t)

    (xLSTM's ``m_t = max(log f_t + m_{t-1}, log i_t)``), with ``a`` and ``b`` per-token
    expressions of the inputs (and of earlier auxiliary states). It is not affine, but it is a
    scan over the (max, +) semiring with the closed form

        m_t = F_t + max(m_0, max_{s≤t} (b_s - F_s)),     F_t = Σ_{r≤t} a_r

    (a cumulative sum and a cumulative max per sequence), which the runtime evaluates in torch.
    The attributes ``k_dim, v_dim, g, gk, gv`` are None: it has no gated-linear pieces.
    """
    state: object              # StateSpec
    a: ir.Node                 # the additive log-decay of the carried branch
    b: ir.Node                 # the floor (the branch free of the state)
    family: str = "gated_linear"
    strategies: tuple = STRATEGIES
    k_dim = None
    v_dim = None
    g = gk = gv = None

    def pieces(self):
        return {"a": self.a, "b": self.b}

    @property
    def transition(self) -> str:
        return "max-plus (stabiliser)"

    def describe(self) -> str:
        return render_plan([f"class: max-plus stabiliser {self.state.name}' = max({self.state.name} + a, b), "
                            f"state {self.state.name}{list(self.state.dims)}"], self.pieces())


def _max_terms(n: ir.Node) -> list:
    """The operands of a (nested) ``max``."""
    if n.op == "max":
        return _max_terms(n.src[0]) + _max_terms(n.src[1])
    return [n]


def analyse_maxplus(mixer, spec, F) -> MaxPlusForm | None:
    """``F = max(S + a, b)`` (any nesting of ``max``; several carried branches ``S + a_i`` give
    ``a = max a_i``, several floors ``b = max b_j``) → ``MaxPlusForm``; None when ``F`` is not of
    that form (the caller reports why the state is not gated-linear)."""
    if F.op != "max":
        return None
    S = ir.leaf("state", spec.name, spec.dims)
    carried, floors = [], []
    for term in _max_terms(F):
        if not ir.contains(term, S):
            floors.append(term)
            continue
        try:
            slope = tangent(term, S)
        except NotPointwise:
            return None
        a = ir.substitute(term, {S: ir.const(0.0, S.dims)})
        if not ir.is_const(slope, 1.0) or ir.contains(a, S):
            return None
        carried.append(a)
    if not carried or not floors:
        return None
    a, b = carried[0], floors[0]
    for x in carried[1:]:
        a = ir.binary("max", a, x)
    for x in floors[1:]:
        b = ir.binary("max", b, x)
    for name, node in (("a", a), ("b", b)):
        if bad := [x for x in node.dims if x not in spec.dims]:
            raise _unsupported(mixer, f"the stabiliser {spec.name!r}'s {name} `{ir.render(node)}` has "
                                      f"dims {bad} outside the state")
    return MaxPlusForm(spec, a, b)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a mixer is evaluated: auxiliary state scans first, then the main gated-linear state.

    An auxiliary state is one whose update depends on no state but itself and the auxiliary
    states before it (LightNet's running normaliser; mLSTM's stabiliser m and normaliser n). Each
    is computed for every token by its own scan, in dependency order: a gated-linear scan whose
    output is the state itself (``GatedLinearForm``), or a max-plus scan (``MaxPlusForm``, a
    stabiliser). Later states see its old and new values as per-token inputs named
    ``prev_input(name)`` / ``new_input(name)``. The output may read auxiliary states (their new
    values, as inputs) besides its one read-out of the main state.
    """
    main_index: int
    main: GatedLinearForm
    aux: tuple = ()              # ((state index, GatedLinearForm | MaxPlusForm), ...) in scan order

    @property
    def strategies(self):
        """The main form's strategies that every auxiliary scan runs too."""
        return tuple(s for s in self.main.strategies if all(s in f.strategies for _, f in self.aux))

    @property
    def family(self):
        return self.main.family

    @property
    def transition(self):
        t = self.main.transition
        if self.aux:
            t += "; auxiliary scans: " + ", ".join(
                f.state.name + (" (max-plus)" if isinstance(f, MaxPlusForm) else "") for _, f in self.aux)
        return t

    def describe(self) -> str:
        parts = []
        for _, f in self.aux:
            parts.append(f"auxiliary state {f.state.name} (scanned first, fed to later states and the "
                         f"output as {prev_input(f.state.name)} / {new_input(f.state.name)}):\n"
                         + f.describe())
        parts.append(("main state:\n" if self.aux else "") + self.main.describe())
        return "\n".join(parts)


def prev_input(name):
    return f"{name}__prev"


def new_input(name):
    return f"{name}__new"


def _main_state(mixer, reads, deps):
    """The main state among the states the output reads: one no other state depends on, the one
    with the most dims (a matrix memory before its vector normaliser), first declared on ties."""
    if len(reads) == 1:
        return reads[0]
    free = [i for i in reads if not any(i in deps[j] for j in deps if j != i)]
    if not free:
        raise _unsupported(mixer, "the output reads states " + ", ".join(
            mixer.states[i].name for i in reads) + " that all feed other states; no main state")
    return min(free, key=lambda i: (-len(mixer.states[i].dims), i))


def _scan_order(mixer, main, deps):
    """The auxiliary states in dependency order (each after the states its update reads)."""
    order, done = [], set()
    pending = [i for i in range(len(mixer.states)) if i != main]
    for i in pending:
        if main in deps[i]:
            raise _unsupported(mixer, f"the auxiliary state {mixer.states[i].name!r} depends on the "
                                      f"main state {mixer.states[main].name!r}; auxiliary states may "
                                      "depend only on themselves, other auxiliary states and the inputs")
    while pending:
        ready = [i for i in pending if deps[i] <= done]
        if not ready:
            names = sorted(mixer.states[i].name for i in pending)
            raise _unsupported(mixer, f"the auxiliary states {names} depend on each other in a cycle")
        order += ready
        done |= set(ready)
        pending = [i for i in pending if i not in done]
    return order


def analyse(mixer) -> Plan:
    """Classify ``mixer``; return its evaluation plan or raise ``UnsupportedMixerError``."""
    leaves = [ir.leaf("state", s.name, s.dims) for s in mixer.states]
    if len(mixer.states) == 1:
        return Plan(0, analyse_state(mixer, mixer.states[0], mixer.updates[0], mixer.output))
    fresh = [ir.leaf("state", s.name + "'", s.dims) for s in mixer.states]
    direct = ir.substitute(mixer.output, dict(zip(mixer.updates, fresh)))
    reads = [i for i, (lf, nf) in enumerate(zip(leaves, fresh))
             if ir.contains(direct, nf) or ir.contains(direct, lf)]
    if not reads:
        raise _unsupported(mixer, f"the output reads none of its {len(mixer.states)} states")
    deps = {i: {j for j, o in enumerate(leaves) if j != i and ir.contains(F, o)}
            for i, F in enumerate(mixer.updates)}
    main = _main_state(mixer, reads, deps)
    aux, mapping = [], {}
    for i in _scan_order(mixer, main, deps):
        spec, lf = mixer.states[i], leaves[i]
        F = ir.substitute(mixer.updates[i], mapping)
        form = analyse_maxplus(mixer, spec, F) or analyse_state(mixer, spec, F, F)
        aux.append((i, form))
        mapping[lf] = ir.leaf("input", prev_input(spec.name), spec.dims)
        mapping[mixer.updates[i]] = ir.leaf("input", new_input(spec.name), spec.dims)
    F_main = ir.substitute(mixer.updates[main], mapping)
    out = ir.substitute(mixer.output, mapping)
    form = analyse_state(mixer, mixer.states[main], F_main, out)
    return Plan(main, form, tuple(aux))
