"""Compiled LTI mixers (S4D, S4, S4D-bilinear) inside ``torch.compile(fullgraph=True)`` on the CPU
(Triton interpreter): one Dynamo frame, and forward, final state and every gradient equal to eager.

What makes this work (docs/lti.md, "torch.compile"): the Vandermonde, Cauchy and recurrence kernels
are the custom ops ``mixir::lti_*`` (lowering/lti_ops.py) with fake functions and their backward
kernels registered as autograd; the value checks (stability |λ| ≤ 1, the cu_seqlens offsets) run
only eagerly; a packed call (cu_seqlens) traces as the masked torch recurrence.
"""
import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import mixir as mx
from mixir.errors import InputError
from mixir.library import MIXERS

B, T, H, N = 1, 8, 2, 4


class Wrapped(torch.nn.Module):
    """The mixer between torch ops, with an initial state and the final state in the loss."""

    def __init__(self, name, strategy, with_state=True):
        super().__init__()
        self.fn = mx.compile(MIXERS[name].mixer)
        self.strategy, self.with_state = strategy, with_state

    def forward(self, h0_re, h0_im, *xs):
        if not self.with_state:
            return (self.fn(*xs, strategy=self.strategy) * 2.0).sin()
        o, (hT_re, hT_im) = self.fn(*xs, initial_state=(h0_re, h0_im), output_final_state=True,
                                    strategy=self.strategy)
        return torch.cat([(o * 2.0).sin().flatten(), hT_re.flatten(), hT_im.flatten()])


def _inputs(name, seed=0):
    e = MIXERS[name]
    rng = np.random.default_rng(seed)
    xs = [torch.tensor(a, dtype=torch.float32) for a in e.make_inputs(rng, B, T, H, N, N)]
    h0 = tuple(torch.tensor(a, dtype=torch.float32) for a in e.make_initial_state(rng, N=B, H=H, K=N, V=N))
    return h0, xs


def _run(module, h0, xs, grads):
    leaves = [x.clone().requires_grad_(grads) for x in (*h0, *xs)]
    out = module(*leaves)
    if not grads:
        return [out.detach()]
    g = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    return [out.detach(), *torch.autograd.grad(out, leaves, g)]


def _check(name, strategy, *, grads=True, with_state=True, backend="aot_eager"):
    """Compile once (fullgraph), compare with eager; returns the number of Dynamo frames.

    aot_eager runs eager's operators: every result equals eager's to fp32 rounding. inductor
    generates its own fp32 code for the torch operators around the kernels (reassociated sums), so
    a result can differ from eager's by as much as either differs from the exact value - S4's
    log_dt gradient is a sum with cancellation, 4e-5 from float64 in eager already. There each
    result must be as close to the float64 eager run as eager's is (within 1.5× + 1e-6)."""
    module = Wrapped(name, strategy, with_state)
    h0, xs = _inputs(name)
    if not with_state:
        h0 = (torch.zeros(()), torch.zeros(()))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    eager, comp = _run(module, h0, xs, grads), _run(compiled, h0, xs, grads)
    names = ["out", "h0_re", "h0_im"] + [s.name for s in MIXERS[name].mixer.inputs]
    if backend == "inductor":
        exact = _run(module, tuple(x.double() for x in h0), [x.double() for x in xs], grads)
        for what, a, b, r in zip(names, eager, comp, exact):
            err = lambda x: float((x.double() - r).norm() / r.norm().clamp_min(1e-30))  # noqa: E731
            assert err(b) <= 1.5 * err(a) + 1e-6, f"{name} {what}: {err(b):.3g} vs eager {err(a):.3g}"
    else:
        for what, a, b in zip(names, eager, comp):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {what}: {m}")
    torch._dynamo.reset()
    return counter.frame_count


# recurrent with gradients (the custom op lti_recurrent_train) in the slow lane; the fast lane traces
# the recurrence without gradients (test_triton_recurrence_compiles_fullgraph)
@pytest.mark.parametrize("strategy", ["conv", pytest.param("recurrent", marks=pytest.mark.slow)])
def test_s4d_compiles_fullgraph_forward_and_gradients(strategy):
    assert _check("s4d", strategy) == 1


@pytest.mark.slow
def test_s4_conv_compiles_fullgraph_forward_and_gradients():
    """The Cauchy kernel and its backward as custom ops, the Woodbury solve traced by torch."""
    assert _check("s4", "conv") == 1


def test_triton_recurrence_compiles_fullgraph():
    """Without gradients the recurrent strategy runs the Triton kernel (``mixir::lti_recurrent``)."""
    assert _check("s4d", "recurrent", grads=False) == 1


@pytest.mark.slow
def test_triton_low_rank_recurrence_without_state_compiles_fullgraph():
    assert _check("s4", "recurrent", grads=False, with_state=False) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,strategy", [("s4", "recurrent"), ("s4d_bilinear", "conv"),
                                           ("s4d_bilinear", "recurrent")])
def test_other_strategies_compile_fullgraph(name, strategy):
    assert _check(name, strategy) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,strategy", [("s4d", "conv"), ("s4", "conv")])
def test_inductor_matches_eager(name, strategy):
    assert _check(name, strategy, backend="inductor") == 1


class Packed(torch.nn.Module):
    """A packed batch (``cu_seqlens``, with an empty sequence), initial and final states."""

    def __init__(self, name, strategy, cu):
        super().__init__()
        self.fn = mx.compile(MIXERS[name].mixer)
        self.strategy, self.cu = strategy, cu

    def forward(self, h0_re, h0_im, *xs):
        o, (hT_re, hT_im) = self.fn(*xs, initial_state=(h0_re, h0_im), output_final_state=True,
                                    cu_seqlens=self.cu, strategy=self.strategy)
        return torch.cat([o.flatten(), hT_re.flatten(), hT_im.flatten()])


@pytest.mark.slow       # the fast lane: LTI under compile without cu_seqlens (tests above)
@pytest.mark.parametrize("name,strategy", [("s4d", "conv"), ("s4", "recurrent")])
def test_cu_seqlens_compiles_fullgraph(name, strategy):
    """Under tracing the packed call runs the masked torch recurrence (no host sync on the
    offsets); eagerly it splits the sequences (conv, or the Triton recurrence and its backward):
    both must agree, gradients included. In float64, so that two exact algorithms agree to
    1e-9 (in fp32 their roundings differ by ~1e-5)."""
    cu = torch.tensor([0, 3, 3, T], dtype=torch.int32)
    e = MIXERS[name]
    rng = np.random.default_rng(1)
    xs = [torch.tensor(a, dtype=torch.float64) for a in e.make_inputs(rng, 1, T, H, N, N)]
    h0 = tuple(torch.tensor(a, dtype=torch.float64) for a in e.make_initial_state(rng, N=3, H=H, K=N, V=N))
    module = Packed(name, strategy, cu)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    eager, comp = _run(module, h0, xs, True), _run(compiled, h0, xs, True)
    names = ["out", "h0_re", "h0_im"] + [s.name for s in e.mixer.inputs]
    for what, a, b in zip(names, eager, comp):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name} {what}: {m}")
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_unstable_transition_is_still_checked_eagerly():
    fn = mx.compile(MIXERS["s4d"].mixer)
    _, xs = _inputs("s4d")
    names = [s.name for s in MIXERS["s4d"].mixer.inputs]
    xs[names.index("A_re")] = xs[names.index("A_re")].abs() + 1.0      # Re A > 0: |λ| > 1
    with pytest.raises(InputError, match="unstable transition"):
        fn(*xs, strategy="conv")
