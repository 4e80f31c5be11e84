"""Analysis of Householder transitions: DeltaNet, Gated DeltaNet, DeltaProduct (docs/delta_rule.md).

The family is every update of one matrix state ``S[K, V]`` that is a composition of sub-steps

    X ↦ α_j (I − β_j k_j k_jᵀ) X + k_j ṽ_jᵀ          (j = 1 … n_h, applied in order)

read out as ``o = e ⊙ (Sᵀ q) + d`` after the last sub-step. α_j is a scalar gate per token
(``exp(g)``, ``sigmoid(·)``, ...) or a gate diagonal along the key dim applied before the factor,
``(I − β k kᵀ) Diag(α) X`` (Kimi Delta Attention; the recurrent strategy only), β_j any real scalar (β ∈ [0, 2] gives eigenvalues 1 − β|k|² in
[−1, 1] for unit keys), k_j a key and ṽ_j the value side of the write (``β v`` for the delta rule).

Recognition works on the traced IR, never on names:
1. **sub-steps**: the nodes through which every path from the update to the state passes (its
   dominators, which are totally ordered) cut the update into a chain of steps, each a function of
   the previous intermediate state. A DeltaProduct written as n_h successive delta steps has n_h
   (or more) links; a Gated DeltaNet written as ``α (S − β k (kᵀS)) + β k vᵀ`` has two.
2. **terms**: each step is expanded into a sum of terms ``c ⊙ X`` (a scalar gate), ``c · u ⊗ (w @ X)``
   (a rank-1 correction) and ``U`` (free of X: the input term), distributing products over sums.
3. **matching**: the rank-1 term must have ``u = w`` (same factors, so ``(I − β k kᵀ)`` is symmetric:
   what the WY/UT lowering needs), its coefficient divided by the gate gives −β (common factors
   cancel symbolically, so β never needs a division at run time), and the input term must be
   ``k ⊗ ṽ`` with the same key.
4. **folding**: adjacent steps merge into sub-steps of the canonical form above (a gate after a
   write scales its ṽ; a gate before a Householder factor commutes with it).
"""
from __future__ import annotations

import collections
import dataclasses

from ...dsl import ir
from ...errors import UnsupportedMixerError
from ..common.algebra import Decay, decay, factors, product, readout, render_plan

STRATEGIES = ("recurrent", "chunked")


@dataclasses.dataclass(frozen=True)
class SubStep:
    """``X ↦ (I − β k kᵀ) Diag(exp g) X + k vᵀ`` (each an IR tree over the per-token inputs; a
    scalar g commutes with the factor)."""
    k: ir.Node                 # dims (K,)
    beta: ir.Node              # dims ()
    v: ir.Node                 # dims (V,) — the value side of the write (β v for the delta rule)
    g: Decay | None            # log of the gate, dims () or (K,); None when the sub-step has none


@dataclasses.dataclass(frozen=True)
class HouseholderPlan:
    state: object              # StateSpec
    k_dim: str
    v_dim: str
    steps: tuple               # SubStep, in the order they apply
    q: ir.Node
    out_scale: ir.Node
    out_bias: ir.Node
    family: str = "householder"
    strategies: tuple = STRATEGIES

    @property
    def num_householder(self) -> int:
        return len(self.steps)

    @property
    def key_dims(self):
        return (self.k_dim,)

    @property
    def gate_k(self) -> bool:
        """Whether a sub-step's gate is diagonal along the key dim (KDA): ``g`` pieces [.., K]."""
        return any(s.g is not None and bool(s.g.log.dims) for s in self.steps)

    @property
    def transition(self) -> str:
        gated = any(s.g is not None for s in self.steps)
        n = len(self.steps)
        kind = f"diagonal gate along {self.k_dim} × " if self.gate_k else "scalar gate × "
        text = (kind if gated else "") + (
            "identity minus rank 1 (I − β k kᵀ)" if n == 1 else f"product of {n} Householder factors")
        return text

    def pieces(self) -> dict:
        out = {"q": self.q}
        for j, s in enumerate(self.steps):
            out[f"k{j}"] = s.k
            out[f"beta{j}"] = s.beta
            out[f"v{j}"] = s.v
            if s.g is not None:
                out[f"g{j}"] = s.g.log
        out["e"] = self.out_scale
        out["d"] = self.out_bias
        return out

    def input_ranges(self) -> dict:
        """Random-input ranges for a user's mixer: an input used directly as a log-gate in (-3, 0),
        one used directly as β in (0, 2)."""
        ranges = {}
        for s in self.steps:
            if s.g is not None and s.g.log.op == "input":
                ranges[s.g.log.arg] = (-3.0, 0.0)
            if s.beta.op == "input":
                ranges[s.beta.arg] = (0.0, 2.0)
        return ranges

    def describe(self) -> str:
        step = "X ↦ (I − β k kᵀ) Diag(exp g) X + k vᵀ" if self.gate_k else "X ↦ exp(g) (I − β k kᵀ) X + k vᵀ"
        return render_plan([f"class: affine state update, {self.transition}",
                            f"state {self.state.name}{list(self.state.dims)}: K = {self.k_dim}, "
                            f"V = {self.v_dim}; {len(self.steps)} sub-step(s) per token: {step}"],
                           self.pieces(), self.strategies)


def _unsupported(mixer, why: str):
    return UnsupportedMixerError(f"mixer {mixer.name}: not a Householder transition: {why}")


# ---- 1. sub-steps ------------------------------------------------------------------------------

def chain(F: ir.Node, S: ir.Node) -> list:
    """The dominators of ``S`` in ``F`` with the state's dims, innermost first (``F`` excluded)."""
    X = ir.leaf("state", "__X__", S.dims)
    cuts = []
    for n in ir.toposort(F):
        if n is F or n is S or set(n.dims) != set(S.dims) or not ir.contains(n, S):
            continue
        if not ir.contains(ir.substitute(F, {n: X}), S):
            cuts.append(n)
    cuts.sort(key=lambda n: len(ir.toposort(n)))
    return cuts


def steps_of(F: ir.Node, S: ir.Node, X: ir.Node) -> list:
    """F as a chain of step expressions, each a function of ``X`` (the previous intermediate)."""
    cuts = chain(F, S)
    prev, out = S, []
    for c in cuts + [F]:
        out.append(ir.substitute(c, {prev: X}))
        prev = c
    return out


# ---- 2. terms ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Term:
    coef: tuple                 # factor nodes
    core: object                # None (input term), "X", or ("lr", w factors tuple, contracted dim)


def _terms(mixer, n: ir.Node, X: ir.Node) -> list:
    if not ir.contains(n, X):
        return [_Term(tuple(factors(n)), None)]
    if n is X:
        return [_Term((), "X")]
    if n.op == "add":
        return _terms(mixer, n.src[0], X) + _terms(mixer, n.src[1], X)
    if n.op in ("sub", "neg"):
        left = _terms(mixer, n.src[0], X) if n.op == "sub" else []
        right = _terms(mixer, n.src[-1], X)
        return left + [_Term(t.coef + (ir.const(-1.0),), t.core) for t in right]
    if n.op == "mul":
        a, b = n.src
        if ir.contains(a, X) and ir.contains(b, X):
            raise _unsupported(mixer, f"`{ir.render(n)}` multiplies the state by itself (nonlinear update)")
        lin, other = (a, b) if ir.contains(a, X) else (b, a)
        return [_Term(t.coef + tuple(factors(other)), t.core) for t in _terms(mixer, lin, X)]
    if n.op == "div" and not ir.contains(n.src[1], X):
        inv = tuple(ir.unary("recip", f) for f in factors(n.src[1]))
        return [_Term(t.coef + inv, t.core) for t in _terms(mixer, n.src[0], X)]
    if n.op == "sum":
        inner = _terms(mixer, n.src[0], X)
        if len(inner) != 1 or inner[0].core != "X" or len(n.arg) != 1:
            raise _unsupported(mixer, f"the contraction `{ir.render(n)}` must be one vector times the "
                                      "state, contracted over one state dim (w @ S)")
        return [_Term((), ("lr", inner[0].coef, n.arg[0]))]
    raise _unsupported(mixer, f"`{ir.render(n)}` applies `{n.op}` to the state; the update must be affine")


# ---- 3. matching -------------------------------------------------------------------------------

def _key(nodes) -> collections.Counter:
    return collections.Counter(nodes)


def _minus(have: collections.Counter, take: collections.Counter):
    """``have − take`` as a multiset, or None when ``take`` is not contained in ``have``."""
    if any(have[x] < c for x, c in take.items()):
        return None
    return list((have - take).elements())


def _ordered(nodes) -> ir.Node:
    return product(sorted(nodes, key=ir.canonical_text))


@dataclasses.dataclass(frozen=True)
class _Step:
    alpha: tuple | None        # gate factors (None: no X term — the step forgets the state)
    key: tuple | None          # factors of k (u = w) when the step has a rank-1 correction
    beta: tuple                # factors of β
    inputs: tuple              # ((k factors, v factors), ...) input terms


def match_step(mixer, E: ir.Node, X: ir.Node, k_dim: str, v_dim: str) -> _Step:
    """Classify one step expression ``E(X)`` into gate, rank-1 correction and input terms."""
    gates, lowrank, inputs = [], [], []
    for t in _terms(mixer, E, X):
        if t.core == "X":
            if bad := [f for f in t.coef if f.dims and tuple(f.dims) != (k_dim,)]:
                raise _unsupported(mixer, f"the gate factor `{ir.render(bad[0])}` varies along {list(bad[0].dims)}; "
                                          f"the Householder lowering supports scalar gates and gates diagonal "
                                          f"along the key dim {k_dim!r} (Kimi Delta Attention)")
            gates.append(t)
        elif t.core is None:
            inputs.append(t)
        else:
            lowrank.append(t)
    if len(gates) > 1:
        raise _unsupported(mixer, "the state enters with several gates ("
                                  + ", ".join(f"`{ir.render(product(g.coef))}`" for g in gates)
                                  + "); write one gate times the state")
    if len(lowrank) > 1:
        raise _unsupported(mixer, f"{len(lowrank)} rank-1 corrections in one step; write a product of "
                                  "Householder factors as successive steps")
    alpha = tuple(gates[0].coef) if gates else None
    key, beta = None, ()
    if lowrank:
        (t,) = lowrank
        _, w, dim = t.core
        if dim != k_dim:
            raise _unsupported(mixer, f"the rank-1 correction contracts the state over {dim!r}, the read-out "
                                      f"over {k_dim!r}; they must be the same dim")
        if bad := [f for f in w if v_dim in f.dims]:
            raise _unsupported(mixer, f"the contraction weight `{ir.render(bad[0])}` varies along {v_dim!r}")
        gate_k = [f for f in (gates[0].coef if gates else ()) if f.dims]
        if gate_k:       # Diag(α) X − β k (kᵀ Diag(α) X): the contraction weight is k ⊙ α
            w = _minus(_key(w), _key(gate_k))
            if w is None:
                raise _unsupported(mixer, "a key-diagonal gate must apply before the Householder factor, "
                                          "(I − β k kᵀ) Diag(α) S: contract k with the gated state "
                                          "(write S = α ⊙ S first)")
        rest = _minus(_key(t.coef), _key(w))
        if rest is None or any(f.dims for f in rest):
            term = f"{ir.render(product(t.coef))} ⊗ ({ir.render(product(w))} @ S)"
            raise _unsupported(mixer, f"the rank-1 correction `{term}` is not of the form β k (kᵀ S): only "
                                      "symmetric factors (I − β k kᵀ) with the same key on both sides "
                                      "are supported")
        if alpha is None:
            raise _unsupported(mixer, "a rank-1 correction without the identity term (S − β k kᵀS)")
        alpha_s = [f for f in alpha if not f.dims]       # the scalar part (the diagonal is in w)
        neg_beta = _minus(_key(rest), _key(alpha_s))    # c = −α β  →  −β = c / α, cancelled
        if neg_beta is None:
            neg_beta = list(rest) + [ir.unary("recip", f) for f in alpha_s]
        key, beta = tuple(w), tuple(neg_beta) + (ir.const(-1.0),)
    ins = []
    for t in inputs:
        kf = [f for f in t.coef if k_dim in f.dims]
        vf = [f for f in t.coef if f not in kf]
        if any(k_dim in f.dims and v_dim in f.dims for f in t.coef):
            raise _unsupported(mixer, f"the input term `{ir.render(product(t.coef))}` varies along both "
                                      "state dims in one factor; write it as mixir.outer(k, v)")
        ins.append((tuple(kf), tuple(vf)))
    return _Step(alpha, key, beta, tuple(ins))


# ---- 4. folding --------------------------------------------------------------------------------

def _write(mixer, key: tuple, inputs: tuple, scale: tuple) -> ir.Node | None:
    """Σ of input terms as k ⊗ ṽ for the key ``key``: returns ṽ (times ``scale``), or None."""
    out = None
    for kf, vf in inputs:
        rest = _minus(_key(list(kf) + list(vf)), _key(key))
        if rest is None:
            raise _unsupported(mixer, f"the write `{ir.render(product(kf))} ⊗ {ir.render(product(vf))}` "
                                      f"does not use the Householder key `{ir.render(_ordered(key))}`")
        term = _ordered(list(rest) + list(scale))
        out = term if out is None else ir.binary("add", out, term)
    return out


def fold(mixer, steps: list, k_dim: str) -> tuple:
    """Merge a chain of matched steps into canonical sub-steps (see the module docstring)."""
    subs = []               # [gate factors, key, beta, v node or None, v scale factors]
    pending = []            # gate factors seen before the first Householder factor of a sub-step
    for st in steps:
        alpha = list(st.alpha) if st.alpha is not None else None
        if alpha is None:
            raise _unsupported(mixer, "a step forgets the state entirely (no term in S)")
        if st.key is not None:
            subs.append({"gate": pending + alpha, "key": st.key, "beta": st.beta, "v": None})
            pending = []
            if st.inputs:
                subs[-1]["v"] = _write(mixer, st.key, st.inputs, ())
            continue
        if not subs:                          # gate (and possibly a write) before any factor
            if st.inputs:
                raise _unsupported(mixer, "a write before the first Householder factor; the family "
                                          "writes after each factor (X ↦ α(I − βkkᵀ)X + k vᵀ)")
            pending += alpha
            continue
        last = subs[-1]                      # gate after a sub-step: scales its transition and write
        if bad := [f for f in alpha if f.dims]:
            raise _unsupported(mixer, f"the key-diagonal gate `{ir.render(bad[0])}` applies after the "
                                      "Householder factor; the family applies it before, "
                                      "S ↦ (I − β k kᵀ) Diag(α) S + k vᵀ")
        last["gate"] = last["gate"] + alpha
        if last["v"] is not None:
            last["v"] = _ordered(factors(last["v"]) + alpha) if len(alpha) else last["v"]
        if st.inputs:
            extra = _write(mixer, last["key"], st.inputs, ())
            last["v"] = extra if last["v"] is None else ir.binary("add", last["v"], extra)
    if not subs:
        raise _unsupported(mixer, "the update has no rank-1 correction (k kᵀ S); it is gated-linear")
    out = []
    for s in subs:
        gate = [f for f in s["gate"] if not ir.is_const(f, 1.0)]
        gdecay = decay(mixer, gate, _unsupported)
        if gdecay is not None and gdecay.sign is not None:
            raise _unsupported(mixer, f"the gate `{ir.render(product(gate))}` may be negative; the Householder "
                                      "lowering takes positive gates (negative eigenvalues come from β)")
        v = s["v"] if s["v"] is not None else ir.const(0.0)
        out.append(SubStep(k=_ordered(s["key"]), beta=_ordered(s["beta"]), v=v, g=gdecay))
    return tuple(out)


def analyse(mixer) -> HouseholderPlan:
    """Classify ``mixer`` as a Householder-transition mixer or raise ``UnsupportedMixerError``."""
    if len(mixer.states) != 1:
        raise _unsupported(mixer, f"{len(mixer.states)} states; the family has one matrix state")
    spec, F = mixer.states[0], mixer.updates[0]
    if len(spec.dims) != 2:
        raise _unsupported(mixer, f"state {spec.name!r} has dims {spec.dims}; the family needs a matrix state [K, V]")
    S = ir.leaf("state", spec.name, spec.dims)
    if not any(n.op == "sum" and ir.contains(n, S) for n in ir.toposort(F)):
        raise _unsupported(mixer, "the update never contracts the state (no k @ S): no rank-1 correction")
    snew = ir.leaf("state", spec.name + "'", spec.dims)
    out = ir.substitute(mixer.output, {F: snew})
    q, k_dim, e, d = readout(mixer, out, snew, S, _unsupported)
    if k_dim is None:
        raise _unsupported(mixer, "the output does not contract the state with a query")
    v_dim = next(x for x in spec.dims if x != k_dim)
    X = ir.leaf("state", "__X__", spec.dims)
    steps = [match_step(mixer, E, X, k_dim, v_dim) for E in steps_of(F, S, X)]
    subs = fold(mixer, steps, k_dim)
    for s in subs:
        for name, node, allowed in (("key", s.k, (k_dim,)), ("β", s.beta, ()), ("write", s.v, (v_dim,))):
            if bad := [x for x in node.dims if x not in allowed]:
                raise _unsupported(mixer, f"the {name} `{ir.render(node)}` has dims {bad}")
    diagonal = any(s.g is not None and s.g.log.dims for s in subs)
    return HouseholderPlan(state=spec, k_dim=k_dim, v_dim=v_dim, steps=subs, q=q, out_scale=e, out_bias=d,
                           strategies=("recurrent",) if diagonal else STRATEGIES)
