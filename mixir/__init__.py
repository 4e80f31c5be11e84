"""mixir: a compiler for token mixers.

Declare a mixer once as a per-token step (``@mixir.mixer``); ``mixir.compile`` analyses its algebra
and lowers it to Triton; ``mixir.reference`` executes the declaration literally in float64.
"""
from .dsl import (In, Mixer, Param, Scalar, Scale, State, abs, amax, contract, cos, exp, head,
                  l2norm, log, logsigmoid, maximum, minimum, mixer, outer, rename, rsqrt, sigmoid,
                  silu, sin, softplus, sqrt, tanh, where)
from .dsl import sum_ as sum  # noqa: A001 - mixir.sum(x, "K") reduces over a named dim
from .errors import DeclarationError, InputError, MixirError, TuningError, UnsupportedMixerError
from .reference import reference
from .version import __version__ as __version__



def __getattr__(name):
    if name in ("autotune", "tuning", "library", "testing", "attention", "nn", "distributed"):   # on use
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'mixir' has no attribute {name!r}")


def compile(mixer, **options):  # noqa: A001 - the public verb
    """Analyse ``mixer``, choose a strategy and return a ``CompiledMixer`` on torch tensors."""
    from .lowering.family import compile_mixer
    return compile_mixer(mixer, **options)


def input_checks(enabled: bool = True):
    """``with mixir.input_checks(): ...`` — every compiled mixer called inside the block first
    checks its input values (NaN/Inf, positive log-decays) and raises ``InputError`` naming the
    argument (a host sync per call; off by default). See ``set_input_checks``."""
    from .lowering.common.checks import input_checks as _input_checks
    return _input_checks(enabled)


def set_input_checks(enabled: bool) -> bool:
    """Turn the opt-in value checks of compiled mixers' inputs on or off process-wide (like
    ``torch.autograd.set_detect_anomaly``); returns the previous setting."""
    from .lowering.common.checks import set_input_checks as _set
    return _set(enabled)


__all__ = ["In", "Param", "State", "Scale", "Scalar", "Mixer", "mixer", "compile", "reference",
           "input_checks", "set_input_checks",
           "abs", "amax", "contract", "cos", "exp", "head", "l2norm", "log", "logsigmoid", "maximum",
           "minimum", "outer", "rename", "rsqrt", "sigmoid", "silu", "sin", "softplus", "sqrt", "sum",
           "tanh", "where",
           "MixirError", "DeclarationError", "InputError", "TuningError", "UnsupportedMixerError"]
