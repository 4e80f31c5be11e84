"""Binding a call's arrays to a mixer's declaration: shapes, dim sizes and keyword checks.

Shared by the reference (NumPy) and the runtime (torch): it only reads ``.shape`` and ``.ndim``,
and raises ``InputError`` naming the argument at fault before anything reaches a kernel.
"""
from __future__ import annotations

import dataclasses

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class Binding:
    B: int
    T: int
    H: int
    N: int                    # number of sequences (B, or len(cu_seqlens) - 1)
    sizes: dict               # dim name -> size
    scalars: dict             # scalar name -> float

    def state_shape(self, spec):
        return (self.N, self.H) + tuple(self.sizes[d] for d in spec.dims)


def _shape_str(dims):
    return "[" + ", ".join(("B", "T", "H") + tuple(dims)) + "]"


def bind(mixer, arrays, *, cu_seqlens=None, initial_state=None, scalars=None) -> Binding:
    specs = mixer.inputs
    if len(arrays) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise InputError(f"{mixer.name} takes {len(specs)} positional arrays ({names}); got {len(arrays)}")
    sizes: dict = {}
    B = T = H = None
    first = None                  # (name, shape) of the first per-token input
    H_from_param = False          # H was fixed by a parameter [H, ...] (not by a per-token input)
    for spec, a in zip(specs, arrays):
        if not hasattr(a, "shape") or not hasattr(a, "ndim"):
            raise InputError(f"{mixer.name}: argument {spec.name!r} must be an array/tensor, got "
                             f"{type(a).__name__}")
        lead = ("B", "T", "H") if spec.kind == "input" else ("H",)
        want = len(lead) + len(spec.dims)
        expected = _shape_str(spec.dims) if spec.kind == "input" else "[" + ", ".join(("H",) + spec.dims) + "]"
        if a.ndim != want:
            raise InputError(f"{mixer.name}: argument {spec.name!r} must have rank {want} {expected}, "
                             f"got shape {tuple(a.shape)}")
        shape = tuple(int(x) for x in a.shape)
        named = dict(zip(lead + spec.dims, shape))
        T0, H0 = T, H                 # as known from the earlier arguments
        for d, n in named.items():
            known = {"B": B, "T": T, "H": H}.get(d) if d in ("B", "T", "H") else sizes.get(d)
            if known is not None and known != n:
                raise InputError(
                    f"{mixer.name}: argument {spec.name!r} has {d} = {n} (shape {shape}, expected "
                    f"{expected}), but an earlier argument has {d} = {known}"
                    + _conflict_hint(spec, shape, first, T0, H0, H_from_param))
            if d == "B":
                B = n
            elif d == "T":
                T = n
            elif d == "H":
                H = n
                H_from_param = H_from_param or spec.kind == "param"
            else:
                if n < 1:
                    raise InputError(f"{mixer.name}: argument {spec.name!r} has an empty dim {d}")
                sizes[d] = n
        if spec.kind == "input" and first is None:
            first = (spec.name, shape)
    if B is None:
        raise InputError(f"{mixer.name} needs at least one per-token input")
    if H == 0:
        raise InputError(f"{mixer.name}: H must be at least 1")
    for s in mixer.states:
        for d in s.dims:
            if d not in sizes:
                raise InputError(f"{mixer.name}: state {s.name!r} has dim {d} that no input fixes")
    N = B
    if cu_seqlens is not None:
        if getattr(cu_seqlens, "ndim", None) != 1 or int(cu_seqlens.shape[0]) < 2:
            raise InputError("cu_seqlens must be a 1-D integer array [N + 1] of sequence offsets, got "
                             f"shape {tuple(getattr(cu_seqlens, 'shape', ()))}")
        if str(getattr(cu_seqlens, "dtype", "")).replace("torch.", "") not in INT_DTYPES:
            raise InputError(f"cu_seqlens must have an integer dtype, got {cu_seqlens.dtype}")
        if B != 1:
            raise InputError(f"cu_seqlens packs sequences along T and needs B = 1, got B = {B}")
        N = len(check_offsets(cu_seqlens, T)) - 1
    states = _as_tuple(initial_state, len(mixer.states))
    if states is not None:
        if len(states) != len(mixer.states):
            names = ", ".join(st.name for st in mixer.states)
            raise InputError(f"initial_state: {mixer.name} has {len(mixer.states)} states ({names}); pass "
                             + (f"a tuple of {len(mixer.states)} tensors" if len(mixer.states) > 1
                                else "one tensor") + f", got {len(states)}")
        for spec, s in zip(mixer.states, states):
            want = (N, H) + tuple(sizes[d] for d in spec.dims)
            if s is not None and not hasattr(s, "shape"):
                raise InputError(f"initial_state for state {spec.name!r} must be an array/tensor, got "
                                 f"{type(s).__name__}")
            got = None if s is None else tuple(int(x) for x in s.shape)
            if s is not None and got != want:
                hint = ""
                if len(got) == len(want) and len(got) > 1 and got[1] == T and T != H:
                    hint = (f"; its H position holds T = {T}: are the inputs laid out [B, H, T, ...]? "
                            f"mixir takes [B, T, H, ...] (x.transpose(1, 2))")
                raise InputError(
                    f"initial_state for state {spec.name!r} must have shape [N, H"
                    f"{''.join(', ' + d for d in spec.dims)}] = {want}, got {got}{hint}")
    values = {}
    scalars = dict(scalars or {})
    for spec in mixer.scalars:
        v = scalars.pop(spec.name, None)
        if v is None:
            d = spec.default
            v = sizes[d[1]] ** -0.5 if isinstance(d, tuple) else d
        try:
            values[spec.name] = float(v)
        except Exception:  # noqa: BLE001 - TypeError, ValueError, a tensor of several elements
            raise InputError(f"{mixer.name}: keyword {spec.name!r} must be a float, got {v!r}") from None
    if scalars:
        raise InputError(f"{mixer.name} got unexpected keyword arguments {sorted(scalars)}")
    return Binding(B, T, H, N, sizes, values)


INT_DTYPES = ("int32", "int64", "int16", "uint8", "int8")


def check_offsets(cu_seqlens, T: int) -> list:
    """The offsets of ``cu_seqlens`` (any integer array) as ints, checked: they start at 0, do not
    decrease and end at ``T`` (every token belongs to one sequence). ``InputError`` otherwise.
    The one rule for every family (the mixers' ``bind``, ``document_attention``)."""
    offs = [int(x) for x in cu_seqlens.tolist()]
    if not offs:
        raise InputError("cu_seqlens must hold N + 1 >= 1 offsets, got none")
    if offs[0] != 0:
        raise InputError(f"cu_seqlens must start at 0, got {offs[0]}")
    if any(b < a for a, b in zip(offs, offs[1:])):
        raise InputError(f"cu_seqlens must be non-decreasing, got {offs}")
    if offs[-1] != T:
        raise InputError(f"cu_seqlens must end at T = {T} (every token in one sequence), got {offs[-1]}")
    return offs


def transposed_hint(shape, T=None, H=None, what="it", sure=True) -> str:
    """A hint to append to a shape error when a per-token tensor ``shape`` [B, T, H, ...] looks
    laid out [B, H, T, ...] given the T and/or H known from elsewhere (other inputs, parameters,
    declared sizes); "" when nothing suggests it. ``sure``: H is known from a source that fixes it
    (parameters, declared sizes), so ``what`` is the tensor at fault; else the tensors disagree by
    a swap and either may be."""
    if len(shape) < 3 or H is None:
        return ""
    t, h = int(shape[1]), int(shape[2])
    if not (t == H and h != H and (T is None or h == T)):
        return ""
    if sure:
        return (f"; {what} looks laid out [B, H, T, ...] (its T position holds H = {H}): mixir "
                f"takes [B, T, H, ...] like fla, pass x.transpose(1, 2)")
    return (f"; {what} and the earlier arguments differ by a swap of T and H: one of them is laid "
            f"out [B, H, T, ...]; mixir takes [B, T, H, ...] like fla (x.transpose(1, 2))")


def _conflict_hint(spec, shape, first, T, H, H_from_param) -> str:
    if spec.kind == "input":
        return transposed_hint(shape, T, H, f"{spec.name!r}", sure=H_from_param)
    if first is not None and shape[0] == first[1][1] and shape[0] != first[1][2]:
        return (f"; the per-token input {first[0]!r} {first[1]} holds H = {shape[0]} in its T "
                f"position: is it laid out [B, H, T, ...]? mixir takes [B, T, H, ...] like fla, "
                f"pass x.transpose(1, 2)")
    return ""


def _as_tuple(state, n):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(state)
    return (state,) if n == 1 else (state,)


def segments(binding: Binding, cu_seqlens):
    """(batch index, start, end) of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, binding.T) for b in range(binding.B)]
    offs = [int(x) for x in cu_seqlens.tolist()]
    return [(0, offs[i], offs[i + 1]) for i in range(len(offs) - 1)]
