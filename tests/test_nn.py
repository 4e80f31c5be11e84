"""mixir.nn layers: shapes, gradients, agreement with the float64 reference of their declarations,
state carrying, and MixerLayer on a user-declared mixer. Tiny sizes (interpreted kernels)."""
import numpy as np
import pytest
import torch

import mixir
import mixir.nn as mnn
from mixir import In, Param, State
from mixir.errors import InputError
from mixir.library import gated_delta_rule, gla
from mixir.testing.tolerances import bounds_for, rel_rms_error

D = 16
B32 = bounds_for(torch.float32)

LAYERS = {
    "gla": lambda: mnn.GatedLinearAttention(D, num_heads=2, expand_k=1.0, use_short_conv=True),
    "gdn": lambda: mnn.GatedDeltaNet(D, num_heads=2, head_dim=8, expand_v=1.0),
    "mamba2": lambda: mnn.Mamba2(D, d_state=8, headdim=8),
    "s4d": lambda: mnn.S4D(D, d_state=4, seed=0),
    "slstm": lambda: mnn.SLSTM(D, num_heads=2),
    "lstm": lambda: mnn.LSTM(D, num_heads=2),
    "swa": lambda: mnn.SlidingWindowAttention(D, num_heads=2, window=3),
    "doc": lambda: mnn.DocumentAttention(D, num_heads=2),
    # a FlexAttention-style mask function (causal, every second key) and grouped-query heads
    "sparse": lambda: mnn.SparseAttention(D, num_heads=2, num_kv_heads=1, qk_norm=True,
                                          mask=lambda b, h, q, kv: (kv <= q) & ((q - kv) % 2 == 0)),
}


def _call(name, layer, x, **kw):
    if name == "doc":
        return layer(x, doc_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]] * x.shape[0]))
    return layer(x, **kw)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_shape_dtype_and_grads(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = torch.randn(1, 8, D, requires_grad=True)
    o = _call(name, layer, x)
    assert o.shape == (1, 8, D) and o.dtype == torch.float32
    assert torch.isfinite(o).all()
    (o * torch.randn_like(o)).sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no finite gradient for {missing}"
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _f64(ts):
    return [t.detach().double().numpy() for t in ts]


def test_gla_layer_matches_reference():
    """The layer's output equals its own read-out applied to the float64 reference of the GLA
    declaration run on the layer's projected inputs."""
    torch.manual_seed(1)
    layer = mnn.GatedLinearAttention(D, num_heads=2, expand_k=1.0)
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        arrays, _ = layer.mixer_inputs(x)
        o = gla(*arrays)
        o_ref = torch.from_numpy(np.asarray(mixir.reference(layer.mixer)(*_f64(arrays))))
        assert rel_rms_error(o, o_ref, B32.floor) <= B32.output
        out = layer(x)
        g = mnn.common.heads(layer.g_proj(x), layer.num_heads)
        out_ref = layer.o_proj(layer.o_norm(o_ref.float(), g).flatten(-2))
    assert rel_rms_error(out, out_ref, B32.floor) <= B32.output


def test_gla_layer_bf16():
    """A bf16 layer returns bf16; its mixer output is within the bf16 bounds of the float64
    reference on the (bf16) projected inputs."""
    torch.manual_seed(6)
    layer = mnn.GatedLinearAttention(D, num_heads=2, expand_k=1.0).to(torch.bfloat16)
    x = torch.randn(1, 8, D, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        arrays, _ = layer.mixer_inputs(x)
        o_ref = np.asarray(mixir.reference(layer.mixer)(*_f64(arrays)))
        o = gla(*arrays)
    b16 = bounds_for(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 8, D) and o.dtype == torch.bfloat16
    assert rel_rms_error(o, o_ref, b16.floor) <= b16.output


@pytest.mark.parametrize("neg", [False, True])
def test_gated_deltanet_layer_matches_reference(neg):
    torch.manual_seed(2)
    layer = mnn.GatedDeltaNet(D, num_heads=2, head_dim=8, expand_v=1.0, allow_neg_eigval=neg)
    x = torch.randn(1, 12, D)
    with torch.no_grad():
        (q, k, v, beta, g), _ = layer.mixer_inputs(x)
        if neg:   # β = 2σ(·): the transition's eigenvalue 1 − β reaches below 0
            assert float(beta.max()) > 1.0
        o = gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
        o_ref = torch.from_numpy(np.asarray(mixir.reference(layer.mixer)(*_f64((q, k, v, beta, g)))))
        assert rel_rms_error(o, o_ref, B32.floor) <= B32.output
        out = layer(x)
        gate = mnn.common.heads(layer.g_proj(x), layer.num_heads)
        out_ref = layer.o_proj(layer.o_norm(o_ref.float(), gate).flatten(-2))
    assert rel_rms_error(out, out_ref, B32.floor) <= B32.output


def test_sparse_attention_layer_matches_dense_reference():
    """The attention layer's kernel output against float64 softmax attention under the same mask
    (grouped-query heads repeated), on the layer's own rotated q, k."""
    torch.manual_seed(5)
    layer = LAYERS["sparse"]()
    x = torch.randn(2, 8, D)
    with torch.no_grad():
        q, k, v = layer.qkv(x)
        o = layer.attend(q, k, v)
        qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)))
        i = torch.arange(8)
        allowed = (i[None] <= i[:, None]) & ((i[:, None] - i[None]) % 2 == 0)
        s = (qd @ kd.transpose(-1, -2)) * layer.head_dim ** -0.5
        o_ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vd
        assert rel_rms_error(o, o_ref.transpose(1, 2), B32.floor) <= B32.output
        out = layer(x)
    assert rel_rms_error(out, layer.o_proj(o_ref.transpose(1, 2).float().flatten(-2)), B32.floor) <= B32.output


@pytest.mark.slow
def test_mamba2_layer_matches_reference():
    torch.manual_seed(7)
    layer = LAYERS["mamba2"]()
    x = torch.randn(1, 12, D)
    with torch.no_grad():
        arrays, _, _ = layer.mixer_inputs(x)
        o = mixir.library.mamba2(*arrays)
        o_ref = np.asarray(mixir.reference(layer.mixer)(*_f64(arrays)))
    assert rel_rms_error(o, o_ref, B32.floor) <= B32.output


def _check_state_carry(layer, x):
    """Running x in two pieces with the returned state equals running it whole."""
    with torch.no_grad():
        full, st_full = layer(x, output_final_state=True)
        a, st = layer(x[:, :5], output_final_state=True)
        b, st2 = layer(x[:, 5:], initial_state=st, output_final_state=True)
    assert rel_rms_error(torch.cat([a, b], 1), full, B32.floor) <= B32.output
    ra, rb = st_full["recurrent"], st2["recurrent"]
    ra, rb = (ra, rb) if isinstance(ra, tuple) else ((ra,), (rb,))
    for u, w in zip(ra, rb):
        u, w = (torch.view_as_real(u), torch.view_as_real(w)) if u.is_complex() else (u, w)
        assert rel_rms_error(w, u, B32.floor) <= B32.state


def test_gla_layer_state_carry():
    torch.manual_seed(3)
    _check_state_carry(LAYERS["gla"](), torch.randn(1, 9, D))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gdn", "mamba2", "s4d", "slstm", "lstm"])
def test_layer_state_carry(name):
    torch.manual_seed(3)
    _check_state_carry(LAYERS[name](), torch.randn(1, 9, D))


# ---- MixerLayer on a user-declared mixer ---------------------------------------------------------

@mixir.mixer
def weighted_gla(q: In["K"], k: In["K"], v: In["V"], a: In[()], w: Param["K"],  # noqa: F821 - dim names
                 S: State["K", "V"]):  # noqa: F821
    """A user mixer: a scalar forget gate per token and a per-head key weighting."""
    S = mixir.exp(a) * S + mixir.outer(k * w, v)
    return q @ S, S


def test_mixer_layer_from_declaration():
    torch.manual_seed(4)
    seen = []

    def init(name, p):
        seen.append((name, tuple(p.shape)))
        torch.nn.init.uniform_(p, 0.5, 1.5)

    layer = mnn.MixerLayer(weighted_gla, D, num_heads=2, dims={"K": 8, "V": 4},
                           activations={"a": "logsigmoid"}, init=init, output_gate=True)
    assert seen == [("w", (2, 8))]
    assert {n: tuple(layer.projection(n).weight.shape) for n in "qkva"} == {
        "q": (16, D), "k": (16, D), "v": (8, D), "a": (2, D)}
    assert len(layer.proj) == 4 and len(layer.params) == 1
    assert tuple(layer.o_proj.weight.shape) == (D, 8)
    x = torch.randn(2, 8, D, requires_grad=True)
    o, S = layer(x, output_final_state=True)
    assert o.shape == (2, 8, D) and S.shape == (2, 2, 8, 4)
    o.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert float(layer.parameter("w").grad.abs().sum()) > 0
    with torch.no_grad():                       # the mixer's output against the reference
        arrays = layer.mixer_inputs(x)
        assert float(arrays[3].max()) <= 0.0    # the activation made a log-decay
        ref = mixir.reference(weighted_gla)
        o_ref, S_ref = ref(*_f64(arrays), output_final_state=True)
        o_mx, _ = mixir.compile(weighted_gla)(*arrays, output_final_state=True)
        assert rel_rms_error(o_mx, o_ref, B32.floor) <= B32.output
        assert rel_rms_error(S, S_ref, B32.floor) <= B32.state
        # the state passes through: two halves equal the whole
        a, S1 = layer(x[:, :3], output_final_state=True)
        b = layer(x[:, 3:], initial_state=S1)
        assert rel_rms_error(torch.cat([a, b], 1), o, B32.floor) <= B32.output


def test_mixer_layer_errors():
    with pytest.raises(InputError, match="dims"):
        mnn.MixerLayer(weighted_gla, D, dims={"K": 8})
    with pytest.raises(InputError, match="activations"):
        mnn.MixerLayer(weighted_gla, D, dims={"K": 8, "V": 4}, activations={"nope": "sigmoid"})
    with pytest.raises(InputError, match="init"):
        mnn.MixerLayer(weighted_gla, D, dims={"K": 8, "V": 4}, init={"q": torch.nn.init.zeros_})
    with pytest.raises(InputError, match="@mixir.mixer"):
        mnn.MixerLayer(lambda q: q, D)
    layer = mnn.MixerLayer(weighted_gla, D, dims={"K": 8, "V": 4})
    with pytest.raises(InputError, match=r"x must be \[B, T, d_model\]"):
        layer(torch.randn(2, 8, D + 1))
    with pytest.raises(InputError, match="num_heads"):
        mnn.GatedLinearAttention(D, num_heads=3)


def test_mixer_layer_names_that_shadow_container_methods():
    """In/Param names such as ``keys``/``values``/``type`` (methods of ModuleDict/ParameterDict)
    still get their projection and parameter."""
    @mixir.mixer
    def lin(keys: In["K"], values: In["V"], type: Param["K"], S: State["K", "V"]):  # noqa: F821
        S = S + mixir.outer(keys * type, values)
        return keys @ S, S

    layer = mnn.MixerLayer(lin, D, num_heads=2, dims={"K": 4, "V": 4})
    assert tuple(layer.projection("values").weight.shape) == (8, D)
    assert tuple(layer.parameter("type").shape) == (2, 4)
