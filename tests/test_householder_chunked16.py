"""The chunked delta core's 16-bit path (docs/delta_rule.md "Precision and tiles"): 64-token chunks,
16-bit dot operands with fp32 accumulation, W / Ũ / u / the per-chunk states / du / A⁻¹ stored in
the input dtype. On CPU fp16 runs that path as on the GPU and bf16 emulates it (operands and
16-bit stores rounded to nearest, products in fp32): both against the float64 reference at the
bounds of docs/verification.md, with T crossing several chunk boundaries."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS
from mixir.lowering.common.launch import record_launches
from mixir.lowering.householder import core as dc
from mixir.testing.checker import assert_close, check

pytestmark = pytest.mark.interp


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.slow)],
                         ids=["fp16", "bf16"])
def test_gated_delta_rule_16bit_across_chunks(dtype):
    """T = 150: two full 64-token chunks and a partial one; unit keys, β ∈ [0, 2], gates, an
    initial state; two heads; o, hT and every gradient within the dtype's bounds."""
    m = MIXERS["gated_delta_rule"].mixer
    rng = np.random.default_rng(3)
    T, H, K, V = 150, 2, 32, 16
    q = rng.standard_normal((1, T, H, K))
    k = rng.standard_normal((1, T, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((1, T, H, V))
    beta = rng.uniform(0, 2, (1, T, H))
    g = -rng.exponential(0.1, (1, T, H))
    h0 = rng.standard_normal((1, H, K, V))
    assert dc.default_config("chunked", K, V, dtype)["BT"] == 32      # K = 32: no two K-tiles of 32
    for cfg in ({"BT": 64, "BV": 16, "BKT": 16}, None):
        c = mx.compile(m, config=cfg)
        assert_close(check(m, c, [q, k, v, beta, g], dtype=dtype, strategy="chunked", initial_state=h0))


@pytest.mark.slow   # K = V = 128 forward and backward in the interpreter, twice (~50 s)
def test_16bit_intermediates_and_chunks_as_a_gpu_runs_them():
    """Recorded as for a GPU (the AOT recorder): bf16 inputs at K = V = 128 run 64-token chunks
    with bf16 dot operands (DOT = 1), and every intermediate tensor is bf16; fp32 inputs keep fp32."""
    for dtype, sig, dot in ((torch.bfloat16, "*bf16", dc.DOT_BF16), (torch.float32, "*fp32", dc.DOT_FP32)):
        T, K = 70, 128
        q, k, v = (torch.randn(1, T, 1, K).to(dtype) for _ in range(3))
        beta, g, h0 = torch.rand(1, T, 1), -torch.rand(1, T, 1), torch.randn(1, 1, K, K)
        with np.errstate(all="ignore"), record_launches() as recs:
            dc.delta_forward(q, k, v, beta, g, h0, None, "chunked")
            dc.delta_backward(q, k, v, beta, g, h0, None, torch.randn(1, T, 1, K).to(dtype),
                              torch.randn(1, 1, K, K), "chunked")
        seen = {}
        for r in recs.values():
            name = r.kernel.name.rsplit(".", 1)[-1]
            args, consts = dict(r.signature), dict(r.constexprs)
            assert consts["DOT"] == dot, name
            assert consts["BT"] == (64 if dtype == torch.bfloat16 else 16), name
            for a in ("W", "U", "AI", "HS", "Unew", "DHS", "DU", "DQ", "DK", "DV", "O"):
                if args.get(a) not in (None, "constexpr"):
                    seen[a] = args[a]
        assert set(seen) == {"W", "U", "AI", "HS", "Unew", "DHS", "DU", "DQ", "DK", "DV", "O"}
        # o is fp32 here (core.delta_forward's default; the runtime asks for the input dtype)
        assert all(t == sig for a, t in seen.items() if a != "O"), seen
