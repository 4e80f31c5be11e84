"""Analysis of nonlinear head-wise RNN cells (FlashRNN's class): LSTM, GRU, sLSTM, Elman.

A mixer is in this family when its step is

    a_g   = rename(h_{t-1}, D→E) @ R_g            (one recurrent matmul per gate g, R_g: Param[E, D])
    new states, output = cell(inputs_t, params, states_{t-1}, a_1 … a_G)     (pointwise in D)

i.e. every use of a state that mixes its entries is a matmul of **one** hidden state ``h`` (a
vector over the hidden dim ``D``) with a per-head recurrent weight (a parameter with two dims,
``E`` the renamed hidden dim), and everything else is pointwise over ``D`` (or a reduction over
``D``, which a program holding a whole head can evaluate). The per-token pre-activations
``W x_t`` are computed outside (FlashRNN's convention) and arrive as inputs; biases are params.

``analyse_rnn`` finds the matmuls, replaces each by a leaf ``a_g`` (an fp32 vector over ``D``)
and returns an ``RNNPlan`` whose *cell* (new states and output as IR trees over inputs, params,
scalars, the old states and the ``a_g`` leaves) is what the kernels splice in; the backward
of the cell is ``vjp`` of it, and the matmuls' backward (``dh += R_g da_g``, ``dR_g += h ⊗ da_g``)
is the template's. Anything else raises ``UnsupportedMixerError`` naming the sub-expression.
"""
from __future__ import annotations

import dataclasses

from ...dsl import ir
from ...dsl.vjp import multi_toposort
from ...errors import UnsupportedMixerError

STRATEGIES = ("fused", "alternating")


def _unsupported(mixer, why: str):
    return UnsupportedMixerError(f"mixer {mixer.name}: not a head-wise nonlinear RNN cell: {why}")


@dataclasses.dataclass(frozen=True)
class Gate:
    """One recurrent matmul ``a = h_{t-1} @ R`` (``R[in_dim, out_dim]`` as a matrix)."""
    leaf: ir.Node           # the fp32 leaf standing for the matmul in the cell
    weight: str             # name of the Param holding R
    in_axis: int            # which of the param's two dims is contracted with h (0 or 1)


@dataclasses.dataclass(frozen=True)
class RNNPlan:
    """A nonlinear head-wise RNN: the plan of the ``rnn`` family."""
    mixer_name: str
    hidden: str                     # the state fed back through R
    hidden_index: int
    dim: str                        # the hidden dim D (every state is a vector over it)
    rdim: str                       # the renamed dim E of the recurrent weights
    states: tuple                   # state names, declaration order
    state_leaves: tuple             # their leaves (old values)
    gates: tuple                    # Gate
    updates: tuple                  # new value of each state (IR over the cell's leaves)
    output: ir.Node                 # the output (IR over the cell's leaves)
    inputs: tuple                   # ((name, kind, dims), ...) of inputs/params the cell reads
    weights: tuple                  # names of the recurrent weight params
    family: str = "rnn"
    strategies: tuple = STRATEGIES
    key_dims: tuple = ()

    @property
    def transition(self) -> str:
        return (f"nonlinear head-wise RNN: {len(self.gates)} recurrent matmul(s) of state "
                f"{self.hidden}[{self.dim}] with dense per-head R, pointwise cell over "
                f"{len(self.states)} state(s)")

    def cell_roots(self):
        return list(self.updates) + [self.output]

    def describe(self) -> str:
        lines = [f"class: {self.transition}",
                 f"hidden state {self.hidden}[{self.dim}] (renamed {self.rdim} in the matmuls)"]
        for g in self.gates:
            lines.append(f"  {g.leaf.arg} = {self.hidden}_prev @ {g.weight}"
                         f"{' (transposed)' if g.in_axis == 1 else ''}")
        for name, u in zip(self.states, self.updates):
            lines.append(f"  {name}' = {ir.render(u)}")
        lines.append(f"  output = {ir.render(self.output)}")
        lines.append(f"strategies: {', '.join(self.strategies)}")
        return "\n".join(lines)

    def input_ranges(self) -> dict:
        return {}


def gate_leaf(i: int, dim: str) -> ir.Node:
    """The leaf of the i-th recurrent matmul (``op`` "state": never an input of the mixer)."""
    return ir.leaf("state", f"__rec{i}", (dim,))


def _renamed_state(n: ir.Node, state_leaves):
    """(state leaf, old dim, new dim) if ``n`` is ``rename(state)`` = sum(state * delta, old)."""
    if n.op != "sum" or len(n.arg) != 1:
        return None
    m = n.src[0]
    if m.op != "mul":
        return None
    a, b = m.src
    if b.op != "delta":
        a, b = b, a
    if b.op != "delta" or a not in state_leaves:
        return None
    old, new = b.dims
    if n.arg != (old,) or a.dims != (old,):
        return None
    return a, old, new


def _matmul(n: ir.Node, state_leaves, params):
    """(state leaf, weight name, in_axis, E, D) if ``n`` is ``rename(h, D→E) @ R``."""
    if n.op != "sum" or len(n.arg) != 1 or n.src[0].op != "mul":
        return None
    x, w = n.src[0].src
    if w.op != "param":
        x, w = w, x
    if w.op != "param" or len(w.dims) != 2:
        return None
    r = _renamed_state(x, state_leaves)
    if r is None:
        return None
    h, D, E = r
    if n.arg != (E,) or set(w.dims) != {D, E} or n.dims != (D,):
        return None
    return h, w.arg, w.dims.index(E), E, D


def analyse_rnn(mixer) -> RNNPlan:
    """Classify ``mixer`` as a head-wise nonlinear RNN, or raise ``UnsupportedMixerError``."""
    leaves = [mixer.state_leaf(i) for i in range(len(mixer.states))]
    roots = list(mixer.updates) + [mixer.output]
    params = {a.name: a for a in mixer.inputs if a.kind == "param"}
    order = multi_toposort(roots)
    depends = set()
    for n in order:
        if n in leaves or any(s in depends for s in n.src):
            depends.add(n)
    gates, mapping, hidden, dims = [], {}, None, None
    for n in order:
        mm = _matmul(n, leaves, params)
        if mm is None:
            continue
        h, wname, in_axis, E, D = mm
        if hidden is not None and h != hidden:
            raise _unsupported(mixer, f"recurrent matmuls read two states ({hidden.arg} and {h.arg}); "
                                      "FlashRNN-style cells feed back one hidden state")
        hidden, dims = h, (D, E)
        leaf = gate_leaf(len(gates), D)
        gates.append(Gate(leaf, wname, in_axis))
        mapping[n] = leaf
    if hidden is None:
        bad = next((n for n in order if n.op in ("sum", "amax") and n in depends), None)
        why = ("it has no recurrent matmul `mixir.rename(h, D=\"E\") @ R` with R a Param[\"E\", \"D\"]"
               + (f"; the state is contracted in `{ir.render(bad)}` instead" if bad is not None else ""))
        raise _unsupported(mixer, why)
    D, E = dims
    for spec, lf in zip(mixer.states, leaves):
        if spec.dims != (D,):
            raise _unsupported(mixer, f"state {spec.name!r} has dims {spec.dims}; every state of an "
                                      f"RNN cell must be a vector over the hidden dim {D!r}")
    updates = [ir.substitute(u, mapping) for u in mixer.updates]
    output = ir.substitute(mixer.output, mapping)
    cell = multi_toposort(updates + [output])
    weights = tuple(dict.fromkeys(g.weight for g in gates))
    for n in cell:
        if n.op == "delta":
            raise _unsupported(mixer, "mixir.rename is used outside a recurrent matmul "
                                      "`rename(h, D=\"E\") @ R`")
        if n.op == "param" and n.arg in weights:
            raise _unsupported(mixer, f"the recurrent weight {n.arg!r} is also used pointwise")
        if n.op in ("sum", "amax") and any(d != D for d in n.arg):
            raise _unsupported(mixer, f"`{ir.render(n)}` reduces over {list(n.arg)}; the cell may "
                                      f"reduce over the hidden dim {D!r} only")
        if bad := [d for d in n.dims if d != D]:
            raise _unsupported(mixer, f"`{ir.render(n)}` has dims {bad}; a cell is pointwise over "
                                      f"the hidden dim {D!r} (inputs In[{D!r}] or In[()])")
    if bad := [d for d in output.dims if d != D]:
        raise _unsupported(mixer, f"the output has dims {bad}")
    used = {(n.op, n.arg) for n in cell if n.op in ("input", "param")}
    inputs = tuple((a.name, a.kind, a.dims) for a in mixer.inputs if (a.kind, a.name) in used)
    for w in weights:
        p = params[w]
        if p.dims not in ((E, D), (D, E)):
            raise _unsupported(mixer, f"recurrent weight {w!r} has dims {p.dims}")
    return RNNPlan(mixer_name=mixer.name, hidden=hidden.arg, hidden_index=leaves.index(hidden),
                   dim=D, rdim=E, states=tuple(s.name for s in mixer.states),
                   state_leaves=tuple(leaves), gates=tuple(gates), updates=tuple(updates),
                   output=output, inputs=inputs, weights=weights)
