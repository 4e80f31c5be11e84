"""The compiled Householder mixer (DeltaNet, Gated DeltaNet, DeltaProduct, KDA): pieces kernel →
sub-steps interleaved into a sequence of length T·n_h → delta core (recurrent or chunked WY) →
read-out at each token's last sub-step → output affine map."""
from __future__ import annotations

import torch

from ...dsl import ir
from ...errors import InputError
from . import core
from . import ops as _ops  # noqa: F401 - registers the custom ops mixir::delta_fwd / delta_bwd
from .analysis import HouseholderPlan
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
        # q, k, v pieces straight in the call's 16-bit dtype (the core reads them in it: one
        # rounding, as the conversion after an fp32 piece made; beta and gates stay fp32)
        narrow = () if dtype == torch.float32 else ("q", *(f"{x}{j}" for x in "kv"
                                                          for j in range(p.num_householder)))
        pieces = self.pieces_kernel(list(arrays), b.scalars, B, T, H, b.sizes, narrow=narrow,
                                    dtype=dtype)
        pieces.update(self._raw_passthrough(arrays, dtype))

        def shaped(name, size=None):
            t = pieces[name]
            if size is None:
                return t.reshape(tuple(t.shape[:3])).expand(B, T, H)
            return t.reshape(tuple(t.shape[:3]) + (t.shape[3] if t.dim() > 3 else 1,)).expand(B, T, H, size)

        n = p.num_householder

        def gate(j):        # [B, T, H] (scalar gate) or [B, T, H, K] (key-diagonal, KDA)
            return shaped(f"g{j}", K) if p.gate_k else shaped(f"g{j}")
        ks = [shaped(f"k{j}", K) for j in range(n)]
        vs = [shaped(f"v{j}", V) for j in range(n)]
        betas = [shaped(f"beta{j}") for j in range(n)]
        has_g = [f"g{j}" in pieces for j in range(n)]
        q = shaped("q", K)
        if n == 1:
            qs, k, v, beta = q, ks[0], vs[0], betas[0]
            g = gate(0) if has_g[0] else None
        else:      # DeltaProduct: the delta rule on a sequence of length T·n_h
            def inter(xs):
                return torch.stack(xs, dim=2).reshape((B, T * n) + tuple(xs[0].shape[2:]))
            qs = q          # compact: the core reads out each token's last sub-step only
            k, v, beta = inter(ks), inter(vs), inter(betas)
            zero = torch.zeros((B, T, H) + ((K,) if p.gate_k else ()), device=device)
            g = inter([gate(j) if has_g[j] else zero for j in range(n)]) if any(has_g) else None
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
        o, hT = torch.ops.mixir.delta_fwd(qs.to(dtype).contiguous(), k.to(dtype).contiguous(),
                                          v.to(dtype).contiguous(), beta.float().contiguous(),
                                          None if g is None else g.float().contiguous(), h0, cu,
                                          strategy, encode_config(cfg), n, not affine)
        if not ir.is_const(p.out_scale, 1.0):
            o = shaped("e", V) * o
        if not ir.is_const(p.out_bias, 0.0):
            o = o + shaped("d", V)
        o = o.reshape((B, T, H) + tuple(b.sizes[d] for d in m.output.dims)).to(dtype)
        if not output_final_state:
            return o
        if m.states[0].dims != (p.k_dim, p.v_dim):
            hT = hT.transpose(-1, -2)
        return o, hT
