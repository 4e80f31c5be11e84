"""Context parallelism of the gated-linear family (``group=``; docs/distributed.md).

The transition of a token is diagonal: ``S ← exp(g) · diag(exp(gk)·P) · S · diag(exp(gv)·Q)``
(signs P, Q where a factor may be negative), so the transition of a run of tokens is the pair of
vectors ``a[K] = exp(Σg + Σgk)·ΠP``, ``b[V] = exp(Σgv)·ΠQ`` — read off the plan's log-decay
pieces with a cumulative sum, no kernel. Each rank runs its slice once (from zero for the
sequence continuing from the previous rank, from ``initial_state`` for sequences starting here),
gathers ``(a, b, final state)`` from every rank, folds the prefix, and *corrects* the outputs of
the continuing sequence's tokens by the rank-local term

    o_t += e_t ⊙ scale · ((q_t ⊙ a_{≤t}) ᵀ S_in) ⊙ b_{≤t}

(``a_{≤t}, b_{≤t}``: the cumulative transition from the slice's start to token t) — one
``[T, K] × [K, V]`` product per head, instead of a second pass of the kernel.

Plans with auxiliary states (LightNet's normaliser Z, mLSTM's stabiliser m and normaliser n)
are passed **state by state**, in the plan's scan order: each auxiliary state is combined and
corrected on its own (one all-gather each) before the states that read it, so that their pieces
(LightNet's decay ``Z_{t-1}/Z_t``, mLSTM's ``exp(log f + m_{t-1} − m_t)`` and its read-out
scale) are evaluated from true values. A max-plus stabiliser ``m_t = max(m_{t-1} + a_t, b_t)``
combines in the (max, +) semiring: the pair of a run is ``(F = Σa, c)`` and ``S ← max(S + F, c)``.
"""
from __future__ import annotations

import torch

from ...distributed.passing import (
    ABSENT,
    CONTINUES,
    STARTS,
    exchange,
    layout,
    needs_grad,
    prefix_combine,
    tied,
)
from ...dsl import ir
from ...dsl.signature import bind
from ...errors import InputError
from ..common.call import shift_by_one
from .analysis import MaxPlusForm, new_input, prev_input

NEG = -1e30     # the max-plus zero (exp(NEG) = 0), finite so that sums and gradients stay finite


class GatedLinearPassing:
    """The family's ``state_passing(plan)`` object: ``run(compiled, arrays, ...)``."""

    kind = "diagonal transition: (a[K], b[V]) per sequence and head, rank-local output correction"

    def __init__(self, plan):
        self.plan = plan

    def run(self, fn, arrays, *, g, initial_state, output_final_state, cu_seqlens, strategy, scalars):
        m, plan = fn.mixer, self.plan
        b0 = bind(m, arrays, scalars=scalars)
        device = next(a.device for a in arrays)
        lay = layout(g, b0.T, b0.B, cu_seqlens, device, needs_grad(arrays, initial_state))
        S = len(m.states)
        if initial_state is not None and S > 1 and not isinstance(initial_state, (tuple, list)):
            raise InputError(f"initial_state: {m.name} has {S} states; pass a tuple")
        inits = (tuple(initial_state) if isinstance(initial_state, (tuple, list))
                 else (initial_state,) * (1 if initial_state is not None else S))
        local = tuple(lay.local_initial(x) for x in inits)
        b, N, _, dtype = fn._check(arrays, local if S > 1 else local[0], lay.cu_local, scalars)
        named = strategy or fn.strategy
        self.params = {s.name for s in m.inputs if s.kind != "input"}
        env = {spec.name: a for spec, a in zip(m.inputs, arrays)}
        finals, anchors = [None] * S, []
        for i, form in list(plan.aux) + [(plan.main_index, plan.main)]:
            spec = m.states[i]
            if isinstance(form, MaxPlusForm):
                o_i, finals[i], S_in, anchor = self._maxplus(fn, form, env, b, N, lay, inits[i])
            else:
                dims = m.output.dims if i == plan.main_index else spec.dims
                o_i, finals[i], S_in, anchor = self._linear(
                    fn, form, dims, env, b, N, lay, inits[i], local[i],
                    named or fn.default_strategy(b, form),
                    dtype if i == plan.main_index else torch.float32)
            anchors.append(anchor)
            if i != plan.main_index:       # later states read its values before / after each token
                prev, start = prev_input(spec.name), None
                if prev in fn.reads:           # formed only when a later form reads it
                    start = torch.where(lay.role_is(CONTINUES, S_in), S_in,
                                        S_in * 0 if local[i] is None else local[i].float())
                env[prev] = None if start is None else shift_by_one(o_i, start, lay.cu_local, N)
                env[new_input(spec.name)] = o_i
        o = o_i.to(dtype)
        for anchor in anchors:
            o = tied(o, anchor)
        if not output_final_state:
            return o
        return o, (finals[0] if S == 1 else tuple(finals))

    # ---- one gated-linear state ------------------------------------------------------------
    def _linear(self, fn, form, out_dims, env, b, N, lay, init, init_local, strategy, dtype):
        """Run, exchange, fold and correct one gated-linear form; (o, final state, S_in, anchor)
        (states in the declared layout)."""
        K = b.sizes[form.k_dim] if form.k_dim else 1
        V = b.sizes[form.v_dim] if form.v_dim else 1
        o, c = fn._run(form, out_dims, env, b, N, init_local, lay.cu_local, strategy, dtype)
        c = fn._to_canonical_state(form, c.float())
        cum = self._cumulative(fn, form, env, b, lay.seg, K, V) if lay.continuing else None
        one_k = torch.ones((lay.N, b.H, K), device=c.device)
        one_v = torch.ones((lay.N, b.H, V), device=c.device)
        a_r = lay.per_role(None if cum is None else cum[0][:, -1], one_k * 0, one_k)
        b_r = lay.per_role(None if cum is None else cum[1][:, -1], one_v * 0, one_v)
        pairs, anchor = exchange(lay, [a_r, b_r, c])
        S0 = torch.zeros_like(c) if init is None else fn._to_canonical_state(form, init.float())
        S_in, S_fin = prefix_combine([((a, bb), cc) for a, bb, cc in pairs], lay.g.rank, S0, _apply)
        if lay.continuing:
            o = self._correct(form, o, lay, cum, lay.continuing_rows(S_in))
        return o, fn._from_canonical_state(form, S_fin), fn._from_canonical_state(form, S_in), anchor

    def _segment_env(self, env, L):
        return {k: (v if k in self.params or v is None else v[:, :L]) for k, v in env.items()}

    def _pieces(self, fn, form, env, b, L):
        """The form's pieces on the first ``L`` tokens, the output scale (q's per-call factor
        times the form's constant output scale), and ``shaped`` (``CompiledMixer.pieces``)."""
        p, scale, shaped = fn.pieces(form, self._segment_env(env, L), b, L)
        if ir.is_const(form.out_scale):
            scale *= form.out_scale.arg
        return p, scale, shaped

    def _cumulative(self, fn, form, env, b, L, K, V):
        """``(a_{≤t} [rows, L, H, K], b_{≤t} [rows, L, H, V], pieces)``: the transition from the
        slice's start through token t of the continuing segment (log-decays summed in float64)."""
        p, scale, shaped = self._pieces(fn, form, env, b, L)
        B, H = b.B, b.H
        device = next(iter(env.values())).device
        logk = torch.zeros((B, L, H, K), dtype=torch.float64, device=device)
        logv = torch.zeros((B, L, H, V), dtype=torch.float64, device=device)
        if "g" in p:
            logk = logk + shaped("g").double()[..., None]
        if "gk" in p:
            logk = logk + shaped("gk").double()
        if "gv" in p:
            logv = logv + shaped("gv").double()
        a, bb = torch.exp(torch.cumsum(logk, 1)).float(), torch.exp(torch.cumsum(logv, 1)).float()
        sk = torch.ones((B, L, H, K), device=device)
        if "g_sign" in p:
            sk = sk * shaped("g_sign")[..., None]
        if "gk_sign" in p:
            sk = sk * shaped("gk_sign")
        if "g_sign" in p or "gk_sign" in p:
            a = a * torch.cumprod(sk.detach(), 1)
        if "gv_sign" in p:
            bb = bb * torch.cumprod(shaped("gv_sign").detach(), 1)
        return a, bb, (p, scale, shaped)

    def _correct(self, form, o, lay, cum, S_in):
        """``o`` with the continuing segment's outputs corrected for the initial state ``S_in``."""
        L = lay.seg
        a, bb, (_, scale, shaped) = cum
        corr = torch.einsum("bthk,bhkv->bthv", shaped("q") * a, S_in) * bb * scale
        if not ir.is_const(form.out_scale):
            corr = shaped("e") * corr
        corr = corr.reshape(o[:, :L].shape)
        return torch.cat([(o[:, :L].float() + corr).to(o.dtype), o[:, L:]], dim=1)

    # ---- a max-plus stabiliser -------------------------------------------------------------
    def _maxplus(self, fn, form, env, b, N, lay, init):
        """``m_t = max(m_{t-1} + a_t, b_t)``: run (the continuing sequence from the max-plus zero),
        exchange ``(F = Σa, c)``, fold ``max(S + F, c)``, correct ``m_t = max(m_t, F_{≤t} + S_in)``."""
        shape = (N, b.H) + tuple(b.sizes[d] for d in form.state.dims)
        device = next(iter(env.values())).device
        base = torch.zeros(shape, device=device) if init is None else init.float()
        neg = torch.full(shape, NEG, device=device)
        m0 = torch.where(lay.role_is(CONTINUES, neg), neg, base)
        o, c = fn._run_maxplus(form, env, b, N, m0, lay.cu_local)
        F = self._maxplus_slope(fn, form, env, b, lay.seg) if lay.continuing else None
        F_r = lay.per_role(None if F is None else F[:, -1], neg, neg * 0)
        c_r = torch.where(lay.role_is(ABSENT, c), neg, c)
        pairs, anchor = exchange(lay, [F_r, c_r])
        S_in, S_fin = prefix_combine(pairs, lay.g.rank, base, None,
                                     step=lambda F, c, S: torch.maximum(S + F, c))
        if lay.continuing:
            L = lay.seg
            m_in = lay.continuing_rows(S_in)[:, None]
            o = torch.cat([torch.maximum(o[:, :L], F + m_in), o[:, L:]], dim=1)
        S_in = torch.where(lay.role_is(STARTS, S_in), base, S_in)
        return o, S_fin, S_in, anchor

    def _maxplus_slope(self, fn, form, env, b, L):
        """``F_{≤t} = Σ_{s≤t} a_s`` over the continuing segment, ``[rows, L, H, *dims]``."""
        seg = self._segment_env(env, L)
        pk = fn.pieces_kernels[form.state.name]
        a = pk([seg[s[0]] for s in pk.input_specs], b.scalars, b.B, L, b.H, b.sizes)["a"]
        node_dims, dims = pk.pieces["a"].dims, form.state.dims
        a = a.reshape((b.B, L, b.H) + tuple(b.sizes[d] for d in node_dims))
        a = a.permute(0, 1, 2, *(3 + node_dims.index(d) for d in dims if d in node_dims))
        a = a.reshape((b.B, L, b.H) + tuple(b.sizes[d] if d in node_dims else 1 for d in dims))
        a = a.expand((b.B, L, b.H) + tuple(b.sizes[d] for d in dims))
        return torch.cumsum(a.double(), 1).float()


def _apply(M, S):
    a, b = M
    return a[..., :, None] * S * b[..., None, :]


def passing_for(plan):
    """``GatedLinearFamily.state_passing``: every gated-linear plan can be split (state by state)."""
    return GatedLinearPassing(plan)
