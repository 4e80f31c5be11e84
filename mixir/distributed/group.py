"""The ``group=`` argument of context parallelism: a ``torch.distributed`` process group or a 1-D
``DeviceMesh`` (``None``: no parallelism), resolved once per call into a ``Group`` (the process
group, this process's rank in it, its size). Misuse raises ``InputError`` naming ``group``.
And for callers: how to cut a global sequence into the ranks' slices (``even_lengths``,
``shard``)."""
from __future__ import annotations

import dataclasses

import torch.distributed as dist

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class Group:
    """A resolved group: ``pg`` (the ProcessGroup), ``rank`` (this process's rank in it),
    ``world`` (its size), ``backend`` (``"gloo"``, ``"nccl"``, ...)."""
    pg: object
    rank: int
    world: int
    backend: str


def _mesh_group(mesh):
    """The process group of a 1-D ``DeviceMesh``; ``InputError`` for a mesh of more dims."""
    if mesh.ndim != 1:
        raise InputError(f"group: a DeviceMesh must be 1-D (the sequence dim), got a {mesh.ndim}-D mesh; "
                         "pass mesh[\"<dim name>\"] or mesh.get_group(<dim>)")
    return mesh.get_group()


def _is_mesh(group) -> bool:
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:    # a torch build without DeviceMesh
        return False
    return isinstance(group, DeviceMesh)


def resolve_group(group) -> Group | None:
    """``None`` for ``None``; else the ``Group`` of a ProcessGroup or 1-D DeviceMesh. Raises
    ``InputError`` when ``torch.distributed`` is not initialised or ``group`` is neither."""
    if group is None:
        return None
    if not dist.is_available() or not dist.is_initialized():
        raise InputError("group: torch.distributed is not initialised in this process; call "
                         "torch.distributed.init_process_group first (torchrun does the rendezvous)")
    pg = _mesh_group(group) if _is_mesh(group) else group
    if not isinstance(pg, dist.ProcessGroup):
        raise InputError(f"group must be a torch.distributed ProcessGroup or a 1-D DeviceMesh (None: no "
                         f"parallelism), got {type(group).__name__}")
    rank = dist.get_rank(pg)
    if rank < 0:
        raise InputError("group: this process is not a member of the given process group")
    return Group(pg, rank, dist.get_world_size(pg), str(dist.get_backend(pg)))


def even_lengths(T: int, world: int) -> list:
    """``world`` slice lengths summing to ``T``, as even as possible (the first ``T % world``
    slices one token longer)."""
    if T < 0 or world < 1:
        raise InputError(f"even_lengths: need T >= 0 and world >= 1, got T = {T}, world = {world}")
    return [T // world + (1 if r < T % world else 0) for r in range(world)]


def shard(x, group, lengths=None, dim: int = 1):
    """This rank's slice of a global tensor ``x`` along ``dim`` (T in ``[B, T, H, ...]``):
    ``lengths`` (one per rank, summing to ``x.shape[dim]``) or ``even_lengths``."""
    g = resolve_group(group)
    if g is None:
        return x
    T = x.shape[dim]
    lengths = even_lengths(T, g.world) if lengths is None else [int(n) for n in lengths]
    if len(lengths) != g.world or sum(lengths) != T or min(lengths) < 0:
        raise InputError(f"lengths: need {g.world} non-negative slice lengths summing to {T}, got {lengths}")
    start = sum(lengths[:g.rank])
    return x.narrow(dim, start, lengths[g.rank])
