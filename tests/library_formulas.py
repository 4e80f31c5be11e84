"""Shared helpers of tests/test_library_reference.py and tests/test_library_wrappers.py: the
dimensions, sampled inputs and float64 reference run of a library mixer, and the independent
NumPy formulas (fla's / mamba_ssm's functions, in their layouts) the library is checked against."""
import numpy as np

import mixir as mx
from mixir.library import MIXERS

B, T, H, K, V = 2, 7, 3, 4, 5
TOL = dict(rtol=1e-11, atol=1e-11)


def softplus(x):
    return np.logaddexp(0.0, x)


def silu(x):
    return x / (1.0 + np.exp(-x))


def library_inputs(name, seed=0, **kw):
    """The sampled arrays and initial state of ``MIXERS[name]`` (dims B, T, H, K, V unless given)."""
    entry = MIXERS[name]
    rng = np.random.default_rng(seed)
    dims = dict(B=B, T=T, H=H, K=K, V=V) | kw
    arrays = entry.make_inputs(rng, **dims)
    h0 = entry.make_initial_state(rng, dims["B"], dims["H"], dims["K"], dims["V"])
    return arrays, h0


def run_reference(name, arrays, h0, **kw):
    """The float64 reference of ``MIXERS[name]``: (output, final state)."""
    return mx.reference(MIXERS[name].mixer)(*arrays, initial_state=h0, output_final_state=True, **kw)


def gla_loop(q, k, v, log_decay_k, scale, h0):
    """S_t = diag(exp(gk_t)) S_{t-1} + k_t v_tᵀ, o_t = scale·q_tᵀ S_t; gk [B, T, H, K]."""
    S = h0.copy()
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        S = np.exp(log_decay_k[:, t])[..., None] * S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


def hgrn_loop(x, g, h0):
    """fla naive_recurrent_hgrn on [B, T, D]: h_t = exp(g_t) h_{t-1} + x_t, o_t = h_t."""
    h, o = h0.copy(), np.zeros(x.shape)
    for t in range(x.shape[1]):
        h = np.exp(g[:, t]) * h + x[:, t]
        o[:, t] = h
    return o, h


def lightnet_fla(q, k, v, scale, h0=None, z0=None):
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
    o, S = gla_loop(q, key, v, g, scale, np.zeros((Bn, Hn, Kn, v.shape[-1])) if h0 is None else h0)
    return o, S, z[:, -1:]


def selective_scan_np(u, delta, A, Bm, Cm, D=None, z=None, delta_bias=None, delta_softplus=False,
                      h0=None):
    """mamba_ssm's selective_scan_ref, literally, in its layout: u, delta, z [B, D, L]; A [D, N];
    B, C [B, N, L] or [B, G, N, L]; D, delta_bias [D]. Plus an initial state h0 [B, D, N]."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = softplus(delta)
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
        out = out * silu(z)
    return out, x


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
