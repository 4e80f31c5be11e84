"""The compiled LTI mixer: the system from the parameters, then convolution or recurrence.

A call goes: bind and validate the arguments (``InputError`` before any kernel) → evaluate the
plan's parameter-only IR trees per head (a generated Triton kernel pair in fp32, the torch
program for float64; differentiable) into the complex system

    Λ [H, N], B̄ [H, N], U, V [H, r, N], c [H, N], D' [H]      (half basis, see lti_analysis)

→ one of two strategies, both exact for the declared recurrence:

- ``conv``: the kernel ``K_0 = D'``, ``K_l = c̃ Ā^{l−1} B̄̃`` (full conjugate-symmetric basis, real)
  by the Vandermonde kernel (r = 0: ``K_l = 2 Re Σ_n c_n B̄_n λ_n^{l−1}``) or by the Cauchy kernel
  at the roots of unity with the Woodbury identity (r > 0), then ``y = K * u`` by real FFTs of
  length 2T. An initial state adds ``c Ā^t x_0`` (the same kernel generation with x_0 in place of
  B̄, per sequence); the final state is ``λ^T x_0 + B̄ Σ_j λ^j u_{T−1−j}`` (the Vandermonde
  reduction) for r = 0, and for r > 0 Krylov blocks of √T tokens combined by a tree of matrix
  powers (``final_state_blocked``: O(log T) dense steps, no token loop).
- ``recurrent``: token by token, ``y_t = 2 Re(c·z_{t−1}) + D' u_t``,
  ``z_t = Λ z_{t−1} + Σ_k U_k · 2 Re(V_k·z_{t−1}) + B̄ u_t`` (decoding, and any T): the Triton
  kernel ``lti_recurrent_fwd``; with gradients it also writes state checkpoints and the adjoint
  kernel ``lti_recurrent_bwd`` is the backward (``ops.lti_recurrent_train``).

Autograd flows through everything: the Triton kernels have their backward kernels
(``kernels.py``, launched through the custom ops of ``ops.py``), the rest is torch. Compute is fp32 (complex64) for fp32/bf16/fp16 inputs and
fp64 for fp64 inputs.
"""
from __future__ import annotations


import torch

from ...dsl import ir
from ...errors import InputError
from . import kernels, ops
from ..common.call import RECURRENT_MAX_T, CompiledBase, check_call, check_strategy, is_compiling
from .analysis import LTIPlan
from .params import flatten_param_trees, run_param_program
from ..common.pieces import PiecesKernel
from .system import System, final_state_blocked, fft_conv, kernel_powers
from ...distributed.passing import split_call
from .distributed import passing_for


def _complex_sum(terms) -> list:
    """[re, im] trees of sum_j weight(w_j / 2, part_j) over (part, w) terms, where weight(x, "re")
    is x and weight(x, "im") is -i x (the half-basis read-out and low-rank weights,
    lti_analysis)."""
    re, im = ir.const(0.0), ir.const(0.0)
    for part, w in terms:
        half = ir.binary("mul", w, ir.const(0.5))
        if part == "re":
            re = ir.binary("add", re, half)
        else:
            im = ir.binary("sub", im, half)
    return [re, im]


_PARAM_KERNELS: dict = {}


def _params_kernel(mixer, roots) -> PiecesKernel:
    """The generated kernel pair of a declaration's parameter trees, built once per process (the
    generation costs 0.25 s for s4's 23 trees; the declaration's fingerprint is its content, and
    its trees follow from it)."""
    key = mixer.fingerprint
    if key not in _PARAM_KERNELS:
        _PARAM_KERNELS[key] = PiecesKernel(f"{mixer.name}_lti_params",
                                           {f"p{i}": r for i, r in enumerate(roots)}, mixer.inputs)
    return _PARAM_KERNELS[key]


class CompiledLTIMixer(CompiledBase):
    """An LTI mixer compiled for torch tensors: ``strategies = ("conv", "recurrent")``."""

    def __init__(self, mixer, plan: LTIPlan, strategy: str | None = None, config: dict | None = None):
        super().__init__(mixer, plan, strategy, config)
        p = plan
        # the real and imaginary parts of Λ, B̄, D', of each low-rank term's U_k and V_k and of c:
        # the sums and half weights of V_k and c are formed in the trees (one kernel, no torch op)
        self._roots = [p.lam_re, p.lam_im, p.beta_re, p.beta_im, p.feed]
        for t in p.lowrank:
            self._roots += [t.u_re, t.u_im, *_complex_sum(t.parts)]
        self._roots += _complex_sum((r.part, ir.binary("mul", r.coef, r.weight)) for r in p.readout)
        self._program = flatten_param_trees(self._roots)
        # the same trees as one generated Triton kernel pair (forward, backward) over the heads:
        # two launches per training step instead of a torch op per node and its autograd node
        self._params_kernel = _params_kernel(mixer, tuple(self._roots))
        self._lam_args = sorted({n.arg for n in ir.toposort(p.lam_re) + ir.toposort(p.lam_im)
                                 if n.op in ("param", "scalar")})

    def __repr__(self):     # the transition line names its strategies' kernels already
        return f"<mixir.CompiledLTIMixer {self.mixer.name} ({self.plan.transition})>"

    def source_files(self):
        return [kernels.__file__]

    # ---- the system of one call -------------------------------------------------------------
    def system(self, params: dict, H: int, sizes: dict, scalars: dict, rdtype, device) -> System:
        p = self.plan
        vals = self._param_values(params, H, sizes, scalars, rdtype, device)
        N = sizes[p.dim]

        def vec(x):     # a per-head scalar [H] → [H, N]
            return x if x.dim() == 2 else x[:, None].expand(H, N)

        cplx = lambda i: torch.complex(vec(vals[i]), vec(vals[i + 1]))     # noqa: E731
        lam, beta, feed = cplx(0), cplx(2), vals[4]
        Us = [cplx(5 + 4 * k) for k in range(len(p.lowrank))]
        Vs = [cplx(7 + 4 * k) for k in range(len(p.lowrank))]
        c = cplx(5 + 4 * len(p.lowrank))
        shape = (H, 0, N)
        U = torch.stack(Us, 1) if Us else torch.zeros(shape, dtype=lam.dtype, device=device)
        V = torch.stack(Vs, 1) if Vs else torch.zeros(shape, dtype=lam.dtype, device=device)
        if not is_compiling():     # a value check would break the graph; eager calls check it
            self._check_stable(lam, p.dim)
        return System(lam, beta, U, V, c, feed)

    def _param_values(self, params: dict, H: int, sizes: dict, scalars: dict, rdtype, device):
        """The parameter trees' values ``[H, *dims]``: in fp32 by the generated kernel
        (``self._params_kernel``, one launch forward and one backward), in float64 (float64
        inputs) by the torch program, which the kernels do not compute in."""
        if rdtype == torch.float32:
            arrays = [params.get(s.name) for s in self.mixer.inputs]
            like = next(a for a in arrays if a is not None)
            arrays = [like if a is None else a for a in arrays]     # the kernel reads params only
            out = self._params_kernel(arrays, scalars, 1, 1, H, sizes)
            return [out[f"p{i}"].reshape((H,) + tuple(sizes[d] for d in r.dims))
                    for i, r in enumerate(self._roots)]
        env = {("param", name): a for name, a in params.items()}
        env.update({("scalar", name): v for name, v in scalars.items()})
        return run_param_program(self._program, env, H, sizes, rdtype, device)

    def _check_stable(self, lam, dim):
        m = self.mixer
        with torch.no_grad():
            mag = lam.abs()
            bad = ~(mag <= 1 + 1e-6)
            if bool(bad.any()):
                h, n = (int(x) for x in bad.nonzero()[0])
                raise InputError(
                    f"{m.name}: unstable transition: |λ| = {float(mag[h, n]):.6g} ≥ 1 (head {h}, "
                    f"{dim} = {n}); λ depends on {', '.join(self._lam_args)} — for a continuous-time "
                    f"A its real part must be < 0 and the step Δ > 0")

    # ---- the call ---------------------------------------------------------------------------
    def _check(self, arrays, initial_state, cu_seqlens, scalars):
        """The shared validation (``common.call.check_call``); float64 is accepted here: the LTI
        system is computed in float64 (complex128) for float64 inputs."""
        b, N, device, _ = check_call(self.mixer, arrays, initial_state, cu_seqlens, scalars, float64=True)
        return b, device, N

    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, group=None, **scalars):
        if group is not None:       # context parallelism: this rank's slice (distributed.py)
            return split_call(passing_for(self.plan), self, arrays, group=group,
                              initial_state=initial_state, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens, strategy=strategy, scalars=scalars)
        m, p = self.mixer, self.plan
        b, device, nseq = self._check(arrays, initial_state, cu_seqlens, scalars)
        strategy = strategy or self.strategy or ("recurrent" if b.T <= RECURRENT_MAX_T else "conv")
        check_strategy(self.strategies, strategy)
        u_idx = [s.name for s in m.inputs].index(p.u)
        u = arrays[u_idx]
        rdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        params = {s.name: a for s, a in zip(m.inputs, arrays) if s.kind == "param"}
        sysm = self.system(params, b.H, b.sizes, b.scalars, rdtype, device)
        N = b.sizes[p.dim]
        z0 = self._initial(initial_state, nseq, b.H, N, rdtype, device)
        uf = u.to(rdtype).transpose(1, 2)                                   # [B, H, T]
        tiles = self._tiles(u.dtype, b.B, b.T, b.H, N, device) if strategy == "conv" else None
        if cu_seqlens is None:
            y, zT = self._run(sysm, uf, z0, strategy, output_final_state, tiles)
        elif is_compiling():
            y, zT = self._packed_recurrent(sysm, uf, z0, cu_seqlens, output_final_state)
        else:
            offs = [int(x) for x in cu_seqlens.tolist()]
            ys, zs = [], []
            for n, (s, e) in enumerate(zip(offs[:-1], offs[1:])):
                y_n, z_n = self._run(sysm, uf[:, :, s:e], None if z0 is None else z0[n:n + 1],
                                     strategy, output_final_state, tiles)
                ys.append(y_n)
                zs.append(z_n)
            y = torch.cat(ys, -1) if ys else uf[:, :, :0]
            zT = torch.cat(zs, 0) if output_final_state else None
        o = y.transpose(1, 2).to(u.dtype)
        if not output_final_state:
            return o
        sdtype = torch.float64 if rdtype == torch.float64 else torch.float32
        if p.x_im is None:
            return o, zT.real.to(sdtype)
        return o, (zT.real.to(sdtype), zT.imag.to(sdtype))

    def _initial(self, initial_state, Nseq, H, N, rdtype, device):
        if initial_state is None:
            return None
        st = initial_state if isinstance(initial_state, (tuple, list)) else (initial_state,)
        re = st[0].to(device=device, dtype=rdtype) if st[0] is not None else torch.zeros(
            (Nseq, H, N), dtype=rdtype, device=device)
        im = (st[1].to(device=device, dtype=rdtype) if len(st) > 1 and st[1] is not None
              else torch.zeros_like(re))
        return torch.complex(re, im)

    def _tiles(self, dtype, B, T, H, N, device):
        """The conv kernels' tiles for this call: the user's ``config=`` wins; on CUDA (16-bit or
        fp32 inputs, outside ``torch.compile``) the tuning database's entry for this mixer and
        shape (``mixir tune``: strategy ``lti_<kind>``, K = N modes, V = Q vectors per row; the
        database only, through ``autotune.select.tuned_config``, never raising); else None, and
        ``kernels.launch_config`` takes the kernel-level entry / the cost model / the default."""
        if self.config or device.type != "cuda" or dtype == torch.float64 or is_compiling():
            return self.config or None
        from . import space as lti_space
        from ...autotune.db import Key
        from ...autotune.select import tuned_config
        kind = lti_space.kind_of(self.plan)
        shp = lti_space.launch_shape(self.plan, B, T, H, N)
        key = Key(self.mixer.fingerprint, f"lti_{kind}", dtype, int(B), int(T), int(H), int(N), int(shp.V))
        # the space and shape validate the entry (an invalid one is ignored with a warning);
        # model=None-returning: without an entry the kernels choose (kernels.launch_config)
        cfg = tuned_config(lti_space.space(kind), key, shp, device, model=lambda gpu: None)
        return {k: int(cfg[k]) for k in ("BN", "BL", "num_warps", "num_stages")} if cfg else None

    def _run(self, s: System, u, z0, strategy, want_state, tiles=None):
        """u [B, H, T] real, z0 [B, H, N] complex or None → (y [B, H, T], z_T [B, H, N] or None);
        ``tiles``: the conv kernels' config (``_tiles``; None: ``self.config`` or the default rule)."""
        B, H, T = u.shape
        N = s.lam.shape[1]
        if T == 0:
            zT = z0 if z0 is not None else torch.zeros((B, H, N), dtype=s.lam.dtype, device=u.device)
            return u, (zT if want_state else None)
        if strategy == "recurrent":
            return self._recurrent(s, u, z0, want_state)
        cfg = tiles or self.config or None
        K = torch.cat([s.feed[:, None], kernel_powers(s, s.beta, T - 1, config=cfg)], -1)  # [H, T]
        y = fft_conv(u, K)
        if z0 is not None:
            y = y + kernel_powers(s, z0.reshape(B * H, N), T, groups=B, config=cfg).reshape(B, H, T)
        zT = None
        if want_state:
            if s.rank == 0:
                lam = s.lam.repeat(B, 1)
                w = u.flip(-1).reshape(B * H, T)
                sr, si = ops.vandermonde_reduce(torch.log(lam.abs()).clamp(min=-1e4),
                                                        torch.angle(lam), w, cfg)
                zT = s.beta * torch.complex(sr, si).reshape(B, H, N)
                if z0 is not None:
                    zT = zT + s.lam ** T * z0
            else:   # diagonal plus low rank: Krylov blocks and a tree of matrix powers
                zT = final_state_blocked(s, u, z0)
        return y, zT

    @staticmethod
    def _recurrent(s: System, u, z0, want_state):
        """Token by token, always Triton: ``lti_recurrent_fwd`` when no gradient is needed
        (decoding, inference); with gradients the custom op ``mixir::lti_recurrent_train`` — the
        same kernel writing a state checkpoint every ⌈√T⌉ tokens, and the adjoint kernel
        ``lti_recurrent_bwd`` as its backward (two launches per call, not T)."""
        tensors = (u, s.lam, s.beta, s.U, s.V, s.c, s.feed) + (() if z0 is None else (z0,))
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in tensors)):
            y, zT = ops.recurrent(u, s.lam, s.beta, s.c, s.feed, s.U, s.V, z0)
        else:
            y, zT = ops.recurrent_train(u, s.lam, s.beta, s.c, s.feed, s.U, s.V, z0)
        return y.to(u.dtype), (zT.to(s.lam.dtype) if want_state else None)

    @staticmethod
    def _packed_recurrent(s: System, u, z0, cu_seqlens, want_state):
        """``cu_seqlens`` without host syncs (inside ``torch.compile``, either strategy): the torch
        recurrence over the packed tokens u [1, H, T], the state reset to its sequence's initial
        state (z0 [Nseq, H, N] or 0) at each sequence's first token; the final states are the
        states after each sequence's last token (its initial state for an empty sequence).
        Unrolled over T: meant for short packed batches (decoding, tests)."""
        _, H, T = u.shape
        nseq = cu_seqlens.shape[0] - 1
        cu = cu_seqlens.long()
        starts, ends = cu[:-1], cu[1:]
        zero = torch.zeros_like(s.lam)
        if T == 0:
            zT = z0 if z0 is not None else zero.expand(nseq, *zero.shape)
            return u, (zT if want_state else None)
        t = torch.arange(T, device=u.device)
        seg = torch.bucketize(t, ends, right=True).clamp(max=nseq - 1)    # the sequence of token t
        is_start = t == starts[seg]
        init = z0[seg] if z0 is not None else zero.expand(T, *zero.shape)  # [T, H, N]
        z, ys, zs = zero, [], []
        for i in range(T):
            z = torch.where(is_start[i], init[i], z)
            ut = u[0, :, i]
            ys.append(2 * (s.c * z).sum(-1).real + s.feed * ut)
            znew = s.lam * z + s.beta * ut[:, None]
            if s.rank:
                F = 2 * torch.einsum("hkn,hn->hk", s.V, z).real
                znew = znew + torch.einsum("hkn,hk->hn", s.U, F.to(s.U.dtype))
            z = znew
            zs.append(z)
        y = torch.stack(ys, -1)[None]
        if not want_state:
            return y, None
        zT = torch.stack(zs, 0)[(ends - 1).clamp(min=0)]                     # [Nseq, H, N]
        empty = (ends == starts)[:, None, None]
        return y, torch.where(empty, z0 if z0 is not None else zero, zT)
