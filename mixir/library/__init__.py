"""Built-in mixers, each declared in the DSL (no hand-written kernels behind them).

Public wrappers with fla-style signatures (``scale``, ``initial_state``, ``output_final_state``,
``cu_seqlens``; layout ``[B, T, H, ...]``) call ``mixir.compile`` on the declaration, once per mixer.
``MIXERS[name]`` is the registry (``LibraryEntry``: the traced mixer, its wrapper, its family, input
ranges) for every family: gated-linear (docs/library.md), Householder (docs/delta_rule.md), LTI
state-space models (docs/lti.md) and nonlinear RNNs (docs/rnn.md).
"""
from .householder import delta_rule, gated_delta_product, gated_delta_rule, kda
from .gated_linear import gla, hgrn, lightnet, linear_attention, retention, simple_gla
from .lti import lmu, lssl, s4, s4d
from .registry import MIXERS, SAMPLERS, LibraryEntry, clear_cache, families
from .rnn import RNN_MIXERS, elman, gru, lstm, mlstm, slstm
from .ssm import mamba, mamba2

__all__ = ["MIXERS", "SAMPLERS", "LibraryEntry", "RNN_MIXERS", "clear_cache", "families",
           "delta_rule", "elman", "gated_delta_product", "gated_delta_rule", "gla", "gru", "hgrn",
           "kda", "lightnet", "linear_attention", "lmu", "lssl", "lstm", "mamba", "mamba2", "mlstm",
           "retention", "s4", "s4d", "simple_gla", "slstm"]
