"""Context parallelism over ``torch.distributed`` (docs/distributed.md).

Every compiled mixer and library wrapper of the gated-linear, Householder and LTI families takes
``group=`` (a ``ProcessGroup`` or a 1-D ``DeviceMesh``; ``None``: no parallelism): rank r passes
the r-th contiguous slice (along T) of every per-token input, the same parameters and
``initial_state`` everywhere, and gets its slice's outputs (and the global final state). Each
family derives its state passing from its plan (``Family.state_passing``, the role module
``lowering/<family>/distributed.py``); this package holds what they share: the group, the
differentiable collectives and the slice layout with the generic prefix combine.

This package sits beside ``lowering.common`` in the import layers (the family packages import it;
it imports no family).
"""
from .collectives import all_gather, all_gather_ints, record_traffic, tie
from .group import Group, even_lengths, resolve_group, shard
from .passing import (
           ABSENT,
           CONTINUES,
           STARTS,
           Layout,
           exchange,
           layout,
           needs_grad,
           prefix_combine,
)

__all__ = ["ABSENT", "CONTINUES", "STARTS", "Group", "Layout", "all_gather", "all_gather_ints",
           "even_lengths", "exchange", "layout", "needs_grad", "prefix_combine", "record_traffic",
           "resolve_group", "shard", "tie"]
