"""One kernel, two executors: compiled Triton on CUDA tensors, Triton's interpreter on CPU tensors.

A kernel is written once as a plain (undecorated) Python function in Triton's language. ``Kernel``
wraps it both as a ``JITFunction`` and as an ``InterpretedFunction`` and picks by the device of the
tensors it is launched on - never by a process-wide environment switch. Without
``TRITON_INTERPRET=1`` Triton's own library functions (``tl.zeros``, ``tl.sum``, ... are
``@triton.jit`` functions in recent releases) and user helpers are ``JITFunction``s, which refuse to
be called from interpreted code; while an interpreted kernel runs, ``_interpreting`` routes such
calls to an interpreted twin of the same function.

Every launch can be recorded (``record_launches``) with its argument types, constexprs and launch
options, so that the ahead-of-time builder compiles exactly the kernels a call ran.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading

import torch
import triton
import triton.language as tl
from triton.runtime import interpreter as _interp
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

_DTYPE_SIG = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "i1",
}


@dataclasses.dataclass(frozen=True)
class LaunchRecord:
    """What one launch needs for an ahead-of-time build: signature, constexprs and options."""
    kernel: "Kernel"
    signature: tuple          # ((arg name, triton type or "constexpr"), ...)
    constexprs: tuple         # ((arg name, value), ...)
    num_warps: int
    num_stages: int

    def key(self):
        return (self.kernel.name, self.signature, self.constexprs, self.num_warps, self.num_stages)


_local = threading.local()
_interpret_lock = threading.RLock()
_twins: dict = {}
_plain: dict = {}      # id(JITFunction) -> _sees_only_tl(its function)


def _sees_only_tl(fn) -> bool:
    """Whether ``fn`` reaches Triton's language only through the ``triton.language`` module (no
    ``triton.language.core`` of its own): then the patches the running interpreted kernel made to
    that module (for its whole grid) are all the callee needs."""
    langs = {id(v) for v in fn.__globals__.values() if v is tl or v is tl.core}
    return langs == {id(tl)}


def _call_jit_interpreted(self, *args, **kwargs):
    twin = _twins.get(id(self))
    if twin is None:
        twin = _twins[id(self)] = InterpretedFunction(self.fn)
        _plain[id(self)] = _sees_only_tl(self.fn)
    if _plain[id(self)]:
        # a helper of the kernel's own kind (``@triton.jit`` over ``tl``): the language is patched
        # already, and patching it again per call (then restoring it) costs more than the call
        return twin.rewrite()(*args, **kwargs)
    patch = getattr(_interp, "_patch_lang", None)
    scope = patch(twin.fn) if patch is not None else None
    if scope is None or not hasattr(scope, "restore"):
        return twin(*args, **kwargs)
    # InterpretedFunction.__call__ patches triton.language for the callee and never restores it,
    # which breaks later real compiles in the same process; restore the callee's patches here
    try:
        return twin.rewrite()(*args, **kwargs)
    finally:
        scope.restore()


_patch_lang_tensor = getattr(_interp, "_patch_lang_tensor", None)


def _patch_lang_tensor_any_numpy(tensor, scope):
    """Triton 3.6's interpreter turns a scalar into an index with ``int(data)`` on a 1-element 1-D
    array, which NumPy ≥ 2.4 refuses (``range(n)`` with a runtime ``n`` then fails); index the
    element instead."""
    _patch_lang_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


@contextlib.contextmanager
def _interpreting():
    """While an interpreted kernel runs, calls of ``JITFunction``s run their interpreted twins
    (and the interpreter's scalar-to-index conversion works with any NumPy)."""
    with _interpret_lock:
        saved = JITFunction.__call__
        JITFunction.__call__ = _call_jit_interpreted
        if _patch_lang_tensor is not None:
            _interp._patch_lang_tensor = _patch_lang_tensor_any_numpy
        try:
            yield
        finally:
            JITFunction.__call__ = saved
            if _patch_lang_tensor is not None:
                _interp._patch_lang_tensor = _patch_lang_tensor


@contextlib.contextmanager
def record_launches():
    """Collect a ``LaunchRecord`` for every kernel launched inside the block (deduplicated)."""
    previous = getattr(_local, "records", None)
    records: dict = {}
    _local.records = records
    try:
        yield records
    finally:
        _local.records = previous
        if previous is not None:
            previous.update(records)


def targets_gpu(device) -> bool:
    """Whether launch parameters should be chosen for a GPU: on CUDA tensors, and while launches
    are being recorded for the ahead-of-time builder (so what is recorded on CPU is what a GPU
    would run, not the interpreter's convenience sizes)."""
    return device.type == "cuda" or getattr(_local, "records", None) is not None


def _arg_type(value):
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPE_SIG[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


class Kernel:
    """A Triton kernel usable on CUDA (compiled) and CPU (interpreted) tensors."""

    def __init__(self, fn, name: str | None = None):
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__name__}"
        self.jit = triton.jit(fn)
        self.interpreted = InterpretedFunction(fn)
        params = inspect.signature(fn).parameters
        self.arg_names = list(params)
        self.constexpr_names = {n for n, p in params.items()
                                if p.annotation is not inspect.Parameter.empty
                                and "constexpr" in str(p.annotation)}

    def __getitem__(self, grid):
        def launch(*args, num_warps: int = 4, num_stages: int = 2, **kwargs):
            bound = dict(zip(self.arg_names, args))
            bound.update(kwargs)
            missing = [n for n in self.arg_names if n not in bound]
            if missing:
                raise TypeError(f"kernel {self.name} missing arguments {missing}")
            device = next((v.device for v in bound.values() if isinstance(v, torch.Tensor)), None)
            records = getattr(_local, "records", None)
            if records is not None:
                self._record(records, bound, num_warps, num_stages)
            if device is not None and device.type == "cuda":
                return self.jit[grid](**bound, num_warps=num_warps, num_stages=num_stages)
            with _interpreting():
                return self.interpreted[grid](**bound)
        return launch

    def _record(self, records, bound, num_warps, num_stages):
        signature, constexprs = [], []
        for name in self.arg_names:
            value = bound[name]
            if name in self.constexpr_names or value is None:
                signature.append((name, "constexpr"))
                constexprs.append((name, value))
            else:
                signature.append((name, _arg_type(value)))
        rec = LaunchRecord(self, tuple(signature), tuple(constexprs), num_warps, num_stages)
        records.setdefault(rec.key(), rec)


def kernel(fn):
    """Decorator: turn a plain Triton-language function into a ``Kernel``."""
    return Kernel(fn)


# ---- configs through torch custom ops (an op's arguments cannot be dicts) ------------------------
def encode_config(config: dict) -> str:
    return ";".join(f"{k}={int(v)}" for k, v in sorted(config.items()))


def decode_config(text: str) -> dict:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(";") if item)}
