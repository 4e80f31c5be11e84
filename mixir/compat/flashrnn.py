"""Drop-in for FlashRNN 1.0.5's ``flashrnn`` (``from flashrnn import flashrnn``), over mixir's
head-wise RNN family.

    from mixir.compat.flashrnn import flashrnn          # instead of: from flashrnn import flashrnn
    states, last_states = flashrnn(Wx, R, b, states=s0, function="slstm", dtype="float32")

FlashRNN's conventions, which differ from ``mixir.library.rnn``'s (docs/rnn.md, "FlashRNN's
conventions"):

- **layout of R**: FlashRNN's public ``R [G, H, D_out, D_in]`` (its ``recurrent_shape="GHDP"``:
  gate pre-activation ``g_d = Σ_p R[g, h, d, p] s_p``); mixir's ``R[g, h, e, d]`` is its transpose
  in the last two dims. This module passes transposed views (no copies).
- **GRU gates**: ``Wx [B, T, 3, H, D]`` in the order (r, z, n); ``R [3, H, D, D]`` in the order
  (n, r, z) (the recurrent part of the candidate first); ``b [4, H, D]`` in the order
  (b_hn, b_r, b_z, b_in). mixir's GRU takes (r, z, n) everywhere with ``b_in`` folded into ``x_n``.
- **sLSTM**: FlashRNN starts the stabiliser at ``m' = ĩ`` wherever ``n = 0`` (the first step from
  its zero state), clamps the normaliser ``n' = max(f·n + i, 1)`` and the gates ``i, f ≤ 1``;
  mixir's ``library.slstm`` (xLSTM's equations) always takes ``m' = max(log f + m, ĩ)`` and
  ``n' = f·n + i``. The FlashRNN cell is declared here (``slstm_flashrnn_mixer``): the
  declaration is the definition, the float64 reference runs it.
- **results**: ``(states [S, B, T, H, D], last_states [S, B, 1, H, D])`` — every state at every
  step (``states[0]`` is the hidden state h), and the initial ``states`` in ``[S, B, 1, H, D]``.
  mixir's scans output one value per step, so each state other than h is one more scan (a
  declared cell whose output is that state): LSTM costs 2 scans, sLSTM 4. ``library.lstm`` /
  ``library.slstm`` return h alone (one scan).
- ``dtype``: as in FlashRNN, the computation's dtype (``"float32"``, ``"float16"``,
  ``"bfloat16"``): inputs are cast to it, results are in it. ``backend``: ``"cuda"`` runs mixir's
  alternating strategy, ``"cuda_fused"`` / ``"triton_fused"`` its fused one, ``"vanilla"`` /
  ``"vanilla_fwbw"`` mixir's default. ``config`` (a ``FlashRNNConfig``) is refused: mixir picks
  its own launch configuration.
"""
from __future__ import annotations

import torch

from ..dsl import ops as mx
from ..dsl.mixer import In, Param, State, trace
from ..errors import InputError
from ..library.registry import call
from ..library.rnn import elman_mixer, gru_mixer, lstm_mixer
from ..lowering.common.call import check_tensors

FLASHRNN_VERSION = "1.0.5"
FUNCTIONS = ("lstm", "gru", "elman", "slstm")
#: FlashRNN's (gates of Wx, gates of R, gates of b, states) per function
SHAPES = {"lstm": (4, 4, 4, 2), "gru": (3, 3, 4, 1), "elman": (1, 1, 1, 1), "slstm": (4, 4, 4, 4)}
BACKENDS = {"vanilla": None, "vanilla_fwbw": None, "cuda": "alternating", "cuda_fused": "fused",
            "triton_fused": "fused"}
DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}

__all__ = ["FLASHRNN_VERSION", "flashrnn", "lstm_state_mixer", "slstm_flashrnn_mixer"]


# ---- declarations ------------------------------------------------------------------------------


def _rec(h, R):
    """One gate's recurrent term in mixir's layout: a_d = Σ_e h_e R[e, d] (FlashRNN's Σ_p R[d, p] h_p
    with R transposed)."""
    return mx.rename(h, D="E") @ R


def _lstm_cell(xi, xf, xz, xo, Ri, Rf, Rz, Ro, bi, bf, bz, bo, h, c):
    """FlashRNN's LSTM (the same as ``library.lstm``): i, f, o = σ(·), z = tanh(·), c' = f c + i z,
    h' = o tanh(c')."""
    i = mx.sigmoid(xi + _rec(h, Ri) + bi)
    f = mx.sigmoid(xf + _rec(h, Rf) + bf)
    z = mx.tanh(xz + _rec(h, Rz) + bz)
    o = mx.sigmoid(xo + _rec(h, Ro) + bo)
    c = f * c + i * z
    return o * mx.tanh(c), c


def _slstm_cell(xi, xf, xz, xo, Ri, Rf, Rz, Ro, bi, bf, bz, bo, h, c, n, m):
    """FlashRNN's sLSTM: ĩ = x_i + a_i + b_i, l = logσ(x_f + a_f + b_f) + m,
    m' = ĩ where n = 0 (the first step from a zero state), else max(l, ĩ);
    i = min(exp(ĩ − m'), 1), f = min(exp(l − m'), 1), c' = f c + i tanh(x_z + a_z + b_z),
    n' = max(f n + i, 1), h' = σ(x_o + a_o + b_o) c' / n'."""
    it = xi + _rec(h, Ri) + bi
    logfm = mx.logsigmoid(xf + _rec(h, Rf) + bf) + m
    z = mx.tanh(xz + _rec(h, Rz) + bz)
    o = mx.sigmoid(xo + _rec(h, Ro) + bo)
    m_new = mx.where(mx.abs(n) > 0.0, mx.maximum(logfm, it), it)
    i = mx.minimum(mx.exp(it - m_new), 1.0)
    f = mx.minimum(mx.exp(logfm - m_new), 1.0)
    c = f * c + i * z
    n = mx.maximum(f * n + i, 1.0)
    return o * c / n, c, n, m_new


def _lstm_variant(out: int):
    def step(xi: In["D"], xf: In["D"], xz: In["D"], xo: In["D"],
             Ri: Param["E", "D"], Rf: Param["E", "D"], Rz: Param["E", "D"], Ro: Param["E", "D"],
             bi: Param["D"], bf: Param["D"], bz: Param["D"], bo: Param["D"],
             h: State["D"], c: State["D"]):
        new = _lstm_cell(xi, xf, xz, xo, Ri, Rf, Rz, Ro, bi, bf, bz, bo, h, c)
        return (new[out], *new)
    step.__doc__ = f"FlashRNN's LSTM cell, output: state {('h', 'c')[out]} of every step."
    return trace(step, "lstm_flashrnn_" + ("h", "c")[out])


def _slstm_variant(out: int):
    def step(xi: In["D"], xf: In["D"], xz: In["D"], xo: In["D"],
             Ri: Param["E", "D"], Rf: Param["E", "D"], Rz: Param["E", "D"], Ro: Param["E", "D"],
             bi: Param["D"], bf: Param["D"], bz: Param["D"], bo: Param["D"],
             h: State["D"], c: State["D"], n: State["D"], m: State["D"]):
        new = _slstm_cell(xi, xf, xz, xo, Ri, Rf, Rz, Ro, bi, bf, bz, bo, h, c, n, m)
        return (new[out], *new)
    step.__doc__ = ("FlashRNN's sLSTM cell (m' = ĩ where n = 0, n' = max(f n + i, 1), i, f ≤ 1), "
                    f"output: state {('h', 'c', 'n', 'm')[out]} of every step.")
    return trace(step, "slstm_flashrnn" + ("", "_c", "_n", "_m")[out])


#: the LSTM cell with its cell state c as the per-step output (h is ``library.lstm``'s)
lstm_state_mixer = _lstm_variant(1)
#: FlashRNN's sLSTM; ``_SLSTM[k]`` outputs state k (h, c, n, m) of every step
_SLSTM = tuple(_slstm_variant(k) for k in range(4))
slstm_flashrnn_mixer = _SLSTM[0]


# ---- the drop-in ---------------------------------------------------------------------------------


def _check(Wx, R, b, states, function, config, backend, dtype):
    if function not in FUNCTIONS:
        raise InputError(f"flashrnn: function must be one of {FUNCTIONS}, got {function!r}")
    if config is not None:
        raise InputError("flashrnn: config (a FlashRNNConfig) is not supported: mixir chooses its own "
                         "launch configuration; pass function, backend and dtype")
    if backend not in BACKENDS:
        raise InputError(f"flashrnn: backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if dtype not in DTYPES:
        raise InputError(f"flashrnn: dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    named = [("Wx", Wx, True), ("R", R, False), ("b", b, False)]
    check_tensors("flashrnn", named + ([("states", states, False)] if states is not None else []))
    GW, GR, GB, S = SHAPES[function]
    if Wx.ndim != 5 or Wx.shape[2] != GW:
        raise InputError(f"flashrnn: Wx must be [B, T, G, H, D] with G = {GW} for {function}, got "
                         f"shape {tuple(Wx.shape)}")
    B, _, _, H, D = (int(s) for s in Wx.shape)
    if tuple(R.shape) != (GR, H, D, D):
        raise InputError(f"flashrnn: R must be [G, H, D, D] = {(GR, H, D, D)} for {function} "
                         f"(FlashRNN's layout R[g, h, out, in]), got shape {tuple(R.shape)}")
    if tuple(b.shape) != (GB, H, D):
        raise InputError(f"flashrnn: b must be [G, H, D] = {(GB, H, D)} for {function}, got shape "
                         f"{tuple(b.shape)}")
    if states is not None and tuple(states.shape) != (S, B, 1, H, D):
        raise InputError(f"flashrnn: states must be [S, B, 1, H, D] = {(S, B, 1, H, D)} for "
                         f"{function}, got shape {tuple(states.shape)}")


def _per_gate(Wx, R, b, function):
    """FlashRNN's stacked tensors as mixir's per-gate lists (x views, R transposed views, b views),
    in mixir's gate order."""
    Rt = R.transpose(-1, -2)                      # [G, H, in, out]: mixir's R[g, h, e, d]
    if function == "gru":                         # FlashRNN: Wx (r, z, n), R (n, r, z), b (hn, r, z, in)
        xs = [Wx[:, :, 0], Wx[:, :, 1], Wx[:, :, 2] + b[3]]
        return xs, [Rt[1], Rt[2], Rt[0]], [b[1], b[2], b[0]]
    G = Wx.shape[2]
    return [Wx[:, :, g] for g in range(G)], [Rt[g] for g in range(G)], [b[g] for g in range(G)]


def flashrnn(Wx, R, b, states=None, function="lstm", config=None, backend="cuda_fused",
             dtype="bfloat16"):
    """FlashRNN's ``flashrnn``: ``Wx [B, T, G, H, D]`` pre-activations, ``R [G, H, D, D]``
    (``R[g, h, out, in]``), ``b [G, H, D]``, ``states [S, B, 1, H, D]`` (zeros by default).
    Returns ``(states [S, B, T, H, D], last_states [S, B, 1, H, D])`` in ``dtype``."""
    _check(Wx, R, b, states, function, config, backend, dtype)
    dt = DTYPES[dtype]
    Wx, R, b = Wx.to(dt), R.to(dt), b.to(dt)
    init = None if states is None else tuple(s[:, 0].to(dt) for s in states)
    strategy = BACKENDS[backend]
    xs, Rs, bs = _per_gate(Wx, R, b, function)
    arrays = xs + Rs + bs
    opts = {"initial_state": init, "output_final_state": True, "strategy": strategy}
    if function == "slstm":
        mixers = _SLSTM
    elif function == "lstm":
        mixers = (lstm_mixer, lstm_state_mixer)
    else:
        mixers = (gru_mixer if function == "gru" else elman_mixer,)
    h, last = call(mixers[0], arrays, **opts)
    last = last if isinstance(last, tuple) else (last,)
    seqs = [h] + [call(m, arrays, **{**opts, "output_final_state": False}) for m in mixers[1:]]
    out = torch.stack([s.to(dt) for s in seqs])                       # [S, B, T, H, D]
    return out, torch.stack([s.to(dt) for s in last]).unsqueeze(2)     # [S, B, 1, H, D]
