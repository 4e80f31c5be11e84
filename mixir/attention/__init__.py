"""Softmax attention under block-sparse masks (FlexAttention-style masks traced into mixir's IR).

See ``docs/attention.md``. Layout ``[B, T, H, D]`` (fla / flash-attn; FlexAttention uses
``[B, H, T, D]``).
"""
from ..lowering.attention.block_mask import BlockMask, create_block_mask
from ..dsl.mask import (FULL, Data, Expr, Mask, ScoreMod, and_masks, cos, exp, log, mask, maximum,
                        minimum, or_masks, score_mod, sigmoid, sin, sqrt, tanh, where)
from ..lowering.attention.ops import attention
from ..reference.attention import attention_reference, dense_mask

__all__ = ["BlockMask", "create_block_mask", "FULL", "Data", "Expr", "Mask", "ScoreMod", "and_masks",
           "or_masks", "mask", "score_mod", "exp", "log", "maximum", "minimum", "sigmoid", "sqrt",
           "tanh", "sin", "cos", "where", "attention", "attention_reference", "dense_mask"]
from ..library.attention import (causal_attention, causal_mask, dilated_attention, dilated_mask,
                                 doc_ids_from_cu_seqlens, document_attention, document_mask,
                                 global_local_attention, global_local_mask, moba, moba_mask,
                                 moba_selection, prefix_lm_attention, prefix_lm_mask,
                                 sliding_window_attention, sliding_window_mask)

__all__ += ["causal_attention", "causal_mask", "dilated_attention", "dilated_mask",
            "doc_ids_from_cu_seqlens", "document_attention", "document_mask",
            "global_local_attention", "global_local_mask", "moba", "moba_mask", "moba_selection",
            "prefix_lm_attention", "prefix_lm_mask", "sliding_window_attention",
            "sliding_window_mask"]
