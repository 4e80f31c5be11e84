"""mixir.testing: differential testing of compiled mixers against the float64 reference.

- ``tolerances``: the error measure (relative RMS with a floor) and the per-dtype bounds;
- ``checker``: ``check`` / ``check_cu_seqlens`` -> ``Report``, ``assert_close``;
- ``strategies`` (needs hypothesis): ``shapes``, ``dtypes``, ``cu_seqlens``, ``mixer_inputs``,
  ``cases``, and the deterministic builders ``make_inputs`` / ``make_case`` that failing examples
  print.

See ``docs/verification.md``.
"""
from .checker import (Quantity, Report, assert_close, check, check_case, check_cu_seqlens,
                      ieee_fp32, poisoned_allocations)
from .tolerances import BOUNDS, Bounds, bounds_for, rel_rms_error, rms

_STRATEGY_NAMES = ("DEEP_LOG_DECAY", "Shape", "Case", "shapes", "dtypes", "cu_seqlens",
                   "mixer_inputs", "cases", "make_inputs", "make_case", "default_extremes")


def __getattr__(name):
    # the strategies need hypothesis (a test extra); import them on first use only
    if name in _STRATEGY_NAMES or name == "strategies":
        import importlib
        strategies = importlib.import_module(__name__ + ".strategies")
        return strategies if name == "strategies" else getattr(strategies, name)
    raise AttributeError(f"module 'mixir.testing' has no attribute {name!r}")


__all__ = ["BOUNDS", "Bounds", "bounds_for", "rel_rms_error", "rms", "Quantity", "Report", "check",
           "check_case", "check_cu_seqlens", "assert_close", "poisoned_allocations", "ieee_fp32",
           *_STRATEGY_NAMES]
