"""Tuning attention masks: AOT validation of configs and the family's tuning target behind
``mixir tune attention:<mask>`` (``mixir.tuning``, through the family contract).

solve (``space``: the mask's tile profile -> the space -> every feasible config) -> rank
(``autotune.cost``) -> AOT-compile the top candidates for the GPU's architecture (record the three
kernels a config launches, on tiny CPU inputs, and build them with ``common.aot.build_all``; a
config that spills or exceeds a limit is dropped and the next ones are compiled) -> write the best
to the tuning database under the mask's key (strategy ``"attention"``), where ``tiles.choose``
finds it at run time.
"""
from __future__ import annotations

import torch

from ...dsl.mask import Mask

_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def record_config(mask: Mask, config: dict, *, dtype: str = "bf16", D: int = 64, data_fn=None,
                  score_mod=None, backward: bool = True) -> list:
    """The ``LaunchRecord``s of the attention kernels that ``config`` launches (forward and, with
    ``backward``, dQ and dK/dV), recorded on tiny CPU inputs with the launch parameters a GPU
    would use. ``data_fn(B, H, T)``: the mask's (and score_mod's) data tensors."""
    from ..common.launch import record_launches
    from .ops import attention
    BM, BN = int(config["BM"]), int(config["BN"])
    B, H, T = 1, 2, max(BM, BN) + 3              # a partial last tile: the general code path
    g = torch.Generator().manual_seed(0)
    dt = _TORCH[dtype]
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(dt).requires_grad_(backward) for _ in range(3))
    data = data_fn(B, H, T) if data_fn is not None else {}
    with record_launches() as records:
        o = attention(q, k, v, mask=mask, score_mod=score_mod, data=data, config=dict(config))
        if backward:
            o.float().sum().backward()
    return list(records.values())


def compile_configs(mask: Mask, configs: list, arch: str, *, dtype: str = "bf16", D: int = 64,
                    data_fn=None, score_mod=None, workers=None, timeout_s: float = 300,
                    progress=None) -> list:
    """One ``lowering.common.candidates.CompiledConfig`` per config: its kernels built for
    ``arch`` (registers, spills, shared memory). Kernels shared between configs compile once."""
    from ..common.candidates import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mask, cfg, dtype=dtype, D=D, data_fn=data_fn, score_mod=score_mod),
        arch, workers=workers, timeout_s=timeout_s, progress=progress)


def targets(mask: Mask, plan, request) -> list:
    """The attention space of ``mask`` at the request's B, T, H with head dim ``request.K`` (the
    mask's tile profile at T decides the fraction of tiles each (BM, BN) visits): one
    ``TuningTarget`` (database strategy "attention", K = V = head dim). The AOT rounds stop at the
    first one with a survivor (no feedback); not timed. ``request.data(B, H, T)``: the mask's data
    tensors (a library mask's example data)."""
    from . import space as asp
    from ...autotune.pipeline import TuningTarget
    dtype, D, T = request.dtype_name, int(request.K), int(request.T)
    request.say(f"[attention] tile profile of {mask.name} at T={T}")
    # one (batch, head) is representative of the visited fraction (and keeps this O(T^2 / 256))
    profile = asp.tile_profile(mask, 1, 1, T, request.data(1, 1, T) if request.data else None)

    def compile_(configs, arch, **kw):
        return compile_configs(mask, configs, arch, dtype=dtype, D=D, data_fn=request.data, **kw)
    return [TuningTarget(asp.STRATEGY, asp.make_space(profile), asp.shape(request.B, T, request.H, D, dtype),
                         compile=compile_, learn=False)]


__all__ = ["record_config", "compile_configs", "targets"]
