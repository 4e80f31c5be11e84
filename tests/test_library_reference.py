"""The built-in mixers compute the paper's / fla's function: the reference of each declaration is
checked against an independent NumPy formula written here (loops, or the quadratic "attention"
form), initial and final states included. The wrappers' layout adaptation is checked with
``mixir.compile`` replaced by a reference-backed stand-in (the compiled kernels themselves are
checked against the reference by the lowering's own tests)."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS, LibraryEntry
from mixir.lowering.gated_linear.analysis import analyse
from mixir.lowering import family as lowering_family

B, T, H, K, V = 2, 7, 3, 4, 5
TOL = dict(rtol=1e-11, atol=1e-11)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _inputs(name, seed=0, **kw):
    entry = MIXERS[name]
    rng = np.random.default_rng(seed)
    dims = dict(B=B, T=T, H=H, K=K, V=V) | kw
    arrays = entry.make_inputs(rng, **dims)
    h0 = entry.make_initial_state(rng, dims["B"], dims["H"], dims["K"], dims["V"])
    return arrays, h0


def _run(name, arrays, h0, **kw):
    return mx.reference(MIXERS[name].mixer)(*arrays, initial_state=h0, output_final_state=True, **kw)


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

def _gla_loop(q, k, v, log_decay_k, scale, h0):
    """S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ, o_t = scale·q_tᵀ S_t; gk [B, T, H, K]."""
    S = h0.copy()
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        S = np.exp(log_decay_k[:, t])[..., None] * S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


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


def _hgrn_loop(x, g, h0):
    """fla naive_recurrent_hgrn on [B, T, D]: h_t = exp(g_t) h_{t-1} + x_t, o_t = h_t."""
    h, o = h0.copy(), np.zeros(x.shape)
    for t in range(x.shape[1]):
        h = np.exp(g[:, t]) * h + x[:, t]
        o[:, t] = h
    return o, h


def test_hgrn():
    (x, g), h0 = _inputs("hgrn")  # declared per head: x, g [B, T, H, D], state [B, H, D]
    o, h = _run("hgrn", (x, g), h0)
    o_ref, h_ref = _hgrn_loop(x.reshape(B, T, -1), g.reshape(B, T, -1), h0.reshape(B, -1))
    np.testing.assert_allclose(o, o_ref.reshape(o.shape), **TOL)
    np.testing.assert_allclose(h, h_ref.reshape(h.shape), **TOL)


# ---- LightNet (two states) ---------------------------------------------------------------------

def _lightnet_fla(q, k, v, scale, h0=None, z0=None):
    """fla's chunk_lightnet (naive_lightnet_gate + GLA) per sequence: z_t = logaddexp(z_0,
    logcumsumexp(k)_t), key exp(k_t - z_t), log-decay z_{t-1} - z_t (0 when z_{t-1} = -inf)."""
    Bn, Tn, Hn, Kn = k.shape
    z = np.logaddexp.accumulate(k, axis=1)
    if z0 is not None:
        z = np.logaddexp(z0, z)                                   # z0 [B, 1, H, K]
        prev = np.concatenate([z0, z[:, :-1]], axis=1)
    else:
        prev = np.concatenate([z[:, :1], z[:, :-1]], axis=1)
    with np.errstate(invalid="ignore"):
        g = np.nan_to_num(prev - z, nan=0.0, posinf=0.0, neginf=0.0)
    key = np.exp(k - z)
    o, S = _gla_loop(q, key, v, g, scale, np.zeros((Bn, Hn, Kn, v.shape[-1])) if h0 is None else h0)
    return o, S, z[:, -1:]


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

def selective_scan_np(u, delta, A, Bm, Cm, D=None, z=None, delta_bias=None, delta_softplus=False,
                      h0=None):
    """mamba_ssm's selective_scan_ref, literally, in its layout: u, delta, z [B, D, L]; A [D, N];
    B, C [B, N, L] or [B, G, N, L]; D, delta_bias [D]. Plus an initial state h0 [B, D, N]."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = _softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    deltaA = np.exp(np.einsum("bdl,dn->bdln", delta, A))
    if Bm.ndim == 3:
        deltaB_u = np.einsum("bdl,bnl,bdl->bdln", delta, Bm, u)
    else:
        Bm = np.repeat(Bm, dim // Bm.shape[1], axis=1)            # "B G N L -> B (G H) N L"
        deltaB_u = np.einsum("bdl,bdnl,bdl->bdln", delta, Bm, u)
    if Cm.ndim == 4:
        Cm = np.repeat(Cm, dim // Cm.shape[1], axis=1)
    x = np.zeros((batch, dim, dstate)) if h0 is None else h0.copy()
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        y = np.einsum("bdn,bn->bd", x, Cm[:, :, i]) if Cm.ndim == 3 else \
            np.einsum("bdn,bdn->bd", x, Cm[:, :, :, i])
        ys.append(y)
    y = np.stack(ys, axis=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * _silu(z)
    return out, x


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

def ssd_quadratic(x, dt, A, Bm, Cm, D, h0):
    """The SSD dual ("attention") form: y_t = Σ_{s≤t} exp(Σ_{s<r≤t} dt_r A) (C_t·B_s) dt_s x_s
    + exp(Σ_{r≤t} dt_r A) C_t h0 + D x_t; h_T likewise."""
    a = np.cumsum(dt * A, axis=1)                                 # [B, T, H]
    seg = a[:, :, None] - a[:, None, :]                           # [B, t, s, H]
    Tn = x.shape[1]
    causal = np.tril(np.ones((Tn, Tn), dtype=bool))[None, :, :, None]
    L = np.where(causal, np.exp(np.where(causal, seg, 0.0)), 0.0)
    scores = np.einsum("bthn,bshn->btsh", Cm, Bm) * L * dt[:, None]
    y = np.einsum("btsh,bshp->bthp", scores, x)
    y += np.exp(a)[..., None] * np.einsum("bthn,bhnp->bthp", Cm, h0) + D[:, None] * x
    decay_to_end = np.exp(a[:, -1:] - a)                          # [B, T, H]
    hT = np.einsum("bsh,bshn,bshp->bhnp", decay_to_end * dt, Bm, x) + np.exp(a[:, -1])[..., None, None] * h0
    return y, hT


def test_mamba2_ssd():
    (x, dt, A, Bm, Cm, D), h0 = _inputs("mamba2", seed=12)
    y, h = _run("mamba2", (x, dt, A, Bm, Cm, D), h0)
    y_ref, h_ref = ssd_quadratic(x, dt, A, Bm, Cm, D, h0)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(h, h_ref, **TOL)


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
