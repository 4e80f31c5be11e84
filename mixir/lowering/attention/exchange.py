"""The collectives of context-parallel attention (``context.py``), on ``torch.distributed``.

- ``resolve_group``, ``all_gather_ints``: the shared ``mixir.distributed`` helpers in the shape
  ``context.py`` takes ((group, rank, world size); a [world, n] int64 tensor, no gradient).
- ``exchange``: point-to-point sends of one tensor per rank to exactly the ranks that need it,
  differentiable: the backward sends each received tensor's gradient back to its owner, and the
  owner sums what comes back (the adjoint of "copy my tensor to these ranks"; no reduce_scatter,
  which gloo lacks).

Every rank of the group must make the same calls in the same order (forward and backward), as with
any collective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ...distributed.collectives import all_gather_ints as _all_gather_ints
from ...distributed.group import resolve_group as _resolve_group
from ...errors import InputError

FWD_TAG, BWD_TAG = 1601, 1602


def resolve_group(group):
    """(ProcessGroup, rank in it, size) of ``group`` (a ProcessGroup or a 1-D DeviceMesh; the
    shared ``mixir.distributed.group.resolve_group`` and its errors)."""
    if group is None:
        raise InputError("group= must be a torch.distributed ProcessGroup or a 1-D DeviceMesh")
    g = _resolve_group(group)
    return g.pg, g.rank, g.world


def all_gather_ints(values, group, world: int) -> torch.Tensor:
    """[world, n] int64: row j is rank j's ``values`` (a list of n ints, n equal on all ranks)."""
    g = _resolve_group(group)
    device = "cuda" if g.backend == "nccl" else "cpu"
    return torch.tensor(_all_gather_ints(values, g, device), dtype=torch.int64)


def _global(group, r: int) -> int:
    return dist.get_global_rank(group, r) if group is not dist.GroupMember.WORLD else r


class _Exchange(torch.autograd.Function):
    """outputs = (anchor, *received): ``anchor`` is a zero scalar that callers add to their results
    so that this node (hence the backward exchange) is in every rank's graph, even a rank that
    receives nothing but sends; ``received[i]`` is the tensor of rank ``srcs[i]`` (shape
    ``shapes[i]``)."""

    @staticmethod
    def forward(ctx, local, group, dsts, srcs, shapes):
        ctx.group, ctx.dsts, ctx.srcs, ctx.local_shape = group, dsts, srcs, tuple(local.shape)
        send = local.detach().contiguous()
        reqs = [dist.isend(send, _global(group, d), group=group, tag=FWD_TAG) for d in dsts]
        bufs = [local.new_empty(s) for s in shapes]
        reqs += [dist.irecv(b, _global(group, s), group=group, tag=FWD_TAG)
                 for b, s in zip(bufs, srcs)]
        for r in reqs:
            r.wait()
        return (local.new_zeros(()), *bufs)

    @staticmethod
    def backward(ctx, _danchor, *grads):
        group = ctx.group
        sends = [g.contiguous() for g in grads]
        reqs = [dist.isend(g, _global(group, s), group=group, tag=BWD_TAG)
                for g, s in zip(sends, ctx.srcs)]
        back = [_danchor.new_empty(ctx.local_shape) for _ in ctx.dsts]
        reqs += [dist.irecv(b, _global(group, d), group=group, tag=BWD_TAG)
                 for b, d in zip(back, ctx.dsts)]
        for r in reqs:
            r.wait()
        dlocal = _danchor.new_zeros(ctx.local_shape)
        for b in back:
            dlocal = dlocal + b
        return dlocal, None, None, None, None


def exchange(local: torch.Tensor, group, dsts, srcs, shapes):
    """Send ``local`` to the ranks ``dsts`` and receive one tensor from each rank of ``srcs``
    (shapes ``shapes``, local's dtype); returns ``(anchor, [received...])`` (see ``_Exchange``).
    Differentiable in ``local`` when it requires grad."""
    anchor, *bufs = _Exchange.apply(local, group, tuple(dsts), tuple(srcs),
                                    tuple(tuple(s) for s in shapes))
    return anchor, bufs
