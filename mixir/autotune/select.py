"""Runtime config selection (used by ``CompiledMixer._config`` for CUDA tensors):
tuning database for the current GPU → the cost model's best feasible config → None (the caller
keeps ``gla_core.default_config``). Never raises; results are cached per key."""
from __future__ import annotations

import functools
import warnings

from . import db

_warned = set()


def _never_raises(what: str):
    """Decorator of a config lookup: any exception becomes ``None`` (the caller keeps its default
    config) and one warning per (kind of lookup, exception type) — tuning must never break a call."""
    def wrap(fn):
        @functools.wraps(fn)
        def safe(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                key = (what, type(e).__name__)
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(f"mixir autotune: {what}config lookup failed ({e}); using the "
                                  f"default config")
                return None
        return safe
    return wrap


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
    from . import cost, hardware, solver, space as spaces
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


@_never_raises("")
def tuned_config(fingerprint, strategy, K, V, dtype, B, T, H, device) -> dict | None:
    gpu = _gpu_for(device.index if device.index is not None else 0)
    if gpu is None:
        return None
    dt = db.dtype_name(dtype)
    cfg = db.lookup(fingerprint, gpu, dt, B, T, H, K=K, V=V, strategy=strategy)
    if cfg is not None:
        return cfg
    cfg = model_best(strategy, int(B), int(db.bucket(T)), int(H), int(K), int(V), dt, gpu.name)
    return dict(cfg) if cfg else None


@_never_raises("attention ")
def tuned_attention_config(mask_key, D, dtype, B, T, H, device_index, fixed=None) -> dict | None:
    """The attention kernels' config on CUDA device ``device_index`` (``mixir.lowering.attention.tiles``):
    the tuning database's entry for the mask (strategy ``"attention"``, K = V = head dim; used
    when its tiles agree with ``fixed``) → the attention space's cost-model best
    (``attention_space.model_best``) → None. Never raises; cached like ``tuned_config``."""
    gpu = _gpu_for(device_index)
    if gpu is None:
        return None
    dt = db.dtype_name(dtype)
    cfg = db.lookup(mask_key, gpu, dt, B, T, H, K=D, V=D, strategy="attention")
    if cfg is not None and all(cfg.get(k) == v for k, v in (fixed or {}).items()):
        return cfg
    from ..lowering.attention import space as attention_space
    return attention_space.model_best(gpu, dt, D, B, T, H, fixed)


@_never_raises("LTI ")
def tuned_lti_config(kind, compute, R, Q, N, L, device_index) -> dict | None:
    """The LTI kernels' tiles on CUDA device ``device_index`` (``lti_space.gpu_config``): the
    tuning database's entry (fingerprint ``lti_<kind>``, strategy ``lti_<kind>``, K = N, V = Q,
    T = L, B·H = R rows; fp32 compute only: the database has no fp64 key) → the LTI space's
    cost-model best for the GPU (``lti_space.model_best``) → None. Never raises."""
    gpu = _gpu_for(device_index)
    if gpu is None:
        return None
    name = f"lti_{kind}"
    if compute == "fp32":
        cfg = db.lookup(name, gpu, "fp32", 1, L, R, K=N, V=Q, strategy=name)
        if cfg is not None:
            return cfg
    from ..lowering.lti import space as lti_space
    return lti_space.model_best(gpu, kind, compute, R, Q, N, L)


@_never_raises("delta-rule ")
def tuned_delta_config(fingerprint, strategy, K, V, dtype, B, T, H, device, num_householder=1) -> dict | None:
    """The Householder (delta-rule) core's config on CUDA ``device``
    (``householder_family.CompiledHouseholder``): the tuning database's entry for (mixer
    fingerprint, GPU, dtype, strategy, the core's K and V, user-level shape bucket of T and B·H) →
    the delta space's cost-model best for the core's shape (sequence T·num_householder;
    ``delta_space.model_best``) → None (the caller keeps ``delta_core.default_config``). Never
    raises."""
    gpu = _gpu_for(device.index if device.index is not None else 0)
    if gpu is None:
        return None
    dt = db.dtype_name(dtype)
    cfg = db.lookup(fingerprint, gpu, dt, B, T, H, K=K, V=V, strategy=strategy)
    if cfg is not None:
        return cfg
    from ..lowering.householder import space as delta_space
    return delta_space.model_best(strategy, gpu, dt, K, V, B, int(T) * int(num_householder), H)


@_never_raises("LTI mixer ")
def tuned_lti_mixer_config(fingerprint, kind, dtype, B, T, H, N, Q, device_index) -> dict | None:
    """The tiles ``mixir tune`` recorded for one LTI mixer (``lti_space.tune``) on CUDA device
    ``device_index``: the tuning database's entry for (mixer fingerprint, dtype, strategy
    ``lti_<kind>``, K = N modes, V = Q vectors per row, user-level T and B·H buckets), or None —
    the kernels then take ``lti_space.gpu_config`` (the kernel-level entry ``lti_<kind>``, the cost
    model's best for the GPU, the template default). Never raises."""
    gpu = _gpu_for(device_index)
    if gpu is None:
        return None
    name = f"lti_{kind}"
    cfg = db.lookup(fingerprint, gpu, db.dtype_name(dtype), B, T, H, K=N, V=Q, strategy=name)
    return {k: int(cfg[k]) for k in ("BN", "BL", "num_warps", "num_stages")} if cfg else None


@_never_raises("RNN ")
def tuned_rnn_config(fingerprint, strategy, gates, states, D, dtype, B, T, H, device_index,
                     backward=True) -> dict | None:
    """The RNN kernels' ``BR`` / ``num_warps`` / ``num_stages`` on CUDA device ``device_index``
    (``rnn_runtime.CompiledRNN.launch_config``): the tuning database's entry for (mixer
    fingerprint, dtype, strategy, K = V = D, user-level T and B·H buckets; ``rnn_space.tune``) →
    the RNN space's cost-model best for the GPU (``rnn_space.best_config``) → None (the caller
    keeps its template default). Never raises."""
    gpu = _gpu_for(device_index)
    if gpu is None:
        return None
    dt = db.dtype_name(dtype)
    if T is not None and H is not None:
        cfg = db.lookup(fingerprint, gpu, dt, B, T, H, K=D, V=D, strategy=strategy)
        if cfg is not None:
            return cfg
    from ..lowering.rnn import space as rnn_space
    return rnn_space.best_config(strategy, gates, states, rnn_space.shape_of(B, 1024, 1, D, dt), gpu,
                                 backward)
