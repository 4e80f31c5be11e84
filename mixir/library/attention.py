"""Built-in attention masks, each declared in the mask DSL, and their attention calls.

Every ``*_attention`` takes q [B, Tq, H, D], k and v [B, Tkv, Hkv, D] (layout ``[B, T, H, D]``
like fla / flash-attn) and the keywords ``scale`` (default D ** -0.5), ``block_size`` (tile sizes
of the block mask), ``return_lse`` and ``group`` (a ProcessGroup or 1-D DeviceMesh: context
parallelism, each rank passing its contiguous slice of the sequence). Query i and key j are at
positions i and j of their
sequences (for Tq != Tkv the two sequences are aligned at their starts).

Constants of a mask (a window, a stride, a block size) are part of its expression, hence of its
kernels; data (document ids, prefix lengths, MoBA's top-k choice) is not: new data rebuilds only
the block-mask metadata.
"""
from __future__ import annotations

import functools
import math

import torch

from ..errors import InputError
from ..dsl.signature import check_offsets
from ..lowering.common.call import assume_constant, check_cu_seqlens, is_compiling
from ..dsl.mask import REGISTRY, Mask, abs_, mask
from ..distributed.collectives import all_gather_ints
from ..distributed.group import resolve_group
from ..lowering.attention.context import (context_parallel_attention, gather_tokens,
                                          global_length)
from ..lowering.attention.ops import attention, check_qkv

__all__ = ["causal_mask", "sliding_window_mask", "document_mask", "prefix_lm_mask", "dilated_mask",
           "global_local_mask", "moba_mask", "moba_selection", "doc_ids_from_cu_seqlens",
           "causal_attention", "sliding_window_attention", "document_attention",
           "prefix_lm_attention", "dilated_attention", "global_local_attention", "moba", "MASKS",
           "example_data"]


def _declaration(factory):
    """A cached mask factory (the same arguments give the same ``Mask``) that ``torch.compile``
    traces without a graph break: Dynamo calls the declaration eagerly at trace time and keeps
    only the mask's key, a string constant (``assume_constant``), then looks the ``Mask`` up in
    ``mask.REGISTRY`` - instead of tracing the ``@mask`` declaration (``inspect.signature`` and
    the IR building, which it cannot trace)."""
    cached = functools.lru_cache(maxsize=None)(factory)

    def key(*args, **kwargs) -> str:
        return cached(*args, **kwargs).key
    key.__name__ = key.__qualname__ = f"{factory.__name__}_key"
    key = assume_constant(key)

    @functools.wraps(factory)
    def get(*args, **kwargs):
        return REGISTRY[key(*args, **kwargs)]
    get.cache_clear = cached.cache_clear
    return get


def same_length(fn, q, k, equal=True):
    """``InputError`` unless q and k are 4-D torch tensors with (``equal``) the same T (masks
    over one packed sequence)."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{fn}: {name} must be a 4-D torch.Tensor [B, T, H, D], got "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    Tq, H, Tk, Hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    if equal and Tq != Tk:
        hint = ""
        if H == Hkv and Hkv and Tk and Tq % Tk == 0:
            hint = (f"; q and k have the same {H} in their H position and T positions {Tq} and "
                    f"{Tk} that divide like query and KV heads: are they laid out [B, H, T, D]? "
                    f"mixir takes [B, T, H, D] like fla / flash-attn (x.transpose(1, 2))")
        raise InputError(f"{fn} needs Tq == Tkv, got q {tuple(q.shape)} and k {tuple(k.shape)}{hint}")


def _pos_int(x, name):
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise InputError(f"{name} must be a positive int, got {x!r}")
    return x


# ---------------------------------------------------------------------------------------- masks

@_declaration
def causal_mask() -> Mask:
    """kv <= q."""
    @mask
    def causal(b, h, q, kv):
        return kv <= q
    return causal


@_declaration
def sliding_window_mask(window: int, causal: bool = True) -> Mask:
    """Causal: 0 <= q - kv < window. Non-causal: |q - kv| < window."""
    _pos_int(window, "window")
    if causal:
        @mask
        def sliding_window(b, h, q, kv):
            return (kv <= q) & (q - kv < window)
    else:
        @mask
        def sliding_window(b, h, q, kv):
            return abs_(q - kv) < window
    return sliding_window


@_declaration
def document_mask(causal: bool = True) -> Mask:
    """Packed sequences: doc[b, q] == doc[b, kv] (and kv <= q if causal); tokens with a negative
    document id (padding past the last sequence) attend to nothing. Data: ``doc`` [B, T] ints."""
    if causal:
        @mask
        def document(b, h, q, kv, doc):
            return (doc[b, q] == doc[b, kv]) & (doc[b, q] >= 0) & (kv <= q)
    else:
        @mask
        def document(b, h, q, kv, doc):
            return (doc[b, q] == doc[b, kv]) & (doc[b, q] >= 0)
    return document


@_declaration
def prefix_lm_mask() -> Mask:
    """Bidirectional over the prefix, causal after it: kv <= q or kv < prefix[b].
    Data: ``prefix`` [B] ints."""
    @mask
    def prefix_lm(b, h, q, kv, prefix):
        return (kv <= q) | (kv < prefix[b])
    return prefix_lm


@_declaration
def dilated_mask(stride: int, causal: bool = True) -> Mask:
    """Every ``stride``-th key: (q - kv) % stride == 0 (and kv <= q if causal)."""
    _pos_int(stride, "stride")
    if causal:
        @mask
        def dilated(b, h, q, kv):
            return (kv <= q) & ((q - kv) % stride == 0)
    else:
        @mask
        def dilated(b, h, q, kv):
            return (q - kv) % stride == 0
    return dilated


@_declaration
def global_local_mask(globals: int, window: int, causal: bool = False) -> Mask:  # noqa: A002
    """Longformer-style: the first ``globals`` tokens attend to and are attended by every token;
    the others see a local window |q - kv| < window (and only kv <= q if causal)."""
    _pos_int(window, "window")
    if isinstance(globals, bool) or not isinstance(globals, int) or globals < 0:
        raise InputError(f"globals must be an int >= 0, got {globals!r}")
    g = globals

    @mask
    def global_local(b, h, q, kv):
        m = (kv < g) | (q < g) | (abs_(q - kv) < window)
        return m & (kv <= q) if causal else m
    return global_local


@_declaration
def moba_mask(block_size: int) -> Mask:
    """MoBA: kv <= q and key block kv // block_size selected for (b, h, q).
    Data: ``sel`` [B, H, Tq, NB] bool (``moba_selection``)."""
    _pos_int(block_size, "block_size")

    @mask
    def moba(b, h, q, kv, sel):
        return (kv <= q) & sel[b, h, q, kv // block_size]
    return moba


# ---------------------------------------------------------------------------------------- data

def doc_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """[1, T] int32 document ids of a packed batch (-1 past the last sequence: this helper also
    builds padded ``doc_ids``; ``document_attention(cu_seqlens=)`` requires offsets ending at T,
    the rule of every family). ``cu_seqlens``: int32/int64 offsets, starting at 0, non-decreasing,
    ending at or before T."""
    check_cu_seqlens(cu_seqlens, None)
    cu = cu_seqlens.to(torch.int64)
    if not is_compiling():   # value checks would break the graph; the eager call checks them
        offs = [int(x) for x in cu.tolist()]
        if offs[-1] <= T:
            check_offsets(cu, offs[-1])
        else:
            raise InputError(f"cu_seqlens must end at or before T = {T}, got {offs}")
    t = torch.arange(T, device=cu.device)
    ids = torch.bucketize(t, cu[1:], right=True)
    ids = torch.where(t < cu[-1], ids, torch.full_like(ids, -1))
    return ids.to(torch.int32)[None]


def moba_selection(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int) -> torch.Tensor:
    """MoBA's gate: for each query token (b, h, t) its own key block t // block_size and the
    ``topk`` past key blocks (entirely before its own) with the largest q . mean(k over the block).
    Returns sel [B, H, T, NB] bool (no gradient: the top-k choice is not differentiable)."""
    with torch.no_grad():
        B, T, H, D = q.shape
        Tk, HK = k.shape[1], k.shape[2]
        NB = math.ceil(Tk / block_size)
        kp = torch.zeros((B, NB * block_size, HK, D), device=k.device, dtype=torch.float32)
        kp[:, :Tk] = k.float()
        counts = torch.clamp(Tk - torch.arange(NB, device=k.device) * block_size, max=block_size)
        kmean = kp.view(B, NB, block_size, HK, D).sum(2) / counts[None, :, None, None]
        return _moba_pick(q, kmean, torch.arange(T, device=q.device) // block_size, topk)


def _moba_pick(q, kmean, own, topk):
    """sel [B, H, Tq, NB]: per query its own block ``own`` [Tq] and the ``topk`` best past blocks
    by q . kmean (kmean [B, NB, HK, D], the key blocks' means)."""
    H, NB = q.shape[2], kmean.shape[1]
    kmean = kmean.repeat_interleave(H // kmean.shape[2], 2)              # [B, NB, H, D]
    scores = torch.einsum("bthd,bnhd->bhtn", q.float(), kmean)            # [B, H, Tq, NB]
    blk = torch.arange(NB, device=q.device)[None, :]
    past = blk < own[:, None]
    scores = scores.masked_fill(~past, float("-inf"))
    sel = (blk == own[:, None]).expand(q.shape[0], H, q.shape[1], NB).clone()
    kk = min(topk, NB)
    if kk > 0:
        vals, idx = scores.topk(kk, dim=-1)
        chosen = torch.zeros_like(sel)
        chosen.scatter_(-1, idx, torch.isfinite(vals))
        sel |= chosen
    return sel


def _moba_selection_sharded(q, k, block_size: int, topk: int, group) -> torch.Tensor:
    """``moba_selection`` of this rank's queries (q, k: this rank's slices) against the whole
    sequence's key blocks: every rank adds its keys into per-block sums and counts, summed over
    the ranks by one all-reduce of [B, NB, HK, D] (T / block_size rows, not the keys). The other
    ranks' query rows stay False: this rank's kernels read only its own. Returns sel
    [B, H, T_global, NB] (the mask's data is indexed by global positions)."""
    g = resolve_group(group)
    lens = all_gather_ints([q.shape[1]], g, q.device)
    q0, TG = sum(n[0] for n in lens[:g.rank]), sum(n[0] for n in lens)
    B, Tq, H, D = q.shape
    NB = max(1, math.ceil(TG / block_size))
    with torch.no_grad():
        blocks = (q0 + torch.arange(Tq, device=q.device)) // block_size
        sums = torch.zeros((B, NB, k.shape[2], D), device=k.device, dtype=torch.float32)
        sums.index_add_(1, blocks, k.float())
        counts = torch.zeros(NB, device=k.device, dtype=torch.float32)
        counts.index_add_(0, blocks, torch.ones(Tq, device=k.device))
        torch.distributed.all_reduce(sums, group=g.pg)
        torch.distributed.all_reduce(counts, group=g.pg)
        kmean = sums / counts.clamp(min=1.0)[None, :, None, None]
        sel = torch.zeros((B, H, TG, NB), dtype=torch.bool, device=q.device)
        sel[:, :, q0:q0 + Tq] = _moba_pick(q, kmean, blocks, topk)
    return sel


# ---------------------------------------------------------------------------------------- calls

def _run(q, k, v, m, data, scale, block_size, return_lse, config=None, group=None):
    if group is not None:
        return context_parallel_attention(q, k, v, group=group, mask=m, data=data, scale=scale,
                                          block_size=block_size, config=config,
                                          return_lse=return_lse)
    return attention(q, k, v, mask=m, data=data, scale=scale, block_size=block_size,
                     config=config, return_lse=return_lse)


def causal_attention(q, k, v, *, scale=None, block_size=None, config=None, return_lse=False,
                     group=None):
    return _run(q, k, v, causal_mask(), {}, scale, block_size, return_lse, config, group)


def sliding_window_attention(q, k, v, window: int, *, causal=True, scale=None, block_size=None,
                             config=None, return_lse=False, group=None):
    return _run(q, k, v, sliding_window_mask(window, causal), {}, scale, block_size, return_lse,
                config, group)


def document_attention(q, k, v, doc_ids=None, *, cu_seqlens=None, causal=True, scale=None,
                       block_size=None, config=None, return_lse=False, group=None):
    """Packed sequences given by ``doc_ids`` [B, T] (ints; negative = padding) or by
    ``cu_seqlens`` (then B == 1, fla's convention; int32/int64 offsets starting at 0,
    non-decreasing and ending at T, as for every family: padding is ``doc_ids`` < 0).
    With ``group``: ``doc_ids`` is this rank's slice [B, T_r] like q; ``cu_seqlens`` is global
    (ends at the global T, the sum of the ranks' T_r)."""
    if (doc_ids is None) == (cu_seqlens is None):
        raise InputError("pass exactly one of doc_ids and cu_seqlens")
    same_length("document_attention", q, k, equal=cu_seqlens is not None or group is not None)
    T = q.shape[1] if group is None else global_length(q.shape[1], group)
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise InputError(f"document_attention: with cu_seqlens the batch size must be 1, got {q.shape[0]}")
        check_cu_seqlens(cu_seqlens, q.device)
        if not is_compiling():
            check_offsets(cu_seqlens, T)      # the rule of every family: ends at (global) T
        doc_ids = doc_ids_from_cu_seqlens(cu_seqlens, T)
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.is_floating_point() or doc_ids.is_complex():
        raise InputError(f"document_attention: doc_ids must be an integer tensor [B, T], got "
                         f"{getattr(doc_ids, 'dtype', type(doc_ids).__name__)}")
    if doc_ids.dim() != 2 or doc_ids.shape[0] != q.shape[0] or doc_ids.shape[1] < max(q.shape[1], k.shape[1]):
        raise InputError(f"document_attention: doc_ids must be [B, T] = {(q.shape[0], q.shape[1])}, "
                         f"got {tuple(doc_ids.shape)}")
    if group is not None and cu_seqlens is None:
        doc_ids = gather_tokens(doc_ids[:, :q.shape[1]], group)
    return _run(q, k, v, document_mask(causal), {"doc": doc_ids}, scale, block_size, return_lse,
                config, group)


def prefix_lm_attention(q, k, v, prefix, *, scale=None, block_size=None, config=None, return_lse=False,
                        group=None):
    """``prefix``: an int or a [B] tensor of prefix lengths."""
    B = q.shape[0]
    prefix = (torch.full((B,), int(prefix), dtype=torch.int32) if not isinstance(prefix, torch.Tensor)
              else prefix.reshape(-1))
    if prefix.numel() != B:
        raise InputError(f"prefix must be an int or have B={B} entries, got {tuple(prefix.shape)}")
    return _run(q, k, v, prefix_lm_mask(), {"prefix": prefix}, scale, block_size, return_lse, config,
                group)


def dilated_attention(q, k, v, stride: int, *, causal=True, scale=None, block_size=None,
                      config=None, return_lse=False, group=None):
    return _run(q, k, v, dilated_mask(stride, causal), {}, scale, block_size, return_lse, config,
                group)


def global_local_attention(q, k, v, globals: int, window: int, *, causal=False,  # noqa: A002
                           scale=None, block_size=None, config=None, return_lse=False, group=None):
    return _run(q, k, v, global_local_mask(globals, window, causal), {}, scale, block_size,
                return_lse, config, group)


def moba(q, k, v, block_size: int, topk: int, *, scale=None, tile_size=None, config=None,
         return_lse=False, group=None):
    """Mixture of Block Attention: each query attends causally within its own key block and to
    the ``topk`` past key blocks ranked by q . mean-pooled keys (``moba_selection``). ``tile_size``
    is the block-mask tile (default: the tuner's tiles for the dtype and head dim, as for every
    mask; any tile is exact, and tiles that divide ``block_size`` keep selected blocks' tiles full)."""
    _pos_int(block_size, "block_size")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise InputError(f"topk must be an int >= 0, got {topk!r}")
    same_length("moba", q, k)
    check_qkv(q, k, v)                  # before the selection reads q and k
    if group is None:
        sel = moba_selection(q, k, block_size, topk)
    else:   # the block means of the whole sequence's keys: one all-reduce of T / block_size rows
        sel = _moba_selection_sharded(q, k, block_size, topk, group)
    return _run(q, k, v, moba_mask(block_size), {"sel": sel}, scale, tile_size, return_lse, config,
                group)


def example_data(name: str, B: int, H: int, T: int, args=(), seed: int = 0) -> dict:
    """Representative data of a library mask (for tuning: the mask's tile profile, and recording
    its kernels): ``document`` four documents per sequence at random cuts; ``prefix_lm`` a prefix
    of T / 4; ``moba`` the selection of random q, k (``args`` = (block_size, topk=3))."""
    g = torch.Generator().manual_seed(seed)
    if name == "document":
        cuts = torch.sort(torch.randint(1, max(2, T), (B, 3), generator=g), dim=1).values
        return {"doc": torch.stack([torch.bucketize(torch.arange(T), c, right=True) for c in cuts])
                .to(torch.int32)}
    if name == "prefix_lm":
        return {"prefix": torch.full((B,), max(1, T // 4), dtype=torch.int32)}
    if name == "moba":
        block, topk = (tuple(args) + (32, 3)[len(args):])[:2]
        q, k = torch.randn(B, T, H, 16, generator=g), torch.randn(B, T, H, 16, generator=g)
        return {"sel": moba_selection(q, k, int(block), int(topk))}
    return {}


#: name -> (mask factory, example arguments)
MASKS = {
    "causal": (causal_mask, ()),
    "sliding_window": (sliding_window_mask, (32,)),
    "document": (document_mask, ()),
    "prefix_lm": (prefix_lm_mask, ()),
    "dilated": (dilated_mask, (3,)),
    "global_local": (global_local_mask, (4, 16)),
    "moba": (moba_mask, (32,)),
}
