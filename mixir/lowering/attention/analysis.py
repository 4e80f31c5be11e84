"""The plan of a block-sparse attention declaration: a traced mask (``mixir.attention.mask``) is
already the whole analysis — its predicate IR is spliced into the kernels (``emit.py``), and its
block sparsity is read per call from the tensors it names (``block_mask.py``)."""
from __future__ import annotations

import dataclasses

from ...dsl import ir
from ...dsl.mask import Mask
from ...errors import UnsupportedMixerError

STRATEGIES = ("block_sparse",)


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """Softmax attention under one mask."""
    mask: Mask
    family: str = "attention"
    strategies: tuple = STRATEGIES

    @property
    def transition(self) -> str:
        what = "full" if self.mask.is_full else f"mask {self.mask.name}"
        return f"softmax attention, {what}, block-sparse tiles"

    def describe(self) -> str:
        data = ", ".join(self.mask.data_names) or "none"
        return "\n".join([self.transition, f"predicate: {ir.render(self.mask.node)}",
                          f"data tensors: {data}"])

    def input_ranges(self) -> dict:
        return {}


def analyse(mask) -> AttentionPlan:
    if not isinstance(mask, Mask):
        raise UnsupportedMixerError(f"the attention family lowers masks (@mixir.attention.mask), "
                                    f"not {type(mask).__name__}")
    return AttentionPlan(mask)
