"""The Triton backward of the LTI recurrent strategy (``lti_recurrent_bwd``, docs/lti.md §2).

With gradients, ``strategy="recurrent"`` runs the forward kernel writing state checkpoints every
``chunk`` tokens and the adjoint kernel (``mixir::lti_recurrent_train`` and its registered
backward): two launches per call, no torch loop. Checked here:

- every gradient (u, the Λ parameters log_dt / A / Λ / P, B, C, D, the initial state) of the
  library mixers s4d (diagonal) and s4 (rank 1) against the float64 reference through
  ``mixir.testing.check``, fp32 (its ``BOUNDS``) and fp64 (``FP64``: 1e-10, written down here —
  the fp64 kernels against the fp64 reference differ by rounding only, measured ~1e-14), T = 1 and
  T = 7 (checkpoint interval ⌈√7⌉ = 3: segments 3, 3, 1), with and without initial state;
- against the torch loop (``torch_loop`` below, the T-step autograd recurrence)
  on the complex system directly, every chunk size including non-divisors of T, rank 0, 1, 2:
  1e-12 (fp64), 1e-5 (fp32) relative RMS;
- that the adjoint kernel is launched;
- the ahead-of-time build of the forward (checkpointing) and adjoint kernels for sm_80 and sm_90,
  fp32 and fp64, ranks 0 and 1: no spills.
"""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library import lti
from mixir.lowering.lti import launches, ops as K
from mixir.lowering.common.launch import record_launches
from mixir.lowering.lti.system import System
from mixir.testing import assert_close, check
from mixir.testing.tolerances import Bounds, rel_rms_error

ENTRIES = lti.LTI_ENTRIES
FP64 = Bounds(output=1e-10, state=1e-10, grad=1e-10, floor=1e-2)


def torch_loop(s: System, u, z0, want_state):
    """The recurrence as a T-step torch loop (autograd records it): the second reference."""
    B, H, T = u.shape
    z = z0 if z0 is not None else torch.zeros((B, H) + s.lam.shape[1:], dtype=s.lam.dtype,
                                              device=u.device)
    ys = []
    for t in range(T):
        ut = u[:, :, t]
        ys.append(2 * (s.c * z).sum(-1).real + s.feed * ut)
        znew = s.lam * z + s.beta * ut[..., None]
        if s.rank:
            F = 2 * torch.einsum("hkn,bhn->bhk", s.V, z).real
            znew = znew + torch.einsum("hkn,bhk->bhn", s.U, F.to(s.U.dtype))
        z = znew
    return torch.stack(ys, -1), (z if want_state else None)


def _inputs(name, B, T, H, N, seed):
    e = ENTRIES[name]
    rng = np.random.default_rng(seed)
    return e.make_inputs(rng, B=B, T=T, H=H, K=N, V=N), e.make_initial_state(rng, N=B, H=H, K=N, V=N)


# (T, initial state): the fast lane runs (1, none) and (7, h0), the slow lane the other two
@pytest.mark.parametrize("T, with_state", [
    pytest.param(T, w, id=f"{T}-{i}", marks=() if (T == 7) == w else pytest.mark.slow)
    for T in (1, 7) for w, i in ((True, "h0"), (False, "no-h0"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_recurrent_gradients_match_reference(name, dtype, T, with_state):
    arrays, h0 = _inputs(name, B=2, T=T, H=2, N=4, seed=T)
    m = ENTRIES[name].mixer
    with record_launches() as recs:
        rep = check(m, mx.compile(m), arrays, dtype=dtype, strategy="recurrent",
                    initial_state=h0 if with_state else None, poison=True,
                    bounds=FP64 if dtype == torch.float64 else None,
                    state_dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    if dtype == torch.float64:
        # the checker expects fp32 final states; LTI mixers return fp64 states for fp64 inputs
        # (docs/lti.md §2). The states' values and gradients are still compared (FP64 bounds).
        dtype_notes = [p for p in rep.problems if p.endswith("has dtype torch.float64; expected float32")]
        assert len(dtype_notes) == 2
        rep.problems[:] = [p for p in rep.problems if p not in dtype_notes]
    assert_close(rep)
    names = {r.kernel.name.rsplit(".", 1)[-1] for r in recs.values()}
    assert {"lti_recurrent_fwd", "lti_recurrent_bwd"} <= names


def _system(H, N, r, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64

    def cn(*shape):
        return (0.4 * torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                                    torch.randn(*shape, generator=g, dtype=torch.float64))).to(cdt)

    mag = 0.5 + 0.45 * torch.rand(H, N, generator=g, dtype=torch.float64)
    lam = torch.polar(mag, 3.0 * torch.rand(H, N, generator=g, dtype=torch.float64)).to(cdt)
    # a stable low-rank part: |λ| ≤ 0.95, ‖U‖‖V‖ ~ 0.1
    U, V = 0.3 * cn(H, r, N), 0.3 * cn(H, r, N)
    return [lam, cn(H, N), cn(H, N), torch.randn(H, generator=g, dtype=torch.float64).to(dtype), U, V]


def _grads(run, leaves, wy, wz):
    y, z = run(*leaves)
    loss = (y * wy).sum() + (z * wz.conj()).real.sum()
    gs = torch.autograd.grad(loss, [x for x in leaves if x is not None], allow_unused=True)
    return [y, z] + [torch.zeros_like(x) if gr is None else gr
                     for gr, x in zip(gs, [x for x in leaves if x is not None])]


def _pairs(x):
    return torch.view_as_real(x.detach()) if x.is_complex() else x.detach()


LOOP32, LOOP64 = (torch.float32, 1e-5), (torch.float64, 1e-12)       # dtype, bound


# the fast lane: rank 2 (low-rank, several columns) in fp64 (fp32 and rank 0 through the checker:
# test_recurrent_gradients_match_reference); the slow lane the other five
@pytest.mark.parametrize("r,dtype,bound", [
    pytest.param(2, *LOOP64, id="2-fp64"),
    pytest.param(0, *LOOP32, id="0-fp32", marks=pytest.mark.slow),
    pytest.param(1, *LOOP64, id="1-fp64", marks=pytest.mark.slow),
    pytest.param(1, *LOOP32, id="1-fp32", marks=pytest.mark.slow),
    pytest.param(0, *LOOP64, id="0-fp64", marks=pytest.mark.slow),
    pytest.param(2, *LOOP32, id="2-fp32", marks=pytest.mark.slow)])
def test_triton_backward_equals_torch_loop(r, dtype, bound):
    """y, z_T and the gradients of (u, λ, β, c, D', U, V, z0) from ``recurrent_train`` (Triton
    forward with checkpoints + adjoint) equal the torch loop's, for every checkpoint interval
    (1, non-divisors of T, ≥ T) and with / without an initial state. (B = 1; batches of several
    sequences: test_recurrent_gradients_match_reference.)"""
    B, H, N, T = 1, 2, 3, 7
    lam, beta, c, feed, U, V = _system(H, N, r, dtype, seed=r)
    g = torch.Generator().manual_seed(10 + r)
    u = torch.randn(B, H, T, generator=g, dtype=torch.float64).to(dtype)
    z0 = torch.complex(torch.randn(B, H, N, generator=g, dtype=torch.float64),
                       torch.randn(B, H, N, generator=g, dtype=torch.float64)).to(lam.dtype)
    wy = torch.randn(B, H, T, generator=g, dtype=torch.float64).to(dtype)
    wz = torch.randn(B, H, N, generator=g, dtype=torch.float64).to(lam.dtype)
    floor = 1e-6 if dtype == torch.float32 else 1e-12

    def loop(u, lam, beta, c, feed, U, V, z0):
        return torch_loop(System(lam, beta, U, V, c, feed), u, z0, True)

    for init in (z0, None):
        leaves = [x.clone().requires_grad_() if x is not None else None
                  for x in (u, lam, beta, c, feed, U, V, init)]
        want = _grads(loop, leaves, wy, wz)
        for chunk in (1, 2, 3, 7, 9, 0):
            got = _grads(lambda *a: K.recurrent_train(*a, chunk=chunk), leaves, wy, wz)
            for i, (a, b) in enumerate(zip(got, want)):
                err = rel_rms_error(_pairs(a), _pairs(b), floor)
                assert err < bound, (chunk, init is None, i, err)


def test_recurrent_chunk_is_ceil_sqrt():
    assert [launches.recurrent_chunk(T) for T in (0, 1, 2, 4, 5, 7, 9, 10, 16384)] == \
        [1, 1, 2, 2, 3, 3, 3, 4, 128]


def test_final_state_gradient_only():
    """Only z_T in the loss (no output gradient) and T = 1."""
    lam, beta, c, feed, U, V = _system(2, 3, 1, torch.float64, seed=3)
    u = torch.randn(1, 2, 1, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (u, lam, beta, c, feed, U, V)]
    _, z = K.recurrent_train(*leaves, None)
    g1 = torch.autograd.grad(z.abs().pow(2).sum(), leaves, allow_unused=True)
    s = System(leaves[1], leaves[2], leaves[5], leaves[6], leaves[3], leaves[4])
    _, z2 = torch_loop(s, leaves[0], None, True)
    g2 = torch.autograd.grad(z2.abs().pow(2).sum(), leaves, allow_unused=True)
    for a, b, x in zip(g1, g2, leaves):
        a = torch.zeros_like(x) if a is None else a
        b = torch.zeros_like(x) if b is None else b
        assert rel_rms_error(_pairs(a), _pairs(b), 1e-12) < 1e-12


# ---- ahead-of-time build -------------------------------------------------------------------------

@pytest.mark.slow   # AOT builds; tests/test_family_contract.py builds one LTI declaration in the fast lane
@pytest.mark.aot
def test_recurrent_kernels_build_for_sm80_and_sm90(fresh_triton_cache):
    from mixir.lowering.common import aot
    with record_launches() as recs:
        for name in ("s4d", "s4"):
            for dtype in (torch.float32, torch.float64):
                arrays, _ = _inputs(name, B=1, T=5, H=2, N=4, seed=0)
                xs = [torch.tensor(a, dtype=dtype).requires_grad_() for a in arrays]
                mx.compile(ENTRIES[name].mixer)(*xs, strategy="recurrent").sum().backward()
    names = [r.kernel.name.rsplit(".", 1)[-1] for r in recs.values()]
    # 8 recurrence launches (2 mixers × 2 dtypes × fwd, bwd) and the parameter trees' generated
    # pair of each mixer's fp32 calls
    assert sorted(names) == sorted(["lti_recurrent_fwd", "lti_recurrent_bwd"] * 4 + ["fwd", "bwd"] * 2)
    results = aot.build_all(list(recs.values()), ["sm_80", "sm_90"], workers=0)
    assert len(results) == 2 * len(recs) == 24
    for r in results:
        assert isinstance(r, aot.KernelResources), r
        assert 0 < r.registers <= 255 and r.fits and r.spills == 0, r
    print("\n" + aot.format_table(results))
