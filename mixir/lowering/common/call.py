"""What every family's compiled mixer does with a call before its kernels: validate the tensors
against the declaration (``check_call``: ``InputError`` naming the argument before any kernel),
the default strategy rule for short sequences, and the one-step shift of a packed sequence.

``check_tensors`` and ``check_cu_seqlens`` are the one input-validation layer of every family
(docs/dsl.md, "Inputs"): the DSL mixers reach them through ``check_call``, attention and the
library wrappers call them directly, so dtypes, devices and offsets follow the same rules and
messages everywhere."""
from __future__ import annotations

import sys

import torch

from ...dsl.signature import bind
from ...errors import InputError
from .checks import check_finite, checks_enabled

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
RECURRENT_MAX_T = 16      # default rule: short sequences (decoding) run the recurrent kernel


def is_compiling() -> bool:
    """Inside ``torch.compile`` tracing: value checks (host syncs) are skipped there."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


def assume_constant(fn):
    """``torch.compiler.assume_constant_result(fn)``: under ``torch.compile`` Dynamo calls ``fn``
    eagerly at trace time, with constant arguments, and keeps its result as a constant of the
    graph instead of tracing it. That API imports ``torch._dynamo`` (1.5-2.5 s), which every
    ``import mixir.library`` paid at import time; the marking it makes is one attribute of ``fn``,
    set here directly until Dynamo is loaded (``tests/test_structure.py`` checks that it is still
    the attribute torch's API sets)."""
    if "torch._dynamo" in sys.modules:
        mark = getattr(torch.compiler, "assume_constant_result", None)
        if mark is None:  # pragma: no cover - old torch
            from torch._dynamo import assume_constant_result as mark
        return mark(fn)
    fn._dynamo_marked_constant = True
    return fn


def _dtype_text(float64: bool) -> str:
    return "float64, float32, float16 or bfloat16" if float64 else "float32, float16 or bfloat16"


def check_tensors(where: str, named, *, float64: bool = False):
    """The one dtype/device rule of every family's call (the DSL mixers through ``check_call``,
    attention, the library wrappers). ``named``: ``(public name, tensor, per_token)`` triples.

    - every argument is a floating torch tensor: float32, float16 or bfloat16; float64 only where
      the family computes in float64 (``float64=True``: the LTI family) - elsewhere it is refused,
      never silently computed in float32;
    - per-token tensors share one dtype, the call's (the first per-token tensor's); any of them
      may instead be float32 (fla keeps gates and β in fp32); parameters may be any accepted dtype;
    - all on one device, CUDA or the CPU.

    (The library wrappers first apply fla's mixed precision, ``widen_mixed``: fp32 q/k with a
    16-bit v arrive here as fp32.) Returns ``(device, dtype)``; ``InputError`` naming the argument
    otherwise."""
    device, dtype = None, None
    for name, a, per_token in named:
        if not isinstance(a, torch.Tensor):
            raise InputError(f"{where}: argument {name!r} must be a torch.Tensor, got {type(a).__name__}")
        if a.dtype == torch.float64 and not float64:
            raise InputError(f"{where}: argument {name!r} must be float32, float16 or bfloat16, got "
                             f"torch.float64: this family's kernels do not compute in float64 (only "
                             f"the LTI family does; mixir.reference runs any declaration in float64)")
        if a.dtype not in FLOAT_DTYPES + ((torch.float64,) if float64 else ()):
            raise InputError(f"{where}: argument {name!r} must be {_dtype_text(float64)}, got {a.dtype}")
        if device is None:
            device = a.device
        elif a.device != device:
            raise InputError(f"{where}: argument {name!r} is on {a.device}, but earlier "
                             f"arguments are on {device}")
        if per_token:
            if dtype is None:
                dtype = a.dtype
            elif a.dtype not in (dtype, torch.float32):   # fla keeps gates and β in fp32
                raise InputError(f"{where}: argument {name!r} has dtype {a.dtype}, but earlier "
                                 f"per-token inputs have {dtype}; pass it as {dtype}"
                                 + ("" if dtype == torch.float32 else " or float32"))
    if device is not None and device.type not in ("cuda", "cpu"):
        raise InputError(f"{where}: tensors must be on a CUDA device or the CPU, got {device}")
    return device, dtype


def _is_key(name: str) -> bool:
    return name == "k" or (name[:1] == "k" and name[1:].isdigit())


def widen_mixed(m, arrays):
    """fla's mixed precision, for the library wrappers (before ``check_call``): fp32 q/k with 16-bit
    v (and 16-bit or fp32 gates/β) is computed in fp32 and returned in v's dtype, as fla's kernels
    do (they accumulate in fp32 and allocate ``o`` like ``v``). Acts only where ``check_tensors``
    would refuse: the first per-token input fp32 and a later one 16-bit. Still refused (by
    ``check_tensors``, or here): a key (``k``, ``k0``, …) of another dtype than ``q`` (fla
    contracts them in one matmul), and fp16 beside bf16 (no common 16-bit dtype).

    Returns ``(arrays, out_dtype)``: every 16-bit per-token tensor cast to fp32 and the dtype of the
    value input (``v``/``v0``, else the first per-token input), or ``(arrays, None)`` unchanged."""
    per_token = [(i, spec.name, a) for i, (spec, a) in enumerate(zip(m.inputs, arrays))
                 if spec.kind == "input" and isinstance(a, torch.Tensor)]
    if not per_token or per_token[0][2].dtype != torch.float32:
        return arrays, None
    narrow = [(i, name, a) for i, name, a in per_token if a.dtype in (torch.float16, torch.bfloat16)]
    if not narrow:
        return arrays, None
    if per_token[0][1] == "q" and any(_is_key(name) for _, name, _ in narrow):
        return arrays, None               # check_tensors refuses it, naming the key
    if len({a.dtype for _, _, a in narrow}) > 1:
        (_, n1, a1), (_, n2, a2) = narrow[0], next(x for x in narrow if x[2].dtype != narrow[0][2].dtype)
        raise InputError(f"{m.name}: argument {n2!r} has dtype {a2.dtype}, but {n1!r} has {a1.dtype}: "
                         f"the 16-bit inputs of a call share one dtype")
    names = [name for _, name, _ in per_token]
    value = next((n for n in ("v", "v0") if n in names), names[0])
    out_dtype = next(a.dtype for _, name, a in per_token if name == value)
    arrays = list(arrays)
    for i, _, a in narrow:
        arrays[i] = a.float()
    return arrays, out_dtype


def check_cu_seqlens(cu_seqlens, device) -> None:
    """The type checks of ``cu_seqlens`` (a 1-D int32/int64 tensor of N + 1 >= 2 offsets on the
    inputs' device); its values (0, non-decreasing, ending at T) are checked by
    ``dsl.signature.check_offsets`` (outside ``torch.compile``)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise InputError(f"cu_seqlens must be a torch.Tensor of int32/int64 offsets, got "
                         f"{type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise InputError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype} (offsets are "
                         f"never rounded)")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise InputError(f"cu_seqlens must be 1-D [N + 1] with N >= 1 sequences, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if device is not None and cu_seqlens.device != device:
        raise InputError(f"cu_seqlens is on {cu_seqlens.device}, the inputs on {device}")


def check_call(m, arrays, initial_state, cu_seqlens, scalars, *, float64: bool = False):
    """Validate a call of mixer ``m`` on torch tensors (any family); ``(bound, N, device, dtype)``.
    ``float64``: the family computes float64 inputs in float64 (``check_tensors``)."""
    if len(arrays) != len(m.inputs):
        names = ", ".join(s.name for s in m.inputs)
        raise InputError(f"{m.name} takes {len(m.inputs)} tensors ({names}), got {len(arrays)}")
    device, dtype = check_tensors(m.name, [(spec.name, a, spec.kind == "input")
                                           for spec, a in zip(m.inputs, arrays)], float64=float64)
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, device)
    states = initial_state if isinstance(initial_state, (tuple, list)) else (initial_state,)
    if checks_enabled():      # opt-in (mixir.input_checks): nothing built per call otherwise
        check_finite(m.name, [(spec.name, a) for spec, a in zip(m.inputs, arrays)]
                     + [("initial_state", s) for s in states])
    for s in states:
        if s is not None:
            if not isinstance(s, torch.Tensor) or not s.is_floating_point():
                raise InputError("initial_state must be a floating-point torch.Tensor" + (
                    f" (got a {s.dtype} tensor)" if isinstance(s, torch.Tensor) else
                    f" or a tuple of them (got {type(s).__name__})"))
            if s.dtype == torch.float64 and not float64:
                raise InputError(f"initial_state is float64, which {m.name}'s kernels do not compute "
                                 f"in; pass float32")
            if s.device != device:
                raise InputError(f"initial_state is on {s.device}, the inputs on {device}")
    if is_compiling():   # value checks of cu_seqlens would force a graph break
        b = bind(m, arrays, cu_seqlens=None, initial_state=None, scalars=scalars)
        N = b.B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        return b, N, device, dtype
    b = bind(m, arrays, cu_seqlens=cu_seqlens, initial_state=initial_state, scalars=scalars)
    return b, b.N, device, dtype


def shift_by_one(o, init, cu_seqlens, N):
    """The value *before* each token of a scanned state: o shifted by one token along T, with
    each sequence's initial state (or 0) at its first token. T = 0 (an empty slice) and empty
    sequences in ``cu_seqlens`` are fine: they have no token to fill."""
    B, T = o.shape[:2]
    shifted = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)
    if cu_seqlens is None:
        if init is not None:
            first = init.float().reshape((B, 1) + tuple(o.shape[2:]))
            mask = torch.arange(T, device=o.device) == 0          # all False when T = 0
            shifted = torch.where(mask.reshape((1, T) + (1,) * (o.dim() - 2)), first, shifted)
        return shifted
    starts = cu_seqlens.long()[:-1]
    seg = torch.bucketize(torch.arange(T, device=o.device), cu_seqlens.long()[1:], right=True)
    is_start = torch.arange(T, device=o.device) == starts[seg.clamp(max=N - 1)]
    first = (init.float()[seg.clamp(max=N - 1)] if init is not None else torch.zeros_like(o[0]))
    mask = is_start.reshape((T,) + (1,) * (o.dim() - 2))
    return torch.where(mask, first, shifted[0])[None]


def check_strategy(strategies, strategy):
    """``strategy`` if it names one of ``strategies`` (a compiled mixer's, for a call or for
    ``mixir.compile(..., strategy=)``); an ``InputError`` naming them otherwise."""
    if strategy not in tuple(strategies):
        raise InputError(f"strategy must be one of {tuple(strategies)}, got {strategy!r}")
    return strategy


class CompiledBase:
    """What every family's compiled mixer holds: the declaration, its plan, the strategies it can
    run, the strategy and config given to ``mixir.compile`` (checked here, before any kernel)."""

    kind = "CompiledMixer"        # the name ``repr`` shows

    def __init__(self, mixer, plan, strategy: str | None = None, config: dict | None = None):
        self.mixer, self.plan = mixer, plan
        self.strategies = plan.strategies
        if strategy is not None:
            self._check_strategy(strategy)
        self.strategy = strategy
        self.config = dict(config or {})
        self.__name__ = mixer.name

    def _check_strategy(self, strategy):
        return check_strategy(self.strategies, strategy)

    def __repr__(self):
        return f"<mixir.{self.kind} {self.mixer.name} ({self.plan.transition}; {', '.join(self.strategies)})>"

