"""The library wrappers adapt layouts and states around the declarations: first with
``mixir.compile`` replaced by a reference-backed stand-in (their views and calls, against the
independent NumPy formulas of tests/library_formulas.py), then with the real ``mixir.compile``
(CPU: Triton's interpreter) in float32."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS
from mixir.lowering import family as lowering_family

from library_formulas import (B, H, K, T, TOL, hgrn_loop as _hgrn_loop, library_inputs as _inputs,
                              lightnet_fla as _lightnet_fla, run_reference as _run, selective_scan_np,
                              ssd_quadratic)


# ---- the wrappers, with mixir.compile replaced by the reference --------------------------------

class _ReferenceCompile:
    """Stands in for ``mixir.compile``: runs the reference on the tensors it is given and records
    each call's positional tensors (to check the wrappers' views)."""

    def __init__(self):
        self.calls = []

    def __call__(self, mixer, **options):
        ref = mx.reference(mixer)

        def to_np(t):
            return None if t is None else t.detach().cpu().numpy()

        def to_torch(a):
            return torch.as_tensor(np.ascontiguousarray(a))

        def compiled(*arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                     strategy=None, **scalars):
            self.calls.append((mixer.name, arrays))
            init = initial_state
            if isinstance(init, (tuple, list)):
                init = tuple(to_np(s) for s in init)
            elif init is not None:
                init = to_np(init)
            res = ref(*[to_np(a) for a in arrays], initial_state=init,
                      output_final_state=output_final_state, cu_seqlens=to_np(cu_seqlens), **scalars)
            if not output_final_state:
                return to_torch(res)
            o, st = res
            st = tuple(map(to_torch, st)) if isinstance(st, tuple) else to_torch(st)
            return to_torch(o), st
        return compiled


@pytest.fixture
def fake_compile(monkeypatch):
    fake = _ReferenceCompile()
    monkeypatch.setattr(lowering_family, "compile_mixer", fake)
    return fake


def _t(*arrays):
    return tuple(torch.as_tensor(a) for a in arrays)


@pytest.mark.parametrize("name", ["linear_attention", "retention", "simple_gla", "gla"])
def test_attention_wrappers_pass_through(fake_compile, name):
    arrays, h0 = _inputs(name, seed=21)
    wrapper = MIXERS[name].wrapper
    o, S = wrapper(*_t(*arrays), initial_state=torch.as_tensor(h0), output_final_state=True, scale=0.4)
    o_ref, S_ref = _run(name, arrays, h0, scale=0.4)
    np.testing.assert_allclose(o.numpy(), o_ref, **TOL)
    np.testing.assert_allclose(S.numpy(), S_ref, **TOL)
    o_only = wrapper(*_t(*arrays))
    np.testing.assert_allclose(o_only.numpy(), mx.reference(MIXERS[name].mixer)(*arrays), **TOL)


def test_linear_attention_normalize_is_refused(fake_compile):
    q, k, v = _t(*_inputs("linear_attention")[0])
    with pytest.raises(mx.UnsupportedMixerError, match="normalize"):
        mx.library.linear_attention(q, k, v, normalize=True)


def test_hgrn_wrapper_layout(fake_compile):
    rng = np.random.default_rng(22)
    Dm, Tn = 6, 9
    x = rng.standard_normal((1, Tn, Dm))
    g = -np.logaddexp(0, -rng.standard_normal((1, Tn, Dm)))
    cu = np.array([0, 4, 4, 9])
    h0 = rng.standard_normal((3, Dm))
    o, hT = mx.library.hgrn(*_t(x, g), initial_state=torch.as_tensor(h0), output_final_state=True,
                            cu_seqlens=torch.as_tensor(cu))
    assert o.shape == (1, Tn, Dm) and hT.shape == (3, Dm)
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        o_ref, h_ref = _hgrn_loop(x[:, a:b], g[:, a:b], h0[n:n + 1])
        np.testing.assert_allclose(o[:, a:b].numpy(), o_ref, **TOL)
        np.testing.assert_allclose(hT[n:n + 1].numpy(), h_ref, **TOL)
    assert mx.library.hgrn(*_t(x, g)).shape == (1, Tn, Dm)
    with pytest.raises(mx.InputError, match=r"\[B, T, D\]"):
        mx.library.hgrn(*_t(x[..., None], g[..., None]))


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("groups", [None, 1, 2])
def test_mamba_wrapper_layout(fake_compile, gated, softplus, groups):
    rng = np.random.default_rng(23)
    Bn, Tn, Dm, N = 2, 6, 4, 3
    u = rng.standard_normal((Bn, Tn, Dm))
    delta = rng.standard_normal((Bn, Tn, Dm)) if softplus else rng.uniform(0.05, 0.5, (Bn, Tn, Dm))
    A = -np.exp(rng.standard_normal((Dm, N)))
    shape = (Bn, Tn, N) if groups is None else (Bn, Tn, groups, N)
    Bm, Cm = rng.standard_normal(shape), rng.standard_normal(shape)
    D = rng.standard_normal(Dm)
    z = rng.standard_normal((Bn, Tn, Dm)) if gated else None
    bias = rng.uniform(0.0, 0.3, Dm)
    h0 = rng.standard_normal((Bn, Dm, N))
    tt = lambda a: None if a is None else torch.as_tensor(a)     # noqa: E731
    for with_d, with_bias in ((True, True), (False, False)):
        out, hT = mx.library.mamba(
            tt(u), tt(delta), tt(A), tt(Bm), tt(Cm), tt(D) if with_d else None, tt(z),
            tt(bias) if with_bias else None, softplus, initial_state=tt(h0), output_final_state=True)
        tl = lambda a: None if a is None else np.moveaxis(a, 1, -1)  # noqa: E731
        ref, h_ref = selective_scan_np(tl(u), tl(delta), A, tl(Bm), tl(Cm), D if with_d else None,
                                       tl(z), bias if with_bias else None, softplus, h0=h0)
        assert out.shape == (Bn, Tn, Dm) and hT.shape == (Bn, Dm, N)
        np.testing.assert_allclose(out.numpy(), np.moveaxis(ref, -1, 1), **TOL)
        np.testing.assert_allclose(hT.numpy(), h_ref, **TOL)
        name, args = fake_compile.calls[-1]
        assert name == "mamba" + ("_z" if gated else "") + ("_softplus" if softplus else "")
        if groups in (None, 1):                                   # shared B/C: a stride-0 view
            assert args[3].shape == (Bn, Tn, Dm, N) and args[3].stride(2) == 0


def test_mamba_wrapper_rejects_bad_groups(fake_compile):
    u = torch.zeros(1, 3, 4)
    A = -torch.ones(4, 2)
    with pytest.raises(mx.InputError, match="groups"):
        mx.library.mamba(u, u, A, torch.zeros(1, 3, 3, 2), torch.zeros(1, 3, 3, 2))
    with pytest.raises(mx.InputError, match="complex"):
        mx.library.mamba(u, u, A.to(torch.complex64), torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_mamba2_wrapper_groups(fake_compile, groups):
    rng = np.random.default_rng(24)
    Bn, Tn, Hn, P, N = 2, 5, 4, 3, 2
    x = rng.standard_normal((Bn, Tn, Hn, P))
    dt = rng.uniform(0.05, 0.5, (Bn, Tn, Hn))
    A = -np.exp(rng.standard_normal(Hn))
    Bg, Cg = rng.standard_normal((Bn, Tn, groups, N)), rng.standard_normal((Bn, Tn, groups, N))
    h0 = rng.standard_normal((Bn, Hn, N, P))
    y, hT = mx.library.mamba2(*_t(x, dt, A, Bg, Cg), initial_state=torch.as_tensor(h0),
                              output_final_state=True)
    rep = lambda a: np.repeat(a, Hn // groups, axis=2)            # noqa: E731
    y_ref, h_ref = ssd_quadratic(x, dt, A, rep(Bg), rep(Cg), np.zeros(Hn), h0)
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL)
    np.testing.assert_allclose(hT.numpy(), h_ref, **TOL)
    if groups == 1:
        assert fake_compile.calls[-1][1][3].stride(2) == 0


@pytest.mark.parametrize("case", ["no_state", "both", "h0_only", "z0_only"])
def test_lightnet_wrapper_uses_fla_states(fake_compile, case):
    (q, k, v), (h0, Z0) = _inputs("lightnet", seed=25)
    z0 = np.log(Z0)[:, None]
    use_h0, use_z0 = case in ("both", "h0_only"), case in ("both", "z0_only")
    init = None if case == "no_state" else (torch.as_tensor(h0) if use_h0 else None,
                                            torch.as_tensor(z0) if use_z0 else None)
    o, (S, z) = mx.library.lightnet(*_t(q, k, v), initial_state=init, output_final_state=True)
    o_ref, S_ref, z_ref = _lightnet_fla(q, k, v, K ** -0.5, h0 if use_h0 else None,
                                        z0 if use_z0 else None)
    assert z.shape == (B, 1, H, K)
    np.testing.assert_allclose(o.numpy(), o_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(S.numpy(), S_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(z.numpy(), z_ref, rtol=1e-10, atol=1e-10)


def test_lightnet_empty_sequence_keeps_minus_inf_normaliser(fake_compile):
    (q, k, v), _ = _inputs("lightnet", seed=26, B=1)
    cu = torch.tensor([0, 3, 3, T])
    o, (S, z) = mx.library.lightnet(*_t(q, k, v), cu_seqlens=cu, output_final_state=True)
    assert torch.all(z[1] == -np.inf) and torch.all(S[1] == 0) and torch.isfinite(z[0]).all()


def test_wrappers_cache_one_compiled_object_per_mixer(monkeypatch):
    calls = []
    real = _ReferenceCompile()

    def counting(mixer, **options):
        calls.append(mixer.name)
        return real(mixer, **options)
    monkeypatch.setattr(lowering_family, "compile_mixer", counting)
    arrays, _ = _inputs("gla")
    for _ in range(3):
        mx.library.gla(*_t(*arrays))
    assert calls == ["gla"]


# ---- the wrappers with the real mixir.compile (CPU: Triton's interpreter), float32 ---------------

def _close32(got, want):
    got = got.detach().double().numpy()
    err = np.sqrt(np.mean((got - want) ** 2)) / max(np.sqrt(np.mean(want ** 2)), 1e-6)
    assert err < 2e-5, err


def _f32(*arrays):
    return tuple(None if a is None else torch.as_tensor(a, dtype=torch.float32) for a in arrays)


@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
@pytest.mark.parametrize("name", ["linear_attention", "retention", "simple_gla", "gla"])
def test_compiled_attention_wrappers(name, strategy):
    arrays, h0 = _inputs(name, seed=31, T=11)
    o, S = MIXERS[name].wrapper(*_f32(*arrays), initial_state=_f32(h0)[0], output_final_state=True,
                                strategy=strategy)
    o_ref, S_ref = _run(name, arrays, h0)
    _close32(o, o_ref)
    _close32(S, S_ref)


@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_compiled_hgrn_wrapper(strategy):
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 11, 6))
    g = -np.logaddexp(0, -rng.standard_normal((2, 11, 6)))
    h0 = rng.standard_normal((2, 6))
    o, hT = mx.library.hgrn(*_f32(x, g), initial_state=_f32(h0)[0], output_final_state=True,
                            strategy=strategy)
    o_ref, h_ref = _hgrn_loop(x, g, h0)
    _close32(o, o_ref)
    _close32(hT, h_ref)


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_compiled_mamba_wrapper(strategy, groups):
    rng = np.random.default_rng(33)
    Bn, Tn, Dm, N = 2, 10, 4, 3
    u, delta, z = (rng.standard_normal((Bn, Tn, Dm)) for _ in range(3))
    A = -np.exp(rng.standard_normal((Dm, N)))
    shape = (Bn, Tn, N) if groups is None else (Bn, Tn, groups, N)
    Bm, Cm = rng.standard_normal(shape), rng.standard_normal(shape)
    D, bias = rng.standard_normal(Dm), rng.standard_normal(Dm)
    out, hT = mx.library.mamba(*_f32(u, delta, A, Bm, Cm, D, z, bias), True, output_final_state=True,
                               strategy=strategy)
    tl = lambda a: np.moveaxis(a, 1, -1)                          # noqa: E731
    ref, h_ref = selective_scan_np(tl(u), tl(delta), A, tl(Bm), tl(Cm), D, tl(z), bias, True)
    _close32(out, np.moveaxis(ref, -1, 1))
    _close32(hT, h_ref)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_compiled_mamba2_wrapper(strategy, groups):
    rng = np.random.default_rng(34)
    Bn, Tn, Hn, P, N = 2, 10, 4, 3, 2
    x = rng.standard_normal((Bn, Tn, Hn, P))
    dt = rng.uniform(0.05, 0.5, (Bn, Tn, Hn))
    A, D = -np.exp(rng.standard_normal(Hn)), rng.standard_normal(Hn)
    Bg, Cg = rng.standard_normal((Bn, Tn, groups, N)), rng.standard_normal((Bn, Tn, groups, N))
    h0 = rng.standard_normal((Bn, Hn, N, P))
    y, hT = mx.library.mamba2(*_f32(x, dt, A, Bg, Cg, D), initial_state=_f32(h0)[0],
                              output_final_state=True, strategy=strategy)
    rep = lambda a: np.repeat(a, Hn // groups, axis=2)            # noqa: E731
    y_ref, h_ref = ssd_quadratic(x, dt, A, rep(Bg), rep(Cg), D, h0)
    _close32(y, y_ref)
    _close32(hT, h_ref)


@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_compiled_lightnet_wrapper_matches_reference(strategy):
    (q, k, v), _ = _inputs("lightnet")
    o, (S_T, z_T) = mx.library.lightnet(*_f32(q, k, v), output_final_state=True, strategy=strategy)
    o_ref, (S_ref, Z_ref) = mx.reference(MIXERS["lightnet"].mixer)(q, k, v, output_final_state=True)
    _close32(o, o_ref)
    _close32(S_T, S_ref)
    _close32(z_T[:, 0], np.log(Z_ref))
