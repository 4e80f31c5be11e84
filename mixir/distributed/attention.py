"""Context parallelism for block-sparse softmax attention (``group=``).

The algorithm lives with the attention family (``mixir.lowering.attention.context``, its
collectives in ``mixir.lowering.attention.exchange``), so that the compiled attention mixers and
the library wrappers (``mixir.attention.causal_attention(..., group=)``, ...) reach it without
importing this package; this module is the public entry point:

- ``attention(q, k, v, *, group, mask=None, score_mod=None, scale=None, data=None,
  block_size=None, config=None, return_lse=False)``: ``mixir.attention.attention`` over a sequence
  sharded across ``group`` (a ProcessGroup or a 1-D DeviceMesh): rank r passes the r-th contiguous
  slice of q, k, v (unequal, maybe empty); masks and score modifications see global positions;
  ``data`` tensors are global. Returns this rank's o (and lse); gradients of each rank's slices
  are the slices of the single-process gradients.
- ``last_exchange()``: what this process's last call exchanged: the ranks it read keys from, the
  ranks the block mask let it skip, the ranks it sent its K/V to and the bytes sent / received.

See docs/attention.md ("Context parallelism").
"""
from __future__ import annotations

from ..lowering.attention.context import context_parallel_attention as attention
from ..lowering.attention.context import last_exchange

__all__ = ["attention", "last_exchange"]
