"""``CompiledMixer``: validate a call, evaluate the per-token pieces, run the Triton core.

A call goes: bind and validate the arguments (``InputError`` before any kernel) → evaluate the
analysed pieces (q, k, v, log-decays, signs, output scale and bias) per token → fold transition
signs into q/k/v (``S_t = diag(P_t) S̃_t diag(Q_t)`` with P, Q the running products of signs) →
``mixir::gla_fwd`` (Triton: compiled on CUDA tensors, interpreted on CPU tensors) → output affine
map. Autograd flows through every step; the core's backward is ``mixir::gla_bwd``.

Pieces the core can read as they are (``direct_pieces``: a piece that *is* a call tensor, q times
a per-call scalar factor such as ``scale``, a constant) never go through the generated pieces
kernel: the core reads the caller's tensors in their own dtype, a q factor becomes the core's
output scale, and without signs or an output map the core writes the output in the call's dtype.
So a declaration like simple_gla / gla runs as the core's launches alone, with no fp32 copies.
Pieces that are a call tensor times one scalar (``scaled.scaled_pieces``: mamba2's v' = dt·x,
D·x) are formed by the core too (v_scale, v_bias), and so are log-decays that are a per-token
factor times a per-head parameter (``scaled.factored_decays``: mamba2's and Mamba-1's dt·A;
g_scale, gk_scale).
"""
from __future__ import annotations

import torch

from ...dsl import ir
from ...errors import InputError
from ...reference.evaluate import NumpyBackend, evaluate
from . import core, ops
from . import fused as _fused
from .analysis import GatedLinearForm, MaxPlusForm, Plan, analyse, new_input, prev_input
from .maxplus import maxplus_scan
from ...distributed.passing import split_call
from .distributed import passing_for
from . import scaled as _scaled
from .scaled import factored_decays, scaled_pieces
from ..common.call import (RECURRENT_MAX_T, CompiledBase, assume_constant, check_call,
                           check_strategy, shift_by_one)
from ..common.checks import check_log_decay, checks_enabled
from ..common.launch import encode_config, targets_gpu
from ..common.pieces import PiecesKernel




#: the pieces holding the signs of the transition's factors
_SIGNS = ("g_sign", "gk_sign", "gv_sign")


def _narrow_pieces(f: GatedLinearForm) -> tuple:
    """The pieces among q, k, v that the core reads in a 16-bit input dtype: q, k, and v when it
    has a feature axis. A v without one (a per-token scalar, e.g. mamba's v = dt·u) stays fp32
    from the pieces kernel to the core - a few bytes per token, and no rounding of a computed
    value before the fp32 recurrence (the core takes such a v in fp32 and returns its gradient
    in fp32)."""
    return ("q", "k", "v") if f.v_dim else ("q", "k")


@assume_constant
def _sm_count(device_type: str, index: int) -> int:
    """The SM count of the GPU a call runs on: its row of the hardware table, else CUDA's device
    properties; 0 when none is identified (a CPU device while launches are recorded). A constant
    of a ``torch.compile`` graph (``assume_constant``: Dynamo runs it eagerly at trace time)."""
    from ...autotune.select import current_gpu
    device = torch.device(device_type) if index < 0 else torch.device(device_type, index)
    gpu = current_gpu(device)
    if gpu is not None:
        return gpu.sms
    if device_type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 0


class CompiledMixer(CompiledBase):
    """A mixer compiled for torch tensors. Call it like the reference, on tensors."""

    def __init__(self, mixer, strategy: str | None = None, config: dict | None = None,
                 plan: Plan | None = None):
        super().__init__(mixer, plan if plan is not None else analyse(mixer), strategy, config)
        self.form: GatedLinearForm = self.plan.main
        # one generated Triton kernel pair (forward, backward) per form evaluates its pieces
        # (an auxiliary state's pieces may read the auxiliary states scanned before it)
        specs = [(s.name, s.kind, s.dims) for s in mixer.inputs]
        forms = [form for _, form in self.plan.aux] + [self.form]
        # the per-token inputs some form reads (an auxiliary state's values before each token are
        # formed only when read: mLSTM's output reads n's new values, never its previous ones)
        self.reads = {leaf.arg for form in forms for node in form.pieces().values()
                      for leaf in ir.leaves(node) if leaf.op == "input"}
        self.pieces_kernels, self.direct, self.scaled, self.factored = {}, {}, {}, {}
        for form in forms:
            name, dims = form.state.name, form.state.dims
            pieces = form.pieces()
            direct = {} if isinstance(form, MaxPlusForm) else direct_pieces(form, specs)
            scaled = {} if isinstance(form, MaxPlusForm) else scaled_pieces(form, specs, direct)
            factored = {} if isinstance(form, MaxPlusForm) else factored_decays(form, specs, direct)
            # the output map's constants (e = 1, d = 0, ...) are read off the form in ``_run``
            rest = {n: node for n, node in pieces.items() if n not in direct and n not in scaled
                    and n not in factored and not (n in ("e", "d") and ir.is_const(node))}
            # a factored log-decay u·a: u is a call tensor, or the pieces kernel computes it
            rest.update({f"{n}_u": u for n, (u, src, _) in factored.items() if src is None})
            self.direct[name], self.scaled[name] = direct, scaled
            self.factored[name] = {n: (src, a) for n, (_, src, a) in factored.items()}
            self.pieces_kernels[name] = PiecesKernel(mixer.name, rest, specs) if rest else None
            specs = specs + [(prev_input(name), "input", dims), (new_input(name), "input", dims)]

    def default_strategy(self, b, form=None, device=None, N=None) -> str:
        """The strategy of a call that names none, for ``form`` (default: the main state's):
        recurrent for short sequences (T <= RECURRENT_MAX_T) and for a vector state - a head size
        of 1, as Mamba-1's [N] per channel, HGRN's [D] or mLSTM's normaliser n [K], where the
        chunked strategy's dot tiles would be padding but for one row or column (its fwd+bwd moves
        about twice the bytes: docs/benchmarks.md); on a GPU (``device``, with ``N`` sequences)
        fused where ``_fused_suits``; chunked otherwise. Each state of a call picks its own."""
        f = form or self.form
        K = b.sizes[f.k_dim] if f.k_dim else 1
        V = b.sizes[f.v_dim] if f.v_dim else 1
        if b.T <= RECURRENT_MAX_T or min(K, V) == 1:
            return "recurrent"
        if device is not None and self._fused_suits(f, b, N if N is not None else b.B, K, V, device):
            return "fused"
        return "chunked"

    def _fused_suits(self, f, b, N, K, V, device) -> bool:
        """Whether the fused strategy runs this form's call on ``device`` as lean as the chunked
        one and fills the GPU: the form offers it (scalar decays) with nothing it would form in
        torch around the core (a signed decay's sign products; an output scale with a feature
        axis, or beside an output bias - its sweeps form a factored decay, scaled values, the
        value bias and a per-token output scale themselves), and ``fused.suits`` the shape on
        the device's SM count."""
        lean = ("fused" in f.strategies and (f.g is None or f.g.sign is None)
                and (ir.is_const(f.out_scale)
                     or (not f.out_scale.dims and ir.is_const(f.out_bias, 0.0))))
        if not lean or not targets_gpu(device):
            return False
        sms = _sm_count(device.type, -1 if device.index is None else device.index)
        scaled_values = bool(self.scaled.get(f.state.name))
        return sms > 0 and _fused.suits(N, b.H, K, V, sms, scaled_values)

    def source_files(self):
        """The Triton source files of this mixer's kernels: the generated pieces kernels (one file
        per form, in the content-addressed cache) and the core templates."""
        from ..common import packed_tiles
        from .kernels import chunked as gla_chunked, fused as gla_fused, maxplus as gla_maxplus
        from .kernels import recurrent as gla_recurrent
        templates = [gla_recurrent, gla_chunked, gla_fused] + (
            [gla_maxplus] if any(isinstance(f, MaxPlusForm) for _, f in self.plan.aux) else [])
        return ([pk.source_path for pk in self.pieces_kernels.values() if pk is not None]
                + [m.__file__ for m in templates] + [packed_tiles.__file__])
    def _check(self, arrays, initial_state, cu_seqlens, scalars):
        return check_call(self.mixer, arrays, initial_state, cu_seqlens, scalars)

    # ---- the call ---------------------------------------------------------------------------
    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, group=None, **scalars):
        if group is not None:       # context parallelism: this rank's slice (distributed.py)
            return split_call(passing_for(self.plan), self, arrays, group=group,
                              initial_state=initial_state, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens, strategy=strategy, scalars=scalars)
        m = self.mixer
        b, N, device, dtype = self._check(arrays, initial_state, cu_seqlens, scalars)
        named = strategy or self.strategy
        if named:
            check_strategy(self.strategies, named)
        inits = initial_state if isinstance(initial_state, (tuple, list)) else (initial_state,) * (
            1 if initial_state is not None else len(m.states))
        if initial_state is not None and len(m.states) > 1 and not isinstance(initial_state, (tuple, list)):
            raise InputError(f"initial_state: {m.name} has {len(m.states)} states; pass a tuple")
        env = {spec.name: a for spec, a in zip(m.inputs, arrays)}
        finals = [None] * len(m.states)
        for i, form in self.plan.aux:   # auxiliary scans in dependency order, kept in fp32
            if isinstance(form, MaxPlusForm):
                o_i, finals[i] = self._run_maxplus(form, env, b, N, inits[i], cu_seqlens)
            else:
                o_i, finals[i] = self._run(form, m.states[i].dims, env, b, N, inits[i], cu_seqlens,
                                           named or self.default_strategy(b, form, device, N),
                                           torch.float32)
            spec = m.states[i]
            prev = prev_input(spec.name)
            env[prev] = shift_by_one(o_i, inits[i], cu_seqlens, N) if prev in self.reads else None
            env[new_input(spec.name)] = o_i
        i = self.plan.main_index
        o, finals[i] = self._run(self.form, m.output.dims, env, b, N, inits[i], cu_seqlens,
                                 named or self.default_strategy(b, None, device, N), dtype)
        o = o.to(dtype)
        if not output_final_state:
            return o
        return o, (finals[0] if len(finals) == 1 else tuple(finals))

    def _run(self, f: GatedLinearForm, out_dims, env, b, N, init, cu_seqlens, strategy, dtype):
        """One gated-linear form: pieces → sign folding → core → output map. Returns (o in the
        form's output layout - ``dtype`` when the core wrote it, else fp32 -, final state in the
        declared layout)."""
        B, T, H = b.B, b.T, b.H
        K = b.sizes[f.k_dim] if f.k_dim else 1
        V = b.sizes[f.v_dim] if f.v_dim else 1
        p, scale, shaped = self.pieces(f, env, b, T, dtype, core_scales=True)
        q, k, v = shaped("q"), shaped("k"), shaped("v")
        g = shaped("g") if "g" in p else None
        # a factored gk = u·a reaches the core as u [B, T, H] and gk_scale a [H, K]
        gk_scale = None if "gk_scale" not in p else p["gk_scale"].reshape(H, K)
        gk = (None if "gk" not in p else shaped("gk") if gk_scale is None
              else p["gk"].reshape(B, T, H))
        gv = shaped("gv") if "gv" in p else None
        if checks_enabled():     # opt-in (mixir.input_checks)
            g_full = g if "g_scale" not in p else _scaled.decay(g, p["g_scale"])
            gk_full = gk if gk_scale is None else _scaled.decay(gk, gk_scale)
            for piece, t in (("g", g_full), ("gk", gk_full), ("gv", gv)):
                src = self.direct[f.state.name].get(piece, (None,))[0]
                check_log_decay(self.mixer.name, f"the log-decay of state {f.state.name!r}"
                                + (f" (argument {src!r})" if src else ""), t)
        P = Q = None
        if any(n in p for n in _SIGNS):
            P, Q = self._sign_products(p, shaped, cu_seqlens)
            if P is not None:
                q, k = q * P, k * P
            if Q is not None:
                v = v * Q
        if ir.is_const(f.out_scale):
            scale *= f.out_scale.arg
        # a constant output scale and a per-token bias (mamba's D skip) go into the core's output
        # stores; a per-token output scale or sign products need the fp32 output
        # scaled pieces (``scaled``): v' = v_scale * v and the bias v_bias_h * v (v as given)
        v_scale, v_bias = p.get("v_scale"), p.get("d_scale")
        bias = None
        in_core = v_bias is not None      # the bias the core forms (recognised without signs)
        if v_bias is None and Q is None and ir.is_const(f.out_scale) \
                and not ir.is_const(f.out_bias, 0.0):
            bias, in_core = shaped("d"), True
        # a per-token output scale e [B, T, H] (mLSTM's normaliser) goes into the core's output
        # store (recurrent; chunked with scalar decays; no signs, no bias; elsewhere it multiplies
        # the fp32 output)
        o_scale = None
        if (not ir.is_const(f.out_scale) and p["e"].dim() == 3 and P is None and Q is None
                and ir.is_const(f.out_bias, 0.0)
                and (strategy == "recurrent" or (strategy in ("chunked", "fused") and gk is None
                                                 and gv is None))):
            o_scale = p["e"].float().reshape(B, T, H)
        scaled_out = not ir.is_const(f.out_scale) and o_scale is None
        out_fp32 = Q is not None or scaled_out or (
            not in_core and not ir.is_const(f.out_bias, 0.0))
        h0 = None if init is None else self._to_canonical_state(f, init.float())
        v_dtype = dtype if "v" in _narrow_pieces(f) else torch.float32
        o, hT = ops.gla_fwd(q.to(dtype), k.to(dtype), v.to(v_dtype), g, gk, gv,
                            None if h0 is None else h0.contiguous(), cu_seqlens, strategy,
                            encode_config(self._config(strategy, K, V, dtype, shape=(B, T, H),
                                                       device=q.device, form=f)),
                            float(scale), out_fp32, bias,
                            None if v_scale is None else v_scale.reshape(B, T, H),
                            None if v_bias is None else v_bias.reshape(H),
                            None if "g_scale" not in p else p["g_scale"].reshape(H), gk_scale,
                            o_scale)
        if Q is not None:
            o = o * Q
        if scaled_out:
            o = shaped("e") * o
        if not in_core and not ir.is_const(f.out_bias, 0.0):
            o = o + shaped("d")
        o = o.reshape((B, T, H) + tuple(b.sizes[d] for d in out_dims))
        if P is not None:
            hT = hT * self._last(P, cu_seqlens, N)[..., :, None]
        if Q is not None:
            hT = hT * self._last(Q, cu_seqlens, N)[..., None, :]
        return o, self._from_canonical_state(f, hT)

    def pieces(self, f: GatedLinearForm, env, b, T, dtype=torch.float32, core_scales=False):
        """``(p, scale, shaped)`` of the form ``f`` on the ``T`` tokens of ``env``: its pieces (q, k,
        v in ``dtype`` when it is 16-bit and they have a feature axis, straight from the pieces
        kernel - the core reads them in that dtype -, the sign pieces (±1) in it too, the rest
        fp32; a piece that is a call tensor is that tensor, a constant a
        0-dim tensor; a scaled piece v / d is its call tensor, with its scalar as p["v_scale"] /
        p["d_scale"]; g = u·a and gk = u·a (a over the key dim) are the products, or with
        ``core_scales`` (the core forms them) u with p["g_scale"] / p["gk_scale"] = a), the output
        scale of q's per-call factor (1 without one), and
        ``shaped(name)``: a piece broadcast to ``[B, T, H(, its feature size)]``."""
        B, H = b.B, b.H
        K = b.sizes[f.k_dim] if f.k_dim else 1
        V = b.sizes[f.v_dim] if f.v_dim else 1
        pk = self.pieces_kernels[f.state.name]
        # the sign pieces (±1) are exact in 16 bits: they are read as such by the sign products
        narrow = _narrow_pieces(f) + _SIGNS if dtype != torch.float32 else ()
        p = {} if pk is None else pk([env[spec[0]] for spec in pk.input_specs], b.scalars, B, T, H,
                                     b.sizes, narrow=narrow, dtype=dtype)
        scale = 1.0
        device = next(t.device for t in env.values() if isinstance(t, torch.Tensor))
        for name, (src, factor) in self.direct[f.state.name].items():
            if src is None:
                p[name] = torch.full((), factor, device=device)
            else:
                p[name] = env[src]
                if factor is not None:       # only q has a factor: the core's output scale
                    scale = _value(factor, b.scalars)
        for name, (src, factor) in self.scaled[f.state.name].items():
            p[name], p[name + "_scale"] = env[src], env[factor]     # "v_scale" / "d_scale"
        for name, (src, a) in self.factored[f.state.name].items():  # g / gk = u·a
            u = env[src] if src is not None else p.pop(f"{name}_u")
            if core_scales:                  # the core forms it: u and "g_scale" / "gk_scale"
                p[name], p[name + "_scale"] = u, env[a]
            else:
                p[name] = _scaled.decay(u.reshape(B, T, H), env[a])
        full = {"q": K, "k": K, "v": V, "gk": K, "gk_sign": K, "gv": V, "gv_sign": V, "e": V, "d": V}

        def shaped(name):
            t = p[name]
            feat = (t.shape[3] if t.dim() > 3 else 1,) if name in full else ()
            shape = (B, T, H) + ((full[name],) if name in full else ())
            return t.reshape(tuple(t.shape[:3]) + feat).expand(shape)
        return p, scale, shaped

    def _run_maxplus(self, f: MaxPlusForm, env, b, N, init, cu_seqlens):
        """A stabiliser state (``MaxPlusForm``): pieces a, b → ``maxplus_scan``. Returns (m fp32
        ``[B, T, H, *dims]``, final state ``[N, H, *dims]``). Differentiable (the subgradient
        of max: the adjoint goes to the branch that attains it)."""
        B, T, H = b.B, b.T, b.H
        dims = f.state.dims
        pk = self.pieces_kernels[f.state.name]
        p = pk([env[spec[0]] for spec in pk.input_specs], b.scalars, B, T, H, b.sizes)
        full = (B, T, H) + tuple(b.sizes[d] for d in dims)
        a, c = (_align(p[n], pk.pieces[n].dims, dims).expand(full) for n in ("a", "b"))
        m0 = (torch.zeros((N, H) + full[3:], device=a.device) if init is None
              else init.float().reshape((N, H) + full[3:]))
        return maxplus_scan(a, c, m0, cu_seqlens)

    def _config(self, strategy, K, V, dtype, shape=None, device=None, form=None):
        cfg = core.default_config(strategy, K, V, dtype)
        # on CUDA tensors: the tuning database's config for the current GPU, else the cost
        # model's best; on CPU (or when nothing applies) the default. A user's config= wins.
        if device is not None and device.type == "cuda" and shape is not None:
            from ...autotune.db import Key
            from ...autotune.select import tuned_config
            from .space import core_shape, spaces_for
            B, T, H = shape
            key = Key(self.mixer.fingerprint, strategy, dtype, B, T, H, K, V)
            tuned = tuned_config(spaces_for(form or self.form).get(strategy), key,
                                 core_shape(B, T, H, K, V, dtype), device)
            if tuned:
                cfg.update(tuned)
        cfg.update(self.config)
        return cfg

    def _sign_products(self, p, shaped, cu_seqlens):
        """Running products of transition signs, restarted at every sequence start: (P, Q), P on
        the key side ([B, T, H, K] with gk's signs, [B, T, H, 1] with only g's), Q on the value
        side ([B, T, H, V]); None where the form has no signs on that side. ±1 values, in the
        sign pieces' dtype (16-bit for 16-bit inputs: exact)."""
        sk = shaped("gk_sign") if "gk_sign" in p else None
        if "g_sign" in p:
            gs = shaped("g_sign")[..., None]
            sk = gs if sk is None else sk * gs
        sv = shaped("gv_sign") if "gv_sign" in p else None
        return tuple(None if s is None else _segment_cumprod(s.detach(), cu_seqlens)
                     for s in (sk, sv))

    @staticmethod
    def _last(P, cu_seqlens, N):
        """The running sign product at the last token of each sequence (1 for empty ones)."""
        B, T, H, D = P.shape
        if cu_seqlens is None:
            return P[:, -1] if T else torch.ones((B, H, D), device=P.device)
        ends = cu_seqlens.long()
        if T == 0:                      # every sequence is empty
            return torch.ones((N, H, D), device=P.device, dtype=P.dtype)
        idx = (ends[1:] - 1).clamp(min=0)
        last = P[0, idx]
        empty = (ends[1:] == ends[:-1])[:, None, None]
        return torch.where(empty, torch.ones_like(last), last)

    @staticmethod
    def _to_canonical_state(f, s):
        dims = f.state.dims
        if len(dims) == 2:
            return s if dims == (f.k_dim, f.v_dim) else s.transpose(-1, -2)
        if len(dims) == 1:
            return s[..., :, None] if f.k_dim else s[..., None, :]
        return s[..., None, None]

    @staticmethod
    def _from_canonical_state(f, h):
        dims = f.state.dims
        if len(dims) == 2:
            return h if dims == (f.k_dim, f.v_dim) else h.transpose(-1, -2)
        if len(dims) == 1:
            return h[..., :, 0] if f.k_dim else h[..., 0, :]
        return h[..., 0, 0]


_CORE_DIM = {"q": "k_dim", "k": "k_dim", "v": "v_dim", "g": None, "gk": "k_dim", "gv": "v_dim"}


def direct_pieces(form: GatedLinearForm, specs) -> dict:
    """``{piece: (input name or None, factor)}`` for the core pieces the core reads without the
    pieces kernel: a piece that is a per-token call tensor of exactly the core's layout
    (``(name, None)``), q times a factor made of scalars and constants (``(name, factor node)``,
    folded into the core's output scale: q enters only the read-out), or a constant
    (``(None, value)``). ``specs``: (name, kind, dims) of the tensors a call binds."""
    kinds = {name: (kind, dims) for name, kind, dims in specs}
    out = {}
    for name, node in form.pieces().items():
        if name not in _CORE_DIM:
            continue
        want = () if _CORE_DIM[name] is None else (getattr(form, _CORE_DIM[name]),)
        if ir.is_const(node) and not node.dims:
            out[name] = (None, float(node.arg))
            continue
        factor = None
        if name == "q" and node.op == "mul" and node.src[0].op == "input" and _is_factor(node.src[1]):
            node, factor = node.src[0], node.src[1]
        if node.op == "input" and None not in want and node.dims == want \
                and kinds.get(node.arg) == ("input", want):
            out[name] = (node.arg, factor)
    return out


def _is_factor(n: ir.Node) -> bool:
    """Whether ``n`` is a per-call number: no dims, made of scalars and constants."""
    return not n.dims and all(x.op in ("scalar", "const") for x in ir.leaves(n))


def _value(n: ir.Node, scalars: dict) -> float:
    """The value of a ``_is_factor`` node for a call's scalars (the reference's evaluator)."""
    env = {x: float(scalars[x.arg]) for x in ir.leaves(n) if x.op == "scalar"}
    return float(evaluate(n, env, NumpyBackend(), 0))


def _align(t, node_dims, dims):
    """A piece ``[B, T, H, *node_dims]`` viewed as ``[B, T, H, *dims]`` (size 1 where it does not
    vary; ``node_dims`` ⊆ ``dims``)."""
    t = t.reshape(tuple(t.shape[:3]) + tuple(t.shape[3:3 + len(node_dims)]))
    order = [node_dims.index(d) for d in dims if d in node_dims]
    t = t.permute(0, 1, 2, *(3 + i for i in order))
    shape = list(t.shape[:3])
    it = iter(t.shape[3:])
    for d in dims:
        shape.append(next(it) if d in node_dims else 1)
    return t.reshape(shape)


def _segment_cumprod(s, cu_seqlens):
    """cumprod of ±1 values along T, restarting at each sequence of ``cu_seqlens``."""
    P = torch.cumprod(s, dim=1)
    if cu_seqlens is None:
        return P
    T = s.shape[1]
    starts = cu_seqlens.long()[:-1]
    seg = torch.bucketize(torch.arange(T, device=s.device), cu_seqlens.long()[1:], right=True)
    before = (starts[seg] - 1)
    prev = torch.where((before >= 0)[:, None, None], P[0, before.clamp(min=0)], torch.ones_like(P[0]))
    return P * prev[None]   # ±1: dividing by the prefix is multiplying by it
