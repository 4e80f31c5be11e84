"""Drop-ins for ``torch.nn.attention.flex_attention`` (torch 2.13): ``flex_attention`` and
``create_block_mask``, running mixir's block-sparse attention kernels (``mixir.attention``).

The ``mask_mod(b, h, q_idx, kv_idx)`` and ``score_mod(score, b, h, q_idx, kv_idx)`` functions are
ordinary FlexAttention code — torch operations on index tensors, captured tensors indexed by them —
traced once into mixir's mask IR (``mixir.dsl.torch_trace``); a function using an operation the
tracer cannot express raises ``DeclarationError`` naming it. Layout ``[B, H, T, D]`` as
FlexAttention (mixir's own attention is ``[B, T, H, D]``; the drop-in transposes views).
What differs and what is refused: docs/compat.md.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from ..lowering.attention.block_mask import FULL_TILE, PARTIAL, classify_tiles, from_tile_classes
from ..lowering.attention.block_mask import BlockMask as _MixirBlockMask
from ..lowering.attention.ops import attention
from ..dsl.torch_trace import trace_mask, trace_score_mod

TORCH_VERSION = "2.13.0"

__all__ = ["TORCH_VERSION", "BlockMask", "create_block_mask", "flex_attention"]


@dataclasses.dataclass(frozen=True)
class BlockMask:
    """FlexAttention's ``BlockMask`` surface over mixir's block-mask metadata (``.mixir``):
    ``shape`` ``(B, H, Q_LEN, KV_LEN)``, ``BLOCK_SIZE``, ``mask_mod``, ``seq_lengths``, the
    kv/q block counts and indices, ``sparsity()``, ``to_dense()``, ``to(device)``."""
    mixir: _MixirBlockMask
    mask_mod: object
    B: int
    H: int

    @property
    def shape(self):
        return (self.B, self.H, self.mixir.q_len, self.mixir.kv_len)

    @property
    def seq_lengths(self):
        return (self.mixir.q_len, self.mixir.kv_len)

    @property
    def BLOCK_SIZE(self):  # noqa: N802 - FlexAttention's name
        return (self.mixir.block_m, self.mixir.block_n)

    kv_num_blocks = property(lambda self: self.mixir.kv_num)
    kv_indices = property(lambda self: self.mixir.kv_idx)
    full_kv_num_blocks = property(lambda self: self.mixir.full_kv_num)
    full_kv_indices = property(lambda self: self.mixir.full_kv_idx)
    q_num_blocks = property(lambda self: self.mixir.q_num)
    q_indices = property(lambda self: self.mixir.q_idx)
    full_q_num_blocks = property(lambda self: self.mixir.full_q_num)
    full_q_indices = property(lambda self: self.mixir.full_q_idx)

    def sparsity(self) -> float:
        """Percentage of the blocks that are skipped (FlexAttention's ``sparsity()``)."""
        return 100.0 * (1.0 - self.mixir.visited_fraction())

    def to_dense(self) -> torch.Tensor:
        """``[Bm, Hm, NM, NN]`` int32: 1 where a block is visited (partial or full)."""
        return (self.mixir.tile_classes() > 0).to(torch.int32)

    def to(self, device) -> "BlockMask":
        return dataclasses.replace(self, mixir=self.mixir.to(device))

    def __repr__(self):
        return f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, {self.mixir!r})"


def _block(size, length) -> int:
    """A block size for ``length`` positions: ``size`` (a power of two ≥ 16), reduced to the
    padded length when larger (one block either way: the same metadata, smaller tiles)."""
    size = int(size)
    if size < 16 or size & (size - 1):
        raise InputError(f"create_block_mask: BLOCK_SIZE must be a power of two >= 16 for mixir's "
                         f"kernels, got {size}")
    return min(size, max(16, 1 << (int(length) - 1).bit_length()))


def create_block_mask(mask_mod, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                      device=None, BLOCK_SIZE: int | tuple[int, int] = 128, _compile=False,
                      separate_full_blocks: bool = True, compute_dq_write_order: bool = False,
                      dq_kv_order: bool = True) -> BlockMask:
    """FlexAttention's ``create_block_mask``: ``mask_mod`` is traced into a mixir ``Mask`` (its
    captured tensors become the mask's data) and classified tile by tile. ``B`` / ``H`` ``None``
    broadcast (as FlexAttention: the mask is classified at b = 0 / h = 0). ``device`` ``None``:
    CUDA when available, else the CPU. ``separate_full_blocks=False`` marks every visited block
    partial; ``_compile``, ``compute_dq_write_order`` and ``dq_kv_order`` have no effect (mixir
    builds its metadata eagerly and its backward needs no write order)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    mask, data = trace_mask(mask_mod)
    B, H = 1 if B is None else int(B), 1 if H is None else int(H)
    if isinstance(BLOCK_SIZE, int):
        bm, bn = BLOCK_SIZE, BLOCK_SIZE
    else:
        bm, bn = BLOCK_SIZE
    bm, bn = _block(bm, Q_LEN), _block(bn, KV_LEN)
    if min(B, H, Q_LEN, KV_LEN) < 1:
        raise InputError(f"create_block_mask: B, H, Q_LEN, KV_LEN must be >= 1, got {(B, H, Q_LEN, KV_LEN)}")
    device = torch.device(device)
    data = {k: v.to(device) for k, v in data.items()}
    classes = classify_tiles(mask, B, H, Q_LEN, KV_LEN, bm, bn, data, device)
    if not separate_full_blocks:
        classes = torch.where(classes == FULL_TILE, PARTIAL, classes).to(torch.int8)
    bmask = from_tile_classes(classes, bm, bn, Q_LEN, KV_LEN, mask, data)
    return BlockMask(bmask, mask_mod, B, H)


def _as_block_mask(block_mask, query, key):
    """mixir metadata for ``block_mask``: ours, mixir's own, or a torch ``BlockMask`` (its
    ``mask_mod`` re-traced at its lengths and block sizes)."""
    if block_mask is None or isinstance(block_mask, _MixirBlockMask):
        return block_mask
    if isinstance(block_mask, BlockMask):
        return block_mask.mixir
    if hasattr(block_mask, "mask_mod") and hasattr(block_mask, "seq_lengths"):
        Bm, Hm = block_mask.kv_num_blocks.shape[:2]
        q_len, kv_len = block_mask.seq_lengths
        return create_block_mask(block_mask.mask_mod, int(Bm), int(Hm), q_len, kv_len,
                                 device=query.device, BLOCK_SIZE=tuple(block_mask.BLOCK_SIZE)).mixir
    raise InputError(f"flex_attention: block_mask must come from create_block_mask, got "
                     f"{type(block_mask).__name__}")


def _check(query, key, value, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"flex_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InputError(f"flex_attention: NYI: query, key, and value must be 4D tensors "
                             f"[B, H, T, D], got {name} of shape {tuple(t.shape)}")
    if query.size(-3) != key.size(-3) and not enable_gqa:
        raise InputError(f"flex_attention: Expect query and key/value to have the same number of "
                         f"heads but got Hq={query.size(-3)} and Hkv={key.size(-3)}. Try setting "
                         f"enable_gqa=True for GQA.")
    if enable_gqa and query.size(1) % key.size(1):
        raise InputError(f"flex_attention: Expect number of query heads to be a multiple of kv heads "
                         f"for GQA but got Hq={query.size(1)} and Hkv={key.size(1)}.")
    if key.size(0) not in (query.size(0), 1):
        raise InputError(f"flex_attention: key/value must have query's batch size or 1 (broadcast), "
                         f"got Bq={query.size(0)} and Bkv={key.size(0)}")
    if value.shape[:3] != key.shape[:3]:
        raise InputError(f"flex_attention: value must be [B, Hkv, S, Ev] like key [B, Hkv, S, E], got "
                         f"key {tuple(key.shape)}, value {tuple(value.shape)}")


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod=None,
                   block_mask=None, scale: float | None = None, enable_gqa: bool = False,
                   return_lse: bool = False, kernel_options=None, *, return_aux=None):
    """FlexAttention's ``flex_attention``: query ``[B, Hq, L, E]``, key ``[B, Hkv, S, E]``, value
    ``[B, Hkv, S, Ev]`` (``Hkv = Hq`` unless ``enable_gqa``; key/value may have batch 1, broadcast
    over query's). Returns ``out [B, Hq, L, Ev]``; ``(out, lse)`` with
    ``return_lse``; ``(out, AuxOutput(lse=..., max_scores=None))`` with ``return_aux``
    (``max_scores`` is refused). ``lse [B, Hq, L]`` fp32, natural log; a row with nothing to
    attend to has ``out = 0`` and ``lse = -inf``. ``kernel_options``: ``num_warps`` and
    ``num_stages`` are honoured, the rest (Triton tuning of torch's kernels) has no effect."""
    _check(query, key, value, enable_gqa)
    if return_lse and return_aux is not None:
        raise InputError("flex_attention: Cannot specify both return_lse and return_aux. return_lse "
                         "is deprecated, please use return_aux=AuxRequest(lse=True) instead.")
    if return_aux is not None and getattr(return_aux, "max_scores", False):
        raise InputError("flex_attention: return_aux max_scores is not supported by mixir's kernels "
                         "(they keep the running max per tile, not the row's max score)")
    want_lse = return_lse or (return_aux is not None and getattr(return_aux, "lse", False))
    bm = _as_block_mask(block_mask, query, key)
    if bm is not None and (bm.q_len, bm.kv_len) != (query.size(-2), key.size(-2)):
        raise InputError(f"flex_attention: block_mask was created for q_len={bm.q_len}, "
                         f"kv_len={bm.kv_len} but got q_len={query.size(-2)} and kv_len={key.size(-2)}; "
                         "create a new block mask for these lengths")
    data, mod = {}, None
    if score_mod is not None:
        mod, data = trace_score_mod(score_mod)
    config = {k: int(v) for k, v in dict(kernel_options or {}).items() if k in ("num_warps", "num_stages")}
    o, lse = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), bm,
                       score_mod=mod, scale=scale, data=data, config=config or None, return_lse=True)
    out = o.transpose(1, 2)
    if return_aux is not None:
        from torch.nn.attention.flex_attention import AuxOutput
        return out, AuxOutput(lse=lse if want_lse else None, max_scores=None)
    return (out, lse) if return_lse else out
