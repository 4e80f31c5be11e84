"""The differential checker: a compiled mixer against the float64 reference.

``check`` rounds the inputs to the test dtype, runs the compiled mixer on them (with gradients),
runs ``run_reference(..., backend="torch")`` on float64 copies of the *same rounded* inputs, and
compares the output, the final state(s) and the gradients of a fixed random projection loss

    L = sum(o * W) + sum_i sum(S_T[i] * W2[i])

w.r.t. every tensor input and every initial state, with ``rel_rms_error`` against the bounds of
``tolerances.BOUNDS``. ``check_cu_seqlens`` checks that a packed call equals the loop over its
sequences. Both return a ``Report``; ``assert_close`` turns a failed report into an
``AssertionError`` naming every quantity out of bounds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch

from ..reference.interpreter import run_reference
from .tolerances import Bounds, bounds_for, rel_rms_error

__all__ = ["Quantity", "Report", "check", "check_case", "check_cu_seqlens", "assert_close",
           "poisoned_allocations", "ieee_fp32"]


@dataclasses.dataclass
class Quantity:
    """One compared tensor."""
    name: str          # "o", "S" (final state), "dq" (gradient), "dS0" (gradient of initial S)
    kind: str          # "output" | "state" | "grad"
    error: float       # rel_rms_error; nan when non-finite values were found, inf on shape mismatch
    bound: float
    floor: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= self.bound          # False for nan


@dataclasses.dataclass
class Report:
    """The result of one check: every compared quantity, and contract problems (wrong shape or
    dtype, a missing final state, a non-differentiable output)."""
    mixer: str
    strategy: object
    dtype: torch.dtype
    shapes: dict
    quantities: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)
    what: str = "compiled vs reference"

    @property
    def ok(self) -> bool:
        return not self.problems and all(q.ok for q in self.quantities)

    def failures(self) -> list:
        return [q for q in self.quantities if not q.ok]

    def __getitem__(self, name) -> Quantity:
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(name)

    def header(self) -> str:
        shp = ", ".join(f"{k}{list(v)}" for k, v in self.shapes.items())
        return (f"{self.what}: mixer {self.mixer}, strategy {self.strategy or 'default'}, "
                f"dtype {str(self.dtype).replace('torch.', '')}; {shp}")

    def table(self) -> str:
        rows = [("quantity", "kind", "rel_rms_err", "bound", "status", "")]
        for q in self.quantities:
            rows.append((q.name, q.kind, f"{q.error:.3e}", f"{q.bound:.1e}",
                         "ok" if q.ok else "FAIL", q.note))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [self.header()]
        for r in rows:
            lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(r[:5])) + ("  " + r[5] if r[5] else ""))
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(line.rstrip() for line in lines)

    def message(self) -> str:
        bad = [f"{q.name} ({q.kind}): error {q.error:.3e} > bound {q.bound:.1e}"
               + (f" [{q.note}]" if q.note else "") for q in self.failures()]
        parts = bad + [f"problem: {p}" for p in self.problems]
        return ("check failed for " + "; ".join(parts) + "\n" + self.table()) if parts else "ok"

    __str__ = table


def assert_close(report: Report) -> Report:
    """Raise ``AssertionError`` listing the failed quantities (with errors and bounds) and the
    contract problems of ``report``; return it unchanged if it passed."""
    if not report.ok:
        raise AssertionError(report.message())
    return report


# --------------------------------------------------------------------------- test environment

_EMPTY_FNS = ("empty", "empty_like", "empty_strided")


def _poison(t):
    if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
        with torch.no_grad():
            t.fill_(math.nan)
    return t


@contextlib.contextmanager
def poisoned_allocations():
    """Within the block, ``torch.empty``, ``torch.empty_like``, ``torch.empty_strided`` and
    ``Tensor.new_empty`` return floating tensors filled with NaN, so a kernel that leaves part of
    a fresh output buffer unwritten produces NaN, which fails every comparison. (Only calls made
    through the ``torch`` module attributes are seen; integer tensors are left alone.)"""
    saved = {name: getattr(torch, name) for name in _EMPTY_FNS}
    own_new_empty = "new_empty" in torch.Tensor.__dict__
    saved_new_empty = torch.Tensor.new_empty

    def wrap(fn):
        def poisoned(*args, **kwargs):
            return _poison(fn(*args, **kwargs))
        poisoned.__wrapped__ = fn
        return poisoned

    try:
        for name, fn in saved.items():
            setattr(torch, name, wrap(fn))
        torch.Tensor.new_empty = wrap(saved_new_empty)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
        if own_new_empty:
            torch.Tensor.new_empty = saved_new_empty
        else:
            del torch.Tensor.new_empty


def _env(poison):
    return poisoned_allocations() if poison else contextlib.nullcontext()


@contextlib.contextmanager
def ieee_fp32():
    """Within the block, torch-level fp32 matmuls on CUDA are ieee (no tf32)."""
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------- helpers

def _to_cpu_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    return torch.as_tensor(np.asarray(a))


def _state_tuple(state, n):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(state)
    return (state,)


def _leaves(tensors, device, grads):
    return [t.detach().clone().to(device).requires_grad_(grads) for t in tensors]


def _projections(seed, o_shape, o_dtype, state_shapes, state_dtype):
    g = torch.Generator().manual_seed(int(seed))
    W = torch.randn(o_shape, generator=g, dtype=torch.float64).to(o_dtype).double()
    W2 = [torch.randn(s, generator=g, dtype=torch.float64).to(state_dtype).double() for s in state_shapes]
    return W, W2


def _loss(o, finals, W, W2):
    loss = (o.double() * W.to(o.device)).sum()
    for s, w in zip(finals or (), W2):
        loss = loss + (s.double() * w.to(s.device)).sum()
    return loss


def _grads(loss, leaves, problems, who):
    wanted = [x for x in leaves if x.requires_grad]
    try:
        gs = torch.autograd.grad(loss, wanted, allow_unused=True)
    except RuntimeError as e:
        problems.append(f"{who} is not differentiable: {e}")
        return None
    return list(gs)


def _split_result(res, want_state, nstates, problems, who):
    """(o, finals) from a call's return value; contract problems are recorded."""
    if not want_state:
        if isinstance(res, (tuple, list)):
            problems.append(f"{who} returned a {type(res).__name__} with output_final_state=False; "
                            f"expected the output tensor alone")
            res = res[0]
        return res, None
    if not (isinstance(res, (tuple, list)) and len(res) == 2):
        problems.append(f"{who} with output_final_state=True must return (o, final_state), got "
                        f"{type(res).__name__}")
        return (res[0] if isinstance(res, (tuple, list)) else res), None
    o, fin = res
    fin = _state_tuple(fin, nstates)
    if fin is None or len(fin) != nstates:
        problems.append(f"{who} returned {0 if fin is None else len(fin)} final state(s); the mixer "
                        f"declares {nstates}")
        return o, None
    return o, fin


def _compare(report, name, kind, actual, expected, bounds: Bounds, note=""):
    if actual is None:
        actual = torch.zeros_like(expected)
        note = (note + "; " if note else "") + "no gradient (None)"
    err = rel_rms_error(actual, expected, bounds.floor)
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) != tuple(expected.shape):
        note = (note + "; " if note else "") + f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    elif math.isnan(err):
        a = actual.detach()
        e = expected.detach()
        nan_a, inf_a = int(torch.isnan(a).sum()), int(torch.isinf(a).sum())
        extra = f"non-finite: {nan_a} nan, {inf_a} inf of {a.numel()}"
        if not bool(torch.isfinite(e).all()):
            extra += "; the reference itself is non-finite (inputs out of its domain?)"
        note = (note + "; " if note else "") + extra
    report.quantities.append(Quantity(name, kind, err, bounds[kind], bounds.floor, note))


def _call(compiled, xs, *, initial_state, output_final_state, cu_seqlens, strategy, scalars):
    kw = dict(scalars or {})
    if strategy is not None:
        kw["strategy"] = strategy
    return compiled(*xs, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, **kw)


def _prepare(mixer, arrays, dtype, initial_state, state_dtype):
    specs = mixer.inputs
    if len(arrays) != len(specs):
        raise ValueError(f"{mixer.name} takes {len(specs)} tensor arguments "
                         f"({', '.join(s.name for s in specs)}); got {len(arrays)}")
    xs = [_to_cpu_tensor(a).to(dtype) for a in arrays]                 # rounded to the test dtype
    h0 = _state_tuple(initial_state, len(mixer.states))
    if h0 is not None:
        if len(h0) != len(mixer.states):
            raise ValueError(f"initial_state: {mixer.name} has {len(mixer.states)} state(s), got {len(h0)}")
        h0 = tuple(_to_cpu_tensor(s).to(state_dtype) for s in h0)
    return xs, h0


def _shapes(mixer, xs, h0):
    d = {s.name: tuple(x.shape) for s, x in zip(mixer.inputs, xs)}
    for s, h in zip(mixer.states, h0 or ()):
        d[f"{s.name}0"] = tuple(h.shape)
    return d


def _grad_names(mixer, h0):
    names = [("d" + s.name) for s in mixer.inputs]
    names += [f"d{s.name}0" for s in mixer.states] if h0 is not None else []
    return names


# --------------------------------------------------------------------------- the checks

def check(mixer, compiled, arrays, *, dtype, strategy=None, initial_state=None, cu_seqlens=None,
          grads=True, scalars=None, device="cpu", output_final_state=True, seed=0, bounds=None,
          state_dtype=torch.float32, poison=True) -> Report:
    """Compare ``compiled`` with the float64 reference of ``mixer`` on ``arrays``.

    ``arrays``: the tensor arguments in declaration order (NumPy or torch, any float dtype); they
    are rounded to ``dtype`` and that rounded copy is what both sides see. ``initial_state``
    (tensor or tuple, one per state) is rounded to ``state_dtype``. ``scalars``: keyword scalars
    passed to both. ``grads``: also compare the gradients of the projection loss (``seed`` fixes
    W, W2) w.r.t. every tensor input and initial state. ``bounds`` overrides
    ``tolerances.bounds_for(dtype)``. ``poison`` runs the compiled call (forward and backward)
    under ``poisoned_allocations()``. NaN or inf anywhere in the compiled results fails.
    """
    bounds = bounds or bounds_for(dtype)
    nst = len(mixer.states)
    xs, h0 = _prepare(mixer, arrays, dtype, initial_state, state_dtype)
    cu_cpu = None if cu_seqlens is None else _to_cpu_tensor(cu_seqlens)
    report = Report(mixer.name, strategy, dtype, _shapes(mixer, xs, h0))

    # the compiled side
    xc = _leaves(xs, device, grads)
    hc = None if h0 is None else _leaves(h0, device, grads)
    with ieee_fp32(), _env(poison):
        res = _call(compiled, xc, initial_state=(None if hc is None else (hc[0] if nst == 1 else tuple(hc))),
                    output_final_state=output_final_state,
                    cu_seqlens=None if cu_cpu is None else cu_cpu.to(device),
                    strategy=strategy, scalars=scalars)
    o_c, fin_c = _split_result(res, output_final_state, nst, report.problems, "the compiled call")

    # the reference, float64, on the same rounded values
    xr = _leaves([x.double() for x in xs], "cpu", grads)
    hr = None if h0 is None else _leaves([h.double() for h in h0], "cpu", grads)
    ref = run_reference(mixer, xr, initial_state=None if hr is None else tuple(hr),
                        output_final_state=output_final_state, cu_seqlens=cu_cpu, backend="torch",
                        **(scalars or {}))
    o_r, fin_r = (ref[0], _state_tuple(ref[1], nst)) if output_final_state else (ref, None)

    if not isinstance(o_c, torch.Tensor):
        report.problems.append(f"the compiled output is a {type(o_c).__name__}, not a tensor")
        return report
    if o_c.dtype != dtype:
        report.problems.append(f"the output has dtype {o_c.dtype}; expected the input dtype {dtype}")
    _compare(report, "o", "output", o_c, o_r, bounds)
    if fin_c is not None:
        for spec, sc, sr in zip(mixer.states, fin_c, fin_r):
            if isinstance(sc, torch.Tensor) and sc.dtype != torch.float32:
                report.problems.append(f"final state {spec.name!r} has dtype {sc.dtype}; expected float32")
            _compare(report, spec.name, "state", sc, sr, bounds)

    comparable = tuple(o_c.shape) == tuple(o_r.shape) and (
        not output_final_state or (fin_c is not None and all(
            isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
            for a, b in zip(fin_c, fin_r))))
    if grads and comparable:
        W, W2 = _projections(seed, tuple(o_r.shape), dtype,
                             [tuple(s.shape) for s in (fin_r or ())], state_dtype)
        with ieee_fp32(), _env(poison):
            g_c = _grads(_loss(o_c, fin_c, W, W2), xc + (hc or []), report.problems,
                         "the compiled output")
        g_r = torch.autograd.grad(_loss(o_r, fin_r, W, W2), xr + (hr or []), allow_unused=True)
        if g_c is not None:
            leaves_r = xr + (hr or [])
            for name, gc, gr, leaf in zip(_grad_names(mixer, h0), g_c, g_r, leaves_r):
                expected = torch.zeros_like(leaf) if gr is None else gr
                _compare(report, name, "grad", None if gc is None else gc.cpu(), expected, bounds)
    elif grads:
        report.problems.append("gradients not compared: the forward results have the wrong shape")
    return report


def check_case(mixer, compiled, case, **kwargs) -> Report:
    """``check`` on a ``strategies.Case`` (its arrays, dtype, initial state and cu_seqlens)."""
    return check(mixer, compiled, case.arrays, **{**case.kwargs(), **kwargs})


def check_cu_seqlens(mixer, compiled, arrays, cu_seqlens, *, dtype, strategy=None,
                     initial_state=None, grads=True, scalars=None, device="cpu", seed=0,
                     bounds=None, state_dtype=torch.float32, poison=True) -> Report:
    """Check that the packed call (``B = 1``, ``cu_seqlens``) equals the loop of unpacked calls,
    one per sequence, each from its own slice of ``initial_state``: outputs, final states and
    (with ``grads``) the gradients of the projection loss. An empty sequence is not called: its
    output is empty and its final state must equal its initial state (zero without one).
    Both sides are the compiled mixer on the same rounded inputs, so the bounds of ``dtype`` hold
    with room to spare."""
    bounds = bounds or bounds_for(dtype)
    nst = len(mixer.states)
    xs, h0 = _prepare(mixer, arrays, dtype, initial_state, state_dtype)
    cu = [int(x) for x in _to_cpu_tensor(cu_seqlens).tolist()]
    cu_t = _to_cpu_tensor(cu_seqlens)
    report = Report(mixer.name, strategy, dtype, _shapes(mixer, xs, h0), what="packed vs per-sequence")
    def pack_h(hs):
        return None if hs is None else (hs[0] if nst == 1 else tuple(hs))

    # packed
    xp = _leaves(xs, device, grads)
    hp = None if h0 is None else _leaves(h0, device, grads)
    with ieee_fp32(), _env(poison):
        res = _call(compiled, xp, initial_state=pack_h(hp), output_final_state=True,
                    cu_seqlens=cu_t.to(device), strategy=strategy, scalars=scalars)
    o_p, fin_p = _split_result(res, True, nst, report.problems, "the packed call")

    # loop
    xl = _leaves(xs, device, grads)
    hl = None if h0 is None else _leaves(h0, device, grads)
    outs, finals = [], [[] for _ in range(nst)]
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        if b == a:
            for i, spec in enumerate(mixer.states):
                shape = (1, xs[0].shape[2]) + _state_dims(mixer, xs, spec)
                finals[i].append(hl[i][n:n + 1] if hl is not None
                                 else torch.zeros(shape, dtype=state_dtype, device=device))
            continue
        sl = [x[:, a:b] if spec.kind == "input" else x for spec, x in zip(mixer.inputs, xl)]
        hn = None if hl is None else [h[n:n + 1] for h in hl]
        with ieee_fp32(), _env(poison):
            r = _call(compiled, sl, initial_state=pack_h(hn), output_final_state=True,
                      cu_seqlens=None, strategy=strategy, scalars=scalars)
        o_n, f_n = _split_result(r, True, nst, report.problems, f"the call on sequence {n}")
        outs.append(o_n)
        for i in range(nst):
            finals[i].append(None if f_n is None else f_n[i])
    if report.problems or not isinstance(o_p, torch.Tensor):
        if not isinstance(o_p, torch.Tensor):
            report.problems.append("the packed call did not return an output tensor")
        return report
    o_l = torch.cat(outs, dim=1) if outs else o_p.new_zeros(o_p.shape)
    fin_l = [torch.cat(f, dim=0) for f in finals]
    _compare(report, "o", "output", o_p, o_l.detach(), bounds)
    for spec, sp, sl_ in zip(mixer.states, fin_p or (), fin_l):
        _compare(report, spec.name, "state", sp, sl_.detach(), bounds)

    same_shapes = tuple(o_p.shape) == tuple(o_l.shape) and all(
        isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
        for a, b in zip(fin_p or (), fin_l))
    if grads and same_shapes and not report.problems:
        W, W2 = _projections(seed, tuple(o_p.shape), dtype, [tuple(s.shape) for s in fin_l], state_dtype)
        with ieee_fp32(), _env(poison):
            g_p = _grads(_loss(o_p, fin_p, W, W2), xp + (hp or []), report.problems, "the packed output")
            g_l = _grads(_loss(o_l, fin_l, W, W2), xl + (hl or []), report.problems, "the looped output")
        if g_p is not None and g_l is not None:
            for name, gp, gl, leaf in zip(_grad_names(mixer, h0), g_p, g_l, xl + (hl or [])):
                expected = torch.zeros_like(leaf) if gl is None else gl
                _compare(report, name, "grad", gp, expected.detach(), bounds)
    return report


def _state_dims(mixer, xs, spec):
    sizes = {}
    for s, x in zip(mixer.inputs, xs):
        lead = 3 if s.kind == "input" else 1
        sizes.update(zip(s.dims, tuple(x.shape)[lead:]))
    return tuple(sizes[d] for d in spec.dims)
