"""mixir.compat.flashrnn against a float64 loop of FlashRNN 1.0.5's recurrences, written from its
pointwise cells (``flashrnn/vanilla/*.py``, the per-element first-step rule of its CUDA sLSTM) in
its public layouts: ``Wx [B, T, G, H, D]``, ``R [G, H, out, in]``, ``b [G, H, D]``, states
``[S, B, 1, H, D]``; results ``[S, B, T, H, D]`` and ``[S, B, 1, H, D]``."""
import inspect

import pytest
import torch

from mixir.compat import flashrnn as FR
from mixir.errors import InputError
from mixir.testing import bounds_for, rel_rms_error

pytestmark = pytest.mark.interp

#: flashrnn 1.0.5, flashrnn/flashrnn/flashrnn.py
SIGNATURE = "(Wx, R, b, states=None, function='lstm', config=None, backend='cuda_fused', dtype='bfloat16')"


def loop(Wx, R, b, states, function):
    """FlashRNN's recurrence in float64: every state at every step, and the last states."""
    Wx, R, b = Wx.double(), R.double(), b.double()
    B, T, _, H, D = Wx.shape
    S = FR.SHAPES[function][3]
    s = [torch.zeros(B, H, D, dtype=torch.float64) for _ in range(S)] if states is None else \
        list(states.double()[:, :, 0])
    out = []
    for t in range(T):
        Ry = torch.einsum("bhp,ghdp->gbhd", s[0], R)          # g_d = Σ_p R[g, h, d, p] h_p
        x = Wx[:, t].transpose(0, 1)                           # [G, B, H, D]
        if function == "lstm":
            i, f, z, o = (x + Ry + b[:, None]).unbind(0)
            c = torch.sigmoid(f) * s[1] + torch.sigmoid(i) * torch.tanh(z)
            s = [torch.sigmoid(o) * torch.tanh(c), c]
        elif function == "elman":
            s = [torch.tanh(x[0] + Ry[0] + b[0])]
        elif function == "gru":                                # Wx (r, z, n), R (n, r, z), b (hn, r, z, in)
            g = Ry[0] + b[0]
            r = torch.sigmoid(x[0] + Ry[1] + b[1])
            zg = torch.sigmoid(x[1] + Ry[2] + b[2])
            s = [zg * s[0] + (1 - zg) * torch.tanh(x[2] + b[3] + r * g)]
        else:                                                  # sLSTM, FlashRNN's rules
            i, f, z, o = (x + Ry + b[:, None]).unbind(0)
            _, c, n, m = s
            logfm = torch.nn.functional.logsigmoid(f) + m
            m_new = torch.where(n == 0, i, torch.maximum(i, logfm))     # per element (CUDA cell)
            ig = torch.clamp(torch.exp(i - m_new), max=1.0)
            fg = torch.clamp(torch.exp(logfm - m_new), max=1.0)
            c = fg * c + ig * torch.tanh(z)
            n = torch.maximum(fg * n + ig, torch.ones_like(n))          # as flashrnn/vanilla/slstm.py
            s = [torch.sigmoid(o) * c / n, c, n, m_new]
        out.append(torch.stack(s))
    return torch.stack(out, 2), torch.stack(s).unsqueeze(2)


def inputs(function, B=1, T=4, H=2, D=4, seed=0, with_states=False):
    GW, GR, GB, S = FR.SHAPES[function]
    g = torch.Generator().manual_seed(seed)
    Wx = torch.randn(B, T, GW, H, D, generator=g)
    R = torch.randn(GR, H, D, D, generator=g) / D ** 0.5
    b = torch.randn(GB, H, D, generator=g) * 0.5
    st = None
    if with_states:
        st = torch.randn(S, B, 1, H, D, generator=g) * 0.5
        if function == "slstm":            # n > 0 (one row left at 0: FlashRNN's first-step rule)
            st[2] = st[2].abs() + 0.5
            st[2, :, :, 0] = 0.0
    return Wx, R, b, st


def _close(actual, expected, kind="output"):
    bd = bounds_for(torch.float32)
    err = rel_rms_error(actual, expected, bd.floor)
    assert err <= bd[kind], (kind, err)


def test_signature_is_flashrnns():
    sig = inspect.signature(FR.flashrnn)
    assert str(sig) == SIGNATURE


def _slstm_case(with_states, grads=True):
    Wx, R, b, st = inputs("slstm", with_states=with_states)
    if with_states:
        st[2, :, :, 0] = 0.7       # n > 0: the n = 0 rule is a discontinuity in n (no gradient there)
    leaves = [t.requires_grad_(grads) for t in (Wx, R, b) + ((st,) if st is not None else ())]
    out, last = FR.flashrnn(Wx, R, b, states=st, function="slstm", dtype="float32")
    assert out.shape == (4, 1, 4, 2, 4) and last.shape == (4, 1, 1, 2, 4)
    assert out.dtype == torch.float32
    ref, ref_last = loop(*(t.detach() if t is not None else None for t in (Wx, R, b, st)), "slstm")
    _close(out, ref)
    _close(last, ref_last, "state")
    if not grads:
        return
    # a projection of h and of n: the gradients go through the first and a second scan
    w = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = (out[0].double() * w).sum() + (out[2].double() * w).sum()
    grads = torch.autograd.grad(loss, leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    r, _ = loop(*leaves64[:3], leaves64[3] if with_states else None, "slstm")
    refg = torch.autograd.grad((r[0] * w).sum() + (r[2] * w).sum(), leaves64)
    for a, e in zip(grads, refg):
        _close(a, e, "grad")


def test_slstm_values():
    """All four states at every step and the last states from FlashRNN's zero state (so the first
    step takes m = ĩ, n' = max(f n + i, 1) = 1)."""
    _slstm_case(with_states=False, grads=False)


@pytest.mark.slow
def test_slstm_gradients_and_given_states():
    """Gradients of Wx, R, b from the zero state; from given states (one row of n at 0: m = ĩ there
    only, per element as FlashRNN's CUDA cell) values, and gradients of the initial states too
    (taken where n > 0)."""
    _slstm_case(with_states=False)
    Wx, R, b, st = inputs("slstm", with_states=True)
    out, _ = FR.flashrnn(Wx, R, b, states=st, function="slstm", dtype="float32")
    _close(out, loop(Wx, R, b, st, "slstm")[0])
    _slstm_case(with_states=True)


@pytest.mark.slow
def test_slstm_differs_from_the_library_convention():
    """From a zero state the library's sLSTM (m' = max(log f + m, ĩ), n' = f n + i) gives the same
    h (the stabiliser cancels in c / n and n stays ≥ 1) but other states c, n, m; from a state with
    n < 1 the clamp n' ≥ 1 changes h too. This module is the one that matches FlashRNN."""
    import mixir.library as lib
    Wx, R, b, st = inputs("slstm", seed=3, with_states=True)
    st[2] = 0.3                                     # 0 < n < 1: FlashRNN clamps n' = max(f n + i, 1)
    Rt = R.transpose(-1, -2)
    h0, (_, _, n0, m0) = lib.slstm(Wx, Rt, b, output_final_state=True)
    ours, last = FR.flashrnn(Wx, R, b, function="slstm", dtype="float32")
    _close(h0, ours[0])
    assert (m0 - last[3, :, 0]).abs().max() > 1e-3 and (n0 - last[2, :, 0]).abs().max() > 1e-3
    h1 = lib.slstm(Wx, Rt, b, initial_state=tuple(s[:, 0] for s in st))
    ours1, _ = FR.flashrnn(Wx, R, b, states=st, function="slstm", dtype="float32")
    _close(ours1, loop(Wx, R, b, st, "slstm")[0])
    assert rel_rms_error(h1, ours1[0], 1e-2) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("function", ["lstm", "gru", "elman"])
def test_lstm_gru_elman_values(function):
    """The library's cells on FlashRNN's layouts (R transposed, GRU's gate orders, b_in folded into
    x_n), with a given initial state; LSTM's c of every step from its second declared scan."""
    Wx, R, b, st = inputs(function, B=2, T=5, with_states=True)
    out, last = FR.flashrnn(Wx, R, b, states=st, function=function, backend="cuda", dtype="float32")
    ref, ref_last = loop(Wx, R, b, st, function)
    _close(out, ref)
    _close(last, ref_last, "state")


def test_refusals_name_the_argument():
    Wx, R, b, _ = inputs("lstm")
    with pytest.raises(InputError, match="R must be \\[G, H, D, D\\] = \\(4, 2, 4, 4\\).*R\\[g, h, out, in\\]"):
        FR.flashrnn(Wx, R[:, :, :3], b, dtype="float32")
    with pytest.raises(InputError, match="function must be one of"):
        FR.flashrnn(Wx, R, b, function="mlstm")
    with pytest.raises(InputError, match="config"):
        FR.flashrnn(Wx, R, b, config=object())
    with pytest.raises(InputError, match="backend must be one of"):
        FR.flashrnn(Wx, R, b, backend="cudnn")
    with pytest.raises(InputError, match="argument 'Wx' must be float32, float16 or bfloat16"):
        FR.flashrnn(Wx.double(), R, b)
    with pytest.raises(InputError, match="states must be \\[S, B, 1, H, D\\]"):
        FR.flashrnn(Wx, R, b, states=torch.zeros(2, 1, 2, 4), dtype="float32")
