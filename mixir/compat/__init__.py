"""Drop-in replacements for the APIs users already call, backed by mixir's declared mixers.

- ``mixir.compat.fla``: flash-linear-attention 0.6's ``chunk_*`` / ``fused_recurrent_*`` ops;
- ``mixir.compat.mamba_ssm``: mamba_ssm 2.x's ``selective_scan_fn`` and
  ``mamba_chunk_scan_combined``;
- ``mixir.compat.flex_attention``: ``torch.nn.attention.flex_attention``'s ``flex_attention`` and
  ``create_block_mask``, with mask/score functions traced into mixir's mask IR;
- ``mixir.compat.flashrnn``: FlashRNN 1.0's ``flashrnn`` (its R layout, gate orders and sLSTM
  rules).

The submodules load on first use (``import mixir.compat.fla``). docs/compat.md has the mapping,
what differs and what is refused.
"""
import importlib

_SUBMODULES = ("fla", "mamba_ssm", "flex_attention", "flashrnn")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_SUBMODULES)
