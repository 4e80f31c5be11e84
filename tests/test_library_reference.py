"""The built-in mixers compute the paper's / fla's function: the reference of each declaration is
checked against an independent NumPy formula (loops, or the quadratic "attention" form, in
tests/library_formulas.py), initial and final states included. The wrappers' layout adaptation:
tests/test_library_wrappers.py (the compiled kernels themselves are checked against the reference
by the lowering's own tests)."""
import numpy as np
import pytest

import mixir as mx
from mixir.library import MIXERS, LibraryEntry
from mixir.lowering.gated_linear.analysis import analyse

from library_formulas import (B, H, K, T, TOL, V, gla_loop as _gla_loop, hgrn_loop as _hgrn_loop,
                              library_inputs as _inputs, lightnet_fla as _lightnet_fla,
                              run_reference as _run, selective_scan_np, ssd_quadratic)


# ---- registry ----------------------------------------------------------------------------------

def test_registry_covers_the_library():
    assert {"linear_attention", "retention", "simple_gla", "gla", "hgrn", "lightnet", "mamba",
            "mamba_softplus", "mamba_z", "mamba_z_softplus", "mamba2"} <= set(MIXERS)
    for name, entry in MIXERS.items():
        assert isinstance(entry, LibraryEntry)
        assert entry.name == name == entry.mixer.name
        assert callable(entry.wrapper) and entry.paper and entry.description


@pytest.mark.parametrize("name", sorted(n for n, e in MIXERS.items()
                                         if e.family == "gated_linear" and not e.requires))
def test_library_mixer_is_gated_linear(name):
    form = analyse(MIXERS[name].mixer)
    assert form.family == MIXERS[name].family == "gated_linear"
    if name != "lightnet":  # Z_{t-1}/Z_t is positive, but the analysis cannot prove it: sign tracked
        assert "sign tracked" not in form.transition  # the other decays are exp/sigmoid forms


def test_analysis_reads_the_expected_transitions():
    kinds = {n: analyse(MIXERS[n].mixer) for n in ("linear_attention", "retention", "simple_gla",
                                                   "gla", "hgrn", "mamba", "mamba2")}
    assert kinds["linear_attention"].transition == "identity"
    assert kinds["retention"].transition == "scalar"
    assert kinds["simple_gla"].transition == "scalar"
    assert kinds["gla"].transition == "diagonal along K"
    assert kinds["hgrn"].transition == "diagonal along D"
    assert kinds["mamba"].transition == "diagonal along N"
    assert kinds["mamba2"].transition == "scalar"


def test_lightnet_is_planned_with_an_auxiliary_normaliser_scan():
    entry = MIXERS["lightnet"]
    assert entry.requires == ()
    assert [s.name for s in entry.mixer.states] == ["S", "Z"]
    plan = analyse(entry.mixer)
    assert plan.main.state.name == "S"
    assert [f.state.name for _, f in plan.aux] == ["Z"]


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_make_inputs_respects_ranges(name):
    entry = MIXERS[name]
    rng = np.random.default_rng(3)
    arrays = entry.make_inputs(rng, B, T, H, K, V, dtype=np.float32)
    assert len(arrays) == len(entry.mixer.inputs)
    sizes = entry.sizes(K, V)
    for spec, a in zip(entry.mixer.inputs, arrays):
        lead = (B, T, H) if spec.kind == "input" else (H,)
        assert a.shape == lead + tuple(sizes[d] for d in spec.dims) and a.dtype == np.float32
        kind = entry.samplers.get(spec.name, "normal")
        if kind == "log_decay":
            assert np.all(a <= 0)
        if kind == "negative":
            assert np.all(a < 0)
        if kind in ("time_step", "positive"):
            assert np.all(a > 0)
    if name in ("mamba", "mamba_z"):  # dt = delta + delta_bias must be > 0
        names = [s.name for s in entry.mixer.inputs]
        dt = arrays[names.index("delta")] + arrays[names.index("delta_bias")]
        assert np.all(dt > 0)


# ---- the linear-attention family -----------------------------------------------------------------

def test_linear_attention():
    (q, k, v), h0 = _inputs("linear_attention")
    o, S = _run("linear_attention", (q, k, v), h0)
    o_ref, S_ref = _gla_loop(q, k, v, np.zeros_like(k), K ** -0.5, h0)
    np.testing.assert_allclose(o, o_ref, **TOL)
    np.testing.assert_allclose(S, S_ref, **TOL)
    o2 = mx.reference(MIXERS["linear_attention"].mixer)(q, k, v, scale=0.3)
    np.testing.assert_allclose(o2, _gla_loop(q, k, v, np.zeros_like(k), 0.3, np.zeros_like(h0))[0], **TOL)


def test_retention_fixed_head_decays():
    (q, k, v), h0 = _inputs("retention", H=4)
    o, S = _run("retention", (q, k, v), h0)
    gamma = 1.0 - 2.0 ** (-5.0 - np.arange(4))  # RetNet / fla chunk_retention
    gk = np.broadcast_to(np.log(gamma)[None, None, :, None], k.shape)
    o_ref, S_ref = _gla_loop(q, k, v, gk, K ** -0.5, h0)
    np.testing.assert_allclose(o, o_ref, **TOL)
    np.testing.assert_allclose(S, S_ref, **TOL)


def test_simple_gla():
    (q, k, v, g), h0 = _inputs("simple_gla")
    g[0, 2] = 0.0  # a gate of exactly 1
    o, S = _run("simple_gla", (q, k, v, g), h0, scale=0.7)
    o_ref, S_ref = _gla_loop(q, k, v, np.broadcast_to(g[..., None], k.shape), 0.7, h0)
    np.testing.assert_allclose(o, o_ref, **TOL)
    np.testing.assert_allclose(S, S_ref, **TOL)


def test_gla():
    (q, k, v, gk), h0 = _inputs("gla")
    o, S = _run("gla", (q, k, v, gk), h0)
    o_ref, S_ref = _gla_loop(q, k, v, gk, K ** -0.5, h0)
    np.testing.assert_allclose(o, o_ref, **TOL)
    np.testing.assert_allclose(S, S_ref, **TOL)




def test_hgrn():
    (x, g), h0 = _inputs("hgrn")  # declared per head: x, g [B, T, H, D], state [B, H, D]
    o, h = _run("hgrn", (x, g), h0)
    o_ref, h_ref = _hgrn_loop(x.reshape(B, T, -1), g.reshape(B, T, -1), h0.reshape(B, -1))
    np.testing.assert_allclose(o, o_ref.reshape(o.shape), **TOL)
    np.testing.assert_allclose(h, h_ref.reshape(h.shape), **TOL)


# ---- LightNet (two states) ---------------------------------------------------------------------



@pytest.mark.parametrize("case", ["no_state", "both", "h0_only", "z0_only"])
def test_lightnet_matches_fla(case):
    (q, k, v), (h0, Z0) = _inputs("lightnet", seed=5)
    z0 = np.log(Z0)[:, None]                                      # fla's log-normaliser [N, 1, H, K]
    use_h0 = case in ("both", "h0_only")
    use_z0 = case in ("both", "z0_only")
    init = None if case == "no_state" else (h0 if use_h0 else None, Z0 if use_z0 else None)
    o, (S, Z) = _run("lightnet", (q, k, v), init)
    o_ref, S_ref, z_ref = _lightnet_fla(q, k, v, K ** -0.5, h0 if use_h0 else None,
                                        z0 if use_z0 else None)
    np.testing.assert_allclose(o, o_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(S, S_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.log(Z)[:, None], z_ref, rtol=1e-10, atol=1e-10)


def test_lightnet_state_is_normalised_attention():
    """Without initial state, S_t = Σ_{s≤t} softmax_s(k[:, :t+1]) v_sᵀ per key channel."""
    (q, k, v), _ = _inputs("lightnet", seed=6)
    o, (S, Z) = _run("lightnet", (q, k, v), None)
    w = np.exp(k - k.max(axis=1, keepdims=True))
    w = w / w.sum(axis=1, keepdims=True)                          # softmax over all T
    np.testing.assert_allclose(S, np.einsum("bthk,bthv->bhkv", w, v), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Z, np.exp(k).sum(axis=1), rtol=1e-12)


# ---- Mamba-1 -----------------------------------------------------------------------------------



@pytest.mark.parametrize("name", ["mamba", "mamba_softplus", "mamba_z", "mamba_z_softplus"])
def test_mamba_selective_scan(name):
    arrays, h0 = _inputs(name, seed=11)
    args = dict(zip([s.name for s in MIXERS[name].mixer.inputs], arrays))
    out, h = _run(name, arrays, h0)
    tl = lambda a: np.moveaxis(a, 1, -1)                          # [B, T, ...] -> [B, ..., T]  # noqa: E731
    ref, h_ref = selective_scan_np(
        tl(args["u"]), tl(args["delta"]), args["A"], tl(args["B"]), tl(args["C"]), D=args["D"],
        z=tl(args["z"]) if "z" in args else None, delta_bias=args["delta_bias"],
        delta_softplus="softplus" in name, h0=h0)
    np.testing.assert_allclose(out, np.moveaxis(ref, -1, 1), **TOL)
    np.testing.assert_allclose(h, h_ref, **TOL)


# ---- Mamba-2 -----------------------------------------------------------------------------------



def test_mamba2_ssd():
    (x, dt, A, Bm, Cm, D), h0 = _inputs("mamba2", seed=12)
    y, h = _run("mamba2", (x, dt, A, Bm, Cm, D), h0)
    y_ref, h_ref = ssd_quadratic(x, dt, A, Bm, Cm, D, h0)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(h, h_ref, **TOL)
