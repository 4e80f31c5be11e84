"""Runtime config selection, one function for every family: ``tuned_config(space, key, shape,
device)`` is the tuning database's entry for ``key`` on the GPU of ``device`` → the cost model's
best feasible config of ``space`` at ``shape`` for that GPU → None (the caller keeps its
template default). It never raises (a failure is one warning per kind and None: tuning must never
break a call), and the model's choice is cached per (space, shape, GPU).

A family's runtime assembles its own key (mixer fingerprint, database strategy, user-level shape,
head sizes) and the core shape its space's formulas see, and calls this; ``model=`` replaces the
cost-model step where the family ranks its configs its own way, ``accept=`` rejects database
entries the call cannot use (tiles fixed by the caller).

Every database entry is validated before use: ``db.lookup`` checks that it is a config of
integers in range; with a ``space`` and ``shape``, ``config_problem`` also checks it is the
``to_config`` of a point of the space's domains that meets the space's constraints at that shape
(the cost model's resource estimates excepted: a compiled or timed entry outranks them). An
invalid entry is ignored with one warning naming its key, and the model's pick is used."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

from . import db, hardware, space as spaces

#: spaces with at most this many points are enumerated in pure Python at run time (no solver)
SMALL_SPACE = 1024

_warned = set()


@functools.lru_cache(maxsize=None)
def _gpu_for(device_index: int):
    """The GPU table entry of CUDA device ``device_index``, or None (no CUDA, an unknown GPU)."""
    try:
        import torch
        major, minor = torch.cuda.get_device_capability(device_index)
        return hardware.from_device_name(torch.cuda.get_device_name(device_index), major * 10 + minor)
    except Exception:
        return None


def _index(device) -> int:
    if isinstance(device, int):
        return device
    if device.index is not None:
        return device.index
    try:
        import torch
        return torch.cuda.current_device()
    except Exception:
        return 0


def current_gpu(device):
    """The GPU (``hardware.GPU``) of CUDA ``device`` (a ``torch.device`` or an index), or None."""
    return _gpu_for(_index(device))


@functools.lru_cache(maxsize=1024)
def _model_best(space, shape, gpu_name):
    from . import cost, solver
    gpu = hardware.get(gpu_name)
    if spaces.size(space, shape) <= SMALL_SPACE:
        feas = spaces.feasible_bruteforce(space, shape, gpu)
    elif solver.available():
        feas = solver.enumerate_feasible(space, shape, gpu, explain=False)
    else:                       # a large space without ortools: no model choice at run time
        return None
    if not feas:
        return None
    best = cost.rank(space, shape, gpu, feas)[0][0]
    return tuple(space.to_config(best, shape).items())


def model_best(space, shape, gpu) -> dict | None:
    """The cost model's best feasible config of ``space`` at ``shape`` on ``gpu`` (a name or a
    ``GPU``): small spaces are enumerated in pure Python, large ones by the CP-SAT solver (None
    without ortools); None when nothing is feasible. Cached."""
    best = _model_best(space, shape, hardware.get(gpu).name)
    return None if best is None else dict(best)


#: the constraints that are the cost model's estimates, not rules of the template
ESTIMATES = ("shared_memory", "registers_per_thread", "register_file")


def _problem(space, shape, gpu, cfg) -> str | None:
    names = [str(p) for p in space.params]
    doms = space.domains(shape)
    to_config = space.to_config or (lambda values, shape: dict(values))
    probe = to_config({str(p): d[0] for p, d in doms.items()}, shape)
    if set(probe) != set(cfg):
        return f"its parameters {sorted(cfg)} are not {space.name}'s {sorted(probe)}"
    fixed, free = {}, []
    for p, dom in doms.items():
        n = str(p)
        if n in cfg:
            if cfg[n] not in dom:
                return f"{n} = {cfg[n]} is not one of {space.name}'s values {list(dom)}"
            fixed[n] = cfg[n]
        else:
            free.append((n, dom))
    if math.prod(len(d) for _, d in free) > SMALL_SPACE:
        return f"it does not name enough of {space.name}'s parameters"
    values = None
    for combo in itertools.product(*(d for _, d in free)):
        cand = dict(fixed, **{n: v for (n, _), v in zip(free, combo)})
        if {k: int(v) for k, v in to_config(cand, shape).items()} == cfg:
            values = cand
            break
    if values is None:
        return f"it is no config of {space.name} at this shape"
    point = tuple(values[n] for n in names)
    for c in space.constraints(shape, gpu):
        if c.name not in ESTIMATES and not spaces._checker(c, space, shape)(point):
            return f"it violates {c.what} ({c.render()})"
    return None


@functools.lru_cache(maxsize=1024)
def _cached_problem(space, shape, gpu_name, items) -> str | None:
    try:
        return _problem(space, shape, hardware.get(gpu_name), dict(items))
    except Exception as e:  # noqa: BLE001 - an entry the space cannot even evaluate is invalid
        return f"checking it against {getattr(space, 'name', 'its space')} failed ({type(e).__name__}: {e})"


def config_problem(space, shape, gpu, config) -> str | None:
    """What makes ``config`` (a database entry's) unusable for ``space`` at the core ``shape`` on
    ``gpu`` (a name or a ``GPU``), or None: it must be the ``to_config`` of a point of the space's
    domains that meets every constraint but the model's resource estimates (``ESTIMATES``)."""
    problem = db.config_problem(config)
    if problem is None:
        shape = dataclasses.replace(shape, dtype=db.dtype_name(shape.dtype))
        problem = _cached_problem(space, shape, hardware.get(gpu).name, tuple(sorted(config.items())))
    return problem


def tuned_config(space, key, shape, device, *, accept=None, model=None) -> dict | None:
    """The config of one call on CUDA ``device`` (a ``torch.device`` or an index):

    1. the tuning database's entry for ``key`` (a ``db.Key``; None: no database entry applies) on
       the device's GPU, when it is valid (``db.lookup``; with ``space`` and ``shape`` also
       ``config_problem``: an invalid entry is ignored with one warning naming its key) and
       ``accept(config)`` (default: always);
    2. else ``model(gpu)`` when given, else the cost model's best of ``space`` at ``shape`` (the
       core shape the space's formulas see; its dtype may be a torch dtype) — ``model_best``;
    3. None when the GPU is not identified or nothing applies.

    Never raises: a failure is a warning (once per exception type) and None."""
    try:
        gpu = current_gpu(device)
        if gpu is None:
            return None
        if key is not None:
            cfg = db.lookup(key.fingerprint, gpu, db.dtype_name(key.dtype), key.B, key.T, key.H,
                            K=key.K, V=key.V, strategy=key.strategy)
            if cfg is not None and space is not None and shape is not None:
                problem = config_problem(space, shape, gpu, cfg)
                if problem is not None:
                    db.warn_entry(key.text(), problem)
                    cfg = None
            if cfg is not None and (accept is None or accept(cfg)):
                return cfg
        if model is not None:
            return model(gpu)
        if space is None or shape is None:
            return None
        return model_best(space, dataclasses.replace(shape, dtype=db.dtype_name(shape.dtype)), gpu)
    except Exception as e:  # noqa: BLE001 - tuning must never break a call
        what = key.strategy if key is not None else getattr(space, "name", "")
        if type(e).__name__ not in _warned:
            _warned.add(type(e).__name__)
            warnings.warn(f"mixir autotune: {what} config lookup failed ({e}); using the default config")
        return None


__all__ = ["tuned_config", "model_best", "config_problem", "current_gpu", "SMALL_SPACE", "ESTIMATES"]
