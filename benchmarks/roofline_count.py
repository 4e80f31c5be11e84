"""Counting machinery of ``static_roofline.py`` (shared by mixir's side and the fla subprocess).

* Triton's interpreter (CPU) is hooked at its builder: every masked load / store (and atomic)
  adds the bytes of its *unmasked* elements, every ``tl.dot`` adds ``2·M·N·K`` FLOPs under the
  precision class of its operands (``16bit``: bf16/fp16 operands on tensor cores; ``tf32``,
  ``tf32x3``: fp32 operands with that input precision; ``fp32``: fp32 operands with "ieee", i.e.
  FMA units). The bytes are what the kernel asks of memory: no cache model (a tile a program reads
  twice counts twice, and a tile several programs read counts once per program).
* Each launch (``InterpretedFunction.run``) is one ``Launch``; the torch operators that would be
  CUDA kernels (aten ops, not views / allocations / metadata) are launches too, through a
  ``TorchDispatchMode`` (``Glue``), with bytes = tensor inputs read + tensor outputs written
  (distinct elements of each view).
* ``sass_counts`` reads a compiled cubin's SASS: HGMMA (wgmma, sm_90) and HMMA (mma.sync)
  instructions.
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import math
import operator
import os
import re
import subprocess
import tempfile

import numpy as np
import torch
import triton.language as tl
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime import interpreter as _interp
from triton.runtime.interpreter import InterpretedFunction, InterpreterBuilder

PRECS = ("16bit", "tf32", "tf32x3", "fp32")


@dataclasses.dataclass
class Launch:
    """One kernel launch: a Triton kernel (kind "triton") or a torch operator (kind "glue")."""
    kind: str
    name: str
    phase: str
    load_bytes: float = 0.0
    store_bytes: float = 0.0
    flops: dict = dataclasses.field(default_factory=dict)     # precision class -> FLOPs
    meta: dict = dataclasses.field(default_factory=dict)      # build info (signature, config, ...)

    @property
    def bytes(self) -> float:
        return self.load_bytes + self.store_bytes

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "phase": self.phase, "load_bytes": self.load_bytes,
                "store_bytes": self.store_bytes, "flops": dict(self.flops), "meta": dict(self.meta)}


class _State:
    def __init__(self):
        self.launches = None        # list while counting
        self.current = None         # the Launch whose kernel is running
        self.phase = "fwd"
        self.pending = None         # meta of the next Triton launch (set by the caller's hook)
        self.on_launch = None       # callback(InterpretedFunction, args, kwargs, grid) -> meta
        self.tensor_loops = True    # ``range`` yields Triton scalars inside kernels (tensor_range)
        self.glue_off = 0           # > 0: torch operators are not counted (e.g. autotuning)
        self.dry = False            # kernels are skipped (a warm-up of the host-side caches)


STATE = _State()


def _elem_bytes(handle) -> int:
    return max(1, handle.get_element_ty().primitive_bitwidth // 8)


def _active(ptrs, mask) -> int:
    data = np.asarray(mask.data if mask is not None else True)
    shape = np.shape(ptrs.data)
    if data.shape == shape:
        return int(np.count_nonzero(data))
    return int(np.count_nonzero(np.broadcast_to(data, shape)))


def _prec_class(a, input_precision) -> str:
    bits = a.get_element_ty().primitive_bitwidth
    if bits <= 16:
        return "16bit"
    p = str(getattr(input_precision, "name", input_precision)).lower()
    if "tf32x3" in p:
        return "tf32x3"
    if "tf32" in p:
        return "tf32"
    return "fp32"


_orig = {}


def _masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
    cur = STATE.current
    if cur is not None:
        cur.load_bytes += _active(ptrs, mask) * _elem_bytes(ptrs)
    return _orig["load"](self, ptrs, mask, other, cache_policy, is_volatile)


def _masked_store(self, ptrs, value, mask, cache_policy):
    cur = STATE.current
    if cur is not None:
        cur.store_bytes += _active(ptrs, mask) * _elem_bytes(ptrs)
    return _orig["store"](self, ptrs, value, mask, cache_policy)


def _atomic_rmw(self, rmwOp, ptr, val, mask, sem, scope):
    cur = STATE.current
    if cur is not None:
        n = _active(ptr, mask) * _elem_bytes(ptr)
        cur.load_bytes += n
        cur.store_bytes += n
    return _orig["rmw"](self, rmwOp, ptr, val, mask, sem, scope)


def _dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    cur = STATE.current
    if cur is not None:
        sa, sb = np.shape(a.data), np.shape(b.data)
        batch = math.prod(sa[:-2]) if len(sa) > 2 else 1
        f = 2.0 * batch * sa[-2] * sa[-1] * sb[-1]
        c = _prec_class(a, input_precision)
        cur.flops[c] = cur.flops.get(c, 0.0) + f
    return _orig["dot"](self, a, b, d, input_precision, max_num_imprecise_acc)


def _index_any_numpy(tensor, scope):
    """NumPy >= 2.4 refuses int() of a 1-element 1-D array (the interpreter's scalar -> index)."""
    _orig["patch_tensor"](tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


def tensor_range(*args):
    """``range`` whose induction variable is a Triton scalar tensor, as in compiled Triton (fla's
    kernels call ``i_t.to(tl.int64)`` on loop variables; the interpreter gives Python ints)."""
    for i in builtins.range(*[operator.index(a) for a in args]):
        yield tl.core.tensor(_interp.TensorHandle(np.array([i], dtype=np.int32), tl.int32), tl.int32)


_LOOP_PREFIXES = ("mixir.lowering.", "fla.ops.", "fla.modules.")
_NOT_KERNELS = ("mixir.lowering.common.launch", "mixir.lowering.common.aot", "mixir.lowering.common.ptxas")


def _kernel_module_globals(fn) -> list:
    """The globals of the kernel's module and of every mixir / fla kernel module (helpers)."""
    import sys
    out = {id(fn.__globals__): fn.__globals__}
    for name, mod in list(sys.modules.items()):
        if name.startswith(_LOOP_PREFIXES) and not name.startswith(_NOT_KERNELS):
            d = getattr(mod, "__dict__", None)
            if d is not None:
                out[id(d)] = d
    return list(out.values())


@contextlib.contextmanager
def _tensor_loops(fn):
    """While a kernel runs, ``range`` in kernel modules yields Triton scalars (see tensor_range)."""
    saved = []
    for G in _kernel_module_globals(fn):
        saved.append((G, G.get("range", None), "range" in G))
        G["range"] = tensor_range
    try:
        yield
    finally:
        for G, old, had in saved:
            if had:
                G["range"] = old
            else:
                G.pop("range", None)


def _run(self, *args, grid, warmup, **kwargs):
    """InterpretedFunction.run: one launch, counted into ``STATE.launches``."""
    if STATE.dry:
        return None
    if warmup or STATE.launches is None:
        return _orig["run"](self, *args, grid=grid, warmup=warmup, **kwargs)
    meta = STATE.pending or {}
    STATE.pending = None
    if STATE.on_launch is not None:
        meta = {**meta, **(STATE.on_launch(self, args, kwargs, grid) or {})}
    launch = Launch("triton", meta.pop("name", self.fn.__name__), STATE.phase, meta=meta)
    sink = launch.meta.pop("sink", STATE.launches)
    prev, STATE.current = STATE.current, launch
    try:
        if STATE.tensor_loops:
            with _tensor_loops(self.fn):
                return _orig["run"](self, *args, grid=grid, warmup=warmup, **kwargs)
        return _orig["run"](self, *args, grid=grid, warmup=warmup, **kwargs)
    finally:
        STATE.current = prev
        sink.append(launch)


def install():
    """Patch the interpreter's builder and launcher (idempotent; inert while not counting)."""
    if _orig:
        return
    _orig.update(load=InterpreterBuilder.create_masked_load, store=InterpreterBuilder.create_masked_store,
                 rmw=InterpreterBuilder.create_atomic_rmw, dot=InterpreterBuilder.create_dot,
                 run=InterpretedFunction.run, patch_tensor=_interp._patch_lang_tensor)
    InterpreterBuilder.create_masked_load = _masked_load
    InterpreterBuilder.create_masked_store = _masked_store
    InterpreterBuilder.create_atomic_rmw = _atomic_rmw
    InterpreterBuilder.create_dot = _dot
    InterpretedFunction.run = _run
    _interp._patch_lang_tensor = _index_any_numpy


# ---- torch glue ---------------------------------------------------------------------------------

_SKIP = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "detach_", "alias",
         "lift_fresh", "_local_scalar_dense", "set_", "resize_", "sym_size", "sym_stride", "sym_numel",
         "is_same_size", "_has_compatible_shallow_copy_type", "scalar_tensor", "item"}
_WRITE_ONLY_SELF = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "zeros_like",
                    "ones_like", "full_like", "zeros", "ones", "full"}


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a (possibly expanded) view spans."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


class Glue(TorchDispatchMode):
    """Counts the aten operators that would be GPU kernels (custom ops are entered, so the torch
    code inside mixir's custom ops is counted operator by operator)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if STATE.launches is None or STATE.current is not None or STATE.glue_off:
            return func(*args, **kwargs)
        ns = getattr(func, "namespace", "aten")
        if ns not in ("aten", "prim", "prims"):
            impl = _custom_impl(func)
            if impl is not None:
                with self:
                    return impl(*args, **kwargs)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        if name in _SKIP or getattr(func, "is_view", False):
            return out
        read = 0
        skip_self = name in _WRITE_ONLY_SELF
        for i, t in enumerate(_tensors((args, kwargs))):
            if skip_self and i == 0:
                continue
            read += distinct_bytes(t)
        written = sum(distinct_bytes(t) for t in _tensors(out))
        if read == 0 and written == 0:
            return out
        STATE.launches.append(Launch("glue", f"aten.{name}", STATE.phase, float(read), float(written)))
        return out


def _custom_impl(func):
    """The Python implementation of a ``torch.library.custom_op`` (None for other ops)."""
    try:
        from torch._library.custom_ops import OPDEFS
        opdef = OPDEFS.get(f"{func.namespace}::{func._opname}")
        return None if opdef is None else opdef._init_fn
    except Exception:
        return None


@contextlib.contextmanager
def counting(launches: list, phase: str, glue: bool = True):
    """Count every launch inside the block into ``launches`` (as ``phase``)."""
    install()
    prev = STATE.launches, STATE.phase
    STATE.launches, STATE.phase = launches, phase
    try:
        if glue:
            with Glue():
                yield launches
        else:
            yield launches
    finally:
        STATE.launches, STATE.phase = prev


def warm_up(step):
    """Run ``step()`` once with every kernel skipped and nothing counted, so that host-side caches
    (mixir's chunk tables, per-shape configs) are warm and the counted run is a steady-state step.
    Best effort: an error (a host decision on a kernel's output) is ignored."""
    install()
    prev, STATE.dry = STATE.dry, True
    try:
        step()
    except Exception:   # noqa: BLE001
        pass
    finally:
        STATE.dry = prev


# ---- SASS ---------------------------------------------------------------------------------------

_MMA = {"wgmma": re.compile(r"\bHGMMA\b"), "mma": re.compile(r"\bHMMA\b")}


def sass_counts(cubin: bytes) -> dict:
    """{"wgmma": HGMMA instructions, "mma": HMMA instructions} in the cubin's SASS (static)."""
    from mixir.lowering.common.ptxas import _tool_path
    tool = _tool_path("cuobjdump")
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([tool, "-sass", path], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {}
    return {k: len(rx.findall(r.stdout)) for k, rx in _MMA.items()}


def build_counts(jit_fn, name, signature, constexprs, num_warps, num_stages, arch="sm_90") -> dict:
    """AOT-build one launch for ``arch`` (no GPU): registers, spills, shared memory (mixir's
    ``ptxas._build_fn``) and the static HGMMA / HMMA counts of its SASS."""
    import triton
    from triton.backends.compiler import GPUTarget
    from mixir.lowering.common import ptxas as px
    res = px._build_fn(jit_fn, name, signature, constexprs, num_warps, num_stages, arch)
    src = px._make_source(jit_fn, dict(signature), dict(constexprs), True)
    with contextlib.redirect_stdout(open(os.devnull, "w")):      # a cache hit of the same compile
        compiled = triton.compile(src, target=GPUTarget("cuda", px.ARCHS[arch], 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    out = {"registers": res.registers, "spills": res.spills, "shared": res.total_shared_bytes,
           "fits": res.fits, "num_warps": num_warps, "num_stages": num_stages}
    out.update(sass_counts(compiled.asm["cubin"]))
    return out
