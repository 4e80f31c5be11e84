"""Context parallelism of the LTI family (``group=``; docs/distributed.md).

The transition is constant: a run of L tokens multiplies the state by ``Ā^L``. For a diagonal
system (S4D, LSSL, LMU: ``Ā = diag(λ)``) that is ``λ^L`` per mode — a complex number per mode
for complex modes, real for real modes; for diagonal plus low rank (S4) the real-linear map of
the (re, im) state, a ``2N × 2N`` matrix per head. Both are read off the compiled mixer by
linearity of the state in its initial value (``S_L(X) − S_L(0)`` = the transition applied to
X): one probe run from ``X = 1`` for a diagonal system (``λ^L · 1``), a batch of 2N unit vectors
for a low-rank one — on the continuing segment only.

The outputs of the continuing segment are then *corrected* rather than rerun: the output is
linear in the initial state too, ``y(S_in) = y(0) + Y·S_in``, where ``Y·S_in`` is the output of a
run on zero input from ``S_in`` — the runtime's own initial-state term (a Vandermonde /
Cauchy product, no convolution); it is obtained here by a run of the compiled mixer on the
segment with ``u = 0``, the parameters unchanged (``D·u`` vanishes with ``u``).
"""
from __future__ import annotations

import torch

from ...distributed.passing import exchange, layout, needs_grad, prefix_combine, tied
from ...dsl.signature import bind


class LTIPassing:
    """The family's ``state_passing(plan)`` object: ``run(compiled, arrays, ...)``."""

    def __init__(self, plan):
        self.plan = plan
        self.parts = 2 if plan.x_im else 1
        self.dense = bool(plan.lowrank)
        self.kind = ("dense 2N×2N real transition per head (probe runs), output correction" if self.dense
                     else "diagonal transition λ^L per mode (one probe run), output correction")

    # the state as one tensor [N, H, P, modes] (P = 2: re, im; 1: real modes)
    def _pack(self, s):
        if self.parts == 1:
            return (s[0] if isinstance(s, (tuple, list)) else s)[:, :, None]
        return torch.stack([s[0], s[1]], 2)

    def _unpack(self, z):
        return z[:, :, 0] if self.parts == 1 else (z[:, :, 0], z[:, :, 1])

    def _apply(self, M, z):
        if self.dense:
            n, H, P, Nm = z.shape
            return (M @ z.reshape(n, H, P * Nm, 1)).reshape(z.shape)
        if self.parts == 1:
            return M * z
        lr, li = M[:, :, 0], M[:, :, 1]
        re, im = z[:, :, 0], z[:, :, 1]
        return torch.stack([lr * re - li * im, li * re + lr * im], 2)

    def run(self, fn, arrays, *, g, initial_state, output_final_state, cu_seqlens, strategy, scalars):
        m, p = fn.mixer, self.plan
        b = bind(m, arrays, scalars=scalars)
        u = arrays[[s.name for s in m.inputs].index(p.u)]
        device = u.device
        lay = layout(g, b.T, b.B, cu_seqlens, device, needs_grad(arrays, initial_state))
        H, Nm, P = b.H, b.sizes[p.dim], self.parts
        sdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        kw = dict(strategy=strategy, **scalars)
        if lay.T > 0:
            o, c = fn(*arrays, initial_state=lay.local_initial(initial_state), output_final_state=True,
                      cu_seqlens=lay.cu_local, **kw)
            c = self._pack(c).to(sdtype)
        else:
            o = u.new_zeros((b.B, 0, H) + tuple(b.sizes[d] for d in m.output.dims))
            c = torch.zeros((lay.N, H, P, Nm), dtype=sdtype, device=device)
        seg = [a[:, :lay.seg] if s.kind == "input" else a for s, a in zip(m.inputs, arrays)]
        M_cont = self._probe(fn, seg, lay.continuing_rows(c), kw) if lay.continuing else None
        ident = self._identity(lay.N, H, P, Nm, sdtype, device)
        M = lay.per_role(M_cont, ident * 0, ident)
        pairs, anchor = exchange(lay, [M, c])
        S0 = torch.zeros_like(c) if initial_state is None else self._pack(initial_state).to(sdtype)
        S_in, S_fin = prefix_combine(pairs, g.rank, S0, self._apply)
        if lay.continuing:
            zero_u = [torch.zeros_like(a) if s.name == p.u else a for s, a in zip(m.inputs, seg)]
            z_in = self._unpack(lay.continuing_rows(S_in).to(sdtype))
            corr = fn(*zero_u, initial_state=z_in, **kw)
            o = torch.cat([(o[:, :lay.seg] + corr).to(o.dtype), o[:, lay.seg:]], dim=1)
        o = tied(o, anchor)
        if not output_final_state:
            return o
        return o, self._unpack(S_fin)

    def _identity(self, N, H, P, Nm, dtype, device):
        if self.dense:
            return torch.eye(P * Nm, dtype=dtype, device=device).expand(N, H, P * Nm, P * Nm)
        one = torch.ones((N, H, 1, Nm), dtype=dtype, device=device)
        return one if P == 1 else torch.cat([one, one * 0], 2)

    def _probe(self, fn, seg, c, kw):
        """The segment's transition (``_apply``'s form), by linearity: ``S_L(X) − S_L(0)``."""
        m = fn.mixer
        rows, H, P, Nm = c.shape
        if not self.dense:
            X = torch.zeros_like(c)
            X[:, :, 0] = 1.0
            _, F = fn(*seg, initial_state=self._unpack(X), output_final_state=True, **kw)
            return self._pack(F).to(c.dtype) - c
        D = P * Nm      # a batch of D unit vectors per row: rows·D sequences
        rep = [a.repeat_interleave(D, 0) if s.kind == "input" else a for s, a in zip(m.inputs, seg)]
        X = torch.eye(D, dtype=c.dtype, device=c.device)[None, :, None].expand(rows, D, H, D)
        X = X.reshape(rows * D, H, P, Nm)
        _, F = fn(*rep, initial_state=self._unpack(X), output_final_state=True, **kw)
        cols = (self._pack(F).to(c.dtype).reshape(rows, D, H, D) - c.reshape(rows, 1, H, D))
        return cols.permute(0, 2, 3, 1)          # [rows, H, D (out), D (in)]


def passing_for(plan):
    """``LTIFamily.state_passing``: every LTI plan can be split."""
    return LTIPassing(plan)
