"""Dense masked softmax attention in float64: the definition the kernels are checked against.

``attention_reference(q, k, v, mask, score_mod, scale, data)`` with ``q [B, Tq, H, D]``,
``k, v [B, Tkv, Hkv, D]`` (``H % Hkv == 0``; query head h reads key/value head ``h // (H / Hkv)``):

    s[b, h, i, j] = score_mod(scale * q[b, i, h] . k[b, j, h_kv], b, h, i, j)
    s[b, h, i, j] = -inf where not mask(b, h, i, j)
    o[b, i, h]    = sum_j softmax_j(s[b, h, i, :]) v[b, j, h_kv]      (0 for a row with no key)
    lse[b, h, i]  = log sum_j exp(s[b, h, i, j])                      (-inf for such a row)

It materialises the T x T scores (it is the reference), runs in float64 and is differentiable with
torch autograd (gradients w.r.t. q, k, v). It imports nothing from the kernels.
"""
from __future__ import annotations

import torch

from ..dsl.mask import FULL, SCORE_NAME, evaluate


def dense_mask(mask, B, H, q_len, kv_len, data=None, device="cpu") -> torch.Tensor:
    """The mask as a dense bool tensor ``[B, H, q_len, kv_len]`` (for tests and the reference)."""
    mask = FULL if mask is None else mask
    env = {"b": torch.arange(B, device=device)[:, None, None, None],
           "h": torch.arange(H, device=device)[None, :, None, None],
           "q": torch.arange(q_len, device=device)[None, None, :, None],
           "kv": torch.arange(kv_len, device=device)[None, None, None, :]}
    r = evaluate(mask.node, env, dict(data or {}))
    r = r if r.dtype == torch.bool else r != 0
    return r.expand(B, H, q_len, kv_len)


def attention_reference(q, k, v, mask=None, score_mod=None, scale=None, data=None):
    """(o [B, Tq, H, D] float64, lse [B, H, Tq] float64); see the module docstring."""
    B, Tq, H, D = q.shape
    Tkv, Hkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    G = H // Hkv
    q64 = q.to(torch.float64).permute(0, 2, 1, 3)                           # B H Tq D
    k64 = k.to(torch.float64).permute(0, 2, 1, 3).repeat_interleave(G, 1)  # B H Tkv D
    v64 = v.to(torch.float64).permute(0, 2, 1, 3).repeat_interleave(G, 1)
    s = scale * q64 @ k64.transpose(-1, -2)
    data = dict(data or {})
    if score_mod is not None:
        env = {SCORE_NAME: s,
               "b": torch.arange(B)[:, None, None, None], "h": torch.arange(H)[None, :, None, None],
               "q": torch.arange(Tq)[None, None, :, None], "kv": torch.arange(Tkv)[None, None, None, :]}
        s = evaluate(score_mod.node, env, data).to(torch.float64).expand(B, H, Tq, Tkv)
    allowed = dense_mask(mask, B, H, Tq, Tkv, data)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    o = (p @ v64) / torch.where(denom > 0, denom, torch.ones_like(denom))
    lse = torch.where(denom > 0, m + torch.log(denom.clamp_min(1e-300)),
                      torch.full_like(denom, float("-inf"))).squeeze(-1)
    return o.permute(0, 2, 1, 3), lse
