"""The constraint-solver autotuner (design.md §4): an engine that knows no family and imports
nothing of the lowering. Families describe what to tune (``lowering/<family>/space.py``, through the
contract's ``tuning_targets``); ``mixir.tuning`` drives ``mixir tune``.

    hardware   GPU table (``get``, ``detect``)
    space      tuning spaces: parameters, resource formulas as sympy expressions, shapes
    solver     CP-SAT enumeration of the feasible configs (the only module importing ortools)
    cost       roofline cost model that ranks them
    feedback   AOT mismatches recorded and turned into constraints of the model (then re-solved)
    timing     the GPU timing schedule (``measure``)
    report     formulas (docs, ``mixir show``) and the model-accuracy report
    db         versioned JSON tuning database (``lookup``, ``Key``)
    select     the runtime's config choice (``tuned_config``: database → cost model → None)
    results    what a tuning run returns (``TuneResult.table()``)
    pipeline   the engine (``TuneRequest``, ``TuningTarget``, ``tune_targets``)
"""
import importlib

#: the package's names and the modules that define them (imported on first use: the modules import
#: each other, never this facade)
_EXPORTS = {"lookup": "db", "Key": "db", "tuned_config": "select", "TuneRequest": "pipeline",
            "TuningTarget": "pipeline", "tune_targets": "pipeline"}


def __getattr__(name):
    if name == "spaces":
        return importlib.import_module(f"{__name__}.space")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["lookup", "Key", "tuned_config", "TuneRequest", "TuningTarget", "tune_targets"]
