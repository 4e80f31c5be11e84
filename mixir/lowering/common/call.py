"""What every family's compiled mixer does with a call before its kernels: validate the tensors
against the declaration (``check_call``: ``InputError`` naming the argument before any kernel),
the default strategy rule for short sequences, and the one-step shift of a packed sequence."""
from __future__ import annotations

import torch

from ...dsl.signature import bind
from ...errors import InputError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
RECURRENT_MAX_T = 16      # default rule: short sequences (decoding) run the recurrent kernel


def is_compiling() -> bool:
    """Inside ``torch.compile`` tracing: value checks (host syncs) are skipped there."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


def check_call(m, arrays, initial_state, cu_seqlens, scalars):
    """Validate a call of mixer ``m`` on torch tensors (any family); ``(bound, N, device, dtype)``."""
    if len(arrays) != len(m.inputs):
        names = ", ".join(s.name for s in m.inputs)
        raise InputError(f"{m.name} takes {len(m.inputs)} tensors ({names}), got {len(arrays)}")
    device, dtype = None, None
    for spec, a in zip(m.inputs, arrays):
        if not isinstance(a, torch.Tensor):
            raise InputError(f"{m.name}: argument {spec.name!r} must be a torch.Tensor, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise InputError(f"{m.name}: argument {spec.name!r} must be float32, float16 or "
                             f"bfloat16, got {a.dtype}")
        if device is None:
            device = a.device
        elif a.device != device:
            raise InputError(f"{m.name}: argument {spec.name!r} is on {a.device}, but earlier "
                             f"arguments are on {device}")
        if spec.kind == "input":
            if dtype is None:
                dtype = a.dtype
            elif a.dtype not in (dtype, torch.float32):   # fla keeps gates and β in fp32
                raise InputError(f"{m.name}: argument {spec.name!r} has dtype {a.dtype}, but earlier "
                                 f"per-token inputs have {dtype}; pass it as {dtype} or float32")
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"{m.name}: tensors must be on a CUDA device or the CPU, got {device}")
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise InputError("cu_seqlens must be a torch.Tensor of int32/int64 offsets")
        if cu_seqlens.device != device:
            raise InputError(f"cu_seqlens is on {cu_seqlens.device}, the inputs on {device}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise InputError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    states = initial_state if isinstance(initial_state, (tuple, list)) else (initial_state,)
    for s in states:
        if s is not None:
            if not isinstance(s, torch.Tensor) or not s.is_floating_point():
                raise InputError("initial_state must be a floating-point torch.Tensor")
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
    each sequence's initial state (or 0) at its first token."""
    B, T = o.shape[:2]
    shifted = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)
    if cu_seqlens is None:
        if init is not None:
            first = init.float().reshape((B, 1) + tuple(o.shape[2:]))
            mask = torch.zeros(T, dtype=torch.bool, device=o.device)
            mask[0] = True
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

