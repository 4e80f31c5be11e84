"""The reference executes the declared recurrence literally: check it against hand-written loops."""
import numpy as np
import pytest

import mixir as mx
from mixir import In, State


@mx.mixer
def gla(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], S: State["K", "V"]):
    S = mx.exp(gk) * S + mx.outer(k, v)
    return q @ S, S


def test_reference_matches_hand_loop():
    rng = np.random.default_rng(0)
    B, T, H, K, V = 2, 5, 3, 4, 6
    q, k, gk = (rng.standard_normal((B, T, H, K)) for _ in range(3))
    v = rng.standard_normal((B, T, H, V))
    gk = -np.abs(gk)
    h0 = rng.standard_normal((B, H, K, V))
    o, S = mx.reference(gla)(q, k, v, gk, initial_state=h0, output_final_state=True)
    Sn, on = h0.copy(), np.zeros((B, T, H, V))
    for t in range(T):
        Sn = np.exp(gk[:, t])[..., None] * Sn + k[:, t][..., None] * v[:, t][..., None, :]
        on[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], Sn)
    np.testing.assert_allclose(o, on, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S, Sn, rtol=1e-12, atol=1e-12)


def test_reference_cu_seqlens_equals_per_sequence_loop():
    rng = np.random.default_rng(1)
    T, H, K, V = 9, 2, 3, 2
    q, k, gk = (rng.standard_normal((1, T, H, K)) for _ in range(3))
    v = rng.standard_normal((1, T, H, V))
    cu = np.array([0, 4, 4, 9])
    ref = mx.reference(gla)
    o, S = ref(q, k, v, gk, cu_seqlens=cu, output_final_state=True)
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        on, Sn = ref(q[:, a:b], k[:, a:b], v[:, a:b], gk[:, a:b], output_final_state=True)
        np.testing.assert_allclose(o[:, a:b], on)
        np.testing.assert_allclose(S[n], Sn[0])
    assert np.all(S[1] == 0)  # the empty sequence keeps its (zero) initial state


def test_reference_rejects_bad_cu_seqlens():
    q = np.zeros((1, 4, 1, 2))
    v = np.zeros((1, 4, 1, 3))
    with pytest.raises(mx.InputError, match="cu_seqlens must end at T"):
        mx.reference(gla)(q, q, v, q, cu_seqlens=np.array([0, 3]))
    with pytest.raises(mx.InputError, match="non-decreasing"):
        mx.reference(gla)(q, q, v, q, cu_seqlens=np.array([0, 3, 2, 4]))
