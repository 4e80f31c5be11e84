"""The nonlinear RNN family under ``torch.compile(fullgraph=True)``: the kernels are the custom
ops ``mixir::rnn_fwd`` / ``mixir::rnn_bwd`` (``mixir/lowering/rnn_ops.py``), so dynamo traces a
call as one opaque node (one frame, no graph break) and AOT autograd wires the backward.

Compiled forward and gradients (pre-activations, R, b, initial states) must equal eager; eager
itself is checked against the float64 reference in ``tests/test_rnn.py``. Backend ``aot_eager``
on CPU (the kernels run in Triton's interpreter); tiny shapes."""
import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import mixir as mx
from mixir.library.rnn import RNN_MIXERS


def _leaves(name, B, T, H, D, seed=0, N=None):
    e = RNN_MIXERS[name]
    rng = np.random.default_rng(seed)
    arrays = []
    for a in e.make_inputs(rng, B, T, H, D, D):       # recurrent weights at N(0, 1/D)
        arrays.append(torch.tensor(a, dtype=torch.float32, requires_grad=True))
    h0 = e.make_initial_state(rng, N or B, H, D, D)
    h0 = h0 if isinstance(h0, (tuple, list)) else (h0,)
    inits = [torch.tensor(s, dtype=torch.float32, requires_grad=True) for s in h0]
    return arrays, inits


def _clone(ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def _compare(name, strategy, *, finals_in_loss=True, cu_seqlens=None, B=2, T=6, N=None):
    fn = mx.compile(RNN_MIXERS[name].mixer)
    arrays, inits = _leaves(name, B, T, 2, 8, seed=3, N=N)

    def loss(arrays, inits):
        init = tuple(inits) if len(inits) > 1 else inits[0]
        o, fin = fn(*arrays, initial_state=init, output_final_state=True, strategy=strategy,
                    cu_seqlens=cu_seqlens)
        fin = fin if isinstance(fin, tuple) else (fin,)
        out = (o * o).sum()
        if finals_in_loss:
            out = out + sum((s * s.detach().sin()).sum() for s in fin)
        return out, o

    a1, i1 = _clone(arrays), _clone(inits)
    l_eager, o_eager = loss(a1, i1)
    l_eager.backward()

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)   # a graph break raises
    a2, i2 = _clone(arrays), _clone(inits)
    l_comp, o_comp = compiled(a2, i2)
    l_comp.backward()
    assert counter.frame_count == 1

    torch.testing.assert_close(o_comp, o_eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-6, atol=1e-6)
    specs = RNN_MIXERS[name].mixer.inputs
    for spec, x1, x2 in zip(specs, a1, a2):
        assert x1.grad is not None and x2.grad is not None, spec.name
        assert x1.grad.abs().sum() > 0, spec.name       # the gradient is not trivially zero
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6, msg=spec.name)
    for k, (s1, s2) in enumerate(zip(i1, i2)):
        assert s1.grad is not None and s2.grad is not None, f"initial state {k}"
        torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-6)


def test_lstm_fused_fullgraph_matches_eager():
    _compare("lstm", "fused")


@pytest.mark.slow       # the alternating strategy under compile: the elman cu_seqlens test below
def test_gru_alternating_fullgraph_matches_eager():
    # only the output in the loss: the final states' cotangents are absent
    _compare("gru", "alternating", finals_in_loss=False)


@pytest.mark.slow
def test_slstm_fused_fullgraph_matches_eager():
    _compare("slstm", "fused")


def test_elman_alternating_cu_seqlens_fullgraph_matches_eager():
    cu = torch.tensor([0, 2, 7], dtype=torch.int32)    # rows read from cu_seqlens inside the op
    _compare("elman", "alternating", cu_seqlens=cu, B=1, T=7, N=2)


def test_default_strategy_inference_under_compile():
    """No strategy given (the constant-folded default choice), no gradients (nothing saved)."""
    name = "elman"
    fn = mx.compile(RNN_MIXERS[name].mixer)
    arrays, inits = _leaves(name, 2, 5, 2, 8, seed=4)
    arrays = [a.detach() for a in arrays]
    h0 = inits[0].detach()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    f = torch.compile(lambda *xs: fn(*xs, initial_state=h0, output_final_state=True),
                      fullgraph=True, backend=counter)
    with torch.no_grad():
        o, h = f(*arrays)
        o_ref, h_ref = fn(*arrays, initial_state=h0, output_final_state=True)
    assert counter.frame_count == 1
    torch.testing.assert_close(o, o_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_lstm_fused_inductor_matches_eager():
    fn = mx.compile(RNN_MIXERS["lstm"].mixer)
    arrays, inits = _leaves("lstm", 2, 5, 2, 8, seed=5)

    def loss(arrays, inits):
        o, (h, c) = fn(*arrays, initial_state=tuple(inits), output_final_state=True,
                       strategy="fused")
        return (o.float() ** 2).sum() + (h * c).sum()

    a1, i1 = _clone(arrays), _clone(inits)
    loss(a1, i1).backward()
    torch._dynamo.reset()
    a2, i2 = _clone(arrays), _clone(inits)
    torch.compile(loss, fullgraph=True, backend="inductor")(a2, i2).backward()
    for x1, x2 in zip(a1 + i1, a2 + i2):
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
