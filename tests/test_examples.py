"""The examples run as documented (slow lane: they train models through interpreted kernels)."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_toy_lm_loss_falls(tmp_path):
    """A shortened run of examples/toy_lm.py: the answer loss falls well below its start (and
    below chance, ln(num_values)) and the loss curve is written."""
    toy = _load("toy_lm")
    res = toy.main(["--steps", "150", "--log-every", "25", "--out", str(tmp_path)])
    assert all(math.isfinite(v) for v in res["losses"])
    assert res["final_loss"] < 0.7 * res["initial_loss"], res
    assert res["final_loss"] < math.log(8), res     # below guessing among the 8 values: recall
    assert (tmp_path / "toy_lm_loss.csv").exists()
    if res["png"] is not None:            # None only when matplotlib is missing (a message says so)
        assert (tmp_path / "toy_lm_loss.png").stat().st_size > 0
