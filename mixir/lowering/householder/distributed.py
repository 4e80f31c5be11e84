"""Context parallelism of the Householder family (``group=``; docs/distributed.md).

A token's transition acts on the state from the left: ``S ← M_t S`` with ``M_t = gate_t ·
Π_j (I − β_j k_j k_jᵀ)`` (a scalar or key-diagonal gate, n_h Householder factors), so a run of
tokens has the K×K transition ``M = M_L ⋯ M_1``. The state is affine in its initial value,
``S_L(X) = M X + S_L(0)``, so the rank reads ``M`` off the compiled mixer itself: one *probe*
run of its continuing segment from ``X = [I_K | 0]`` (columns of the identity, ⌈K/V⌉ runs when
V < K) minus the run from zero — the same kernels (chunked WY or recurrent) and their backward,
for every gate and every n_h, with no second derivation. The alternative, the product of the
segment's WY factors ``I − W Yᵀ``, would need the core's chunk factors as a new output of the
kernels; the probe costs one more pass of the kernel over the continuing segment only.

Each rank: pass 1 over its slice (from ``initial_state`` for sequences starting here, from zero
for the continuing one) → final states c; the probe → M; one all-gather of (M, c) [K×K + K×V
per sequence and head]; the prefix fold ``S ← M S + c`` gives ``S_in``; a rerun of the continuing
segment from ``S_in`` gives its outputs (the Householder correction ``q_tᵀ M_{≤t} S_in`` needs
every prefix product, i.e. the pass itself). Backward: autograd through the collectives and the
kernels' own backward.
"""
from __future__ import annotations

import torch

from ...distributed.passing import exchange, layout, needs_grad, prefix_combine, tied
from ...dsl.signature import bind
from ...errors import InputError


class HouseholderPassing:
    """The family's ``state_passing(plan)`` object: ``run(compiled, arrays, ...)``."""

    kind = "K×K transition per sequence and head (probe run), rerun of the continuing segment"

    def __init__(self, plan):
        self.plan = plan

    def _canon(self, fn, s):
        """Declared state layout → (K, V) (and back: the same transpose)."""
        return s if fn.mixer.states[0].dims == (self.plan.k_dim, self.plan.v_dim) else s.transpose(-1, -2)

    def run(self, fn, arrays, *, g, initial_state, output_final_state, cu_seqlens, strategy, scalars):
        m, p = fn.mixer, self.plan
        if isinstance(initial_state, (tuple, list)):
            raise InputError(f"initial_state: {m.name} has one state; pass a tensor")
        b = bind(m, arrays, scalars=scalars)
        device = next(a.device for a in arrays)
        lay = layout(g, b.T, b.B, cu_seqlens, device, needs_grad(arrays, initial_state))
        H, K, V = b.H, b.sizes[p.k_dim], b.sizes[p.v_dim]
        kw = dict(strategy=strategy, **scalars)
        if lay.T > 0:
            o, c = fn(*arrays, initial_state=lay.local_initial(initial_state), output_final_state=True,
                      cu_seqlens=lay.cu_local, **kw)
            c = self._canon(fn, c.float())
        else:
            dtype = next(a.dtype for a, s in zip(arrays, m.inputs) if s.kind == "input")
            o = torch.zeros((b.B, 0, H) + tuple(b.sizes[d] for d in m.output.dims), dtype=dtype, device=device)
            c = torch.zeros((lay.N, H, K, V), device=device)
        eye = torch.eye(K, device=device).expand(lay.N, H, K, K)
        seg = [a[:, :lay.seg] if s.kind == "input" else a for s, a in zip(m.inputs, arrays)]
        M_cont = self._probe(fn, seg, lay.continuing_rows(c), K, V, kw) if lay.continuing else None
        M = lay.per_role(M_cont, eye * 0, eye)
        pairs, anchor = exchange(lay, [M, c])
        S0 = torch.zeros_like(c) if initial_state is None else self._canon(fn, initial_state.float())
        S_in, S_fin = prefix_combine(pairs, g.rank, S0, lambda M, S: M @ S)
        if lay.continuing:
            o_seg = fn(*seg, initial_state=self._canon(fn, lay.continuing_rows(S_in)).contiguous(), **kw)
            o = torch.cat([o_seg.to(o.dtype), o[:, lay.seg:]], dim=1)
        o = tied(o, anchor)
        if not output_final_state:
            return o
        return o, self._canon(fn, S_fin)

    def _probe(self, fn, seg, c, K, V, kw):
        """The segment's transition ``[rows, H, K, K]``: ``(S_L([I | 0]) − S_L(0))`` column block
        by column block (the state is affine in its initial value)."""
        rows, H = c.shape[:2]
        cols = []
        for j0 in range(0, K, V):
            w = min(V, K - j0)
            X = torch.zeros((rows, H, K, V), device=c.device)
            X[:, :, torch.arange(j0, j0 + w), torch.arange(w)] = 1.0
            _, F = fn(*seg, initial_state=self._canon(fn, X).contiguous(), output_final_state=True, **kw)
            cols.append((self._canon(fn, F.float()) - c)[..., :w])
        return torch.cat(cols, -1)


def passing_for(plan):
    """``HouseholderFamily.state_passing``: every Householder plan can be split."""
    return HouseholderPassing(plan)
