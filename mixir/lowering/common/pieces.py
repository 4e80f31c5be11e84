"""``PiecesKernel``: a mixer's per-token pieces as generated Triton kernels, differentiable.

``PiecesKernel(mixer_name, pieces, input_specs)`` generates (``codegen.generate``), caches and
imports one module with a forward and a backward kernel. Calling it evaluates every piece in one
pass over the tokens::

    pk = PiecesKernel(m.name, form.pieces(), m.inputs)
    p = pk(arrays, binding.scalars, B, T, H, binding.sizes)    # {name: fp32 [B, T, H(, D)]}

The call goes through the torch custom op ``mixir::pointwise`` (fake function and autograd formula
registered, backward ``mixir::pointwise_bwd``), so it works under ``torch.compile(fullgraph=True)``
without graph breaks. The op is generic: its first argument is the key of the ``PiecesKernel`` in
a process-wide registry (``PiecesKernel.key``, content addressed: the same pieces give the same key).
Gradients flow to every input and parameter the pieces read (scalars and the head index are
constants); a parameter's gradient is the sum over batch and time of the kernel's per-row partials.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np
import torch
import triton

from ...tiles import pow2
from ...errors import InputError
from . import launch
from . import codegen
from .chunks import empty

__all__ = ["PiecesKernel", "get_pieces_kernel", "REGISTRY"]

REGISTRY: dict = {}
_lock = threading.Lock()

# elements of the largest tile of one program (rows x padded feature extent)
TILE_ELEMS = {"cuda_fwd": 1024, "cuda_bwd": 1024, "cpu": 1 << 16}


class PiecesKernel:
    """The pieces ``{name: Node}`` of mixer ``mixer_name`` as one fused Triton pass.

    ``input_specs``: the mixer's tensor arguments in call order (``ArgSpec``s with ``.name``,
    ``.kind`` ("input" [B, T, H, *dims] or "param" [H, *dims]), ``.dims``; or such tuples).

    Attributes: ``key`` (registry key), ``source_path`` (the generated module), ``source``,
    ``kernels`` (the ``launch.Kernel`` objects: forward, then backward when there is one),
    ``fwd_kernel``, ``bwd_kernel``, ``piece_names``, ``generated`` (``codegen.Generated``)."""

    def __init__(self, mixer_name: str, pieces: dict, input_specs):
        self.mixer_name = mixer_name
        self.input_specs = tuple(codegen._spec_tuple(s) for s in input_specs)
        self.generated = g = codegen.generate(mixer_name, pieces, self.input_specs)
        self.loaded = codegen.load(g)
        self.source = g.source
        self.source_path = self.loaded.path
        self.fwd_kernel = self.loaded.fwd
        self.bwd_kernel = self.loaded.bwd
        self.kernels = [k for k in (self.fwd_kernel, self.bwd_kernel) if k is not None]
        self.pieces = dict(pieces)
        self.piece_names = tuple(self.pieces)
        self.key = f"{mixer_name}:{g.sha[:24]}"
        names = [s[0] for s in self.input_specs]
        self._index = {n: i for i, n in enumerate(names)}
        self.used = tuple(names.index(n) for n, _, _ in g.inputs)     # arrays the kernels read
        self.scalar_names = tuple(s for s, _ in g.fwd.scalars) if g.fwd else ()
        dims = []
        for node in self.pieces.values():
            dims += [d for d in node.dims if d not in dims]
        if g.fwd:
            dims += [d for d in g.fwd.dims if d not in dims]
        self.dims = tuple(dims)
        # gradient kinds, aligned with self.used: "input", "param" or None (identically zero)
        bwd_names = {sa.name: sa.kind for sa in g.bwd.stores} if g.bwd else {}
        self.grad_kinds = tuple(bwd_names[n][len("grad_"):] if n in bwd_names else None
                                for n, _, _ in g.inputs)
        with _lock:
            REGISTRY[self.key] = self

    def __repr__(self):
        return f"<mixir.PiecesKernel {self.mixer_name} {list(self.piece_names)} ({self.source_path})>"

    # ---- the differentiable call -----------------------------------------------------------
    def __call__(self, arrays, scalars: dict, B: int, T: int, H: int, sizes: dict,
                 narrow=(), dtype=None) -> dict:
        """``{piece: [B, T, H(, D)]}``, fp32, except the pieces named in ``narrow``, which the
        kernel stores in ``dtype`` (a consumer that rounds them to ``dtype`` anyway then reads them
        without an fp32 round trip through memory)."""
        if len(arrays) != len(self.input_specs):
            raise InputError(f"{self.mixer_name}: the pieces take {len(self.input_specs)} tensors "
                             f"({', '.join(s[0] for s in self.input_specs)}), got {len(arrays)}")
        missing = [d for d in self.dims if d not in sizes]
        if missing:
            raise InputError(f"{self.mixer_name}: no size given for dims {missing}")
        like = arrays[0]
        shape = [B, T, H] + [sizes[d] for d in self.dims]    # ints (SymInts under torch.compile)
        out = {}
        if self.generated.kernel_pieces:
            svals = []
            for s in self.scalar_names:
                if s not in scalars:
                    raise InputError(f"{self.mixer_name}: no value for the scalar {s!r}")
                svals.append(float(scalars[s]))
            mask = [int(dtype is not None and p in narrow) for p in self.generated.kernel_pieces]
            values = torch.ops.mixir.pointwise(self.key, like, [arrays[i] for i in self.used],
                                               svals, shape, mask, dtype or torch.float32)
            out.update(zip(self.generated.kernel_pieces, values))
        result = {}
        for name, node in self.pieces.items():
            if name in out:
                result[name] = out[name]
            elif name in self.generated.passthrough:   # the input itself (autograd by torch)
                a = arrays[self._index[self.generated.passthrough[name]]]
                a = a.to(dtype) if dtype is not None and name in narrow else a.float()
                if self.input_specs[self._index[self.generated.passthrough[name]]][1] == "param":
                    a = a.expand(self.piece_shape(name, shape))
                result[name] = a
            else:   # a constant piece: a broadcast view, no memory
                full = self.piece_shape(name, shape)
                result[name] = torch.full((), self.generated.const_pieces[name], dtype=torch.float32,
                                          device=like.device).expand(full)
        return result

    def piece_shape(self, name, shape) -> tuple:
        B, T, H = shape[:3]
        size = dict(zip(self.dims, shape[3:]))
        return (B, T, H) + tuple(size[d] for d in self.pieces[name].dims)

    # ---- launches (the custom ops' implementations) ----------------------------------------
    @staticmethod
    def _grid_rows(info, bd, n_rows, device, direction):
        elems = max([math.prod(bd[d] for d in t) for t in info.tiles] or [1])
        cap = TILE_ELEMS["cuda_" + direction] if launch.targets_gpu(device) else TILE_ELEMS["cpu"]
        BR = max(1, min(pow2(n_rows), max(1, cap // elems)))
        return BR, (triton.cdiv(n_rows, BR),)

    def _common(self, info, shape, device, direction):
        B, T, H = shape[:3]
        size = dict(zip(self.dims, shape[3:]))
        bd = {d: pow2(size[d]) for d in info.dims}
        n_rows = B * T * H
        BR, grid = self._grid_rows(info, bd, n_rows, device, direction)
        args = {"n_rows": n_rows, "T": T, "H": H, "BR": BR}
        for d, n_arg, b_arg in info.dim_args:
            args[n_arg] = size[d]
            args[b_arg] = bd[d]
        return args, grid, n_rows, size

    @staticmethod
    def _load_args(args, la, t):
        args[la.arg] = t
        for name, stride in zip(la.stride_args, t.stride()):
            args[name] = int(stride)

    def _launch(self, kernel, grid, args, device):
        num_warps = 4
        ctx = torch.cuda.device(device) if device.type == "cuda" else np.errstate(all="ignore")
        with ctx:
            kernel[grid](**args, num_warps=num_warps, num_stages=1)

    def forward_impl(self, like, inputs, scalars, shape, narrow=None, dtype=torch.float32):
        g = self.generated
        info = g.fwd
        device = like.device
        args, grid, n_rows, size = self._common(info, shape, device, "fwd")
        byname = {n: t for (n, _, _), t in zip(g.inputs, inputs)}
        for la in info.loads:
            self._load_args(args, la, byname[la.name])
        for (s, arg), v in zip(info.scalars, scalars):
            args[arg] = float(v)
        outs = []
        narrowed = {p for p, m in zip(g.kernel_pieces, narrow or ()) if m}
        for sa in info.stores:
            o = empty(self.piece_shape(sa.name, shape), device=device,   # NaN under MIXIR_POISON
                      dtype=dtype if sa.name in narrowed else torch.float32)
            args[sa.arg] = o
            outs.append(o)
        if n_rows > 0:
            self._launch(self.fwd_kernel, grid, args, device)
        return outs

    def backward_impl(self, like, inputs, scalars, shape, cotangents):
        g = self.generated
        device = like.device
        grads = [None] * len(inputs)
        info = g.bwd
        if info is None:
            return grads
        args, grid, n_rows, size = self._common(info, shape, device, "bwd")
        byname = {n: t for (n, _, _), t in zip(g.inputs, inputs)}
        cts = dict(zip(g.kernel_pieces, cotangents))
        for la in info.loads:
            if la.kind == "cotangent":
                ct = cts.get(la.name)
                if ct is None:
                    ct = torch.zeros((), dtype=torch.float32, device=device).expand(
                        self.piece_shape(la.name, shape))
                self._load_args(args, la, ct)
            else:
                self._load_args(args, la, byname[la.name])
        for (s, arg), v in zip(info.scalars, scalars):
            args[arg] = float(v)
        B, T, H = shape[:3]
        out = {}
        kinds = {n: kind for n, kind, _ in g.inputs}
        for sa in info.stores:
            # an input's gradient is stored in the input's dtype (the kernel accumulates in fp32);
            # a parameter's per-row partials stay fp32 for their sum over batch and time
            dt = byname[sa.name].dtype if kinds.get(sa.name) == "input" else torch.float32
            buf = empty((B, T, H) + tuple(size[d] for d in sa.dims), device=device, dtype=dt)
            args[sa.arg] = buf
            out[sa.name] = buf
        if n_rows > 0:
            self._launch(self.bwd_kernel, grid, args, device)
        for i, (n, kind, dims) in enumerate(g.inputs):
            if n not in out:
                continue
            if kind == "param":   # per-row partials -> sum over batch and time (deterministic)
                grads[i] = out[n].sum(dim=(0, 1))
            else:
                grads[i] = out[n]
        return grads


def get_pieces_kernel(key: str) -> PiecesKernel:
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"mixir::pointwise: no PiecesKernel registered under {key!r} in this "
                       "process (build the compiled mixer first)") from None


# ----------------------------------------------------------------------------------------------
# torch custom ops

def _empty(like):
    return like.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op("mixir::pointwise", mutates_args=())
def pointwise(key: str, like: torch.Tensor, inputs: list[torch.Tensor], scalars: list[float],
              shape: list[int], narrow: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    """The kernel pieces of ``REGISTRY[key]``, [B, T, H, (D)] each (``shape`` = [B, T, H] + the
    sizes of ``PiecesKernel.dims``): fp32, or ``dtype`` where ``narrow`` (one flag per kernel
    piece) is set. ``like`` gives the device; ``inputs`` are the arrays the kernels read
    (``PiecesKernel.used``), ``scalars`` the values of ``scalar_names``."""
    return get_pieces_kernel(key).forward_impl(like, inputs, scalars, shape, narrow, dtype)


@pointwise.register_fake
def _(key, like, inputs, scalars, shape, narrow, dtype):
    pk = get_pieces_kernel(key)
    return [like.new_empty(pk.piece_shape(p, shape), dtype=dtype if m else torch.float32)
            for p, m in zip(pk.generated.kernel_pieces, narrow)]


@torch.library.custom_op("mixir::pointwise_bwd", mutates_args=())
def pointwise_bwd(key: str, like: torch.Tensor, inputs: list[torch.Tensor], scalars: list[float],
                  shape: list[int], cotangents: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """Gradients (the inputs' shapes; an input's in its dtype, a parameter's fp32) of the pieces
    w.r.t. ``inputs``; an empty tensor where the gradient is identically zero."""
    grads = get_pieces_kernel(key).backward_impl(like, inputs, scalars, shape, cotangents)
    return [_empty(like) if gr is None else gr for gr in grads]


@pointwise_bwd.register_fake
def _(key, like, inputs, scalars, shape, cotangents):
    pk = get_pieces_kernel(key)
    return [_empty(like) if kind is None
            else x.new_empty(x.shape, dtype=x.dtype if kind == "input" else torch.float32)
            for x, kind in zip(inputs, pk.grad_kinds)]


def _setup(ctx, inputs, output):
    key, like, tensors, scalars, shape, narrow, _ = inputs
    ctx.save_for_backward(like, *tensors)
    ctx.key, ctx.scalars, ctx.shape, ctx.narrow = key, list(scalars), list(shape), list(narrow)


def _backward(ctx, grads):
    like, *tensors = ctx.saved_tensors
    # the gradient of a list of numbers is None, but an empty list is a list (torch's pytree:
    # a list holding a non-tensor is a leaf, an empty one is not)
    nones = tuple(None if x else [] for x in (ctx.scalars, ctx.shape, ctx.narrow)) + (None,)
    if not tensors:
        return None, None, [], *nones
    pk = get_pieces_kernel(ctx.key)
    gs = torch.ops.mixir.pointwise_bwd(ctx.key, like, list(tensors), ctx.scalars, ctx.shape,
                                       list(grads))
    out = [None if kind is None else gr.to(x.dtype)
           for gr, x, kind in zip(gs, tensors, pk.grad_kinds)]
    return None, None, out, *nones


pointwise.register_autograd(_backward, setup_context=_setup)
