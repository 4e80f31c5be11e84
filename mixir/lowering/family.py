"""The family contract and the registry of families (docs/architecture.md).

A *family* is a class of token mixers that share an algebra and therefore kernels: gated-linear
(diagonal transitions), Householder (identity minus low rank), LTI (constant transitions), nonlinear
RNNs, block-sparse softmax attention. Each lives in its own package ``mixir/lowering/<family>/``
with the same role-named modules (``analysis``, ``runtime``, ``ops``, ``space``, ``kernels``) and a
``family.py`` that subclasses ``Family`` and calls ``register`` once. Nothing outside the package
names the family: the registry finds the packages (every sub-package of ``mixir.lowering`` with a
``family`` module) and everything else goes through this contract.

The contract, in the order a declaration meets it:

1. ``analyse(declaration) -> plan``: recognise the algebra from the traced IR (never the name);
   raise ``UnsupportedMixerError`` with the reason when the declaration is not of this family.
   ``classify`` tries the families by ``priority`` (lowest first) among those whose
   ``declaration`` type matches. A plan has ``family`` (the family's name), ``strategies``,
   ``transition`` (one line) and ``describe()`` (several lines, ``mixir show``).
2. ``strategies(plan)``: the strategies a compiled mixer can run (``plan.strategies``).
3. ``compile(declaration, plan, strategy=, config=) -> compiled``: called like the reference on
   torch tensors, with ``strategies``, ``plan`` and ``source_files()``.
4. tuning (``mixir tune`` and the runtime's config lookup): ``tunable_strategies(plan)``,
   ``tuning_targets(mixer, plan, request)`` — one ``autotune.TuningTarget`` (space with its
   resource model, core shape, database strategy, AOT recorder) per strategy to tune — and
   ``kernel_signature(mixer, plan, request)`` to tune mixers with identical kernels once.
5. verification: ``input_ranges(mixer, plan)`` — value ranges that keep the mixer stable in the
   differential tests; ``key_dims(mixer, plan)`` — the feature dims that take the key head size K
   (the others take V) when a tool picks sizes for a declaration it knows only by its IR.
6. context parallelism: ``state_passing(plan)`` — how a chunk's state combines with the next
   (the transition of a whole chunk and the chunk's final state, combined associatively), for a
   sequence split across ranks: an object with ``kind`` (one line) and ``run(compiled, arrays, *,
   g, initial_state, output_final_state, cu_seqlens, strategy, scalars)`` (``g``: a resolved
   ``mixir.distributed.Group``), built on ``mixir.distributed``'s layout, all-gather and prefix
   combine; the compiled mixer's ``__call__(..., group=)`` runs it. ``None`` (the default) means
   the family cannot be split, and its compiled mixers refuse ``group=`` with the reason
   (docs/distributed.md).
"""
from __future__ import annotations

import abc
import importlib
import os
import pkgutil
from typing import Any, ClassVar

from ..dsl.mixer import Mixer
from ..errors import InputError, UnsupportedMixerError
from .common.call import check_strategy  # noqa: F401 - part of the registry's API


class Family(abc.ABC):
    """One family of mixers: subclass, set ``name`` and ``priority``, implement ``analyse`` and
    ``compile``, override the rest where the family has more to say, and ``register`` an
    instance from the family package's ``family.py``."""

    name: ClassVar[str]
    priority: ClassVar[int]                  # classify tries lower priorities first
    declaration: ClassVar[type] = Mixer      # what it lowers (the attention family: a Mask)

    # ---- 1-3: recognise, plan, compile -------------------------------------------------------
    @abc.abstractmethod
    def analyse(self, declaration) -> Any:
        """The plan of ``declaration``, or ``UnsupportedMixerError`` saying why not."""

    def strategies(self, plan) -> tuple:
        return tuple(plan.strategies)

    def describe(self, declaration, plan) -> str:
        """What ``mixir show`` prints about the plan (default: ``plan.describe()``)."""
        return plan.describe()

    @abc.abstractmethod
    def compile(self, declaration, plan, *, strategy: str | None = None, config: dict | None = None):
        """A callable on torch tensors (``strategies``, ``plan``, ``source_files()``)."""

    # ---- 4: tuning ---------------------------------------------------------------------------
    def tunable_strategies(self, plan) -> tuple:
        """The strategy names ``mixir tune`` accepts for this plan (default: every strategy)."""
        return self.strategies(plan)

    def tuning_targets(self, mixer, plan, request) -> list:
        """One ``autotune.TuningTarget`` per strategy of ``request`` to tune; [] when the family
        has no tuning space (its kernels take their templates' tiles)."""
        return []

    def tuning_formulas(self, plan) -> str | None:
        """The resource and cost formulas of the plan's tuning spaces, as ``mixir show`` prints
        them (None: nothing to show)."""
        return None

    def kernel_signature(self, mixer, plan, request):
        """A hashable that is equal for two mixers exactly when they run the same kernels at the
        request's shape (one tuning run serves both), or None (tuned one mixer at a time)."""
        return None

    # ---- 5: verification ---------------------------------------------------------------------
    def input_ranges(self, mixer, plan) -> dict:
        """``{input name: (low, high)}`` for inputs that need a range to stay stable (a log-decay,
        a transition that may be negative); the others are drawn from N(0, 1)."""
        ranges = getattr(plan, "input_ranges", None)
        return dict(ranges()) if callable(ranges) else {}

    def key_dims(self, mixer, plan) -> frozenset:
        """The feature dims that take the key head size K; the others take V."""
        return frozenset(getattr(plan, "key_dims", ()))

    # ---- 6: context parallelism --------------------------------------------------------------
    def state_passing(self, plan):
        """How the state of one chunk of the sequence passes to the next (context parallelism:
        ``kind`` and ``run``, see point 6 above), or None when it cannot be combined
        associatively."""
        return None

    def __repr__(self):
        return f"<mixir family {self.name} (priority {self.priority})>"


_FAMILIES: dict[str, Family] = {}
_discovered = False


def register(family: Family) -> Family:
    """Register ``family`` (an instance); its package's ``family.py`` calls this once. A family
    registered again under its name replaces the earlier one (a reloaded module)."""
    if not isinstance(family, Family):
        raise TypeError(f"register expects a Family instance, got {type(family).__name__}")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests that register a toy family clean up with this)."""
    _FAMILIES.pop(name, None)


def _discover():
    """Import ``mixir.lowering.<pkg>.family`` for every family package (once): the import
    registers the family. Dynamic, so the packages stay below this module in the import graph."""
    global _discovered
    if _discovered:
        return
    here = os.path.dirname(__file__)
    for info in sorted(pkgutil.iter_modules([here]), key=lambda i: i.name):
        if info.ispkg and os.path.isfile(os.path.join(here, info.name, "family.py")):
            importlib.import_module(f"{__package__}.{info.name}.family")
    _discovered = True


def families() -> list[Family]:
    """Every registered family, in classification order."""
    _discover()
    return sorted(_FAMILIES.values(), key=lambda f: (f.priority, f.name))


def get(name: str) -> Family:
    """The family registered as ``name``."""
    _discover()
    if name not in _FAMILIES:
        raise InputError(f"no family named {name!r}; registered: {', '.join(f.name for f in families())}")
    return _FAMILIES[name]


def family_of(plan) -> Family:
    """The family that made ``plan``."""
    return get(plan.family)


def classify(declaration):
    """``(family, plan)`` for ``declaration``: the first family (by priority) among those that
    lower its kind of declaration whose analysis accepts it; when none does, the error lists each
    family's reason."""
    reasons = []
    for fam in families():
        if not isinstance(declaration, fam.declaration):
            continue
        try:
            return fam, fam.analyse(declaration)
        except UnsupportedMixerError as e:
            reasons.append((fam.name, str(e)))
    name = getattr(declaration, "name", type(declaration).__name__)
    if not reasons:
        raise UnsupportedMixerError(f"no family lowers a {type(declaration).__name__} ({name!r})")
    if len(reasons) == 1:
        raise UnsupportedMixerError(reasons[0][1])
    lines = "\n".join(f"  - {fam}: {why}" for fam, why in reasons)
    raise UnsupportedMixerError(f"mixer {name!r} belongs to no family mixir can lower:\n{lines}")


def analyse(declaration):
    """The plan of ``declaration`` in whichever family accepts it (see ``classify``)."""
    return classify(declaration)[1]


def compile_mixer(declaration, *, strategy: str | None = None, config: dict | None = None):
    """``mixir.compile``: classify ``declaration`` into a family and compile it there."""
    declared = tuple({f.declaration for f in families()}) or (Mixer,)
    if not isinstance(declaration, declared):
        raise InputError(f"mixir.compile expects a mixer declared with @mixir.mixer, got "
                         f"{type(declaration).__name__}")
    fam, plan = classify(declaration)
    return fam.compile(declaration, plan, strategy=strategy, config=config)
