"""Memory traffic and launches of the chunked delta core, counted from the kernels themselves.

The kernels run in Triton's interpreter on CPU tensors while every masked load and store is
counted: per program, the distinct bytes it reads and the distinct bytes it writes (a byte a
program touches twice counts once — it stays in cache — but bytes that several programs read count
once per program: what an HBM model without inter-program L2 reuse moves). Torch operations on
device tensors between the kernels (conversions, copies, fills) count as launches with their
inputs' and outputs' bytes; views, allocations and integer bookkeeping (the chunk tables, built on
the host) are free.

Traffic is affine in the number of tokens per (sequence, head) for a fixed config (per-chunk work
plus per-sequence states), so ``model`` measures two short sequences (B = H = 1) and extrapolates:
``bytes(B, T, H) = B·H·(a + b·T)``.

    python -m mixir.lowering.householder.traffic --B 8 --T 4096 --H 16 --K 128 --V 128 --dtype bf16

prints one row per launch of a chunked forward + backward (``core.delta_forward`` then
``core.delta_backward``, Gated DeltaNet: scalar gates, an initial state, ``dhT``; o in the input
dtype, and q, β ⊙ v, β and g read from the call's tensors (β and g in the input dtype), as the
runtime runs the library's mixers: ``direct.py``) and the totals.
"""
from __future__ import annotations

import argparse
import collections
import contextlib

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..common import launch as _launch

_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view",
         "reshape", "expand", "as_strided", "t", "transpose", "permute", "select", "slice", "unsqueeze",
         "squeeze", "detach", "alias", "lift_fresh", "_to_copy_noop", "unbind", "split", "chunk",
         "view_as_real", "_reshape_alias", "set_", "resize_", "item", "_local_scalar_dense", "size",
         "stride", "is_same_size", "to"}


class _Counter:
    def __init__(self):
        self.rows = []              # [name, read bytes, written bytes]
        self._prog = None
        self._loads = collections.defaultdict(list)
        self._stores = collections.defaultdict(list)
        self.in_kernel = False          # the interpreter's own host copies are not launches

    def flush(self):
        if self._prog is None:
            return
        row = self.rows[-1]
        for acc, col in ((self._loads, 1), (self._stores, 2)):
            for size, chunks in acc.items():
                row[col] += size * np.unique(np.concatenate(chunks)).size
            acc.clear()
        self._prog = None

    def access(self, ptrs, mask, store):
        key = _interp_builder().grid_idx
        if key != self._prog:
            self.flush()
            self._prog = key
        size = _interp_dtype_bytes(ptrs)
        addr = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
        sel = addr[np.broadcast_to(mask.data, addr.shape)]
        (self._stores if store else self._loads)[size].append(sel.ravel())


def _interp_builder():
    from triton.runtime import interpreter
    return interpreter.interpreter_builder


def _interp_dtype_bytes(ptrs):
    return ptrs.get_element_ty().primitive_bitwidth // 8


class _TorchOps(TorchDispatchMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        if func.namespace not in ("aten", "prims") or name in _FREE or self.counter.in_kernel:
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        flat = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        flat += [a for x in args if isinstance(x, (list, tuple)) for a in x if isinstance(a, torch.Tensor)]
        outs = out if isinstance(out, (list, tuple)) else [out]
        if not any(t.is_floating_point() for t in flat + [o for o in outs if isinstance(o, torch.Tensor)]):
            return out          # host-side bookkeeping (chunk tables, offsets)
        rd = sum(a.numel() * a.element_size() for a in flat if a.dim() > 0 or a.numel() > 1)
        wr = sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))
        self.counter.rows.append([f"torch.{name}", rd, wr])
        return out


@contextlib.contextmanager
def counting():
    """Count launches and bytes inside the block; yields the list of rows [name, read, written]."""
    from triton.runtime import interpreter
    c = _Counter()
    B = interpreter.InterpreterBuilder
    orig_load, orig_store, orig_getitem = B.create_masked_load, B.create_masked_store, _launch.Kernel.__getitem__

    def load(self, ptrs, mask, other, *a):
        c.access(ptrs, mask, False)
        return orig_load(self, ptrs, mask, other, *a)

    def store(self, ptrs, value, mask, *a):
        c.access(ptrs, mask, True)
        return orig_store(self, ptrs, value, mask, *a)

    def getitem(kern, grid):
        run = orig_getitem(kern, grid)

        def launch(*args, **kw):
            c.flush()
            c.rows.append([kern.name.rsplit(".", 1)[-1], 0, 0])
            c.in_kernel = True
            try:
                return run(*args, **kw)
            finally:
                c.flush()
                c.in_kernel = False
        return launch
    B.create_masked_load, B.create_masked_store, _launch.Kernel.__getitem__ = load, store, getitem
    try:
        with _TorchOps(c):
            yield c.rows
    finally:
        B.create_masked_load, B.create_masked_store, _launch.Kernel.__getitem__ = orig_load, orig_store, orig_getitem


def core_step(T, K, V, dtype, config=None, n_h=1, seed=0):
    """One chunked forward + backward of the core (B = H = 1, T tokens): the rows of ``counting``."""
    from . import core
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, 1, K, generator=g).to(dtype)        # read with q_scale = K^-1/2
    k = torch.nn.functional.normalize(torch.randn(1, T, 1, K, generator=g), dim=-1).to(dtype)
    v = torch.randn(1, T, 1, V, generator=g).to(dtype)
    beta = torch.rand(1, T, 1, generator=g).to(dtype)
    gate = (-torch.rand(1, T, 1, generator=g) * 0.1).to(dtype)
    h0 = torch.randn(1, 1, K, V, generator=g)
    do, dhT = torch.randn(1, T, 1, V, generator=g).to(dtype), torch.randn(1, 1, K, V, generator=g)
    with counting() as rows:
        o, hT = core.delta_forward(q, k, v, beta, gate, h0, None, "chunked", config, out_dtype=dtype,
                                   q_scale=K ** -0.5, v_beta=True)
        core.delta_backward(q, k, v, beta, gate, h0, None, do, dhT, "chunked", config, q_scale=K ** -0.5,
                            v_beta=True)
    return rows


def model(B, T, H, K, V, dtype, config=None, t_small=(128, 256)):
    """[(name, read, written)] per launch extrapolated to B·H sequences of T tokens (see the
    module docstring)."""
    a, b = (core_step(t, K, V, dtype, config) for t in t_small)
    if [r[0] for r in a] != [r[0] for r in b]:
        raise RuntimeError("the launch sequence depends on T; pick other t_small")
    t0, t1 = t_small
    out = []
    for ra, rb in zip(a, b):
        vals = []
        for col in (1, 2):
            slope = (rb[col] - ra[col]) / (t1 - t0)
            vals.append(B * H * (ra[col] + slope * (T - t0)))
        out.append((ra[0], *vals))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--config", default="", help="k=v,... overrides of core.default_config")
    a = p.parse_args(argv)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    cfg = {k: int(v) for k, v in (x.split("=") for x in a.config.split(",") if x)} or None
    from . import core
    full = dict(core.default_config("chunked", a.K, a.V, dt), **(cfg or {}))
    rows = model(a.B, a.T, a.H, a.K, a.V, dt, cfg)
    print(f"chunked delta core fwd+bwd, B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} {a.dtype}, config {full}")
    print(f"{'launch':28s} {'read GB':>9s} {'write GB':>9s}")
    for name, rd, wr in rows:
        print(f"{name:28s} {rd / 1e9:9.3f} {wr / 1e9:9.3f}")
    rd, wr = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total: ' + str(len(rows)) + ' launches':28s} {rd / 1e9:9.3f} {wr / 1e9:9.3f}  ({(rd + wr) / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
