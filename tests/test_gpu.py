"""The same differential checks on a real GPU (compiled Triton, not the interpreter).

Marked ``gpu``: skipped on machines without CUDA (CI has none). On a GPU machine run
``python -m pytest -q -m gpu`` and record the outcome in docs/benchmarks.md.
"""
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS
from mixir.testing.checker import assert_close, check, check_cu_seqlens
from mixir.verify import example_inputs

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _name_strategy():
    """(library mixer, strategy) for every mixer mixir compiles, each with its family's strategies."""
    from mixir.lowering.family import classify
    out = []
    for name, e in sorted(MIXERS.items()):
        if not e.requires:
            out += [(name, s) for s in classify(e.mixer)[1].strategies]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name, strategy", _name_strategy())
@pytest.mark.parametrize("T, K", [(37, 16), (300, 64), (1000, 128)])
def test_library_on_cuda(name, strategy, dtype, T, K):
    m = MIXERS[name].mixer
    arrays, h0 = example_inputs(m, B=2, T=T, H=2, K=K, V=K, seed=1)
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0,
                       device="cuda"))


@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_cu_seqlens_on_cuda(strategy):
    m = MIXERS["gla"].mixer
    arrays, _ = example_inputs(m, B=1, T=300, H=2, K=64, V=64, seed=2)
    cu = torch.tensor([0, 100, 100, 257, 300])
    assert_close(check_cu_seqlens(m, mx.compile(m), arrays, cu, dtype=torch.bfloat16,
                                  strategy=strategy, device="cuda"))


def test_torch_compile_on_cuda():
    fn = mx.compile(MIXERS["gla"].mixer)
    q, k, gk = (torch.randn(2, 256, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    v = torch.randn(2, 256, 4, 64, device="cuda", dtype=torch.bfloat16)
    gk = torch.nn.functional.logsigmoid(gk.float()).to(torch.bfloat16)

    def f(q, k, v, gk):
        return fn(q, k, v, gk, strategy="chunked").float().square().sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v, gk), f(q, k, v, gk),
                               rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("op", ["delta_rule", "gated_delta_rule", "gated_delta_product2", "kda"])
def test_householder_agrees_with_fla(op):
    """mixir's chunked WY kernels against flash-linear-attention's on the same inputs (bf16,
    K = V = 128, T = 2048, l2-normalised keys in the kernel); skipped when fla is not installed."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import bench_delta
    base = bench_delta.fla_call(op)
    if base is None:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    inputs = bench_delta.make_inputs(op, 2, 2048, 4, 128, 128, torch.bfloat16, torch.device("cuda"))
    o_m = bench_delta.mixir_call(op, *inputs)
    o_f = base(*inputs)
    err = ((o_m.float() - o_f.float()).norm() / o_f.float().norm()).item()
    assert err < 2e-2, f"{op}: relative error {err:.2e} between mixir and fla"
