"""The names the ``mixir`` command accepts, and what each one stands for.

- a library mixer: a key of ``mixir.library.MIXERS`` (``gla``, ``s4d``, ...);
- a library wrapper that runs another entry's declaration (``lssl``, ``lmu``: ``WRAPPERS``);
- a library attention mask: ``attention:NAME`` or ``attention:NAME:ARG,...`` (``sliding_window:64``);
- a user's declaration: ``module:function`` (imported with the current directory on the path, as
  ``python -m`` would) or ``path/to/file.py:function``.

``mixir list`` prints exactly the first three kinds, so every name it prints resolves here.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys

from ..errors import MixirError

#: the prefix of a library attention mask's name
ATTENTION = "attention:"

#: library wrappers with no registry entry of their own: name -> (the entry whose declaration they
#: run with their default arguments, what they do around it)
WRAPPERS = {
    "lssl": ("s4d_bilinear", ("the lssl wrapper diagonalises the dense HiPPO-LegS A once in float64 "
                              "and runs the s4d_bilinear declaration on its modes")),
    "lmu": ("s4d", ("the lmu wrapper diagonalises the LMU (Legendre) A/theta once in float64 and "
                    "runs the s4d declaration (zero-order hold, its default) on its modes")),
}


@dataclasses.dataclass
class Target:
    """What a name resolved to: ``declaration`` is a ``Mixer`` or, for an attention mask, a
    ``Mask`` with ``data_fn(B, H, T)`` giving its example data tensors."""
    name: str
    declaration: object
    note: str = ""
    data_fn: object = None

    @property
    def is_mask(self) -> bool:
        from ..dsl.mask import Mask
        return isinstance(self.declaration, Mask)


def library_names() -> list:
    """Every library name ``mixir list`` prints: the registry, the wrappers, the masks."""
    from ..library import MIXERS
    from ..library.attention import MASKS
    return sorted(MIXERS) + sorted(WRAPPERS) + [ATTENTION + n for n in sorted(MASKS)]


def resolve(name: str) -> Target:
    """The ``Target`` of ``name`` (the module docstring lists the forms); ``MixirError`` naming
    what was expected otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise MixirError("give a mixer: a library name (mixir list) or module:function")
    if name.startswith(ATTENTION):
        from ..tuning import library_mask
        label, mask, data_fn = library_mask(name[len(ATTENTION):])
        return Target(ATTENTION + label, mask, data_fn=data_fn)
    if ":" not in name:
        from ..library import MIXERS
        if name in WRAPPERS:
            entry, why = WRAPPERS[name]
            return Target(name, MIXERS[entry].mixer, note=why)
        if name not in MIXERS:
            raise MixirError(f"no library mixer {name!r}; known: {', '.join(library_names())} "
                             "(or give module:function or path/file.py:function)")
        return Target(name, MIXERS[name].mixer)
    module, _, attr = name.rpartition(":")
    mod = _load_file(module) if (module.endswith(".py") or os.sep in module) else _import(module)
    obj = getattr(mod, attr, None)
    from ..dsl.mixer import Mixer
    if not isinstance(obj, Mixer):
        raise MixirError(f"{name} is not a mixer declared with @mixir.mixer (got {type(obj).__name__})")
    return Target(name, obj)


def _load_file(path: str):
    if not os.path.isfile(path):
        raise MixirError(f"cannot find the file {path!r}")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None:
        raise MixirError(f"cannot load {path!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _import(module: str):
    """Import ``module`` with the current directory first on ``sys.path`` (the ``mixir`` script's
    own directory is what Python puts there otherwise), as ``python -m`` does."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MixirError(f"cannot import module {module!r} (from {cwd} or the installed packages): "
                         f"{e}") from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
