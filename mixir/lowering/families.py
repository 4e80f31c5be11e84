"""The lowering registry: which family of mixers a declaration belongs to, and how it compiles.

Each family registers an analysis (``Mixer -> plan``, raising ``UnsupportedMixerError`` with the
reason when the mixer is not of that family) and a compiler (``(Mixer, plan, strategy=, config=)
-> compiled callable``). ``classify`` tries the families in priority order (lowest first) and
returns the first that accepts; when none does, the error lists each family's reason, so a user
sees why their update is neither gated-linear nor Householder nor LTI.

A plan, whatever its family, has ``family`` (str), ``strategies`` (tuple of str), ``transition``
(one line) and ``describe()`` (several lines, for ``mixir show``). A compiled mixer is called like
the reference on torch tensors and has ``strategies``, ``plan`` and ``source_files()``.

Families live in their own modules and register themselves with ``@register_family`` on import;
``_FAMILY_MODULES`` lists the modules imported before the first classification.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from ..errors import InputError, UnsupportedMixerError


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    priority: int                    # tried in increasing order
    analyse: Callable                # Mixer -> plan, or raise UnsupportedMixerError
    compile: Callable                # (Mixer, plan, *, strategy, config) -> compiled mixer


FAMILIES: dict[str, Family] = {}

#: modules whose import registers a family (kept as names: importing them pulls in Triton)
_FAMILY_MODULES = (
    "mixir.lowering.gated_linear_family",
    "mixir.lowering.householder_family",
    "mixir.lowering.lti_family",
    "mixir.lowering.rnn_family",
)
_loaded = False


def register_family(name: str, priority: int):
    """Decorator on a class with ``analyse(mixer)`` and ``compile(mixer, plan, *, strategy, config)``
    static/class methods, or on a module-level object with those attributes."""
    def wrap(obj):
        FAMILIES[name] = Family(name, priority, obj.analyse, obj.compile)
        return obj
    return wrap


def _load():
    global _loaded
    if _loaded:
        return
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:       # a family not written yet
            if e.name != mod:
                raise
    _loaded = True


def families() -> list[Family]:
    _load()
    return sorted(FAMILIES.values(), key=lambda f: (f.priority, f.name))


def classify(mixer):
    """``(family, plan)`` for ``mixer``: the first family (by priority) whose analysis accepts it."""
    reasons = []
    for fam in families():
        try:
            return fam, fam.analyse(mixer)
        except UnsupportedMixerError as e:
            reasons.append((fam.name, str(e)))
    if len(reasons) == 1:
        raise UnsupportedMixerError(reasons[0][1])
    lines = "\n".join(f"  - {name}: {why}" for name, why in reasons)
    raise UnsupportedMixerError(f"mixer {mixer.name!r} belongs to no family mixir can lower:\n{lines}")


def analyse(mixer):
    """The plan of ``mixer`` in whichever family accepts it (see ``classify``)."""
    return classify(mixer)[1]


def check_strategy(strategies, strategy):
    """``strategy`` if it names one of ``strategies`` (a compiled mixer's, for a call or for
    ``mixir.compile(..., strategy=)``); an ``InputError`` naming them otherwise."""
    if strategy not in tuple(strategies):
        raise InputError(f"strategy must be one of {tuple(strategies)}, got {strategy!r}")
    return strategy


def compile_mixer(mixer, *, strategy: str | None = None, config: dict | None = None):
    from ..dsl.mixer import Mixer
    if not isinstance(mixer, Mixer):
        raise InputError(f"mixir.compile expects a mixer declared with @mixir.mixer, got {type(mixer).__name__}")
    fam, plan = classify(mixer)
    return fam.compile(mixer, plan, strategy=strategy, config=config)
