"""Shared test configuration: hypothesis profiles and the ``gpu`` marker.

Profiles (choose with ``HYPOTHESIS_PROFILE=ci|dev|nightly``; default ``dev``):

- ``ci``: derandomised (the same examples on every run), few examples, no deadline, no example
  database, ``print_blob`` so a failure prints ``@reproduce_failure``;
- ``dev``: random, ~10 examples, no deadline (interpreted kernels are slow and uneven);
- ``nightly``: 200 examples, no deadline.

Every strategy in ``mixir.testing.strategies`` also ``note()``s the deterministic call that
rebuilds its example (``mixir.testing.make_case(...)``), printed with a failure.
"""
import os

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; tests that need it import it themselves
    settings = None

if settings is not None:
    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", derandomize=True, max_examples=6, deadline=None,
                              print_blob=True, database=None, suppress_health_check=_slow_ok)
    settings.register_profile("dev", max_examples=10, deadline=None, print_blob=True,
                              suppress_health_check=_slow_ok)
    settings.register_profile("nightly", max_examples=200, deadline=None, print_blob=True,
                              suppress_health_check=_slow_ok)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


#: test modules whose tests run Triton kernels through the interpreter (marked ``interp``; select
#: with ``-m interp``, leave out with ``-m "not interp"`` for the pure-Python tests: the DSL, the
#: reference, the tuning engine, the structure). In the other modules the single tests that run
#: kernels (recording launches for an AOT build, a CLI verify) carry ``@pytest.mark.interp``.
INTERP_MODULES = {
    "test_attention", "test_attention_compile", "test_codegen", "test_delta_recurrent_core",
    "test_family_contract", "test_gated_linear", "test_gla_core", "test_householder", "test_launch",
    "test_library_reference", "test_library_wrappers", "test_lti", "test_lti_compile",
    "test_lti_kernels", "test_lti_recurrent_bwd", "test_lti_wrappers", "test_rnn",
    "test_rnn_compile", "test_rnn_cuda_emulated", "test_rnn_mlstm", "test_runtime",
    "test_tuned_configs",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in INTERP_MODULES:
            item.add_marker(pytest.mark.interp)
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def fresh_triton_cache(tmp_path_factory):
    """Compile into a fresh Triton cache (TRITON_CACHE_DIR) for one module: the real compile path
    runs, and ~/.triton is untouched."""
    path = str(tmp_path_factory.mktemp("triton-cache"))
    old = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("TRITON_CACHE_DIR", None)
    else:
        os.environ["TRITON_CACHE_DIR"] = old


@pytest.fixture
def launched_kernels(monkeypatch):
    """The short names of the mixir kernels launched while the test runs, in order (the launches
    run as usual)."""
    from mixir.lowering.common import launch
    names = []
    orig = launch.Kernel.__getitem__

    def counting(self, grid):
        names.append(self.name.rsplit(".", 1)[-1])
        return orig(self, grid)

    monkeypatch.setattr(launch.Kernel, "__getitem__", counting)
    return names
