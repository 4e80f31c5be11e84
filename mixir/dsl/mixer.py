"""``@mixer``: declare a token mixer by its per-token step function, and trace it to IR.

    @mixir.mixer
    def gla(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], S: State["K", "V"]):
        S = mixir.exp(gk) * S + mixir.outer(k, v)
        return q @ S, S

Annotations say what each argument is:
- ``In[dims]``: a per-token input, tensor ``[B, T, H, *dims]`` (``In[()]`` is a scalar per token);
- ``Param[dims]``: a per-head parameter, tensor ``[H, *dims]``;
- ``State[dims]``: a state carried across tokens, ``[B, H, *dims]``; the step returns its new value;
- ``Scale[dim]``: a float keyword (default ``size(dim) ** -0.5``, fla's ``scale``);
- ``Scalar[default]``: a float keyword with a default.
The step returns ``(output, *new_states)`` with the new states in declaration order.
"""
from __future__ import annotations

import dataclasses
import inspect

from ..errors import DeclarationError
import mixir.dsl.ir as ir
from .names import check_dim_name
from .ops import Value


class _Annotation:
    kind = ""

    def __init__(self, arg):
        self.arg = arg

    def __class_getitem__(cls, item):
        return cls(item)

    def __repr__(self):
        return f"{self.kind}[{self.arg!r}]"

    def dims(self):
        item = self.arg
        if item == () or item is None:
            return ()
        if isinstance(item, str):
            return (check_dim_name(item, f"{self.kind}[{item!r}]"),)
        if isinstance(item, tuple) and all(isinstance(d, str) for d in item):
            if len(set(item)) != len(item):
                raise DeclarationError(f"{self.kind}[{item}]: a dim name appears twice")
            return tuple(check_dim_name(d, f"{self.kind}{list(item)}") for d in item)
        raise DeclarationError(f"{self.kind}[...] takes dim names (strings) or (), got {item!r}")


class In(_Annotation):
    kind = "In"


class Param(_Annotation):
    kind = "Param"


class State(_Annotation):
    kind = "State"


class Scale(_Annotation):
    kind = "Scale"


class Scalar(_Annotation):
    kind = "Scalar"


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: str                 # "input" | "param" | "scalar"
    dims: tuple
    default: object = None    # scalars: float, or ("rsqrt_dim", dim) for Scale


@dataclasses.dataclass(frozen=True)
class StateSpec:
    name: str
    dims: tuple


@dataclasses.dataclass(frozen=True)
class Mixer:
    """A traced mixer: argument specs, the output expression and the state updates."""
    name: str
    args: tuple               # ArgSpec, positional inputs/params first, then scalars
    states: tuple             # StateSpec
    output: ir.Node
    updates: tuple            # new value of each state, same order as ``states``
    fingerprint: str
    doc: str = ""

    @property
    def inputs(self):
        return tuple(a for a in self.args if a.kind in ("input", "param"))

    @property
    def scalars(self):
        return tuple(a for a in self.args if a.kind == "scalar")

    def state_leaf(self, i=0) -> ir.Node:
        s = self.states[i]
        return ir.leaf("state", s.name, s.dims)

    def feature_dims(self):
        dims = []
        for spec in list(self.inputs) + list(self.states):
            dims += [d for d in spec.dims if d not in dims]
        return tuple(dims)

    def __repr__(self):
        return f"<mixir.Mixer {self.name} [{self.fingerprint}]>"


def trace(fn, name: str | None = None) -> Mixer:
    """Trace a step function into a ``Mixer``."""
    if not callable(fn):
        raise DeclarationError(f"@mixer decorates a step function, got {type(fn).__name__}")
    name = name or getattr(fn, "__name__", None) or "mixer"
    if not isinstance(name, str) or not name:
        raise DeclarationError(f"a mixer's name must be a non-empty string, got {name!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise DeclarationError(f"mixer {name}: cannot read the step's signature: {e}") from None
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as e:  # noqa: BLE001 - report any evaluation failure as a declaration error
        raise DeclarationError(f"mixer {name}: cannot read annotations: {e}") from e
    args, states, values = [], [], []
    for pname in sig.parameters:
        ann = hints.get(pname)
        if not isinstance(ann, _Annotation):
            raise DeclarationError(
                f"mixer {name}: argument {pname!r} needs an annotation In[...], Param[...], "
                f"State[...], Scale[...] or Scalar[...], got {ann!r}")
        if isinstance(ann, State):
            states.append(StateSpec(pname, ann.dims()))
            values.append(Value(ir.leaf("state", pname, ann.dims())))
        elif isinstance(ann, (In, Param)):
            kind = "input" if isinstance(ann, In) else "param"
            args.append(ArgSpec(pname, kind, ann.dims()))
            values.append(Value(ir.leaf(kind, pname, ann.dims())))
        elif isinstance(ann, Scale):
            dim = ann.arg
            if not isinstance(dim, str):
                raise DeclarationError(f"mixer {name}: Scale[...] takes one dim name, got {dim!r}")
            check_dim_name(dim, f"mixer {name}: Scale[{dim!r}]")
            args.append(ArgSpec(pname, "scalar", (), ("rsqrt_dim", dim)))
            values.append(Value(ir.leaf("scalar", pname)))
        else:
            if isinstance(ann.arg, bool) or not isinstance(ann.arg, (int, float)):
                raise DeclarationError(f"mixer {name}: Scalar[...] takes a float default, got {ann.arg!r}")
            args.append(ArgSpec(pname, "scalar", (), float(ann.arg)))
            values.append(Value(ir.leaf("scalar", pname)))
    if not states:
        raise DeclarationError(f"mixer {name}: declare at least one State[...] argument")
    ret = _run_step(fn, name, values)
    if not isinstance(ret, tuple) or len(ret) != 1 + len(states):
        raise DeclarationError(
            f"mixer {name}: the step must return (output, {', '.join('new_' + s.name for s in states)})"
            f", a tuple of {1 + len(states)}; got {type(ret).__name__}"
            + (f" of length {len(ret)}" if isinstance(ret, tuple) else ""))
    from .ops import as_node
    out = as_node(ret[0], "the output")
    updates = []
    for s, new in zip(states, ret[1:]):
        node = as_node(new, f"the new value of state {s.name!r}")
        if set(node.dims) != set(s.dims):
            raise DeclarationError(
                f"mixer {name}: the new value of state {s.name!r} has dims {node.dims}, but the "
                f"state is declared with dims {s.dims}")
        updates.append(node)
    for spec in args:
        if spec.kind == "scalar" and isinstance(spec.default, tuple):
            dim = spec.default[1]
            if not any(dim in a.dims for a in args) and not any(dim in s.dims for s in states):
                raise DeclarationError(f"mixer {name}: Scale[{dim!r}] names a dim no input has")
    extra = repr([(a.name, a.kind, a.dims, a.default) for a in args]) + repr(states)
    fp = ir.fingerprint(out, *updates, extra=extra)
    return Mixer(name, tuple(args), tuple(states), out, tuple(updates), fp, fn.__doc__ or "")


def _run_step(fn, name, values):
    """Call the step on the traced values; whatever goes wrong inside is a ``DeclarationError``
    (mixir's own errors pass through; others say what failed and chain the original)."""
    try:
        return fn(*values)
    except DeclarationError as e:
        if str(e).startswith(f"mixer {name}:"):
            raise
        raise DeclarationError(f"mixer {name}{_where(fn, e)}: {e}") from e
    except RecursionError as e:
        code = getattr(fn, "__code__", None)
        tb, calls = e.__traceback__, 0
        while tb is not None:
            calls += tb.tb_frame.f_code is code
            tb = tb.tb_next
        why = ("the step function calls itself: a step describes one token, mixir runs the loop "
               "over tokens (carry values in a State instead)" if calls > 1 else
               "tracing the step recursed too deeply")
        raise DeclarationError(f"mixer {name}: {why}") from None
    except Exception as e:  # noqa: BLE001 - any failure of the user's step while tracing
        raise DeclarationError(f"mixer {name}{_where(fn, e)}: the step function raised "
                               f"{type(e).__name__} while being traced: {e}") from e


def _where(fn, e) -> str:
    """", line N" of the step's last frame in the traceback of ``e`` ("" when it has none)."""
    code, line, tb = getattr(fn, "__code__", None), None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f" (line {line})"


def mixer(fn=None, *, name: str | None = None):
    """Decorator: trace ``fn`` into a ``Mixer`` (usable as ``@mixer`` or ``@mixer(name=...)``)."""
    if fn is None:
        return lambda f: trace(f, name)
    return trace(fn, name)
