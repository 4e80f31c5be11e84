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
FAMILY_BY_FINGERPRINT = {e.mixer.fingerprint: e.family for e in MIXERS.values()}


def _shipped():
    """Every shipped entry; an entry whose (family, strategy, config, K) an earlier entry already
    runs (the same template kernels at the same tiles, another mixer's pointwise pieces) is in the
    slow lane."""
    out, seen = [], set()
    for fname in sorted(os.listdir(DATA)):
        with open(os.path.join(DATA, fname)) as f:
            for key, entry in json.load(f)["entries"].items():
                fp = key.split("|")[0]
                K = int(next(p for p in key.split("|") if p.startswith("K"))[1:])
                family = FAMILY_BY_FINGERPRINT.get(fp)
                same = (family, entry["strategy"], json.dumps(entry["config"], sort_keys=True), K)
                marks = pytest.mark.slow if family is not None and same in seen else ()
                seen.add(same)
                out.append(pytest.param(fp, entry["strategy"], entry["config"], K, id=f"{fname}:{key}",
                                        marks=marks))
    return out


def _run(mixer, strategy, config, K):
    fn = mx.compile(mixer, config=config)
    # the chunked and conv kernels tile T (T = 70 crosses a 64-token tile; a chunk of BT tokens:
    # one chunk and a partial one); a recurrent config tiles K / V and loops over tokens, so a
    # short T that still crosses a state checkpoint
    T = config["BT"] + 6 if "BT" in config else 70
    if strategy in ("recurrent", "fused", "alternating"):
        T = max(20, config.get("checkpoint_every", 0) + 4)
    arrays, h0 = example_inputs(mixer, B=1, T=T, H=1, K=K, V=K, seed=5)
    assert_close(check(mixer, fn, arrays, dtype=torch.float32, strategy=strategy, initial_state=h0))


@pytest.mark.parametrize("fp, strategy, config, K", _shipped())
def test_shipped_database_configs_are_correct(fp, strategy, config, K):
    assert fp in BY_FINGERPRINT, "the database names a mixer the library no longer has"
    if strategy.startswith("lti_"):     # an LTI entry tunes the kernels of the conv strategy
        strategy = "conv"
    _run(BY_FINGERPRINT[fp], strategy, config, min(K, 32))   # K = V ≤ 32: 16-wide tiles several times


@pytest.mark.parametrize("gpu", ["h100", pytest.param("a100", marks=pytest.mark.slow),
                                 pytest.param("4090", marks=pytest.mark.slow)])
@pytest.mark.parametrize("strategy", ["chunked", "recurrent"])
def test_cost_model_choice_is_correct(gpu, strategy):
    pytest.importorskip("ortools")
    name = hardware.get(gpu).name
    cfg = select.model_best(gla_space.SPACES[strategy], Shape(8, 4096, 16, 64, 64, "bf16"), name)
    assert cfg is not None
    _run(MIXERS["gla"].mixer, strategy, cfg, 64)
