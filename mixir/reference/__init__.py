"""NumPy semantics of the DSL: a declared mixer executed literally, token by token, in float64."""
from .interpreter import reference, run_reference

__all__ = ["reference", "run_reference"]
