"""Opt-in value checks of a call's inputs: ``mixir.input_checks()`` (a context manager) or
``mixir.set_input_checks(True)``.

The compiled mixers never look at input *values* by default: a value check costs a host
synchronisation per call on a GPU. What a bad value does without checks is documented
(docs/verification.md, "Non-finite and out-of-domain inputs"): a NaN or Inf input spreads through
the recurrence as IEEE arithmetic makes it (never hidden, never turned into a finite result), and a
positive log-decay (a gate above 1) makes the state grow without bound until it overflows. With
checks on, every call of a compiled mixer first raises an ``InputError`` naming the argument and
the first offending position for

- a non-finite value (NaN, ±Inf) in any input tensor or initial state, and
- a positive log-decay (a transition factor exp(g) > 1) of a gated-linear or Householder mixer.

The switch is process-wide (like ``torch.autograd.set_detect_anomaly``) and ignored while
``torch.compile`` traces (checks would break the graph)."""
from __future__ import annotations

import contextlib

import torch

from ...errors import InputError

_ENABLED = False


def set_input_checks(enabled: bool) -> bool:
    """Turn the value checks of every compiled mixer's inputs on or off; returns the previous
    setting."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise InputError(f"set_input_checks: enabled must be True or False, got {enabled!r}")
    previous, _ENABLED = _ENABLED, enabled
    return previous


@contextlib.contextmanager
def input_checks(enabled: bool = True):
    """``with mixir.input_checks(): ...`` — value checks on inside the block (restored after)."""
    previous = set_input_checks(enabled)
    try:
        yield
    finally:
        set_input_checks(previous)


def checks_enabled() -> bool:
    if not _ENABLED:
        return False
    try:
        return not torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return True


def _position(mask: torch.Tensor) -> str:
    idx = tuple(int(i) for i in mask.nonzero()[0].tolist())
    return f"at index {list(idx)}"


def check_finite(where: str, named) -> None:
    """With checks on: ``InputError`` for the first ``(name, tensor)`` holding a NaN or Inf."""
    if not checks_enabled():
        return
    for name, t in named:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                raise InputError(f"{where}: argument {name!r} holds a non-finite value "
                                 f"({t[bad].flatten()[0].item()} {_position(bad)}; "
                                 f"mixir.input_checks is on)")


def check_log_decay(where: str, what: str, g: torch.Tensor | None) -> None:
    """With checks on: ``InputError`` when the log-decay ``g`` (``what`` says which, in the
    declaration's terms) has a positive value: exp(g) > 1 grows the state without bound."""
    if g is None or not checks_enabled():
        return
    bad = g > 0
    if bool(bad.any()):
        raise InputError(f"{where}: {what} is positive ({g[bad].flatten()[0].item():.4g} "
                         f"{_position(bad)}): a transition factor exp(g) > 1 grows the state "
                         f"without bound (the chunked strategy overflows to Inf, the recurrent "
                         f"one to NaN); log-decays must be <= 0 (mixir.input_checks is on)")


__all__ = ["check_finite", "check_log_decay", "checks_enabled", "input_checks", "set_input_checks"]
