"""The compiled running maximum, in torch (``torch.cummax`` along T; differentiable by autograd).

The call is validated by the shared ``lowering.common.call.check_call`` (``InputError`` naming the
argument at fault, before any computation), exactly as the in-tree families do.
"""
from __future__ import annotations

import torch

from mixir.dsl.signature import segments
from mixir.errors import InputError
from mixir.lowering.common.call import check_call
from mixir.lowering.family import check_strategy


class CompiledRunningMax:
    """Called like the reference: ``fn(*tensors, initial_state=, output_final_state=,
    cu_seqlens=, strategy=)``; the output has the inputs' dtype, the final state is float32."""

    def __init__(self, mixer, plan, strategy=None, config=None):
        if config:
            raise InputError(f"{mixer.name}: the toy running-max family takes no config, got {config}")
        self.mixer, self.plan = mixer, plan
        self.strategies = plan.strategies
        self.strategy = check_strategy(self.strategies, strategy or self.strategies[0])
        self.__name__ = mixer.name

    def __repr__(self):
        return f"<toy CompiledRunningMax {self.mixer.name} ({self.plan.transition})>"

    def source_files(self):
        return [__file__]

    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None, **scalars):
        check_strategy(self.strategies, strategy or self.strategy)
        b, N, device, dtype = check_call(self.mixer, arrays, initial_state, cu_seqlens, scalars)
        named = dict(zip((s.name for s in self.mixer.inputs), arrays))
        x = named[self.plan.x].float()                                    # [B, T, H, *dims]
        h0 = initial_state[0] if isinstance(initial_state, (tuple, list)) else initial_state
        zero = x.new_zeros((b.H,) + tuple(x.shape[3:]))
        runs, finals = [], []
        for n, (row, start, end) in enumerate(segments(b, cu_seqlens)):
            s0 = zero if h0 is None else h0[n].float()
            run = torch.cat([s0[None], x[row, start:end]], 0).cummax(0).values
            runs.append(run[1:])
            finals.append(run[-1])
        S = torch.stack(runs) if cu_seqlens is None else torch.cat(runs)[None]
        o = S * named[self.plan.gate].float() if self.plan.gate else S
        o = o.to(dtype)
        return (o, torch.stack(finals)) if output_final_state else o
