"""Every config the tuner can hand to the runtime computes the right answer: the shipped database
entries and the cost model's top choices run through the same kernels on CPU (interpreted) and
must pass the differential checker. (The AOT step only proves they build; this proves they are
correct.)"""
import json
import os

import pytest
import torch

import mixir as mx
from mixir.autotune import hardware, select
from mixir.autotune.space import Shape
from mixir.library import MIXERS
from mixir.lowering.gated_linear import space as gla_space
from mixir.testing.checker import assert_close, check
from mixir.verify import example_inputs

DATA = os.path.join(os.path.dirname(mx.__file__), "autotune", "data")
BY_FINGERPRINT = {e.mixer.fingerprint: e.mixer for e in MIXERS.values()}


def _shipped():
    out = []
    for fname in sorted(os.listdir(DATA)):
        with open(os.path.join(DATA, fname)) as f:
            for key, entry in json.load(f)["entries"].items():
                fp = key.split("|")[0]
                K = int(next(p for p in key.split("|") if p.startswith("K"))[1:])
                out.append(pytest.param(fp, entry["strategy"], entry["config"], K, id=f"{fname}:{key}"))
    return out


def _run(mixer, strategy, config, K):
    fn = mx.compile(mixer, config=config)
    arrays, h0 = example_inputs(mixer, B=1, T=70, H=1, K=K, V=K, seed=5)
    assert_close(check(mixer, fn, arrays, dtype=torch.float32, strategy=strategy, initial_state=h0))


@pytest.mark.parametrize("fp, strategy, config, K", _shipped())
def test_shipped_database_configs_are_correct(fp, strategy, config, K):
    assert fp in BY_FINGERPRINT, "the database names a mixer the library no longer has"
    if strategy.startswith("lti_"):     # an LTI entry tunes the kernels of the conv strategy
        strategy = "conv"
    _run(BY_FINGERPRINT[fp], strategy, config, min(K, 64))


@pytest.mark.parametrize("gpu", ["h100", "a100", "4090"])
@pytest.mark.parametrize("strategy", ["chunked", "recurrent"])
def test_cost_model_choice_is_correct(gpu, strategy):
    pytest.importorskip("ortools")
    name = hardware.get(gpu).name
    cfg = select.model_best(gla_space.SPACES[strategy], Shape(8, 4096, 16, 64, 64, "bf16"), name)
    assert cfg is not None
    _run(MIXERS["gla"].mixer, strategy, cfg, 64)
