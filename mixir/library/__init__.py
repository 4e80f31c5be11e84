"""Built-in mixers, each declared in the DSL (no hand-written kernels behind them).

Public wrappers with fla-style signatures (``scale``, ``initial_state``, ``output_final_state``,
``cu_seqlens``; layout ``[B, T, H, ...]``) call ``mixir.compile`` on the declaration, once per mixer.
``MIXERS[name]`` is the registry (``LibraryEntry``: the traced mixer, its wrapper, input ranges).
The exact function of each mixer is written down in docs/library.md.
"""
from .gated_linear import gla, hgrn, lightnet, linear_attention, retention, simple_gla
from .registry import MIXERS, SAMPLERS, LibraryEntry, clear_cache
from .ssm import mamba, mamba2
from .delta import delta_rule, gated_delta_product, gated_delta_rule  # noqa: F401 - Householder (docs/delta_rule.md)

__all__ = ["MIXERS", "SAMPLERS", "LibraryEntry", "clear_cache", "gla", "hgrn", "lightnet",
           "linear_attention", "mamba", "mamba2", "retention", "simple_gla"]
