"""Drop-ins for flash-linear-attention 0.6's op functions (``fla.ops``), over mixir's library.

    from mixir.compat.fla import chunk_gated_delta_rule      # instead of fla.ops.gated_delta_rule
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)

Same names, signatures (keywords and defaults), layouts (``[B, T, H, ...]``, states
``[N, H, K, V]``) and results (``(o, final_state or None)``) as fla 0.6. ``chunk_*`` runs mixir's
chunked strategy, ``fused_recurrent_*`` its recurrent one. What differs and what is refused:
docs/compat.md.
"""
from .delta import (chunk_delta_rule, chunk_gated_delta_product, chunk_gated_delta_rule, chunk_kda,
                    fused_recurrent_delta_rule, fused_recurrent_gated_delta_rule, fused_recurrent_kda)
from .linear import (chunk_gla, chunk_lightnet, chunk_linear_attn, chunk_retention, chunk_simple_gla,
                     fused_recurrent_gla, fused_recurrent_hgrn, fused_recurrent_lightnet,
                     fused_recurrent_linear_attn, fused_recurrent_retention, fused_recurrent_simple_gla)

#: the fla version whose public signatures these reproduce
FLA_VERSION = "0.6.0"

__all__ = ["FLA_VERSION",
           "chunk_linear_attn", "fused_recurrent_linear_attn",
           "chunk_retention", "fused_recurrent_retention",
           "chunk_simple_gla", "fused_recurrent_simple_gla",
           "chunk_gla", "fused_recurrent_gla",
           "fused_recurrent_hgrn",
           "chunk_lightnet", "fused_recurrent_lightnet",
           "chunk_delta_rule", "fused_recurrent_delta_rule",
           "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
           "chunk_gated_delta_product",
           "chunk_kda", "fused_recurrent_kda"]
