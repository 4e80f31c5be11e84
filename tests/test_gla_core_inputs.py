"""Tests of the gated-linear core's extra inputs, the factors it forms inside its kernels instead
of torch ops over [T, V] (mixir.lowering.gated_linear.core, ``scaled``): the output bias (mamba's
D skip), scaled values v' = u v and the value bias c v, factored log-decays g = u a and gk = u a
(mamba2's / Mamba-1's dt A), and the per-token output scale (mLSTM's normaliser). Each is checked
against the core on the product formed in torch or against the float64 reference, with every
output and intermediate buffer NaN-poisoned (MIXIR_POISON). Kernels run in Triton's interpreter.
"""
import pytest
import torch

from mixir.lowering.gated_linear.core import gla_backward, gla_forward

from gla_cases import TOL, make_inputs, naive_gla, reference, rel_err

STRATEGIES = ("recurrent", "chunked")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("MIXIR_POISON", "1")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_output_bias_is_added_in_the_epilogue(strategy):
    """gla_forward(bias=b) = scale * core + b (mamba's D skip: no separate add over the output);
    through the custom op the bias's gradient is do."""
    from mixir.lowering.gated_linear import ops  # noqa: F401  (registers mixir::gla_fwd)
    inp, do, _ = make_inputs(1, 37, 2, 16, 16, ("g",), dtype=torch.float16, seed=24)
    bias = torch.randn(1, 37, 2, 16)
    o0, _ = gla_forward(**inp, strategy=strategy, scale=0.5)
    o1, _ = gla_forward(**inp, strategy=strategy, scale=0.5, bias=bias, out_dtype=torch.float16)
    torch.testing.assert_close(o1, (o0 + bias).half(), rtol=1e-3, atol=1e-3)
    b = bias.clone().requires_grad_()
    o, _ = torch.ops.mixir.gla_fwd(inp["q"], inp["k"], inp["v"], inp["g"], None, None, inp["h0"],
                                   None, strategy, "", 0.5, False, b)
    o.backward(do.half())
    assert b.grad.dtype == torch.float32
    torch.testing.assert_close(b.grad, do.half().float())


@pytest.mark.parametrize("strategy,decays", [
    pytest.param("chunked", ("g", "gk"), marks=pytest.mark.slow), ("recurrent", ("g",)),
    ("fused", ("g",))])
def test_scaled_values_and_value_bias(strategy, decays):
    """v_scale u (v' = u v, formed on load) and v_bias c (o += c_h v) through the custom op match
    the core on v' = u v with the bias c v formed in torch: the output, the final state and every
    gradient (u's and c's included). With gk the dq / dk output launches read v (as Y / X); the
    fused sweeps meet v as Z (o), Y (dq), X (dk) and as the output (dv)."""
    from mixir.lowering.gated_linear import ops  # noqa: F401  (registers mixir::gla_fwd)
    inp, do, dhT = make_inputs(1, 20, 1, 16, 16, decays, seed=25)
    from mixir.lowering.common.launch import encode_config
    cfg = encode_config({"BT": 16} if strategy == "chunked" else {})
    gen = torch.Generator().manual_seed(5)
    leaves = {n: t.clone().requires_grad_() for n, t in inp.items() if t is not None}
    leaves["u"] = torch.rand(1, 20, 1, generator=gen).requires_grad_()
    leaves["c"] = torch.randn(1, generator=gen).requires_grad_()

    def run(fused):
        x = {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}
        q, k, v, g, h0, u, c = (x[n] for n in ("q", "k", "v", "g", "h0", "u", "c"))
        gk = x.get("gk")
        if fused:
            o, hT = torch.ops.mixir.gla_fwd(q, k, v, g, gk, None, h0, None, strategy, cfg, 0.5,
                                            True, None, u, c)
        else:
            o, hT = torch.ops.mixir.gla_fwd(q, k, u[..., None] * v, g, gk, None, h0, None,
                                            strategy, cfg, 0.5, True, c[:, None] * v)
        ((o * do).sum() + (hT * dhT).sum()).backward()
        return o, hT, {n: t.grad for n, t in x.items()}

    o1, h1, g1 = run(True)
    o0, h0, g0 = run(False)
    assert rel_err(o1, o0) < TOL[torch.float32] and rel_err(h1, h0) < TOL[torch.float32]
    for n in g0:
        assert rel_err(g1[n], g0[n]) < TOL[torch.float32], n


@pytest.mark.parametrize("strategy", ["recurrent", "chunked", "fused"])
def test_scalar_decay_times_a_per_head_scale(strategy):
    """g_scale a [H]: the log-decay is g·a (mamba2's dt·A). The chunked strategy forms it in its
    cumsum launch and splits dg into the factor's and a's gradients in its reverse cumsum; the
    others form both in torch. Checked against the float64 reference at g·a with the chain rule."""
    inp, do, dhT = make_inputs(1, 45, 3, 16, 16, ("g",), seed=33)
    u = torch.rand(1, 45, 3, generator=torch.Generator().manual_seed(3)) + 0.1
    a = -torch.tensor([0.2, 0.5, 1.1])
    o_ref, hT_ref, ref = reference(dict(inp, g=u * a), do, dhT)
    cfg = {"BT": 16} if strategy == "chunked" else None
    o, hT = gla_forward(**dict(inp, g=u), strategy=strategy, config=cfg, g_scale=a)
    assert rel_err(o, o_ref) <= TOL[torch.float32] and rel_err(hT, hT_ref) <= TOL[torch.float32]
    grads = gla_backward(inp["q"], inp["k"], inp["v"], u, None, None, inp["h0"], None, do, dhT,
                         strategy=strategy, config=cfg, g_scale=a)
    assert len(grads) == 8
    dg_ref = ref[3].double()
    du_ref, da_ref = dg_ref * a.double(), (dg_ref * u.double()).sum((0, 1))
    for name, x, y in [("dq", grads[0], ref[0]), ("dk", grads[1], ref[1]), ("dv", grads[2], ref[2]),
                       ("du", grads[3], du_ref), ("dh0", grads[6], ref[6]), ("da", grads[7], da_ref)]:
        assert rel_err(x, y) <= TOL[torch.float32], name


@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
def test_key_decay_factored_per_token_times_a_per_head_row(strategy):
    """gk_scale a [H, K]: the key-side log-decay is gk·a with gk a per-token factor [B, T, H]
    (Mamba-1's dt·A). The chunked strategy forms it in its cumsum launch, the recurrent one per
    step; both reverse cumsums return the factor's and a's gradients instead of dgk. Checked
    against the float64 reference at gk = u·a with the chain rule, over two K-tiles (K = 80)."""
    inp, do, dhT = make_inputs(1, 45, 2, 80, 16, ("g", "gk"), seed=34)
    u = torch.rand(1, 45, 2, generator=torch.Generator().manual_seed(4)) + 0.1
    a = -torch.rand(2, 80, generator=torch.Generator().manual_seed(5)) * 0.5
    o_ref, hT_ref, ref = reference(dict(inp, gk=u[..., None] * a), do, dhT)
    cfg = {"BT": 16} if strategy == "chunked" else None
    o, hT = gla_forward(**dict(inp, gk=u), strategy=strategy, config=cfg, gk_scale=a)
    assert rel_err(o, o_ref) <= TOL[torch.float32] and rel_err(hT, hT_ref) <= TOL[torch.float32]
    grads = gla_backward(inp["q"], inp["k"], inp["v"], inp["g"], u, None, inp["h0"], None, do,
                         dhT, strategy=strategy, config=cfg, gk_scale=a)
    assert len(grads) == 8 and grads[4].shape == u.shape
    dgk_ref = ref[4].double()
    du_ref = (dgk_ref * a.double()).sum(-1)
    da_ref = (dgk_ref * u.double()[..., None]).sum((0, 1))
    for name, x, y in [("dq", grads[0], ref[0]), ("dk", grads[1], ref[1]), ("dv", grads[2], ref[2]),
                       ("dg", grads[3], ref[3]), ("du", grads[4], du_ref), ("dh0", grads[6], ref[6]),
                       ("da", grads[7], da_ref)]:
        assert rel_err(x, y) <= TOL[torch.float32], name


@pytest.mark.parametrize("strategy, decays, v_scaled", [
    ("chunked", ("g",), False), ("chunked", (), True), ("recurrent", ("g", "gk", "gv"), True),
    ("fused", ("g",), True)])
def test_per_token_output_scale(strategy, decays, v_scaled):
    """o_scale e [B, T, H] (o = e * core: mLSTM's normaliser). Chunked (scalar decays): the output
    store scales the rows, the backward scales do's rows on load (adjoint states, dv) and dq's /
    the score tile's in the dq/dk launch, whose epilogue sums q·dq0 per K-tile into de (two K-tiles:
    K = 80). Recurrent (any decays): the store scales o, the backward's forward pass forms q·dq0
    and scales dq, its reverse pass scales do on load. Fused (scalar decays): the o and dq sweeps
    scale their output rows (the dq sweep sums q·dq0 into de per K-tile first), the dk and dv
    sweeps carry e on the score columns and the rows entering the state. Two sequences with an
    initial and a final-state adjoint; with v_scale beside it. Checked against the float64
    reference of e * core."""
    T, K = (17, 24) if strategy == "recurrent" else (40, 80)   # the token loop is slow to interpret
    inp, do, dhT = make_inputs(2, T, 2, K, 16, decays, seed=41)
    gen = torch.Generator().manual_seed(6)
    e = torch.rand(2, T, 2, generator=gen) * 2 + 0.1
    u = torch.rand(2, T, 2, generator=gen) + 0.5 if v_scaled else None
    leaves = {n: x.detach().double().requires_grad_() for n, x in dict(inp, e=e, u=u).items()
              if x is not None}
    core_in = {n: leaves.get(n) for n in ("q", "k", "g", "gk", "gv", "h0")}
    v_ref = leaves["v"] * leaves["u"][..., None] if v_scaled else leaves["v"]
    o_core, hT_ref = naive_gla(**core_in, v=v_ref)
    o_ref = leaves["e"][..., None] * o_core * 0.5
    ((o_ref * do.double()).sum() + (hT_ref * dhT.double()).sum()).backward()
    cfg = {"BT": 16} if strategy == "chunked" else None
    o, hT = gla_forward(**inp, strategy=strategy, config=cfg, scale=0.5, v_scale=u, o_scale=e)
    assert rel_err(o, o_ref) <= TOL[torch.float32] and rel_err(hT, hT_ref) <= TOL[torch.float32]
    grads = gla_backward(inp["q"], inp["k"], inp["v"], inp["g"], inp["gk"], inp["gv"], inp["h0"],
                         None, do, dhT, strategy=strategy, config=cfg, scale=0.5, v_scale=u,
                         o_scale=e)
    assert len(grads) == (10 if v_scaled else 8)
    named = {"dq": (grads[0], "q"), "dk": (grads[1], "k"), "dv": (grads[2], "v"),
             "dh0": (grads[6], "h0"), "de": (grads[-1], "e")}
    for i, gate in ((3, "g"), (4, "gk"), (5, "gv")):
        if gate in decays:
            named["d" + gate] = (grads[i], gate)
    if v_scaled:
        named["du"] = (grads[7], "u")
    for name, (x, leaf) in named.items():
        assert x.shape == leaves[leaf].shape and rel_err(x, leaves[leaf].grad) <= TOL[torch.float32], name
