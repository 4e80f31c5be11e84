"""The constraint-solver autotuner (design.md §4).

    hardware   GPU table (``get``, ``detect``)
    spaces     tuning spaces of the lowering templates, resource formulas as sympy expressions
    solver     CP-SAT enumeration of the feasible configs (the only module importing ortools)
    cost       roofline cost model that ranks them
    aot_check  ahead-of-time compile of the top candidates (real registers / spills / shared memory)
    feedback   AOT mismatches recorded and turned into constraints of the model (then re-solved)
    timing     GPU timing (only with CUDA)
    report     formulas (docs, ``mixir show``) and the model-accuracy report
    db         versioned JSON tuning database (``lookup``)
    pipeline   the pipeline behind ``mixir tune`` (``tune``, ``tune_all``)
"""
from . import db, hardware, space as spaces
from .db import lookup


def tune(*args, **kwargs):
    from .pipeline import tune as _tune
    return _tune(*args, **kwargs)


__all__ = ["db", "hardware", "spaces", "lookup", "tune"]
