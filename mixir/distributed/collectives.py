"""Differentiable collectives of context parallelism, on ``torch.distributed`` (NCCL on GPUs,
gloo on CPU), and the accounting of the bytes each rank puts on the wire.

- ``all_gather(x, group)`` stacks every rank's ``x`` into ``[W, *x.shape]``; its backward is the
  adjoint: the sum over ranks of the gradients of this rank's slot — a reduce-scatter on NCCL,
  an all-reduce then this rank's slot on other backends (gloo has no reduce-scatter; torch's own
  ``torch.distributed.nn.functional.all_gather`` emulates it there with an all-to-all of W
  tensors). Every rank must run the backward once per forward (as with DDP), which ``tie`` makes
  hold even on a rank whose outputs do not read the gathered tensor.
- ``all_gather_ints(values, group)``: small integers of every rank (slice lengths, whether a
  rank needs gradients), no gradient.
- ``record_traffic()``: a context manager collecting ``(what, bytes this rank sends)`` of every
  collective issued inside it, forward and backward (the benchmark and the tests read it).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from .group import Group

_RECORDERS: list = []


@contextlib.contextmanager
def record_traffic():
    """Yield a list that receives ``(name, bytes sent by this rank)`` per collective issued
    inside the block: an all-gather sends ``(W - 1)`` copies of the rank's piece in a ring or
    tree (the figure is ``(W - 1) · piece``), an all-reduce ``2 (W - 1) / W`` of the buffer."""
    log: list = []
    _RECORDERS.append(log)
    try:
        yield log
    finally:
        _RECORDERS.remove(log)


def _record(name: str, nbytes: float):
    for log in _RECORDERS:
        log.append((name, int(nbytes)))


def _gather(x: torch.Tensor, g: Group) -> torch.Tensor:
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(g.world)]
    dist.all_gather(out, x, group=g.pg)
    _record("all_gather", (g.world - 1) * x.numel() * x.element_size())
    return torch.stack(out)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return _gather(x, g)

    @staticmethod
    def backward(ctx, grad):
        g = ctx.g
        grad = grad.contiguous()
        if g.backend == "nccl":
            out = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(out, grad, group=g.pg)
            _record("reduce_scatter", (g.world - 1) * out.numel() * out.element_size())
            return out, None
        dist.all_reduce(grad, group=g.pg)
        _record("all_reduce", 2 * (g.world - 1) / g.world * grad.numel() * grad.element_size())
        return grad[g.rank].clone(), None


def all_gather(x: torch.Tensor, g: Group) -> torch.Tensor:
    """``[W, *x.shape]``: every rank's ``x`` (same shape and dtype on every rank), differentiable."""
    return _AllGather.apply(x, g)


def all_gather_ints(values, g: Group, device) -> list:
    """Every rank's tuple of integers (slice lengths, flags), in rank order: ``[W][len(values)]``."""
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    return [[int(x) for x in row] for row in _gather(t, g).tolist()]


class _Tie(torch.autograd.Function):
    """``out`` unchanged, with ``anchor`` as an extra input whose gradient is zero: the backward
    of ``out`` then always reaches the collective behind ``anchor`` (no rank skips it)."""
    @staticmethod
    def forward(ctx, out, anchor):
        ctx.anchor = (anchor.shape, anchor.dtype, anchor.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.anchor
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def tie(out: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``out``, made to depend (with a zero gradient) on ``anchor`` when gradients are on."""
    if torch.is_grad_enabled() and anchor.requires_grad:
        return _Tie.apply(out, anchor)
    return out
