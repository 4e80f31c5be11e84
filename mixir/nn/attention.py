"""Softmax attention layers under block-sparse masks, running mixir's attention kernels:
``SparseAttention(mask=...)`` for any mask, ``SlidingWindowAttention`` and ``DocumentAttention``.

Multi-head attention as in fla's ``layers/attn.py``: ``q, k, v = W_q x, W_k x, W_v x``
(``num_kv_heads`` < ``num_heads``: grouped-query attention), rotary position embeddings on q and
k (Su et al. 2021, RoFormer, arXiv:2104.09864), ``o = softmax(q kᵀ/√d + mask) v`` per head, then
``W_o``. The layers keep no cache: ``output_final_state`` is not offered.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention import attention
from ..dsl.mask import Mask
from ..errors import InputError
from ..library.attention import (
    causal_mask,
    document_attention,
    sliding_window_attention,
)
from .common import RMSNorm, check_divides, check_positive, check_x, heads, xavier_


def rotary(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """Rotary position embedding of ``x [B, T, H, D]`` (D even; the two halves rotate as pairs,
    GPT-NeoX style): position ``t`` turns pair ``j`` by ``(t + offset)·base^(−2j/D)``."""
    T, D = x.shape[1], x.shape[-1]
    half = D // 2
    inv = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2.0 / D)
    ang = (torch.arange(T, device=x.device, dtype=torch.float32) + offset)[:, None] * inv[None]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x.float()[..., :half], x.float()[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x.float()[..., 2 * half:]], -1)
    return out.to(x.dtype)


class SparseAttention(nn.Module):
    """Multi-head softmax attention under a ``mixir.attention`` mask (``mask=None``: causal).

    ``mask`` is a ``Mask`` (``mixir.attention.mask``, ``sliding_window_mask(...)``, ...) or a
    FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)``; its data tensors (e.g. document ids)
    come as ``forward(x, data={...})``. ``rope``: rotary embeddings on q and k; ``qk_norm``: RMSNorm
    of q and k per head (as in recent fla models). Projections: ``xavier_uniform_`` gain ``2^-2.5``.
    """

    def __init__(self, d_model: int, num_heads: int = 4, num_kv_heads: int | None = None, mask=None,
                 rope: bool = True, rope_base: float = 10000.0, qk_norm: bool = False,
                 block_size: int | None = None, bias: bool = False):
        super().__init__()
        name = type(self).__name__
        self.d_model = check_positive(d_model, "d_model", name)
        self.num_heads = check_positive(num_heads, "num_heads", name)
        self.num_kv_heads = check_positive(num_kv_heads or num_heads, "num_kv_heads", name)
        check_divides(num_heads, self.num_kv_heads, "num_heads", name, "num_kv_heads")
        self.head_dim = check_divides(d_model, num_heads, "d_model", name)
        if mask is not None and not (isinstance(mask, Mask) or callable(mask)):
            raise InputError(f"{name}: mask must be a mixir.attention Mask or a mask function "
                             f"(b, h, q_idx, kv_idx), got {type(mask).__name__}")
        self.mask = mask if mask is not None else causal_mask()
        self.rope, self.rope_base, self.block_size = rope, rope_base, block_size
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        xavier_(self)

    def qkv(self, x):
        """``(q, k, v)`` ``[B, T, H(kv), head_dim]``: projected, normed and rotated as the kernel sees them."""
        check_x(x, self.d_model, type(self).__name__)
        q = heads(self.q_proj(x), self.num_heads)
        k = heads(self.k_proj(x), self.num_kv_heads)
        v = heads(self.v_proj(x), self.num_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
        return q, k, v

    def attend(self, q, k, v, **kw):
        return attention(q, k, v, mask=self.mask, data=kw.get("data"), block_size=self.block_size)

    def forward(self, x, data=None):
        q, k, v = self.qkv(x)
        o = self.attend(q, k, v, data=data)
        return self.o_proj(o.flatten(-2))


class SlidingWindowAttention(SparseAttention):
    """Causal (or symmetric, ``causal=False``) local attention: token t sees ``t − window < s ≤ t``
    (Beltagy et al. 2020, Longformer, arXiv:2004.05150; Mistral's sliding window). Arguments as
    ``SparseAttention`` plus ``window``."""

    def __init__(self, d_model: int, num_heads: int = 4, window: int = 64, causal: bool = True, **kw):
        if "mask" in kw:
            raise InputError("SlidingWindowAttention: the mask is the sliding window; use "
                             "SparseAttention(mask=...) for another one")
        super().__init__(d_model, num_heads, **kw)
        self.window = check_positive(window, "window", "SlidingWindowAttention")
        self.causal = causal

    def attend(self, q, k, v, **kw):
        return sliding_window_attention(q, k, v, self.window, causal=self.causal, block_size=self.block_size)

    def forward(self, x):
        return super().forward(x)


class DocumentAttention(SparseAttention):
    """Attention within packed documents: token t sees s iff ``doc[s] = doc[t]`` (and ``s ≤ t`` when
    ``causal``); negative ids are padding. ``forward(x, doc_ids=None, cu_seqlens=None)``: exactly
    one of ``doc_ids [B, T]`` (ints) or fla's ``cu_seqlens`` (then B = 1)."""

    def __init__(self, d_model: int, num_heads: int = 4, causal: bool = True, **kw):
        if "mask" in kw:
            raise InputError("DocumentAttention: the mask is the document mask; use "
                             "SparseAttention(mask=...) for another one")
        super().__init__(d_model, num_heads, **kw)
        self.causal = causal

    def attend(self, q, k, v, **kw):
        return document_attention(q, k, v, kw.get("doc_ids"), cu_seqlens=kw.get("cu_seqlens"),
                                  causal=self.causal, block_size=self.block_size)

    def forward(self, x, doc_ids=None, cu_seqlens=None):
        q, k, v = self.qkv(x)
        o = self.attend(q, k, v, doc_ids=doc_ids, cu_seqlens=cu_seqlens)
        return self.o_proj(o.flatten(-2))
