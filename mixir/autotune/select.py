"""Runtime config selection (used by ``CompiledMixer._config`` for CUDA tensors):
tuning database for the current GPU → the cost model's best feasible config → None (the caller
keeps ``gla_core.default_config``). Never raises; results are cached per key."""
from __future__ import annotations

import functools
import warnings

from . import db

_warned = set()


@functools.lru_cache(maxsize=None)
def _gpu_for(device_index: int):
    from . import hardware
    try:
        import torch
        major, minor = torch.cuda.get_device_capability(device_index)
        return hardware.from_device_name(torch.cuda.get_device_name(device_index), major * 10 + minor)
    except Exception:
        return None


@functools.lru_cache(maxsize=1024)
def model_best(strategy, B, T, H, K, V, dtype, gpu_name):
    """The cost model's best feasible config (the solver's enumeration); None without ortools or
    when nothing is feasible."""
    from . import cost, hardware, solver, spaces
    if not solver.available():
        return None
    gpu = hardware.get(gpu_name)
    sp_ = spaces.space(strategy)
    shape = spaces.Shape(B, db.bucket(T), H, K, V, dtype)
    feas = solver.enumerate_feasible(sp_, shape, gpu, explain=False)
    if not feas:
        return None
    best = cost.rank(sp_, shape, gpu, feas)[0][0]
    return sp_.to_config(best, shape)


def tuned_config(fingerprint, strategy, K, V, dtype, B, T, H, device) -> dict | None:
    try:
        gpu = _gpu_for(device.index if device.index is not None else 0)
        if gpu is None:
            return None
        dt = db.dtype_name(dtype)
        cfg = db.lookup(fingerprint, gpu, dt, B, T, H, K=K, V=V, strategy=strategy)
        if cfg is not None:
            return cfg
        cfg = model_best(strategy, int(B), int(db.bucket(T)), int(H), int(K), int(V), dt, gpu.name)
        return dict(cfg) if cfg else None
    except Exception as e:   # tuning must never break a call
        key = type(e).__name__
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"mixir autotune: config lookup failed ({e}); using the default config")
        return None


def tuned_attention_config(mask_key, D, dtype, B, T, H, device_index, fixed=None) -> dict | None:
    """The attention kernels' config on CUDA device ``device_index`` (``mixir.attention.tiles``):
    the tuning database's entry for the mask (strategy ``"attention"``, K = V = head dim; used
    when its tiles agree with ``fixed``) → the attention space's cost-model best
    (``attention_space.model_best``) → None. Never raises; cached like ``tuned_config``."""
    try:
        gpu = _gpu_for(device_index)
        if gpu is None:
            return None
        dt = db.dtype_name(dtype)
        cfg = db.lookup(mask_key, gpu, dt, B, T, H, K=D, V=D, strategy="attention")
        if cfg is not None and all(cfg.get(k) == v for k, v in (fixed or {}).items()):
            return cfg
        from . import attention_space
        return attention_space.model_best(gpu, dt, D, B, T, H, fixed)
    except Exception as e:   # tuning must never break a call
        key = "attention:" + type(e).__name__
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"mixir autotune: attention config lookup failed ({e}); using the "
                          f"default config")
        return None
