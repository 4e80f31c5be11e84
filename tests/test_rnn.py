"""Differential tests of the nonlinear head-wise RNN family (LSTM, GRU, Elman, sLSTM): both
strategies, fp32/bf16/fp16, forward and backward (BPTT: pre-activations, R, b, initial states),
against the float64 reference that executes the declarations token by token.

Kernels run on CPU tensors through Triton's interpreter; shapes are tiny (D <= 16, T <= 12)."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Param, State
from mixir.dsl.ops import rename
from mixir.errors import InputError, UnsupportedMixerError
from mixir.library.rnn import RNN_MIXERS, gru, lstm, mlstm_nonorm_mixer
from mixir.lowering.family import classify
from mixir.testing.checker import assert_close, check, check_cu_seqlens

from lanes import dtype_grid


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Gradient buffers the kernels must fill whole are NaN-filled first (MIXIR_POISON): a token
    row a kernel forgets fails the comparison with the reference."""
    monkeypatch.setenv("MIXIR_POISON", "1")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STRATEGIES = ["fused", "alternating"]
CELLS = ["lstm", "gru", "elman", "slstm"]


def inputs(name, B, T, H, D, seed=0, N=None):
    """Library inputs (recurrent weights at N(0, 1/D), the library's "recurrent" sampler: an
    init's scale, stable cells)."""
    e = RNN_MIXERS[name]
    rng = np.random.default_rng(seed)
    return list(e.make_inputs(rng, B, T, H, D, D)), e.make_initial_state(rng, N or B, H, D, D)


@pytest.mark.parametrize("name, strategy, dtype",
                         dtype_grid(CELLS, STRATEGIES, DTYPES, lambda d: str(d).split(".")[-1]))
def test_cell_matches_reference(name, strategy, dtype):
    m = RNN_MIXERS[name].mixer
    arrays, h0 = inputs(name, B=1, T=7, H=1, D=8, seed=1)     # batches and heads: the tests below
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_single_token_without_initial_state(name, strategy):
    m = RNN_MIXERS[name].mixer
    arrays, _ = inputs(name, B=3, T=1, H=1, D=16, seed=2)
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy=strategy))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_head_size_not_a_power_of_two(strategy):
    m = RNN_MIXERS["slstm"].mixer
    arrays, h0 = inputs("slstm", B=2, T=5, H=3, D=12, seed=3)
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy=strategy, initial_state=h0))


@pytest.mark.parametrize("T", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_long_sequence_fp32(T):
    m = RNN_MIXERS["gru"].mixer
    arrays, h0 = inputs("gru", B=1, T=T, H=1, D=4, seed=4)
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy="fused", initial_state=h0))


@pytest.mark.parametrize("strategy", ["fused", pytest.param("alternating", marks=pytest.mark.slow)])
def test_cu_seqlens_equals_per_sequence_loop(strategy):
    m = RNN_MIXERS["lstm"].mixer
    arrays, h0 = inputs("lstm", B=1, T=10, H=2, D=8, seed=5, N=4)
    cu = torch.tensor([0, 3, 3, 8, 10])     # an empty sequence inside
    assert_close(check_cu_seqlens(m, mx.compile(m), arrays, cu, dtype=torch.float32,
                                  strategy=strategy, initial_state=h0))


def test_cu_seqlens_matches_reference():
    m = RNN_MIXERS["elman"].mixer
    arrays, h0 = inputs("elman", B=1, T=9, H=1, D=8, seed=6, N=3)
    cu = torch.tensor([0, 2, 6, 9])
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy="fused",
                       initial_state=h0, cu_seqlens=cu))


def test_strategies_agree_and_wrappers_stack_gates():
    torch.manual_seed(0)
    B, T, H, D = 2, 6, 2, 8
    x = torch.randn(B, T, 4, H, D)
    R = torch.randn(4, H, D, D) / D ** 0.5
    b = torch.randn(4, H, D)
    o1, (h1, c1) = lstm(x, R, b, output_final_state=True, strategy="fused")
    o2, (h2, c2) = lstm(x, R, b, output_final_state=True, strategy="alternating")
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    assert torch.equal(o1[:, -1], h1.to(o1.dtype))
    with pytest.raises(InputError, match="G = 3 gates"):
        gru(x, R, b)


def test_analysis_plan_and_errors():
    fam, plan = classify(RNN_MIXERS["gru"].mixer)
    assert fam.name == "rnn" and plan.family == "rnn" and len(plan.gates) == 3
    assert plan.strategies == ("fused", "alternating") and "nonlinear" in plan.transition

    @mx.mixer
    def two_hidden(x: In["D"], R: Param["E", "D"], h: State["D"], g: State["D"]):
        h2 = mx.tanh(x + rename(h, D="E") @ R + rename(g, D="E") @ R)
        return h2, h2, h2
    with pytest.raises(UnsupportedMixerError, match="two states"):
        mx.compile(two_hidden)

    @mx.mixer
    def state_reduced(x: In["D"], h: State["D"]):
        h = mx.tanh(x + mx.sum(h * h, "D"))
        return h, h
    with pytest.raises(UnsupportedMixerError, match="no recurrent matmul"):
        mx.compile(state_reduced)

    @mx.mixer
    def weight_pointwise(x: In["D"], R: Param["E", "D"], h: State["D"]):
        h = mx.tanh(x + rename(h, D="E") @ R) * mx.sum(R, "E")
        return h, h
    with pytest.raises(UnsupportedMixerError, match="also used pointwise"):
        mx.compile(weight_pointwise)


def test_rename_needs_equal_sizes():
    m = RNN_MIXERS["elman"].mixer
    x, R, b = torch.randn(1, 2, 1, 4), torch.randn(1, 3, 4), torch.randn(1, 4)
    with pytest.raises(InputError, match="must equal the hidden dim"):
        mx.compile(m)(x, R, b)


def test_mlstm_without_normaliser_is_gated_linear():
    m = mlstm_nonorm_mixer
    fam, plan = classify(m)
    assert fam.name == "gated_linear"
    rng = np.random.default_rng(7)
    B, T, H, K, V = 2, 9, 2, 8, 8
    arrays = [rng.standard_normal((B, T, H, K)), rng.standard_normal((B, T, H, K)),
              rng.standard_normal((B, T, H, V)), rng.standard_normal((B, T, H)) - 1.0,
              rng.standard_normal((B, T, H))]
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy="chunked"))

# mLSTM (with normaliser and stabiliser) compiles through the gated-linear family: tests/test_rnn_mlstm.py
