"""The launch configuration of the attention kernels: ``{"BM", "BN", "num_warps", "num_stages"}``.

``BM`` x ``BN`` are the block-mask tiles (query rows x key columns); one config drives the three
kernels (forward, dQ, dK/dV). The first rule that applies decides:

1. ``config=`` given to the call (any of the four keys); ``block_size=`` or a prebuilt block mask
   fix ``BM`` and ``BN``;
2. CPU tensors (Triton's interpreter): ``CPU_CONFIG`` (small tiles keep the interpreter fast;
   warps and stages mean nothing there);
3. GPU launches - CUDA tensors, and CPU launches recorded for the ahead-of-time builder (which
   compile what a GPU would run): the tuning database's entry for the mask on the current GPU
   (``mixir tune attention:<mask>``), else the cost model's best feasible config of the attention
   tuning space (``mixir.lowering.attention.space``) for that GPU, dtype, head dim and shape. A
   recording has no GPU: it uses ``attention_space.REFERENCE_GPU`` (the sm_80 row: the smaller
   shared memory of the two AOT targets). Nothing feasible: ``TuningError`` naming the binding
   constraint (e.g. the shared memory of the GPU for a large fp32 head dim).

Under ``torch.compile`` the GPU choice is one constant-folded call (``common.call.assume_constant``): its
arguments are the dtype, head dim and shape, never tensors.
"""
from __future__ import annotations

import torch

from ...errors import InputError
from ..common.call import assume_constant
from ..common.launch import targets_gpu

CPU_CONFIG = {"BM": 32, "BN": 32, "num_warps": 4, "num_stages": 2}
KEYS = ("BM", "BN", "num_warps", "num_stages")
_DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _check_config(config) -> dict:
    if not isinstance(config, dict) or set(config) - set(KEYS):
        raise InputError(f"config must be a dict with keys among {KEYS}, got {config!r}")
    out = {}
    for k, v in config.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise InputError(f"config[{k!r}] must be a power of two, got {v!r}")
        out[k] = v
    for k in ("BM", "BN"):
        if k in out and out[k] < 16:
            raise InputError(f"config[{k!r}] (a tile size) must be >= 16, got {out[k]}")
    return out


@assume_constant
def gpu_config(device_index: int, mask_key: str, dtype: str, D: int, B: int, T: int, H: int,
               BM: int, BN: int) -> tuple:
    """The GPU config (rule 3) as a tuple in ``KEYS`` order (a constant Dynamo can keep).
    ``device_index`` -1: no GPU (a recording): the reference GPU. ``BM`` / ``BN`` 0: free, else
    fixed."""
    from . import space as attention_space
    from ...autotune.db import Key
    from ...autotune.select import current_gpu, tuned_config
    fixed = {k: v for k, v in (("BM", BM), ("BN", BN)) if v}
    cfg = None
    gpu = attention_space.REFERENCE_GPU
    if device_index >= 0:
        # the database's entry for the mask (K = V = head dim; validated against the space: an
        # invalid one is ignored with a warning), used when its tiles agree with the fixed ones →
        # the attention space's cost-model best with those tiles → None
        cfg = tuned_config(attention_space.ATTENTION,
                           Key(mask_key, attention_space.STRATEGY, dtype, B, T, H, D, D),
                           attention_space.shape(B, T, H, D, dtype), device_index,
                           accept=lambda c: all(c.get(k) == v for k, v in fixed.items()),
                           model=lambda g: attention_space.model_best(g, dtype, D, B, T, H, fixed))
        gpu = current_gpu(device_index) or gpu
    if not cfg:
        cfg = attention_space.default_config(gpu, dtype, D, B=B, T=T, H=H, fixed=fixed)
    return tuple(int(cfg[k]) for k in KEYS)


def choose(q: torch.Tensor, mask_key: str, T: int, *, config=None, block=None) -> dict:
    """The config of one call (see the module docstring). ``block``: (BM, BN) fixed by
    ``block_size`` or a prebuilt block mask, else None."""
    user = _check_config(config) if config is not None else {}
    if block is not None:
        bm, bn = block
        for k, v in (("BM", bm), ("BN", bn)):
            if user.get(k, v) != v:
                raise InputError(f"config[{k!r}]={user[k]} contradicts the block mask's tiles "
                                 f"{block}")
        user.update(BM=bm, BN=bn)
    if all(k in user for k in KEYS):
        return user
    if not targets_gpu(q.device):
        return {**CPU_CONFIG, **user}
    B, _, H, D = q.shape
    idx = -1 if q.device.type != "cuda" else (q.device.index if q.device.index is not None
                                                else torch.cuda.current_device())
    cfg = dict(zip(KEYS, gpu_config(int(idx), mask_key, _DT[q.dtype], int(D), int(B), int(T),
                                    int(H), int(user.get("BM", 0)), int(user.get("BN", 0)))))
    cfg.update(user)
    return cfg
