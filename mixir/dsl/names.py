"""Which names a declaration may give its feature dims (``check_dim_name``): checked when the
annotation is read (``In["K"]``, ``State["K", "V"]``, ``Scale["K"]``, ``mixir.rename``), so a
name that would collide with a generated or implicit one fails there, with the reason, and never
deep inside a code generator."""
from __future__ import annotations

import keyword

from ..errors import DeclarationError

#: dim names a declaration may not use: the implicit batch/time/head axes, and the names whose
#: generated kernel identifiers would collide with fixed ones (``n_rows``; the stride arguments
#: ``in_<x>_sb/_st/_sh`` of the batch, time and head axes)
_IMPLICIT = "tensors are [B, T, H, *dims] and batch, time and head are never declared"
RESERVED_DIMS = {"B": f"the implicit batch axis: {_IMPLICIT}", "T": f"the implicit time axis: {_IMPLICIT}",
                 "H": f"the implicit head axis: {_IMPLICIT}",
                 "b": "the generated kernels' batch-stride suffix", "t": "the generated kernels' time-stride suffix",
                 "h": "the generated kernels' head index and head-stride suffix",
                 "rows": "the generated kernels' token-row count n_rows"}


def check_dim_name(d, where: str) -> str:
    """``d`` if it can name a feature dim, else a ``DeclarationError`` saying why: a dim name is a
    Python identifier (the generated kernels derive identifiers from it) that does not start with
    an underscore (generated names do), is not a keyword and is not reserved (``RESERVED_DIMS``)."""
    if not isinstance(d, str):
        raise DeclarationError(f"{where}: a dim name must be a string, got {type(d).__name__} {d!r}")
    if not d.isidentifier() or not d.isascii():
        raise DeclarationError(f"{where}: dim name {d!r} is not an ASCII Python identifier (letters, "
                               f"digits, underscores; not empty, not starting with a digit)")
    if d.startswith("_"):
        raise DeclarationError(f"{where}: dim name {d!r} starts with an underscore, which mixir keeps "
                               f"for the names it generates (e.g. '__row__')")
    if keyword.iskeyword(d):
        raise DeclarationError(f"{where}: dim name {d!r} is a Python keyword")
    if d in RESERVED_DIMS:
        raise DeclarationError(f"{where}: dim name {d!r} is reserved ({RESERVED_DIMS[d]}); choose "
                               f"another name")
    return d
