"""Nonlinear head-wise RNNs (FlashRNN's LSTM, GRU, Elman, sLSTM) and xLSTM's mLSTM, in the DSL.

Every cell is declared per head and per token. The per-token pre-activations ``W x_t`` are
computed outside (FlashRNN's convention) and arrive as one input per gate; the recurrent weights
are per-head params ``R_g: Param["E", "D"]`` used as ``rename(h, D="E") @ R_g`` (so
``a_d = Σ_e h_e R[e, d]``), the biases per-head ``Param["D"]``. The declarations are the
definition (``mixir.reference`` executes them token by token); docs/rnn.md has the formulas.

Wrappers take stacked tensors shaped like FlashRNN's: ``x [B, T, G, H, D]`` (gate-major
pre-activations), ``R [G, H, D, D]`` (``R[g, h, e, d]``, input unit e, output unit d: the
transpose of FlashRNN's public ``R[g, h, out, in]``), ``b [G, H, D]``, and states ``[N, H, D]`` (a
tuple for cells with several states), and call the compiled declaration on strided views (no
copies). FlashRNN's own layout, GRU gate order and sLSTM rules: ``mixir.compat.flashrnn``.

``RNN_MIXERS`` is this module's registry (``LibraryEntry`` objects, as ``MIXERS`` holds for the
gated-linear library); it is kept apart from ``MIXERS`` because the tests and shipped tuning
defaults of ``MIXERS`` assume the gated-linear family.
"""
from __future__ import annotations

from ..dsl import ops as mx
from ..dsl.mixer import In, Param, Scale, State, mixer
from ..errors import InputError
from ..lowering.common.call import check_tensors
from .registry import LibraryEntry, call, register_entry

# ---- declarations ------------------------------------------------------------------------------


def _rec(h, R):
    """The recurrent matmul of one gate: a_d = Σ_e h_e R[e, d]."""
    return mx.rename(h, D="E") @ R


@mixer(name="lstm")
def lstm_mixer(xi: In["D"], xf: In["D"], xz: In["D"], xo: In["D"],
               Ri: Param["E", "D"], Rf: Param["E", "D"], Rz: Param["E", "D"], Ro: Param["E", "D"],
               bi: Param["D"], bf: Param["D"], bz: Param["D"], bo: Param["D"],
               h: State["D"], c: State["D"]):
    """LSTM: i, f, o = σ(x + R h + b), z = tanh(x_z + R_z h + b_z), c' = f c + i z, h' = o tanh(c')."""
    i = mx.sigmoid(xi + _rec(h, Ri) + bi)
    f = mx.sigmoid(xf + _rec(h, Rf) + bf)
    z = mx.tanh(xz + _rec(h, Rz) + bz)
    o = mx.sigmoid(xo + _rec(h, Ro) + bo)
    c = f * c + i * z
    h = o * mx.tanh(c)
    return h, h, c


@mixer(name="gru")
def gru_mixer(xr: In["D"], xz: In["D"], xn: In["D"],
              Rr: Param["E", "D"], Rz: Param["E", "D"], Rn: Param["E", "D"],
              br: Param["D"], bz: Param["D"], bn: Param["D"], h: State["D"]):
    """GRU (torch's convention; x already holds W x + b_i): r, z = σ(x + R h + b),
    n = tanh(x_n + r ⊙ (R_n h + b_n)), h' = (1 - z) n + z h."""
    r = mx.sigmoid(xr + _rec(h, Rr) + br)
    z = mx.sigmoid(xz + _rec(h, Rz) + bz)
    n = mx.tanh(xn + r * (_rec(h, Rn) + bn))
    h = (1.0 - z) * n + z * h
    return h, h


@mixer(name="elman")
def elman_mixer(x: In["D"], R: Param["E", "D"], b: Param["D"], h: State["D"]):
    """Elman RNN: h' = tanh(x + R h + b)."""
    h = mx.tanh(x + _rec(h, R) + b)
    return h, h


@mixer(name="slstm")
def slstm_mixer(xi: In["D"], xf: In["D"], xz: In["D"], xo: In["D"],
                Ri: Param["E", "D"], Rf: Param["E", "D"], Rz: Param["E", "D"], Ro: Param["E", "D"],
                bi: Param["D"], bf: Param["D"], bz: Param["D"], bo: Param["D"],
                h: State["D"], c: State["D"], n: State["D"], m: State["D"]):
    """xLSTM's sLSTM: exponential input gate, log-sigmoid forget gate, stabiliser m, normaliser n:
    m' = max(logσ(f̃) + m, ĩ), i = exp(ĩ - m'), f = exp(logσ(f̃) + m - m'),
    c' = f c + i tanh(z̃), n' = f n + i, h' = σ(õ) c' / n'."""
    it = xi + _rec(h, Ri) + bi
    logf = mx.logsigmoid(xf + _rec(h, Rf) + bf)
    z = mx.tanh(xz + _rec(h, Rz) + bz)
    o = mx.sigmoid(xo + _rec(h, Ro) + bo)
    m_new = mx.maximum(logf + m, it)
    i = mx.exp(it - m_new)
    f = mx.exp(logf + m - m_new)
    c = f * c + i * z
    n = f * n + i
    h = o * c / n
    return h, h, c, n, m_new


@mixer(name="mlstm")
def mlstm_mixer(q: In["K"], k: In["K"], v: In["V"], i: In[()], f: In[()], scale: Scale["K"],
                C: State["K", "V"], n: State["K"], m: State[()]):
    """xLSTM's mLSTM (matrix memory): m' = max(logσ(f̃) + m, ĩ), i = exp(ĩ - m'),
    f = exp(logσ(f̃) + m - m'), C' = f C + i k vᵀ, n' = f n + i k,
    o = (C'ᵀ q̂) / max(|n'ᵀ q̂|, exp(-m')) with q̂ = scale · q."""
    logf = mx.logsigmoid(f)
    m_new = mx.maximum(logf + m, i)
    ig = mx.exp(i - m_new)
    fg = mx.exp(logf + m - m_new)
    C = fg * C + ig * mx.outer(k, v)
    n = fg * n + ig * k
    qs = q * scale
    o = (qs @ C) / mx.maximum(mx.abs(qs @ n), mx.exp(-m_new))
    return o, C, n, m_new


@mixer(name="mlstm_nonorm")
def mlstm_nonorm_mixer(q: In["K"], k: In["K"], v: In["V"], i: In[()], f: In[()], scale: Scale["K"],
                       C: State["K", "V"]):
    """mLSTM without normaliser and stabiliser (the part that is plain gated linear attention):
    C' = σ(f̃) C + exp(ĩ) k vᵀ, o = (scale · q) @ C'."""
    C = mx.sigmoid(f) * C + mx.exp(i) * mx.outer(k, v)
    return (q * scale) @ C, C


# ---- wrappers ----------------------------------------------------------------------------------

GATES = {"lstm": ("i", "f", "z", "o"), "gru": ("r", "z", "n"), "elman": ("",), "slstm": ("i", "f", "z", "o")}
_MIXER = {"lstm": lstm_mixer, "gru": gru_mixer, "elman": elman_mixer, "slstm": slstm_mixer}


def _stacked(cell, x, R, b, *, initial_state=None, output_final_state=False, cu_seqlens=None,
             strategy=None):
    """Validate the stacked public tensors (errors name x, R, b, never the per-gate views the
    declaration sees), then call the declaration on strided views."""
    G = len(GATES[cell])
    check_tensors(cell, [("x", x, True), ("R", R, False), ("b", b, False)])
    for name, t, rank in (("x", x, 5), ("R", R, 4), ("b", b, 3)):
        if t.ndim != rank or t.shape[{"x": 2, "R": 0, "b": 0}[name]] != G:
            want = {"x": "[B, T, G, H, D]", "R": "[G, H, D, D]", "b": "[G, H, D]"}[name]
            raise InputError(f"{cell}: {name} must be {want} with G = {G} gates "
                             f"({', '.join(GATES[cell])}), got shape {tuple(t.shape)}")
    _, T, _, H, D = (int(n) for n in x.shape)
    if H < 1 or D < 1:
        raise InputError(f"{cell}: x [B, T, G, H, D] needs H >= 1 and D >= 1, got shape {tuple(x.shape)}")
    if tuple(R.shape) != (G, H, D, D):
        hint = ""
        if int(R.shape[1]) == T and T != H and int(R.shape[2]) == D:
            hint = (f"; R has H = {T}, which x holds in its T position: is x laid out with H before "
                    f"T? mixir takes x as [B, T, G, H, D] (FlashRNN's layout)")
        raise InputError(f"{cell}: R must be [G, H, D, D] = {(G, H, D, D)} (H and D of x "
                         f"[B, T, G, H, D] = {tuple(x.shape)}), got shape {tuple(R.shape)}{hint}")
    if tuple(b.shape) != (G, H, D):
        raise InputError(f"{cell}: b must be [G, H, D] = {(G, H, D)} (H and D of x), got shape "
                         f"{tuple(b.shape)}")
    arrays = [x[:, :, g] for g in range(G)] + [R[g] for g in range(G)] + [b[g] for g in range(G)]
    return call(_MIXER[cell], arrays, initial_state=initial_state, output_final_state=output_final_state,
                cu_seqlens=cu_seqlens, strategy=strategy)


def lstm(x, R, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None):
    """Head-wise LSTM. ``x [B, T, 4, H, D]`` pre-activations (gates i, f, z, o), ``R [4, H, D, D]``,
    ``b [4, H, D]``, ``initial_state = (h0, c0)`` each ``[N, H, D]``. Returns ``h [B, T, H, D]``
    (and ``(h_T, c_T)`` with ``output_final_state``)."""
    return _stacked("lstm", x, R, b, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, strategy=strategy)


def gru(x, R, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None):
    """Head-wise GRU (torch's gate convention). ``x [B, T, 3, H, D]`` (gates r, z, n; x_n holds
    W_n x + b_in), ``R [3, H, D, D]``, ``b [3, H, D]`` (b_n is b_hn, inside the reset product)."""
    return _stacked("gru", x, R, b, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, strategy=strategy)


def elman(x, R, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None):
    """Head-wise Elman RNN (tanh). ``x [B, T, 1, H, D]``, ``R [1, H, D, D]``, ``b [1, H, D]``."""
    return _stacked("elman", x, R, b, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, strategy=strategy)


def slstm(x, R, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None):
    """xLSTM's sLSTM. ``x [B, T, 4, H, D]`` (gates i, f, z, o), ``R [4, H, D, D]``, ``b [4, H, D]``,
    states ``(h, c, n, m)`` each ``[N, H, D]`` (zeros by default)."""
    return _stacked("slstm", x, R, b, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, strategy=strategy)


def mlstm(q, k, v, i, f, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
          strategy=None, group=None):
    """xLSTM's mLSTM, fla layout: ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, gate pre-activations
    ``i, f [B, T, H]``; states ``(C [N, H, K, V], n [N, H, K], m [N, H])`` (zeros by default).
    Compiled through the gated-linear family (docs/gated_linear.md, "Stabiliser states"): the
    stabiliser ``m`` is a max-plus scan, ``n`` a gated-linear vector scan, ``C`` the main state
    (strategies ``recurrent`` and ``chunked``)."""
    return call(mlstm_mixer, [q, k, v, i, f], initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, strategy=strategy,
                scale=scale, group=group)


# ---- registry ----------------------------------------------------------------------------------

_SQ = {"D": "V", "E": "V"}


def _recurrent(m, **extra):
    """Samplers of a cell: its recurrent weights (the [E, D] params) at N(0, 1/D)."""
    return {**{a.name: "recurrent" for a in m.inputs if a.kind == "param" and len(a.dims) == 2}, **extra}


RNN_MIXERS: dict = {
    "lstm": LibraryEntry("lstm", lstm_mixer, lstm, "rnn", "head-wise LSTM (FlashRNN)",
                         "FlashRNN (Pöppel et al., 2024)", _SQ, _recurrent(lstm_mixer)),
    "gru": LibraryEntry("gru", gru_mixer, gru, "rnn", "head-wise GRU (torch gate convention)",
                        "FlashRNN (Pöppel et al., 2024)", _SQ, _recurrent(gru_mixer)),
    "elman": LibraryEntry("elman", elman_mixer, elman, "rnn", "head-wise Elman RNN (tanh)",
                          "FlashRNN (Pöppel et al., 2024)", _SQ, _recurrent(elman_mixer)),
    "slstm": LibraryEntry("slstm", slstm_mixer, slstm, "rnn",
                          "xLSTM's sLSTM: exponential gating, normaliser and stabiliser states",
                          "xLSTM (Beck et al., 2024)", _SQ, _recurrent(slstm_mixer, n="positive")),
    "mlstm": LibraryEntry("mlstm", mlstm_mixer, mlstm, "gated_linear",
                          "xLSTM's mLSTM: matrix memory with normaliser and stabiliser",
                          "xLSTM (Beck et al., 2024)", {"K": "K", "V": "V"},
                          samplers={"n": "positive"}),
}

for _entry in RNN_MIXERS.values():      # the shared registry holds every family
    register_entry(_entry)
