"""Which cases of a family's (mixer, strategy, dtype) grid run in the fast lane.

Every library mixer already runs in the fast lane under every strategy in float32 (packed
sequences, initial states, gradients: ``test_family_contract.py::test_matches_the_reference``).
A family's own grid adds, in the fast lane, each mixer once in a 16-bit dtype — the strategy and
the 16-bit dtype rotate over the mixers, so that every (strategy, 16-bit dtype) pair is run given
four mixers or more — and, with ``fp32=True`` (declarations the contract test does not know),
each mixer once in float32 under the other strategy. The rest of the grid is marked ``slow`` and
runs in the slow lane (``pytest -m slow``): nothing is dropped.
"""
import pytest
import torch


def dtype_grid(names, strategies, dtypes, dtype_id, *, fp32=False):
    """``pytest.param(name, strategy, dtype)`` for the whole grid, ids ``name-strategy-dtype_id``;
    the cases outside the fast lane's share carry ``pytest.mark.slow``."""
    halves = [d for d in dtypes if d != torch.float32]
    n = len(strategies)
    out = []
    for i, name in enumerate(names):
        fast = set()
        if halves:
            fast.add((strategies[i % n], halves[(i // n) % len(halves)]))
        if fp32 or not halves:
            fast.add((strategies[(i + 1) % n], torch.float32))
        for strategy in strategies:
            for dtype in dtypes:
                out.append(pytest.param(name, strategy, dtype, id=f"{name}-{strategy}-{dtype_id(dtype)}",
                                        marks=() if (strategy, dtype) in fast else pytest.mark.slow))
    return out


def examples(fast: int) -> int:
    """``max_examples`` of an expensive hypothesis test: ``fast`` (the fast lane's budget: each
    example runs interpreted kernels) under the ci/dev profiles, the profile's own count under
    ``nightly`` (a per-test override would otherwise cap the nightly run too)."""
    import os
    from hypothesis import settings
    if os.environ.get("HYPOTHESIS_PROFILE") == "nightly":
        return settings.get_profile("nightly").max_examples
    return fast
