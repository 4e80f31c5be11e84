"""Context parallelism (``group=``) of the gated-linear, Householder and LTI families on gloo:
every case runs in one spawn of 4 processes (cases of W = 2, 3 on subgroups), and each rank's
outputs, the final state (on every rank) and the gradients (per-token: the rank's slice;
parameters and initial state: summed over ranks) are compared with the single-process run of the
same compiled mixer, with the dtype's bounds (``mixir.testing.tolerances``). Helpers and the loss
convention: tests/distributed_cases.py. Refusals (nonlinear RNNs) and bad groups run in-process."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_cases import Case, assembled, run_cases

import mixir
from mixir.errors import InputError, UnsupportedMixerError
from mixir.library import MIXERS
from mixir.testing.tolerances import bounds_for, rel_rms_error, rms

CU = (0, 4, 4, 11, 14)      # 4 sequences (one empty) over T = 14: they span rank boundaries

FAST = [
    Case("simple_gla", (5, 7)),
    Case("gla", (4, 0, 6), init=True, wrapper=True),          # an empty slice; library.gla
    Case("simple_gla", (3, 5, 0, 6), cu=CU, init=True),       # varlen across 4 ranks
    Case("delta_rule", (5, 7)),
    Case("gated_delta_rule", (6, 5, 3), cu=CU, init=True),
    Case("s4d", (3, 4, 0, 5), init=True),
    Case("mamba2", (7, 5), init=True),
    Case("simple_gla", (5, 9), dtype="bfloat16"),
    Case("simple_gla", (3, 4, 0, 5)),                          # T = 12 vs 14 above: same bytes
    Case("mlstm", (5, 0, 7), init=True),       # auxiliary states: max-plus m, normaliser n
]

SLOW = [
    Case("gla", (9, 13, 11), cu=(0, 10, 30, 33), init=True),
    Case("gated_delta_rule", (6, 5, 3), dtype="bfloat16", init=True),
    Case("gla", (5, 7, 2), dtype="bfloat16", cu=CU, init=True),
    Case("s4", (6, 5, 3), cu=CU, init=True),
    Case("s4d", (20, 0, 21), init=True),                      # the conv strategy (T > 16)
    Case("simple_gla", (20, 24)),                             # the chunked strategies
    Case("gated_delta_rule", (18, 20), init=True),
    Case("delta_rule", (2, 9, 1, 2), cu=CU, init=True, wrapper=True),
    Case("retention", (5, 4, 5), cu=CU),
    Case("mamba", (6, 6, 2), init=True),
    Case("lightnet", (4, 5, 5), cu=CU, init=True),           # an auxiliary normaliser Z
    Case("mlstm", (6, 5, 3), cu=CU, init=True),
    Case("kda", (5, 0, 7), init=True),                       # key-diagonal gate (recurrent)
    Case("gated_delta_product2", (6, 5, 3), cu=CU, init=True),   # two Householders per token
    Case("hgrn", (4, 6), init=True),                         # a vector state
    Case("s4d_bilinear", (4, 6), init=True),                 # bilinear discretisation (LSSL)
]


def _results(cases, tmp_path_factory):
    return run_cases(cases, str(tmp_path_factory.mktemp("cp")))


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory):
    return _results(FAST, tmp_path_factory)


@pytest.fixture(scope="module")
def slow_results(tmp_path_factory):
    return _results(SLOW, tmp_path_factory)


def _check(case, single, ranks):
    got = assembled(case, ranks)
    b = bounds_for(case.dtype)
    assert got["sT_spread"] == 0.0, "the ranks' final states differ"
    errors = {}
    for k, want in single.items():
        if k == "bytes":
            continue
        kind = "output" if k == "o" else "state" if k == "sT" else "grad"
        if k.startswith("d_"):
            assert rms(want) > 0, f"{k}: the single-process gradient is zero; nothing compared"
        errors[k] = rel_rms_error(got[k], want, b.floor)
        assert errors[k] <= b[kind], f"{case}: {k} error {errors[k]:.3g} > {b[kind]} ({errors})"


@pytest.mark.parametrize("i", range(len(FAST)), ids=[f"{c.name}-W{c.W}-{c.dtype}" for c in FAST])
def test_context_parallel_matches_single_process(fast_results, i):
    _check(FAST[i], *fast_results[i])


def test_bytes_per_rank_do_not_grow_with_T(fast_results):
    """Each rank sends (W − 1) copies of one (transition, state) pair per sequence and head, plus
    its slice length and gradient flag: O(W·N·H·(K + V + K·V)), no T in it (T = 14 with 4 packed
    sequences, T = 12 with a batch of 2, both W = 4, simple_gla: a[K], b[V], the state K×V)."""
    H, K, V, W = 1, 8, 8, 4
    for i, N in ((2, len(CU) - 1), (8, 2)):
        sent = [r["bytes"] for r in fast_results[i][1]]
        assert sent == [(W - 1) * (N * H * (K + V + K * V) * 4 + 2 * 8)] * W, (i, sent)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(SLOW)), ids=[f"{c.name}-W{c.W}-{c.dtype}" for c in SLOW])
def test_context_parallel_matches_single_process_slow(slow_results, i):
    _check(SLOW[i], *slow_results[i])


# ---- refusals and bad groups (no process group needed: they raise before any collective) ----

def _inputs(name, T=4):
    e = MIXERS[name]
    import numpy as np
    arrays = [torch.tensor(a, dtype=torch.float32) for a in e.make_inputs(np.random.default_rng(0), 1, T, 1, 4, 4)]
    return mixir.compile(e.mixer), arrays


def test_nonlinear_rnn_refuses_group():
    fn, arrays = _inputs("lstm")
    with pytest.raises(UnsupportedMixerError, match="nonlinear in the state"):
        fn(*arrays, group=object())


def test_group_must_be_a_process_group():
    fn, arrays = _inputs("simple_gla")
    with pytest.raises(InputError, match="group"):
        fn(*arrays, group="world")


def test_state_passing_contract():
    from mixir.lowering import family as registry
    for name in ("simple_gla", "delta_rule", "s4d"):
        fam, plan = registry.classify(MIXERS[name].mixer)
        assert fam.state_passing(plan) is not None, name
    fam, plan = registry.classify(MIXERS["lstm"].mixer)
    assert fam.state_passing(plan) is None
    fam, plan = registry.classify(MIXERS["mlstm"].mixer)      # gated-linear, state by state
    assert fam.state_passing(plan) is not None
