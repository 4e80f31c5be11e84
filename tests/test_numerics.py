"""Numerics at the edges of the input domain (issue 14, section 4): fp16 scores beyond fp16's
range, NaN log-decays, non-finite inputs of the LTI FFT convolution, and the opt-in input checks
(``mixir.input_checks``). The behaviour is documented in docs/verification.md, "Non-finite and
out-of-domain inputs"."""
import pytest
import torch

import mixir
from mixir.library import gated_linear as gl, householder as hh, lti
from mixir.lowering.lti.system import fft_conv
from mixir.testing.tolerances import bounds_for, rel_rms_error

pytestmark = pytest.mark.interp


def _nan_rows(o):
    """Token indices (batch 0, any head/channel) whose output holds a NaN."""
    return set(torch.isnan(o[0]).flatten(1).any(-1).nonzero().flatten().tolist())


# ---- fp16 scores beyond 65504 ------------------------------------------------------------------

def test_fp16_chunked_scores_beyond_fp16_range_stay_finite():
    """|q·k| ~ 1e6 overflows fp16 although the output (v is small) is representable: the chunked
    kernels scale score rows by powers of two before the fp16 dots (forward and backward)."""
    torch.manual_seed(0)
    B, T, H, K = 1, 32, 1, 32
    q0, k0 = 400 * torch.randn(B, T, H, K), 400 * torch.randn(B, T, H, K)
    v0 = 1e-3 * torch.randn(B, T, H, K)
    assert (q0 @ k0.transpose(-1, -2)).abs().max() > 65504     # the scores do overflow fp16

    def run(dtype, strategy):
        xs = [x.detach().to(dtype).clone().requires_grad_() for x in (q0, k0, v0)]
        o = gl.linear_attention(*xs, strategy=strategy)
        o.backward(torch.full_like(o, 1e-2))
        return [o] + [x.grad for x in xs]

    expected = run(torch.float32, "recurrent")
    got = run(torch.float16, "chunked")
    b = bounds_for(torch.float16)
    for name, a, e in zip(("o", "dq", "dk", "dv"), got, expected):
        assert torch.isfinite(a).all(), name
        kind = "output" if name == "o" else "grad"
        assert rel_rms_error(a, e, floor=0.0) < b[kind], name


# ---- NaN log-decays are never hidden -----------------------------------------------------------

def _qkv(T, K=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, v = torch.randn(1, T, 1, K, generator=g), torch.randn(1, T, 1, K, generator=g)
    k = torch.nn.functional.normalize(torch.randn(1, T, 1, K, generator=g), dim=-1)
    return q, k, v


@pytest.mark.parametrize("strategy", ["chunked", "recurrent"])
def test_nan_log_decay_propagates_as_in_the_recurrence(strategy):
    """A NaN log-decay at token t makes the outputs from t on NaN (the chunked strategy floors
    log-decays at LOG_FLOOR with a select that keeps NaN; it used to turn NaN into a closed gate)."""
    T, t = 40, 21
    q, k, v = _qkv(T)
    g = -torch.rand(1, T, 1, generator=torch.Generator().manual_seed(1))
    gk = -torch.rand(1, T, 1, 8, generator=torch.Generator().manual_seed(2))
    g[0, t, 0] = float("nan")
    gk[0, t, 0, 3] = float("nan")
    after = set(range(t, T))
    assert _nan_rows(gl.simple_gla(q, k, v, g, strategy=strategy)) == after
    assert _nan_rows(gl.gla(q, k, v, gk, strategy=strategy)) == after
    # the Householder chunk kernels mix a chunk's rows in dots (0·NaN = NaN): from the start of
    # the NaN's chunk on in the chunked strategy, exactly from t in the recurrent one
    o = hh.gated_delta_rule(q, k, v, g, torch.rand(1, T, 1), strategy=strategy)
    rows = _nan_rows(o)
    assert after <= rows and (rows == after if strategy == "recurrent" else min(rows) > 0)


# ---- the LTI FFT convolution is causal for non-finite values -----------------------------------

def test_fft_conv_is_differentiable_and_exact():
    u = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    K = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_conv, (u, K))


def test_fft_conv_non_finite_spread_causally():
    u = torch.randn(2, 3, 9)
    K = torch.randn(3, 9)
    clean = fft_conv(u, K)
    u[0, 1, 3] = float("nan")
    u[1, 0, 8] = float("inf")
    y = fft_conv(u, K)
    assert torch.isfinite(y[0, 1, :3]).all() and torch.isnan(y[0, 1, 3:]).all()
    assert torch.isfinite(y[1, 0, :8]).all() and not torch.isfinite(y[1, 0, 8])
    torch.testing.assert_close(y[0, 1, :3], clean[0, 1, :3])
    torch.testing.assert_close(y[0, 0], clean[0, 0])
    # backward: a NaN output gradient at t poisons the input gradients up to t only
    u = torch.randn(2, 3, 9, requires_grad=True)
    Kg = K.clone().requires_grad_()
    dy = torch.ones(2, 3, 9)
    dy[0, 2, 5] = float("nan")
    fft_conv(u, Kg).backward(dy)
    assert torch.isnan(u.grad[0, 2, :6]).all() and torch.isfinite(u.grad[0, 2, 6:]).all()
    assert torch.isfinite(u.grad[1]).all() and torch.isfinite(u.grad[0, :2]).all()
    assert torch.isnan(Kg.grad[2, :6]).all() and torch.isfinite(Kg.grad[2, 6:]).all()


def test_s4d_conv_nan_input_matches_the_recurrence():
    H, N, T = 2, 4, 24
    params = lti.s4d_lin_init(H, N)
    u = torch.randn(1, T, H)
    u[0, 9, 1] = float("nan")
    y_conv = lti.s4d(u, **params, strategy="conv")
    y_rec = lti.s4d(u, **params, strategy="recurrent")
    assert torch.equal(torch.isnan(y_conv), torch.isnan(y_rec))
    fin = torch.isfinite(y_rec)
    torch.testing.assert_close(y_conv[fin], y_rec[fin], rtol=1e-4, atol=1e-5)


# ---- opt-in input checks -----------------------------------------------------------------------

def test_input_checks_are_off_by_default_and_raise_inside_the_block():
    T = 20
    q, k, v = _qkv(T)
    g = -torch.rand(1, T, 1, generator=torch.Generator().manual_seed(3))
    g[0, 3, 0] = 0.5
    gl.simple_gla(q, k, v, g)                       # off: no value check (and no host sync)
    with mixir.input_checks():
        with pytest.raises(mixir.InputError, match=r"argument 'g'.*positive.*\[0, 3, 0\]"):
            gl.simple_gla(q, k, v, g)
        with pytest.raises(mixir.InputError, match="log-gate of the transition is positive"):
            hh.gated_delta_rule(q, k, v, g, torch.rand(1, T, 1))
        v2 = v.clone()
        v2[0, 4, 0, 1] = float("nan")
        with pytest.raises(mixir.InputError, match=r"argument 'v' holds a non-finite value"):
            gl.gla(q, k, v2, -torch.rand(1, T, 1, 8))
    assert mixir.set_input_checks(False) is False     # restored after the block
    with pytest.raises(mixir.InputError, match="True or False"):
        mixir.set_input_checks("yes")
