"""fla's and mamba_ssm's keywords on the library wrappers (issue 15 §6): ``g`` for GLA's gate,
``state_v_first`` and ``g_gamma``, ``chunk_size`` (advisory, checked), Gated DeltaNet's in-kernel
gate, HGRN's positional initial state, Mamba-1's time-invariant B/C, Mamba-2's ``z``, ``dt_bias``,
``dt_softplus``, ``dt_limit``, ``D [H, P]``, ``seq_idx`` and per-(head, dim) ``dt``. Each is checked
against the same wrapper called with the keyword's meaning written out, or the float64 reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixir as mx
from mixir.errors import InputError
from mixir.library import gated_delta_rule, gla, hgrn, mamba, mamba2, simple_gla
from mixir.library.ssm import mamba2_dtp_mixer

pytestmark = pytest.mark.interp
R = "recurrent"


def _t(*shape, seed=0, fn=None):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return fn(x) if fn else x


def test_gla_g_alias_and_state_v_first():
    q, k, v = _t(1, 6, 2, 4, seed=1), _t(1, 6, 2, 4, seed=2), _t(1, 6, 2, 4, seed=3)
    gk = _t(1, 6, 2, 4, seed=4, fn=F.logsigmoid)
    h0 = _t(1, 2, 4, 4, seed=5)
    o, hT = gla(q, k, v, gk, initial_state=h0, output_final_state=True, strategy=R)
    o2, hT2 = gla(q, k, v, g=gk, initial_state=h0.transpose(-1, -2).contiguous(), state_v_first=True,
                  output_final_state=True, strategy=R)
    assert torch.equal(o, o2) and torch.equal(hT, hT2.transpose(-1, -2))
    with pytest.raises(InputError, match="pass the log-decay gate .* once, as gk .* or g .*both"):
        gla(q, k, v, gk, g=gk)
    with pytest.raises(InputError, match="neither"):
        gla(q, k, v)


def test_simple_gla_g_gamma_and_chunk_size():
    q, k, v = _t(1, 6, 2, 4, seed=1), _t(1, 6, 2, 4, seed=2), _t(1, 6, 2, 4, seed=3)
    g = _t(1, 6, 2, seed=4, fn=F.logsigmoid)
    gamma = torch.tensor([-0.1, -0.5])
    o = simple_gla(q, k, v, g, g_gamma=gamma, strategy=R, chunk_size=32)
    assert torch.equal(o, simple_gla(q, k, v, g + gamma, strategy=R))
    assert torch.equal(simple_gla(q, k, v, g_gamma=gamma, strategy=R),
                       simple_gla(q, k, v, gamma.expand(1, 6, 2), strategy=R))
    for bad in (48, 8, True, 64.0):
        with pytest.raises(InputError, match="chunk_size must be a power of two >= 16"):
            simple_gla(q, k, v, g, chunk_size=bad)
    with pytest.raises(InputError, match=r"g_gamma must be \[H\] = \[2\]"):
        simple_gla(q, k, v, g_gamma=torch.zeros(3))


def test_gated_delta_rule_gate_in_kernel():
    q, v = _t(1, 5, 2, 4, seed=1), _t(1, 5, 2, 4, seed=3)
    k = F.normalize(_t(1, 5, 2, 4, seed=2), dim=-1)
    graw, beta = _t(1, 5, 2, seed=4), _t(1, 5, 2, seed=5, fn=torch.sigmoid)
    A_log, dt_bias = _t(2, seed=6), _t(2, seed=7)
    o = gated_delta_rule(q, k, v, graw, beta, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                         strategy=R)
    g = -A_log.exp() * F.softplus(graw + dt_bias)
    torch.testing.assert_close(o, gated_delta_rule(q, k, v, g, beta, strategy=R), rtol=0, atol=0)
    with pytest.raises(InputError, match="`A_log` must be provided"):
        gated_delta_rule(q, k, v, graw, beta, use_gate_in_kernel=True)


def test_hgrn_initial_state_positional():
    x, g, h0 = _t(1, 5, 6, seed=1), _t(1, 5, 6, seed=2, fn=F.logsigmoid), _t(1, 6, seed=3)
    o, hT = hgrn(x, g, h0, True)
    o2, hT2 = hgrn(x, g, initial_state=h0, output_final_state=True)
    assert torch.equal(o, o2) and torch.equal(hT, hT2)


def test_mamba_time_invariant_b_c():
    u, delta = _t(1, 5, 3, seed=1), _t(1, 5, 3, seed=2, fn=lambda t: t.abs() * 0.3 + 0.02)
    A = -_t(3, 4, seed=3).abs() - 0.1
    Bti, Cti = _t(3, 4, seed=4), _t(3, 4, seed=5)
    y = mamba(u, delta, A, Bti, Cti, strategy=R)
    y2 = mamba(u, delta, A, Bti.expand(1, 5, 3, 4).contiguous(), Cti.expand(1, 5, 3, 4).contiguous(),
               strategy=R)
    assert torch.equal(y, y2)
    with pytest.raises(InputError, match=r"a time-invariant B must be \[D, N\] with D = 3"):
        mamba(u, delta, A, Bti[:2], Cti, strategy=R)


def test_mamba2_options_and_seq_idx():
    """z, dt_bias, dt_softplus, dt_limit, D [H, P] against the same scan with the options written out;
    seq_idx against cu_seqlens (row starts and id changes are boundaries)."""
    x, dt = _t(2, 6, 2, 4, seed=1), _t(2, 6, 2, seed=2)
    A, Bm, Cm = -_t(2, seed=3).abs() - 0.1, _t(2, 6, 1, 4, seed=4), _t(2, 6, 1, 4, seed=5)
    z, D, dt_bias = _t(2, 6, 2, 4, seed=6), _t(2, 4, seed=7), _t(2, seed=8)
    y = mamba2(x, dt, A, Bm, Cm, D, z=z, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.0, 0.6),
               strategy=R)
    step = F.softplus(dt + dt_bias).clamp(0.0, 0.6)
    want = (mamba2(x, step, A, Bm, Cm, strategy=R) + x * D) * F.silu(z)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]])
    y, final = mamba2(x, step, A, Bm, Cm, seq_idx=seq_idx, output_final_state=True, strategy=R)
    cu = torch.tensor([0, 3, 6, 7, 10, 12])
    flat = [t.reshape((1, 12) + tuple(t.shape[2:])) for t in (x, step, Bm, Cm)]
    y2, per_seq = mamba2(*flat[:2], A, *flat[2:], cu_seqlens=cu, output_final_state=True, strategy=R)
    assert torch.equal(y, y2.reshape(y.shape)) and torch.equal(final, per_seq[[1, 4]])
    with pytest.raises(InputError, match="seq_idx must be non-decreasing"):
        mamba2(x, step, A, Bm, Cm, seq_idx=seq_idx.flip(1))


def test_mamba2_dt_per_head_and_dim():
    """dt [B, T, H, P]: the declared ``mamba2_dtp`` against the float64 reference; a dt constant
    over P is the ordinary [B, T, H] call."""
    x, A = _t(1, 6, 2, 4, seed=1), -_t(2, seed=3).abs() - 0.1
    Bm, Cm = _t(1, 6, 2, 4, seed=4), _t(1, 6, 2, 4, seed=5)
    dt = _t(1, 6, 2, 4, seed=2, fn=lambda t: t.abs() * 0.3 + 0.02)
    y = mamba2(x, dt, A, Bm, Cm, strategy=R)
    ref = mx.reference(mamba2_dtp_mixer)(*(t.double().numpy() for t in (x, dt, A, Bm, Cm)), np.zeros(2))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    dt1 = dt[..., :1]
    torch.testing.assert_close(mamba2(x, dt1.expand_as(x), A, Bm, Cm, strategy=R),
                               mamba2(x, dt1[..., 0], A, Bm, Cm, strategy=R), rtol=1e-6, atol=1e-6)
