"""One input-validation layer for every family (issue: hardening, section 5; docs/dsl.md, "Inputs").

The same rules and messages everywhere (``lowering.common.call.check_tensors`` /
``check_cu_seqlens`` / ``dsl.signature.check_offsets``): float64 only where the family computes in
it (LTI); q/k/v one dtype, any per-token input may be fp32; T = 0 and B = 0 give empty results (the
reference too); cu_seqlens integer, 1-D, from 0, non-decreasing, ending at T; errors name the
public argument; likely-transposed layouts are called out where the call can tell.
Shapes are tiny; tests that run kernels (interpreted on CPU) carry ``interp``.
"""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Param, State
from mixir.errors import InputError
from mixir.library import MIXERS, gla, lstm, s4d
from mixir.library import attention as L
from mixir.library.lti import s4d_lin_init
from mixir.lowering.common.launch import record_launches

GLA = MIXERS["gla"].mixer
F64 = "must be float32, float16 or bfloat16, got torch.float64"


def _gla(B=1, T=3, H=2, K=4, V=4, dtype=torch.float32, g_dtype=None):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, n, generator=g).to(dtype) for n in (K, K, V))
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)).to(g_dtype or dtype)
    return q, k, v, gk


def _lstm(B=1, T=3, H=2, D=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, 4, H, D, generator=g).to(dtype),
            (torch.randn(4, H, D, D, generator=g) * 0.3).to(dtype), torch.randn(4, H, D, generator=g).to(dtype))


def _s4d(B=1, T=3, H=2, N=4, dtype=torch.float32):
    p = s4d_lin_init(H, N)
    if dtype == torch.float64:
        p = {k: v.to(torch.complex128 if v.is_complex() else torch.float64) for k, v in p.items()}
    return torch.randn(B, T, H, generator=torch.Generator().manual_seed(2)).to(dtype), p


def _qkv(B=1, T=4, H=2, HKV=1, D=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(B, T, H, D, generator=g).to(dtype), torch.randn(B, T, HKV, D, generator=g).to(dtype),
            torch.randn(B, T, HKV, D, generator=g).to(dtype))


# ---- dtypes -------------------------------------------------------------------------------------
def test_float64_is_refused_with_one_message_except_by_lti():
    """One rule, one message: every family but LTI refuses float64 (its kernels do not compute in
    it); the message names the public argument."""
    calls = {
        "gla": (lambda: gla(*_gla(dtype=torch.float64)), "'q'"),
        "compiled gla": (lambda: mx.compile(GLA)(*_gla(dtype=torch.float64)), "'q'"),
        "lstm": (lambda: lstm(*_lstm(dtype=torch.float64)), "'x'"),
        "attention": (lambda: L.causal_attention(*_qkv(dtype=torch.float64)), "'q'"),
    }
    for what, (call, name) in calls.items():
        with record_launches() as launched, pytest.raises(InputError) as e:
            call()
        assert F64 in str(e.value) and f"argument {name}" in str(e.value), (what, str(e.value))
        assert "only the LTI family" in str(e.value) and not launched, what


@pytest.mark.interp
def test_lti_computes_float64_in_float64():
    u, p = _s4d(dtype=torch.float64)
    y, state = s4d(u, **p, output_final_state=True)
    assert y.dtype == torch.float64 and state.dtype == torch.complex128
    # a complex128 initial state keeps its precision (it is not rounded to float32)
    y2 = s4d(u, **p, initial_state=state)
    assert y2.dtype == torch.float64 and torch.isfinite(y2).all()


@pytest.mark.interp
def test_mixed_dtypes_follow_one_rule():
    """q/k/v one dtype, fp32 gates allowed (gla); attention takes what the mixers take: a 16-bit
    q with fp32 k, v is read in q's dtype (the all-bf16 call's result); fp32 q with 16-bit k is
    refused by both with the same message."""
    q, k, v, gk = _gla(dtype=torch.bfloat16, g_dtype=torch.float32)
    assert gla(q, k, v, gk).dtype == torch.bfloat16
    qa, ka, va = _qkv(dtype=torch.bfloat16)
    o = L.causal_attention(qa, ka.float(), va.float(), block_size=16)
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o, L.causal_attention(qa, ka, va, block_size=16))
    msg = "has dtype torch.bfloat16, but earlier per-token inputs have torch.float32; pass it as torch.float32$"
    with pytest.raises(InputError, match="argument 'k' " + msg):
        gla(q.float(), k, v.float(), gk)
    with pytest.raises(InputError, match="argument 'k' " + msg):
        L.causal_attention(qa.float(), ka, va.float())


# ---- empty calls --------------------------------------------------------------------------------
@pytest.mark.interp
def test_t0_is_accepted_everywhere():
    q, k, v, gk = _gla(T=0)
    assert gla(q, k, v, gk).shape == (1, 0, 2, 4)
    assert mx.reference(GLA)(*(t.numpy() for t in (q, k, v, gk))).shape == (1, 0, 2, 4)
    x, R, b = _lstm(T=0)
    assert lstm(x, R, b).shape == (1, 0, 2, 4)
    u, p = _s4d(T=0)
    assert s4d(u, **p).shape == (1, 0, 2)
    qa, ka, va = _qkv(T=0)
    o, lse = L.causal_attention(qa, ka, va, return_lse=True)
    assert o.shape == (1, 0, 2, 16) and lse.shape == (1, 2, 0)
    assert L.document_attention(qa, ka, va, cu_seqlens=torch.tensor([0, 0])).shape == (1, 0, 2, 16)
    # no key at all: o = 0, lse = -inf, still differentiable in q (zero gradient)
    qa = torch.randn(1, 3, 2, 16, requires_grad=True)
    o, lse = L.causal_attention(qa, ka, va, return_lse=True)
    assert (o == 0).all() and (lse == float("-inf")).all()
    o.sum().backward()
    assert (qa.grad == 0).all()


def test_shift_by_one_takes_empty_sequences():
    """``common.call.shift_by_one`` (a scanned state's value before each token: LightNet's and
    mLSTM's later states read it): T = 0 with an initial state (LightNet on an empty slice)
    raised IndexError; an empty sequence in ``cu_seqlens`` takes no token."""
    from mixir.lowering.common.call import shift_by_one
    init = torch.arange(6.0).reshape(2, 3)
    assert shift_by_one(torch.zeros(2, 0, 3), init, None, 2).shape == (2, 0, 3)
    assert shift_by_one(torch.zeros(1, 0, 3), init, torch.tensor([0, 0, 0]), 2).shape == (1, 0, 3)
    o = torch.arange(1.0, 5.0)[None, :, None].expand(2, 4, 3)          # token t holds t + 1
    assert shift_by_one(o, init, None, 2)[..., 0].tolist() == [[0, 1, 2, 3], [3, 1, 2, 3]]
    cu = torch.tensor([0, 0, 3, 3, 4])                                 # empty, 3 tokens, empty, 1
    got = shift_by_one(o[:1], -torch.arange(1.0, 5.0)[:, None].expand(4, 3), cu, 4)
    assert got[0, :, 0].tolist() == [-2, 1, 2, -4]


def test_lightnet_takes_an_empty_packed_call_with_an_initial_state():
    """LightNet's running sign product at each sequence's last token indexed an empty tensor
    (IndexError) for T = 0 with ``cu_seqlens``; the final state is the initial one."""
    from mixir.verify import example_inputs
    m = MIXERS["lightnet"].mixer
    arrays, h0 = example_inputs(m, B=1, T=0, H=2, K=8, V=8, seed=0)
    xs = [torch.tensor(a, dtype=torch.float32) for a in arrays]
    init = tuple(torch.tensor(s, dtype=torch.float32) for s in h0)
    o, S = mx.compile(m)(*xs, initial_state=init, output_final_state=True,
                         cu_seqlens=torch.tensor([0, 0], dtype=torch.int32))
    assert o.shape == (1, 0, 2, 8)
    assert all(torch.equal(a, b) for a, b in zip(S, init))


def test_b0_reference_matches_the_compiled_shapes():
    """The reference returned ``need at least one array to stack`` for B = 0."""
    q, k, v, gk = _gla(B=0)
    o, S = mx.compile(GLA)(q, k, v, gk, output_final_state=True)
    ro, rS = mx.reference(GLA)(*(t.numpy() for t in (q, k, v, gk)), output_final_state=True)
    assert ro.shape == tuple(o.shape) == (0, 3, 2, 4) and rS.shape == tuple(S.shape) == (0, 2, 4, 4)
    from mixir.reference.interpreter import run_reference
    to, tS = run_reference(GLA, [t.double() for t in (q, k, v, gk)], output_final_state=True,
                           backend="torch")
    assert to.shape == (0, 3, 2, 4) and tS.shape == (0, 2, 4, 4)
    assert L.causal_attention(*_qkv(B=0)).shape == (0, 4, 2, 16)


# ---- cu_seqlens ---------------------------------------------------------------------------------
def _packed_calls(cu):
    q, k, v, gk = _gla(T=4)
    x, R, b = _lstm(T=4)
    u, p = _s4d(T=4)
    qa, ka, va = _qkv(T=4)
    return {"gla": lambda: gla(q, k, v, gk, cu_seqlens=cu),
            "lstm": lambda: lstm(x, R, b, cu_seqlens=cu),
            "s4d": lambda: s4d(u, **p, cu_seqlens=cu),
            "document_attention": lambda: L.document_attention(qa, ka, va, cu_seqlens=cu)}


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0.0, 1.5, 4.0]), "cu_seqlens must be int32 or int64, got torch.float32"),
    (torch.tensor([0, 2]), "cu_seqlens must end at T = 4"),
    (torch.tensor([0, 3, 2, 4]), "cu_seqlens must be non-decreasing"),
    (torch.tensor([1, 4]), "cu_seqlens must start at 0"),
    (torch.tensor([[0, 4]]), "cu_seqlens must be 1-D"),
    ([0, 4], "cu_seqlens must be a torch.Tensor"),
], ids=["float", "ends_before_T", "decreasing", "start", "2d", "list"])
def test_cu_seqlens_one_rule_for_every_family(cu, match):
    for what, call in _packed_calls(cu).items():
        with record_launches() as launched, pytest.raises(InputError, match=match):
            call()
        assert not launched, what


def test_doc_ids_helper_still_pads():
    ids = L.doc_ids_from_cu_seqlens(torch.tensor([0, 2]), 4)
    assert ids.tolist() == [[0, 0, -1, -1]]
    with pytest.raises(InputError, match="int32 or int64"):
        L.doc_ids_from_cu_seqlens(torch.tensor([0.0, 2.0]), 4)
    with pytest.raises(InputError, match="at or before T = 4"):
        L.doc_ids_from_cu_seqlens(torch.tensor([0, 5]), 4)


# ---- messages name the public argument ----------------------------------------------------------
def test_lstm_errors_name_x_r_b():
    x, R, b = _lstm()
    cases = [((x, R[:, :, :3, :3], b), "R must be [G, H, D, D] = (4, 2, 4, 4)"),
             ((x, R, b[:, :1]), "b must be [G, H, D] = (4, 2, 4)"),
             ((x, R.double(), b), "argument 'R' " + F64),
             ((x.half(), R, b.to(torch.int32)), "argument 'b' must be float32"),
             ((x, R, b.to("meta")), "argument 'b' is on meta")]
    for args, match in cases:
        with pytest.raises(InputError) as e:
            lstm(*args)
        assert match in str(e.value) and not any(f"'{n}'" in str(e.value) for n in ("xi", "Ri", "bi"))


def test_initial_state_messages():
    u, p = _s4d()
    with pytest.raises(InputError, match=r"s4d: initial_state must be a complex tensor \[N_seq, H, N\] "
                                         r"or a \(re, im\) pair of real tensors, got a real"):
        s4d(u, **p, initial_state=torch.zeros(1, 2, 4))
    x, R, b = _lstm()
    with pytest.raises(InputError, match=r"lstm has 2 states \(h, c\); pass a tuple of 2 tensors, got 1"):
        lstm(x, R, b, initial_state=(torch.zeros(1, 2, 4),))
    with pytest.raises(InputError, match="initial_state is float64"):
        gla(*_gla(), initial_state=torch.zeros(1, 2, 4, 4, dtype=torch.float64))


# ---- likely-transposed layouts -------------------------------------------------------------------
@mx.mixer
def _decay(q: In["K"], k: In["K"], v: In["V"], w: Param["K"], S: State["K", "V"]):
    S = mx.exp(-mx.softplus(w)) * S + mx.outer(k, v)
    return q @ S, S


def test_transposed_layouts_are_called_out():
    B, T, H, K = 1, 5, 2, 4
    q = np.zeros((B, T, H, K))
    qt = q.transpose(0, 2, 1, 3)                   # [B, H, T, K]
    w = np.zeros((H, K))
    # H fixed by a parameter declared first: the per-token input is blamed
    @mx.mixer
    def pfirst(w: Param["K"], q: In["K"], S: State["K"]):
        return q * S, S * w + q
    with pytest.raises(InputError, match=r"'q' looks laid out \[B, H, T, \.\.\.\].*transpose\(1, 2\)"):
        mx.reference(pfirst)(w, qt)
    # parameter after the inputs: the inputs are named
    with pytest.raises(InputError, match=r"per-token input 'q' \(1, 2, 5, 4\) holds H = 2 in its T position"):
        mx.reference(_decay)(qt, qt, qt, w)
    # two inputs that differ by a swap of T and H
    with pytest.raises(InputError, match="differ by a swap of T and H"):
        mx.compile(GLA)(*(torch.zeros(B, T, H, K),) * 3, torch.zeros(B, H, T, K))
    # an initial state whose H is the inputs' T
    with pytest.raises(InputError, match="its H position holds T"):
        mx.reference(GLA)(qt, qt, qt, qt, initial_state=np.zeros((1, H, K, K)))
    # wrappers: H given by R, by A_re
    x, R, b = _lstm(T=5)
    with pytest.raises(InputError, match="x holds in its T position"):
        lstm(x.transpose(1, 3), R, b)
    u, p = _s4d(T=5)
    with pytest.raises(InputError, match=r"is u laid out \[B, H, T\]"):
        s4d(u.transpose(1, 2), **p)
    # attention: GQA heads that divide only when read as [B, H, T, D]; masks needing Tq == Tkv
    with pytest.raises(InputError, match=r"read as \[B, H, T, D\] q would have 4 heads"):
        L.causal_attention(torch.randn(1, 4, 6, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16))
    qa, ka, va = (t.transpose(1, 2) for t in _qkv(T=8, H=4, HKV=2))
    with pytest.raises(InputError, match=r"are they laid out \[B, H, T, D\]"):
        L.moba(qa, ka, va, 16, 1)


def test_library_wrappers_name_their_public_arguments():
    """hgrn, lightnet, the Householder and SSM wrappers check the tensors as the caller named them
    (before splitting or reshaping them into the declaration's arguments: k, not k0)."""
    from mixir.library import gated_delta_product, hgrn, lightnet, mamba, mamba2
    q, k, v, _ = _gla(T=2)
    beta, g = torch.rand(1, 2, 2), torch.zeros(1, 2, 2)
    calls = {
        "'g'": lambda: hgrn(torch.randn(1, 3, 4), torch.zeros(1, 3, 4, dtype=torch.float64)),
        "'v'": lambda: lightnet(q, k, v.double()),
        "'k'": lambda: gated_delta_product(q, torch.cat([k, k], 1).double(), torch.cat([v, v], 1), g,
                                           torch.cat([beta, beta], 1), num_householder=2),
        "'A'": lambda: mamba(torch.randn(1, 3, 4), torch.rand(1, 3, 4), torch.zeros(4, 2, dtype=torch.float64),
                             torch.randn(1, 3, 2), torch.randn(1, 3, 2)),
        "'dt_bias'": lambda: mamba2(torch.randn(1, 3, 2, 4), torch.rand(1, 3, 2), -torch.ones(2),
                                    torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4),
                                    dt_bias=torch.zeros(2, dtype=torch.float64)),
    }
    for name, call in calls.items():
        with record_launches() as launched, pytest.raises(InputError) as e:
            call()
        assert f"argument {name} must be float32" in str(e.value) and not launched, (name, str(e.value))
    with pytest.raises(InputError, match="hgrn: argument 'x' must be a torch.Tensor, got list"):
        hgrn([[0.0]], torch.zeros(1, 3, 4))
