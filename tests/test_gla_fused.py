"""The gated-linear "fused" strategy (scalar decays, the chunk state kept on chip:
``lowering/gated_linear/fused.py``): against the float64 reference through the compiled mixers,
against the chunked strategy at the core (odd head sizes, several tiles, scale, bias, packed
sequences), its launches, and the declarations it refuses.

Every library mixer that offers it also runs it in float32 in ``test_family_contract.py``."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.errors import InputError
from mixir.library import MIXERS
from mixir.lowering.gated_linear import core
from mixir.testing.checker import assert_close, check, check_cu_seqlens
from mixir.verify import example_inputs

from lanes import dtype_grid

FUSED = sorted(n for n, e in MIXERS.items() if e.family == "gated_linear" and not e.requires
               and "fused" in mx.compile(e.mixer).strategies)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _ids(d):
    return str(d).split(".")[-1]


def test_the_scalar_decay_library_mixers_offer_it():
    assert {"simple_gla", "retention", "linear_attention", "mamba2"} <= set(FUSED)
    assert "gla" not in FUSED and "hgrn" not in FUSED


@pytest.mark.parametrize("name, strategy, dtype", dtype_grid(FUSED, ["fused"], DTYPES, _ids))
def test_library_mixer_matches_reference(name, strategy, dtype):
    """T = 37 spans three 16-token chunks (the config's BT) and a partial one."""
    m = MIXERS[name].mixer
    arrays, h0 = example_inputs(m, B=1, T=37, H=2, K=16, V=16, seed=1)
    assert_close(check(m, mx.compile(m, config={"BT": 16}), arrays, dtype=dtype, strategy=strategy,
                       initial_state=h0))


@pytest.mark.slow
def test_cu_seqlens_equals_per_sequence_loop():
    m = MIXERS["simple_gla"].mixer
    arrays, _ = example_inputs(m, B=1, T=40, H=2, K=16, V=16, seed=2)
    cu = torch.tensor([0, 5, 5, 38, 40])   # an empty sequence inside, one across chunks
    h0 = MIXERS["simple_gla"].make_initial_state(np.random.default_rng(0), 4, 2, 16, 16)
    assert_close(check_cu_seqlens(m, mx.compile(m, config={"BT": 16}), arrays, cu,
                                  dtype=torch.float32, strategy="fused", initial_state=h0))


def _inputs(B, T, H, K, V, packed):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v, bias = (torch.randn(B, T, H, V, generator=gen) for _ in range(2))
    g = -torch.rand(B, T, H, generator=gen)
    do = torch.randn(B, T, H, V, generator=gen)
    N, cu = B, None
    if packed:
        q, k, v, g, do, bias = (x.reshape((1, B * T) + tuple(x.shape[2:])) for x in (q, k, v, g, do, bias))
        cu, N = torch.tensor([0, 5, 5, 29, B * T], dtype=torch.int32), 4
    h0, dhT = (torch.randn(N, H, K, V, generator=gen) for _ in range(2))
    return q, k, v, g, h0, cu, do, dhT, bias


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_core_equals_the_chunked_strategy(packed):
    """Odd head sizes over two K- and V-tiles, an output scale and bias, initial and final states
    and their gradients: the same numbers as the chunked strategy (fp32, both exact to rounding)."""
    q, k, v, g, h0, cu, do, dhT, bias = _inputs(2, 21, 1, 20, 24, packed)
    runs = {}
    for strategy, cfg in (("chunked", {"BT": 16, "BC": 16, "BK": 16, "BV": 16}),
                          ("fused", {"BT": 16, "BK": 16, "BV": 16})):
        o, hT = core.gla_forward(q, k, v, g, None, None, h0, cu, strategy=strategy, config=cfg,
                                 scale=0.7, bias=bias)
        grads = core.gla_backward(q, k, v, g, None, None, h0, cu, do, dhT, strategy=strategy,
                                  config=cfg, scale=0.7)
        runs[strategy] = [o, hT] + [x for x in grads if x is not None]
    assert len(runs["fused"]) == len(runs["chunked"]) == 7          # o, hT, dq, dk, dv, dg, dh0
    for a, b in zip(runs["chunked"], runs["fused"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())


def test_a_training_step_is_five_launches(launched_kernels):
    """o; dq, dk, dv (one sweep each); the decay gradient's reverse cumsum. No state in HBM."""
    names = launched_kernels
    m = MIXERS["simple_gla"].mixer
    arrays, _ = example_inputs(m, B=1, T=20, H=1, K=16, V=16, seed=3)
    q, k, v, g = (torch.tensor(a, dtype=torch.float32).requires_grad_() for a in arrays)
    o = mx.compile(m)(q, k, v, g, strategy="fused")
    o.float().sum().backward()
    assert names == ["fused_gla_sweep"] * 4 + ["chunk_gla_rev_cumsum"]
    assert torch.isfinite(g.grad).all()


def test_per_channel_decays_are_refused():
    m = MIXERS["gla"].mixer
    assert "fused" not in mx.compile(m).strategies
    arrays, _ = example_inputs(m, B=1, T=4, H=1, K=8, V=8, seed=0)
    with pytest.raises(InputError, match="strategy must be one of"):
        mx.compile(m)(*(torch.tensor(a, dtype=torch.float32) for a in arrays), strategy="fused")
    q = torch.zeros(1, 4, 1, 8)
    with pytest.raises(InputError, match="scalar decays only"):
        core.gla_forward(q, q, q, None, q, None, strategy="fused")
    big = torch.zeros(1, 4, 1, 512)
    with pytest.raises(InputError, match="one register tile"):
        core.gla_forward(big, big, q, None, None, None, strategy="fused")


def _default(name, B, H, K, device, monkeypatch, T=32):
    """The strategy a call names none picks, on a CUDA ``device`` taken for an H100 (132 SMs)."""
    from mixir.autotune import hardware, select
    monkeypatch.setattr(select, "current_gpu", lambda device: hardware.get("H100-SXM"))
    entry = MIXERS[name]
    fn = mx.compile(entry.mixer)
    arrays = [torch.zeros(a.shape) for a in
              (torch.as_tensor(x) for x in entry.make_inputs(np.random.default_rng(0), B, T, H, K, K))]
    b, N, _, _ = fn._check(arrays, None, None, {})
    return fn.default_strategy(b, None, torch.device(device), N)


def test_the_default_on_a_gpu_is_fused_where_it_fills_half_the_gpu(monkeypatch):
    # B·H·V-tiles programs for at least half of 132 SMs: 8·16·2 = 256 and 8·16·1 = 128 are,
    # 2·16·2 = 64 and 4·16·1 = 64 are not
    assert _default("simple_gla", 8, 16, 128, "cuda", monkeypatch) == "fused"
    assert _default("retention", 8, 16, 64, "cuda", monkeypatch) == "fused"
    assert _default("simple_gla", 2, 16, 128, "cuda", monkeypatch) == "chunked"
    assert _default("retention", 4, 16, 64, "cuda", monkeypatch) == "chunked"
    # mamba2's factored decay dt·A, scaled values dt·x and D skip are formed in the sweeps; with
    # scaled values the builds are spill-free up to V = 64
    assert _default("mamba2", 8, 16, 64, "cuda", monkeypatch) == "fused"
    assert _default("mamba2", 8, 16, 128, "cuda", monkeypatch) == "chunked"
    # mLSTM's matrix state with its per-token output scale (the normaliser) too
    assert _default("mlstm", 8, 16, 64, "cuda", monkeypatch) == "fused"
    # head sizes past the checked spill-free builds; per-key decays; tensors off the GPU
    assert _default("simple_gla", 8, 16, 256, "cuda", monkeypatch) == "chunked"
    assert _default("gla", 8, 16, 64, "cuda", monkeypatch) == "chunked"
    assert _default("simple_gla", 8, 16, 128, "cpu", monkeypatch) == "chunked"
    # short sequences stay recurrent
    assert _default("simple_gla", 8, 16, 64, "cuda", monkeypatch, T=8) == "recurrent"
