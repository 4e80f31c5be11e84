"""Every kernel of the Householder family builds ahead of time with no register spills: the generated
pieces kernels of the library mixers, and the core's recurrent and chunked kernels (forward and
backward) at the benchmark's head size K = V = 128 in bf16 — the chunked defaults (64-token chunks,
warpgroup MMA) for sm_90, and for sm_80 the config the tuning model picks for an A100 (64-token
chunks need warpgroup MMA: the model gives sm_8x BT ≤ 32). The slow test covers K = V = 64/128 ×
fp32/bf16 × both strategies."""
import pytest
import torch

from mixir.library import MIXERS
from mixir.lowering.common import aot
from mixir.lowering.common.launch import record_launches
from mixir.lowering.householder import core as dc
from mixir.lowering.householder import space as ds
from mixir.verify import record_kernels

pytestmark = [pytest.mark.aot, pytest.mark.interp]


def _core_records(K, V, dtype, strategies=("chunked", "recurrent"), T=70, n_h=(1, 2), config=None):
    """Launches of the core, forward and backward (T crosses a 64-token chunk); ``n_h`` = 2 adds
    DeltaProduct's read-out of every second sub-step (the output kernel specialised with NH = 2);
    ``config``: the chunked strategy's (default: ``core.default_config``)."""
    torch.manual_seed(0)
    recs = {}
    for n in n_h:
        q = torch.randn(1, T, 1, K).to(dtype)
        k = torch.randn(1, T * n, 1, K).to(dtype)
        v = torch.randn(1, T * n, 1, V).to(dtype)
        beta, g, h0 = torch.rand(1, T * n, 1), -torch.rand(1, T * n, 1), torch.randn(1, 1, K, V)
        with record_launches() as r:
            for s in strategies:
                cfg = config if s == "chunked" else None
                dc.delta_forward(q, k, v, beta, g, h0, None, s, cfg, n_h=n)
                dc.delta_backward(q, k, v, beta, g, h0, None, torch.randn(1, T, 1, V).to(dtype),
                                  torch.randn(1, 1, K, V), s, cfg, n_h=n)
        recs.update(r)
    return recs


def _assert_clean(results, n):
    assert len(results) == n
    for r in results:
        assert isinstance(r, aot.KernelResources), r
        assert r.fits, f"{r.kernel} on {r.arch} needs {r.total_shared_bytes} B of shared memory"
    spilled = [r for r in results if r.spills]
    assert not spilled, "\n" + aot.format_table(spilled)


def _a100_config(K, V, dtype):
    cfg = ds.model_best("chunked", "a100", dtype, K, V, 8, 4096, 16)
    assert cfg is not None and cfg["BT"] <= 32
    return cfg


@pytest.mark.slow   # many AOT builds; tests/test_family_contract.py builds one declaration per family in the fast lane
def test_core_kernels_build_without_spills_at_the_benchmark_size():
    recs = _core_records(128, 128, torch.bfloat16, strategies=("chunked",))
    names = {r.kernel.name.rsplit(".", 1)[-1] for r in recs.values()}
    assert names == {"delta_chunk_prep", "delta_chunk_states", "delta_chunk_output", "delta_chunk_dstates",
                     "delta_chunk_grads"}
    nh = {dict(r.constexprs).get("NH") for r in recs.values() if r.kernel.name.endswith("delta_chunk_output")}
    assert nh == {1, 2}
    assert {dict(r.constexprs)["BT"] for r in recs.values() if "BT" in dict(r.constexprs)} == {64}
    recs80 = _core_records(128, 128, torch.bfloat16, strategies=("chunked",), n_h=(1,),
                           config=_a100_config(128, 128, "bf16"))
    _assert_clean(aot.build_all(list(recs.values()), ["sm_90"], workers=2)
                  + aot.build_all(list(recs80.values()), ["sm_80"], workers=2), len(recs) + len(recs80))


@pytest.mark.parametrize("K", [pytest.param(64, marks=pytest.mark.slow),
                               pytest.param(128, marks=pytest.mark.slow)])   # AOT builds
def test_key_diagonal_gate_kernels_build_without_spills(K):
    """KDA's recurrent kernels (GATE_K: the state gated row-wise, dg per key channel)."""
    torch.manual_seed(0)
    T = 9
    q, k = (torch.randn(1, T, 1, K).to(torch.bfloat16) for _ in range(2))
    v = torch.randn(1, T, 1, K).to(torch.bfloat16)
    beta, g, h0 = torch.rand(1, T, 1), -torch.rand(1, T, 1, K), torch.randn(1, 1, K, K)
    with record_launches() as recs:
        dc.delta_forward(q, k, v, beta, g, h0, None, "recurrent")
        dc.delta_backward(q, k, v, beta, g, h0, None, torch.randn(1, T, 1, K), torch.randn(1, 1, K, K),
                          "recurrent")
    assert {dict(r.constexprs).get("GATE_K") for r in recs.values()} == {True}
    _assert_clean(aot.build_all(list(recs.values()), ["sm_80", "sm_90"], workers=2), 2 * len(recs))


@pytest.mark.slow     # the fast lane builds delta_rule's pieces for sm_90: test_family_contract.py
def test_pieces_kernels_of_the_library_build():
    recs = {}
    for name in ("gated_delta_rule", "gated_delta_product2"):
        recs.update(record_kernels(MIXERS[name].mixer, dtype="bfloat16", T=20))
    pieces = [r for r in recs.values() if r.kernel.name.startswith("mixir.pointwise.")]
    assert pieces
    _assert_clean(aot.build_all(pieces, ["sm_80", "sm_90"], workers=2), 2 * len(pieces))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K", [64, 128])
def test_every_default_config_builds_without_spills(K, dtype):
    """The defaults for sm_90 (both strategies); for sm_80 the recurrent defaults and the chunked
    config the model picks for an A100."""
    recs = _core_records(K, K, dtype)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    recs80 = _core_records(K, K, dtype, config=_a100_config(K, K, name))
    _assert_clean(aot.build_all(list(recs.values()), ["sm_90"], workers=2)
                  + aot.build_all(list(recs80.values()), ["sm_80"], workers=2), len(recs) + len(recs80))
