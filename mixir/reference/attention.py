"""Dense masked softmax attention in float64: the definition the kernels are checked against.

``attention_reference(q, k, v, mask, score_mod, scale, data)`` with ``q [B, Tq, H, D]``,
``k, v [B, Tkv, Hkv, D]`` (``H % Hkv == 0``; query head h reads key/value head ``h // (H / Hkv)``):

    s[b, h, i, j] = score_mod(scale * q[b, i, h] . k[b, j, h_kv], b, h, i, j)
    s[b, h, i, j] = -inf where not mask(b, h, i, j)
    o[b, i, h]    = sum_j softmax_j(s[b, h, i, :]) v[b, j, h_kv]      (0 for a row with no key)
    lse[b, h, i]  = log sum_j exp(s[b, h, i, j])                      (-inf for such a row)

It materialises the T x T scores (it is the reference), runs in float64 and is differentiable with
torch autograd (gradients w.r.t. q, k, v). It imports nothing from the kernels.

``evaluate_mask`` gives a mask's (or score modification's) values over broadcast index tensors
``b, h, q, kv``: the ops of the one evaluator (``evaluate.OPS``) on operands of the mask's types
(integers, floats, booleans; ``mask.node_type``). The block-mask builder calls it tile by tile.
"""
from __future__ import annotations

import torch

from ..dsl import ir
from ..dsl.mask import FLOAT_OPS, FULL, SCORE_NAME
from ..errors import DeclarationError
from .evaluate import OPS, TorchBackend

_TORCH = TorchBackend()
# the operands' types per op (the ops mean what ``evaluate.OPS`` says; the types are those of
# ``mask.node_type``): float ops read floats; integer ops keep integers (bools count as int64);
# mixed ops stay integer unless one operand is a float; logic ops read truth values
_INTEGER = ("mod", "floordiv", "neg", "abs")
_MIXED = ("add", "sub", "mul", "max", "min", "lt", "le", "gt", "ge", "eq", "ne")
_LOGIC = ("and", "or", "not")


def evaluate_mask(root: ir.Node, env: dict, data: dict):
    """Evaluate a mask or score-mod expression ``root`` with torch: ``env`` maps "b", "h", "q",
    "kv" (and "score") to ints or broadcastable tensors; ``data`` maps data names to tensors.
    Integer arithmetic stays integer (int64), float ops run in float64 unless the score is of
    another float dtype; predicates give bool tensors; ``data[i0, ...]`` clamps its indices into
    the tensor. Used by the block-mask builder (tile by tile) and the dense reference."""
    fdt = env[SCORE_NAME].dtype if isinstance(env.get(SCORE_NAME), torch.Tensor) else torch.float64
    v = {}
    for n in ir.toposort(root):
        s = [v[x] for x in n.src]
        op = n.op
        if op == "const":
            r = torch.as_tensor(int(n.arg) if float(n.arg).is_integer() and abs(n.arg) < 2**62
                                else float(n.arg))
        elif op == "input":
            r = env[n.arg]
        elif op == "load":
            r = _load(n.arg, data[n.arg], s, fdt)
        else:
            args = _operands(op, s, fdt)      # raises for an op masks do not have
            r = OPS[op](_TORCH, *args)
        v[n] = r
    return v[root]


def _load(name, d, idx, fdt):
    if d.dim() != len(idx):
        raise DeclarationError(f"data {name!r} is indexed with {len(idx)} indices but has "
                               f"shape {tuple(d.shape)}")
    idx = torch.broadcast_tensors(*(_num(i).clamp(0, d.shape[k] - 1) for k, i in enumerate(idx)))
    r = d[tuple(idx)]
    return r.to(fdt) if r.is_floating_point() else r


def _operands(op, s, fdt):
    if op in FLOAT_OPS:
        return [_flt(x, fdt) for x in s]
    if op in _INTEGER:
        return [_num(x) for x in s]
    if op in _MIXED:
        return _promote(s, fdt)
    if op in _LOGIC:
        return [torch.as_tensor(x) for x in s]
    if op == "where":
        return [torch.as_tensor(s[0])] + _promote(s[1:], fdt)
    raise DeclarationError(f"op {op!r} is not supported in attention masks")


def _num(x):  # bool -> int64 for arithmetic
    x = torch.as_tensor(x)
    return x.to(torch.int64) if x.dtype == torch.bool else x


def _flt(x, fdt):
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(fdt)


def _promote(s, fdt):
    a, b = _num(s[0]), _num(s[1])
    if a.is_floating_point() != b.is_floating_point():
        a, b = _flt(a, fdt), _flt(b, fdt)
    return [a, b]


def dense_mask(mask, B, H, q_len, kv_len, data=None, device="cpu") -> torch.Tensor:
    """The mask as a dense bool tensor ``[B, H, q_len, kv_len]`` (for tests and the reference)."""
    mask = FULL if mask is None else mask
    env = {"b": torch.arange(B, device=device)[:, None, None, None],
           "h": torch.arange(H, device=device)[None, :, None, None],
           "q": torch.arange(q_len, device=device)[None, None, :, None],
           "kv": torch.arange(kv_len, device=device)[None, None, None, :]}
    r = evaluate_mask(mask.node, env, dict(data or {}))
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
        s = evaluate_mask(score_mod.node, env, data).to(torch.float64).expand(B, H, Tq, Tkv)
    allowed = dense_mask(mask, B, H, Tq, Tkv, data)
    s = s.masked_fill(~allowed, float("-inf"))
    m = (s.detach().amax(-1, keepdim=True) if Tkv else     # no key (Tkv = 0): o = 0, lse = -inf
         torch.full(tuple(s.shape[:-1]) + (1,), float("-inf"), dtype=s.dtype, device=s.device))
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    o = (p @ v64) / torch.where(denom > 0, denom, torch.ones_like(denom))
    lse = torch.where(denom > 0, m + torch.log(denom.clamp_min(1e-300)),
                      torch.full_like(denom, float("-inf"))).squeeze(-1)
    return o.permute(0, 2, 1, 3), lse
