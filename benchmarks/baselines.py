"""Baselines for benchmarks/bench_gated_linear.py.

1. ``chunk_gla_torch``: a plain PyTorch chunked implementation of the canonical gated-linear
   recurrence (written for the benchmark, independent of mixir's kernels)::

       S_t = diag(exp(g_t + gk_t)) S_{t-1} + k_t v_tᵀ        S: [K, V], g_t scalar, gk_t ∈ R^K
       o_t = (scale · q_t)ᵀ S_t                               (the read-out sees token t)

   Forward only; the backward comes from autograd. Chunks of 64 tokens, computed in fp32 whatever
   the input dtype (the output is cast back):

   - ``b``: the inclusive cumulative sum of the log-decay inside each chunk;
   - inter-chunk: the state at each chunk start, by a Python loop over chunks
     ``S ← exp(b_last) ⊙ S + (k ⊙ exp(b_last − b))ᵀ v``, read by ``(q ⊙ exp(b)) @ S``;
   - intra-chunk: ``A[i, j] = Σ_k q_ik k_jk exp(b_ik − b_jk)`` for ``j ≤ i``, then ``A @ v``.
     With a scalar decay (or none) this is one ``[64, 64]`` matrix per chunk. With a per-key decay
     the chunk is split into sub-chunks of 16: a block below the diagonal (sub-chunks I > J) uses
     the reference point ``r`` = ``b`` at the last token of J, ``(q_I ⊙ exp(b_I − r)) @ (k_J ⊙
     exp(r − b_J))ᵀ``, both exponents ≤ 0; a diagonal block is computed exactly from a
     ``[16, 16, K]`` tensor of ``exp(b_i − b_j)`` (masked to ``j ≤ i`` before the exp).

   Every exponent is ≤ 0 when the log-decays are ≤ 0 (a forget gate in (0, 1]), which is the
   domain of all the mixers benchmarked here; no overflow can occur there.

2. ``fla``'s chunk kernels (flash-linear-attention), when ``import fla`` works (on a GPU).

``TORCH_BASELINES[name]`` and ``fla_baseline(name)`` take the mixer's arguments in mixir's
declaration order and layout (``MIXERS[name].make_inputs``) and return the output in the mixer's
output layout, so that the benchmark compares them element for element with mixir's output.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

CHUNK = 64
SUB_CHUNK = 16


# ---- the plain PyTorch chunked implementation --------------------------------------------------


def chunk_gla_torch(q, k, v, g=None, gk=None, scale=1.0, *, chunk_size=CHUNK, sub_chunk=SUB_CHUNK,
                    initial_state=None, output_final_state=False):
    """Chunked gated linear attention in plain PyTorch (fp32 internally).

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; g: ``[B, T, H]`` (scalar log-decay) or None;
    gk: ``[B, T, H, K]`` (per-key log-decay) or None; initial_state ``[B, H, K, V]`` or None.
    Returns ``o`` ``[B, T, H, V]`` in v's dtype, and the final state ``[B, H, K, V]`` (fp32) when
    ``output_final_state``.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    C = int(chunk_size)
    pad = (-T) % C
    NT = (T + pad) // C

    def chunks(x):   # [B, T, H, D] -> [B, H, NT, C, D] fp32 (zero-padded: no decay, no input)
        x = x.float().transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, NT, C, x.shape[-1])

    q = chunks(q) * scale
    k = chunks(k)
    v = chunks(v)
    per_key = gk is not None
    if per_key:
        lg = chunks(gk)
        if g is not None:
            lg = lg + chunks(g[..., None])
    elif g is not None:
        lg = chunks(g[..., None])[..., 0]            # [B, H, NT, C]
    else:
        lg = None

    if lg is None:
        b = None
        qb, kb = q, k
        decay_last = None
    else:
        b = lg.cumsum(dim=3)                          # inclusive, inside each chunk
        b_last = b[:, :, :, -1:]                      # [B, H, NT, 1(, K)]
        if per_key:
            qb = q * b.exp()
            kb = k * (b_last - b).exp()
            decay_last = b_last[:, :, :, 0].exp()     # [B, H, NT, K]
        else:
            qb = q * b.exp()[..., None]
            kb = k * (b_last - b).exp()[..., None]
            decay_last = b_last[:, :, :, 0].exp()     # [B, H, NT]

    # ---- inter-chunk: the state at each chunk start ----
    U = kb.transpose(-1, -2) @ v                     # [B, H, NT, K, V]
    S = (torch.zeros(B, H, K, V, device=q.device, dtype=torch.float32) if initial_state is None
         else initial_state.float())
    starts = []
    for n in range(NT):
        starts.append(S)
        if decay_last is None:
            S = S + U[:, :, n]
        elif per_key:
            S = decay_last[:, :, n, :, None] * S + U[:, :, n]
        else:
            S = decay_last[:, :, n, None, None] * S + U[:, :, n]
    o = qb @ torch.stack(starts, dim=2)              # [B, H, NT, C, V]

    # ---- intra-chunk ----
    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] >= idx[None, :]
    if not per_key:
        A = q @ k.transpose(-1, -2)                  # [B, H, NT, C, C]
        if b is None:
            A = A.masked_fill(~causal, 0.0)
        else:
            diff = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
            A = A * diff.exp()
        o = o + A @ v
    else:
        Sc = int(sub_chunk)
        if C % Sc:
            raise ValueError(f"chunk_size {C} is not a multiple of sub_chunk {Sc}")
        NS = C // Sc
        qs = q.reshape(B, H, NT, NS, Sc, K)
        ks = k.reshape(B, H, NT, NS, Sc, K)
        vs = v.reshape(B, H, NT, NS, Sc, V)
        bs = b.reshape(B, H, NT, NS, Sc, K)
        sub = torch.arange(Sc, device=q.device)
        sub_causal = (sub[:, None] >= sub[None, :])[:, :, None]          # [Sc, Sc, 1]
        # diagonal blocks, exact: exp(b_i - b_j) for j <= i, 0 above the diagonal
        diff = (bs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~sub_causal, float("-inf"))
        A_diag = torch.einsum("...ik,...jk,...ijk->...ij", qs, ks, diff.exp())
        o_rows = [A_diag[..., I, :, :] @ vs[..., I, :, :] for I in range(NS)]
        # blocks below the diagonal, with the reference point at the last token of sub-chunk J
        for J in range(NS - 1):
            r = bs[..., J, -1:, :]                                        # [B, H, NT, 1, K]
            kJ = ks[..., J, :, :] * (r - bs[..., J, :, :]).exp()
            for I in range(J + 1, NS):
                qI = qs[..., I, :, :] * (bs[..., I, :, :] - r).exp()
                o_rows[I] = o_rows[I] + (qI @ kJ.transpose(-1, -2)) @ vs[..., J, :, :]
        o = o + torch.stack(o_rows, dim=3).reshape(B, H, NT, C, V)

    o = o.reshape(B, H, NT * C, V)[:, :, :T].transpose(1, 2).to(out_dtype)
    if output_final_state:
        return o, S
    return o


# ---- adapters: mixir's declared arguments -> the canonical form ---------------------------------


def _scale(q):
    return q.shape[-1] ** -0.5


def retention_log_decay(H, device):
    """RetNet's per-head log-decay log(1 - 2^(-5-h)), h = 0..H-1 (as mixir and fla declare it)."""
    h = torch.arange(H, device=device, dtype=torch.float32)
    return torch.log1p(-torch.exp2(-5.0 - h))


def _torch_linear_attention(q, k, v):
    return chunk_gla_torch(q, k, v, scale=_scale(q))


def _torch_retention(q, k, v):
    B, T, H, _ = q.shape
    g = retention_log_decay(H, q.device).expand(B, T, H)
    return chunk_gla_torch(q, k, v, g=g, scale=_scale(q))


def _torch_simple_gla(q, k, v, g):
    return chunk_gla_torch(q, k, v, g=g, scale=_scale(q))


def _torch_gla(q, k, v, gk):
    return chunk_gla_torch(q, k, v, gk=gk, scale=_scale(q))


def _mamba2_canonical(x, dt, A, Bm, Cm):
    """Mamba-2 SSD as gated linear attention: q = C, k = dt·B, v = x, g = dt·A, scale 1."""
    dtf = dt.float()
    return Cm, Bm.float() * dtf[..., None], x, dtf * A.float()


def _torch_mamba2(x, dt, A, Bm, Cm, D):
    q, k, v, g = _mamba2_canonical(x, dt, A, Bm, Cm)
    o = chunk_gla_torch(q, k, v, g=g, scale=1.0)
    return (o.float() + D.float()[:, None] * x.float()).to(x.dtype)


#: mixer name -> f(*arrays in declaration order) -> output, by chunk_gla_torch
TORCH_BASELINES = {
    "linear_attention": _torch_linear_attention,
    "retention": _torch_retention,
    "simple_gla": _torch_simple_gla,
    "gla": _torch_gla,
    "mamba2": _torch_mamba2,
}


# ---- flash-linear-attention --------------------------------------------------------------------


def _fla_call(fn, *args, **kwargs):
    """Call an fla chunk op in layout [B, T, H, ...] (older fla releases default to head_first=True)
    and return the output alone."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "head_first" in params:
        kwargs["head_first"] = False
    out = fn(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def fla_baseline(name):
    """``(callable, None)`` running fla's chunk kernel for mixer ``name`` on mixir's declared
    arguments, or ``(None, reason)`` when fla is absent or has no kernel for it."""
    try:
        import fla  # noqa: F401
    except ImportError as e:     # fla not installed (or its import fails on this machine)
        return None, f"fla not importable ({e.__class__.__name__})"
    except Exception as e:       # noqa: BLE001 - e.g. triton/driver errors at import
        return None, f"fla import failed ({e.__class__.__name__}: {e})"
    try:
        if name == "linear_attention":
            from fla.ops.linear_attn import chunk_linear_attn

            def run(q, k, v):
                return _fla_call(chunk_linear_attn, q, k, v, scale=_scale(q), normalize=False)
        elif name == "retention":
            from fla.ops.retention import chunk_retention

            def run(q, k, v):
                return _fla_call(chunk_retention, q, k, v, scale=_scale(q))
        elif name == "simple_gla":
            from fla.ops.simple_gla import chunk_simple_gla

            def run(q, k, v, g):
                return _fla_call(chunk_simple_gla, q, k, v, g, scale=_scale(q))
        elif name == "gla":
            from fla.ops.gla import chunk_gla

            def run(q, k, v, gk):
                return _fla_call(chunk_gla, q, k, v, gk, scale=_scale(q))
        elif name == "mamba2":
            # fla has no Mamba-2 op of this signature: run its simple-GLA chunk kernel on the
            # canonical form (q = C, k = dt·B, v = x, g = dt·A), plus the D skip
            from fla.ops.simple_gla import chunk_simple_gla

            def run(x, dt, A, Bm, Cm, D):
                q, k, v, g = _mamba2_canonical(x, dt, A, Bm, Cm)
                o = _fla_call(chunk_simple_gla, q, k.to(x.dtype), v, g, scale=1.0)
                return (o.float() + D.float()[:, None] * x.float()).to(x.dtype)
        else:
            return None, f"no fla kernel mapped for {name}"
    except ImportError as e:
        return None, f"fla has no kernel for {name} ({e})"
    return run, None


def describe():
    """One line per baseline, for the benchmark's header."""
    return [f"torch-chunked: benchmarks/baselines.py chunk_gla_torch (chunk {CHUNK}, sub-chunk "
            f"{SUB_CHUNK} for per-key decays, fp32 math, autograd backward)",
            "fla: flash-linear-attention chunk kernels (chunk_linear_attn normalize=False, "
            "chunk_retention, chunk_simple_gla, chunk_gla; mamba2 via chunk_simple_gla)"]
