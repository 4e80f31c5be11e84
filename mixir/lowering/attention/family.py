"""The block-sparse softmax attention family under the family contract (``lowering/family.py``):
its declarations are masks (``@mixir.attention.mask``), not recurrences, so ``classify`` offers it
masks only. ``mixir.attention`` is the public facade over this package."""
from __future__ import annotations

from ...dsl.mask import Mask
from ...errors import InputError
from ..family import Family, check_strategy, register
from .analysis import analyse


class CompiledAttention:
    """Attention under one mask, called as ``fn(q, k, v, *, data=, score_mod=, scale=, ...)`` with
    the keywords of ``mixir.attention.attention``."""

    def __init__(self, plan, strategy=None, config=None):
        self.plan, self.mask = plan, plan.mask
        self.strategies = plan.strategies
        self.strategy = check_strategy(self.strategies, strategy or self.strategies[0])
        self.config = dict(config or {}) or None
        self.__name__ = self.mask.name

    def __repr__(self):
        return f"<mixir.CompiledAttention {self.mask.name} ({self.plan.transition})>"

    def source_files(self):
        from . import kernels
        return [kernels.__file__]

    def __call__(self, *tensors, config=None, group=None, **options):
        """``group``: a ProcessGroup or 1-D DeviceMesh over which the sequence is sharded
        (context parallelism, ``context.py``); None: one process."""
        if len(tensors) != 3:
            raise InputError(f"{self.mask.name}: attention takes 3 tensors (q, k, v), got {len(tensors)}")
        q, k, v = tensors
        if group is not None:
            if options.get("block_mask") is not None:
                raise InputError(f"{self.mask.name}: block_mask= cannot be combined with group= "
                                 "(the metadata is built per rank and key range); pass data= instead")
            options.pop("block_mask", None)
            from .context import context_parallel_attention
            return context_parallel_attention(q, k, v, group=group, mask=self.mask,
                                              config=config or self.config, **options)
        from .ops import attention
        return attention(q, k, v, mask=self.mask, config=config or self.config, **options)


class AttentionFamily(Family):
    name = "attention"
    priority = 50
    declaration = Mask

    def analyse(self, mask):
        return analyse(mask)

    def compile(self, mask, plan, *, strategy=None, config=None):
        return CompiledAttention(plan, strategy=strategy, config=config)

    def tuning_targets(self, mask, plan, request) -> list:
        """The attention space of the mask's tile profile, head dim ``request.K``
        (``tuning.targets``)."""
        from .tuning import targets
        return targets(mask, plan, request)


FAMILY = register(AttentionFamily())
