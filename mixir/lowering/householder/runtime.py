"""The compiled Householder mixer (DeltaNet, Gated DeltaNet, DeltaProduct, KDA): pieces kernel →
sub-steps interleaved into a sequence of length T·n_h → delta core (recurrent or chunked WY) →
read-out at each token's last sub-step → output affine map.

The chunked strategy skips the pieces kernel where the pieces are maps the core applies on load
(``direct.py``: q' = c·q, v' = β·v, raw k, β, g; no output map): the core then reads the call's
tensors and returns their gradients. Other declarations, and the recurrent strategy, run the
pieces kernel."""
from __future__ import annotations

import torch

from ...dsl import ir
from ...errors import InputError
from . import core
from . import ops as _ops  # noqa: F401 - registers the custom ops mixir::delta_fwd / delta_bwd
from .analysis import HouseholderPlan
from .direct import direct_plan
from ...distributed.passing import split_call
from .distributed import passing_for
from ..common.launch import encode_config
from ..common.pieces import PiecesKernel
from ..common.call import RECURRENT_MAX_T, CompiledBase, check_call, check_strategy
from ..common.checks import check_log_decay


class CompiledHouseholder(CompiledBase):
    """A Householder-transition mixer compiled for torch tensors (call it like the reference)."""

    def __init__(self, mixer, plan: HouseholderPlan, strategy=None, config=None):
        super().__init__(mixer, plan, strategy, config)
        self.pieces_kernel = PiecesKernel(mixer.name, plan.pieces(), list(mixer.inputs))
        self.direct = direct_plan(plan, [(s.name, s.kind, s.dims) for s in mixer.inputs])

    def _check_strategy(self, strategy):
        if strategy == "chunked" and self.plan.gate_k:
            raise InputError(f"{self.mixer.name}: strategy 'chunked' takes scalar gates; this mixer's gate "
                             f"is diagonal along {self.plan.k_dim!r} (Kimi Delta Attention), which "
                             "mixir runs with strategy='recurrent' only")
        check_strategy(self.strategies, strategy)

    def _config(self, strategy, K, V, dtype, shape, device):
        """The core's launch parameters: on CUDA tensors the tuning database's config for the
        current GPU, else the delta space's cost-model best at the core's shape (sequence T·n_h;
        ``autotune.select.tuned_config``); on CPU (or when nothing applies)
        ``core.default_config``. A user's config= wins."""
        cfg = core.default_config(strategy, K, V, dtype)
        if device is not None and torch.device(device).type == "cuda":
            from ...autotune.db import Key
            from ...autotune.select import tuned_config
            from .space import SPACES, core_shape
            B, T, H = shape
            key = Key(self.mixer.fingerprint, strategy, dtype, B, T, H, K, V)
            tuned = tuned_config(SPACES.get(strategy), key,
                                 core_shape(B, T, H, K, V, dtype, self.plan.num_householder),
                                 torch.device(device))
            if tuned:
                cfg.update(tuned)
        cfg.update(self.config)
        return cfg

    def _raw_passthrough(self, arrays, dtype) -> dict:
        """The pieces that are a per-token input as is (``codegen``'s passthrough), as the caller's
        tensor when it is in the call's dtype: the pieces kernel hands them over as fp32 copies,
        which the core would convert back (two passes over the tensor each way, forward and
        backward). Autograd flows to the input directly."""
        out = {}
        index = {name: i for i, (name, *_) in enumerate(self.pieces_kernel.input_specs)}
        for piece, name in self.pieces_kernel.generated.passthrough.items():
            i = index[name]
            if self.pieces_kernel.input_specs[i][1] == "input" and arrays[i].dtype == dtype:
                out[piece] = arrays[i]
        return out

    def _direct_inputs(self, strategy, arrays, scalars, dtype):
        """(q, [k], [v], [β], [g or None], q_scale, v_beta) of the call's own tensors when the
        chunked core applies the pieces on load (``direct.py``; q, k, v in the call's dtype),
        else None."""
        d = self.direct
        if d is None or strategy != "chunked":
            return None
        t = {s.name: a for s, a in zip(self.mixer.inputs, arrays)}
        if any(t[x].dtype != dtype for x in [d.q] + [n for s in d.steps for n in (s.k, s.v)]):
            return None
        steps = d.steps
        return (t[d.q], [t[s.k] for s in steps], [t[s.v] for s in steps],
                [t[s.beta] for s in steps], [None if s.g is None else t[s.g] for s in steps],
                d.q_scale(scalars), steps[0].v_beta)

    def _pieces(self, arrays, b, dtype):
        """(q, [k], [v], [β], [g or None], pieces) from the pieces kernel."""
        p = self.plan
        B, T, H = b.B, b.T, b.H
        K, V = b.sizes[p.k_dim], b.sizes[p.v_dim]
        # q, k, v pieces straight in the call's 16-bit dtype (the core reads them in it: one
        # rounding, as the conversion after an fp32 piece made; beta and gates stay fp32)
        narrow = () if dtype == torch.float32 else ("q", *(f"{x}{j}" for x in "kv"
                                                          for j in range(p.num_householder)))
        pieces = self.pieces_kernel(list(arrays), b.scalars, B, T, H, b.sizes, narrow=narrow,
                                    dtype=dtype)
        pieces.update(self._raw_passthrough(arrays, dtype))
        n = range(p.num_householder)

        def gate(j):        # [B, T, H] (scalar gate) or [B, T, H, K] (key-diagonal, KDA)
            if f"g{j}" not in pieces:
                return None
            return _shaped(pieces[f"g{j}"], B, T, H, K if p.gate_k else None)
        return (_shaped(pieces["q"], B, T, H, K), [_shaped(pieces[f"k{j}"], B, T, H, K) for j in n],
                [_shaped(pieces[f"v{j}"], B, T, H, V) for j in n],
                [_shaped(pieces[f"beta{j}"], B, T, H) for j in n], [gate(j) for j in n], pieces)

    def source_files(self):
        from ..common import packed_tiles
        from .kernels import chunked as delta_chunked, recurrent as delta_recurrent
        from .kernels import chunked_grads, wy
        return [self.pieces_kernel.source_path, delta_recurrent.__file__, delta_chunked.__file__,
                chunked_grads.__file__, wy.__file__, packed_tiles.__file__]

    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, group=None, **scalars):
        if group is not None:       # context parallelism: this rank's slice (distributed.py)
            return split_call(passing_for(self.plan), self, arrays, group=group,
                              initial_state=initial_state, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens, strategy=strategy, scalars=scalars)
        m, p = self.mixer, self.plan
        b, N, device, dtype = check_call(m, arrays, initial_state, cu_seqlens, scalars)
        strategy = strategy or self.strategy or (
            "recurrent" if b.T <= RECURRENT_MAX_T or self.plan.gate_k else "chunked")
        self._check_strategy(strategy)
        if isinstance(initial_state, (tuple, list)):
            raise InputError(f"initial_state: {m.name} has one state; pass a tensor")
        B, T, H = b.B, b.T, b.H
        K, V = b.sizes[p.k_dim], b.sizes[p.v_dim]
        if strategy == "chunked" and K > core.MAX_HEAD_K:
            raise InputError(f"{m.name}: the chunked strategy holds the key dim in one tile: "
                             f"{p.k_dim} = {K} > {core.MAX_HEAD_K}; use strategy='recurrent'")
        n = p.num_householder
        direct = self._direct_inputs(strategy, arrays, b.scalars, dtype)
        if direct is not None:      # (direct_plan: no output affine map)
            q, ks, vs, betas, gs, q_scale, v_beta = direct
        else:
            q, ks, vs, betas, gs, pieces = self._pieces(arrays, b, dtype)
            q_scale, v_beta = 1.0, False
        if n == 1:
            qs, k, v, beta, g = q, ks[0], vs[0], betas[0], gs[0]
        else:      # DeltaProduct: the delta rule on a sequence of length T·n_h
            def inter(xs):
                return torch.stack(xs, dim=2).reshape((B, T * n) + tuple(xs[0].shape[2:]))
            qs = q          # compact: the core reads out each token's last sub-step only
            k, v, beta = inter(ks), inter(vs), inter(betas)
            like = next((x for x in gs if x is not None), None)
            g = None
            if like is not None:
                zero = torch.zeros((B, T, H) + ((K,) if p.gate_k else ()), device=device,
                                   dtype=like.dtype)
                g = inter([zero if x is None else x for x in gs])
        check_log_decay(m.name, "the log-gate of the transition", g)   # opt-in (mixir.input_checks)
        cu = None if cu_seqlens is None else cu_seqlens * n
        h0 = None
        if initial_state is not None:
            h0 = initial_state.float()
            if m.states[0].dims != (p.k_dim, p.v_dim):
                h0 = h0.transpose(-1, -2)
            h0 = h0.contiguous()
        cfg = self._config(strategy, K, V, dtype, (B, T, H), device)
        # without an output affine map the core writes o in the input dtype (one rounding, no
        # conversion pass); with one, fp32 and the map is applied before the rounding
        affine = not (ir.is_const(p.out_scale, 1.0) and ir.is_const(p.out_bias, 0.0))
        # β and g in their own dtype: the chunked kernels read them so, the recurrent core converts
        o, hT = torch.ops.mixir.delta_fwd(qs.to(dtype).contiguous(), k.to(dtype).contiguous(),
                                          v.to(dtype).contiguous(), beta.contiguous(),
                                          None if g is None else g.contiguous(), h0, cu,
                                          strategy, encode_config(cfg), n, not affine,
                                          q_scale, v_beta)
        if not ir.is_const(p.out_scale, 1.0):
            o = _shaped(pieces["e"], B, T, H, V) * o
        if not ir.is_const(p.out_bias, 0.0):
            o = o + _shaped(pieces["d"], B, T, H, V)
        o = o.reshape((B, T, H) + tuple(b.sizes[d] for d in m.output.dims)).to(dtype)
        if not output_final_state:
            return o
        if m.states[0].dims != (p.k_dim, p.v_dim):
            hT = hT.transpose(-1, -2)
        return o, hT


def _shaped(t, B, T, H, size=None):
    """A piece [B, T, H(, D)] (or a broadcast constant) expanded to [B, T, H(, size)]."""
    if size is None:
        return t.reshape(tuple(t.shape[:3])).expand(B, T, H)
    return t.reshape(tuple(t.shape[:3]) + (t.shape[3] if t.dim() > 3 else 1,)).expand(B, T, H, size)
