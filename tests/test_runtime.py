"""The call contract of compiled mixers: argument checks, layouts, non-contiguous inputs,
torch.compile, the output/final-state convention."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS

GLA = MIXERS["gla"].mixer


def _gla_inputs(B=1, T=9, H=2, K=8, V=4, dtype=torch.float32):
    torch.manual_seed(0)
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K)).to(dtype)
    return q, k, v, gk


def test_returns_o_or_o_and_state():
    fn = mx.compile(GLA)
    q, k, v, gk = _gla_inputs()
    o = fn(q, k, v, gk)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 9, 2, 4) and o.dtype == torch.float32
    o2, S = fn(q, k, v, gk, output_final_state=True)
    assert S.shape == (1, 2, 8, 4) and S.dtype == torch.float32
    torch.testing.assert_close(o, o2)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v, g: (q[0], k, v, g), r"argument 'q' must have rank 4"),
    (lambda q, k, v, g: (q, k[..., :5], v, g), r"argument 'k' has K = 5"),
    (lambda q, k, v, g: (q, k, v[:, :4], g), r"argument 'v' has T = 4"),
    (lambda q, k, v, g: (q, k.double(), v, g), r"argument 'k' must be float32, float16 or bfloat16"),
    (lambda q, k, v, g: (q, k.half(), v, g), r"argument 'k' has dtype torch.float16"),
    (lambda q, k, v, g: (q, k, v.numpy(), g), r"argument 'v' must be a torch.Tensor"),
    (lambda q, k, v, g: (q, k, v), r"takes 4 tensors"),
])
def test_bad_arguments_name_the_argument(bad, match):
    fn = mx.compile(GLA)
    with pytest.raises(mx.InputError, match=match):
        fn(*bad(*_gla_inputs()))


@pytest.mark.parametrize("cu, match", [
    ([0, 5, 3, 9], "non-decreasing"),
    ([1, 5, 9], "must start at 0"),
    ([0, 5, 8], "must end at T = 9"),
])
def test_bad_cu_seqlens(cu, match):
    fn = mx.compile(GLA)
    with pytest.raises(mx.InputError, match=match):
        fn(*_gla_inputs(), cu_seqlens=torch.tensor(cu))


def test_cu_seqlens_needs_batch_one_and_int_dtype():
    fn = mx.compile(GLA)
    with pytest.raises(mx.InputError, match="needs B = 1"):
        fn(*_gla_inputs(B=2), cu_seqlens=torch.tensor([0, 9]))
    with pytest.raises(mx.InputError, match="int32 or int64"):
        fn(*_gla_inputs(), cu_seqlens=torch.tensor([0.0, 9.0]))


def test_bad_initial_state_and_keywords():
    fn = mx.compile(GLA)
    with pytest.raises(mx.InputError, match=r"initial_state .* must have shape"):
        fn(*_gla_inputs(), initial_state=torch.zeros(1, 2, 4, 8))
    with pytest.raises(mx.InputError, match="strategy must be one of"):
        fn(*_gla_inputs(), strategy="magic")
    with pytest.raises(mx.InputError, match="unexpected keyword"):
        fn(*_gla_inputs(), temperature=2.0)


def test_non_contiguous_inputs_work():
    fn = mx.compile(GLA)
    q, k, v, gk = _gla_inputs(B=2, T=20)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)       # same values, strided view
    kt = k.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not qt.is_contiguous() and not kt.is_contiguous()
    for strategy in ("recurrent", "chunked"):
        torch.testing.assert_close(fn(qt, kt, v, gk, strategy=strategy),
                                   fn(q, k, v, gk, strategy=strategy))


def test_expanded_stride_zero_inputs_work():
    m = MIXERS["simple_gla"].mixer
    fn = mx.compile(m)
    q, k, v, _ = _gla_inputs(T=12)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 12, 1)).expand(1, 12, 2)
    ref = mx.reference(m)(q.numpy(), k.numpy(), v.numpy(), g.numpy())
    got = fn(q, k, v, g, strategy="chunked")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_compile_rejects_non_mixers():
    with pytest.raises(mx.InputError, match="declared with @mixir.mixer"):
        mx.compile(lambda x: x)


# inductor (a C++ build of the graph around the kernels) in the slow lane; the custom ops and the
# one-graph trace are the same under aot_eager
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph_matches_eager(backend):
    fn = mx.compile(GLA)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 3 * 2 * 4 + 2 * 4)

        def forward(self, x):
            B, T, _ = x.shape
            y = self.proj(x)
            q, k, gk = y[..., :24].reshape(B, T, 2, 3, 4).unbind(-2)
            v = y[..., 24:].reshape(B, T, 2, 4)
            o, S = fn(q, k, v, torch.nn.functional.logsigmoid(gk), output_final_state=True,
                      strategy="chunked")
            return (o * o).sum() + S.sum()

    torch.manual_seed(0)
    layer, x = Layer(), torch.randn(2, 10, 8)
    eager = layer(x)
    eager.backward()
    g_eager = layer.proj.weight.grad.clone()
    layer.zero_grad()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)   # a graph break would raise here
    out = compiled(x)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.proj.weight.grad, g_eager, rtol=1e-5, atol=1e-5)
