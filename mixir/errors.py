"""The errors mixir raises. Every user-facing failure is one of these, with a message that
names the argument (or sub-expression) at fault and what was expected."""


class MixirError(Exception):
    """Base class of every error mixir raises on purpose."""


class DeclarationError(MixirError, TypeError):
    """The DSL declaration is malformed (bad annotation, dims that do not match, ...)."""


class UnsupportedMixerError(MixirError, NotImplementedError):
    """The analysis recognised no strategy that can evaluate this mixer."""


class InputError(MixirError, ValueError):
    """A call received a bad argument (wrong rank, dims, dtype, device, cu_seqlens, ...)."""


class TuningError(MixirError, RuntimeError):
    """The tuner found no feasible configuration, or the tuning database is unusable."""
