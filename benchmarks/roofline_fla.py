"""fla's side of ``static_roofline.py``: run in a subprocess, never imported by mixir.

    python benchmarks/roofline_fla.py count OUT.json --mixers ... --B 1 --H 1 --T 128,256 --K 128 --V 128
    python benchmarks/roofline_fla.py build JOBS.json OUT.json

``count`` (with ``TRITON_INTERPRET=1``) runs fla's chunk ops, forward then backward
(``torch.autograd.grad``), on CPU tensors in Triton's interpreter and writes every launch with its
bytes and dot FLOPs (``roofline_count``). fla is made to see an H100 (``fake_hopper``: Triton's
active driver reports an sm_90 target with 132 SMs and 227 KiB of shared memory, ``torch.cuda``
reports "NVIDIA H100 80GB HBM3" / capability 9.0), so its module-level config lists and
``check_shared_mem`` branches are the Hopper ones. Autotuned kernels are not timed: for every
launch, each distinct tile combination of the listed (pruned) configs is run and counted, and the
launch records all configs; ``static_roofline`` picks one after building them all. Loop variables
of ``range`` are Triton scalars while a kernel runs (``roofline_count.tensor_range``), as in
compiled Triton (fla calls ``i_t.to(tl.int64)``).

``build`` (without ``TRITON_INTERPRET``) AOT-builds launches of fla kernels for sm_90:
registers, spills and the HGMMA / HMMA counts of the SASS (``roofline_count.build_counts``).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402

H100_NAME = "NVIDIA H100 80GB HBM3"


def fake_hopper(sms: int = 132, smem: int = 232448):
    """Make fla's import-time hardware probes see an H100 (before ``import fla``)."""
    import triton
    from triton.backends.compiler import GPUTarget

    class _Utils:
        def get_device_properties(self, i=0):
            return {"multiprocessor_count": sms, "max_shared_mem": smem, "max_num_regs": 65536,
                    "warpSize": 32}

    class _Driver:
        utils = _Utils()

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_current_device(self):
            return 0

    triton.runtime.driver.set_active(_Driver())
    props = types.SimpleNamespace(name=H100_NAME, major=9, minor=0, multi_processor_count=sms,
                                  shared_memory_per_block_optin=smem, shared_memory_per_block=49152,
                                  total_memory=80 << 30)
    torch.cuda.get_device_name = lambda *a, **k: H100_NAME
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_properties = lambda *a, **k: props
    import fla.utils.hardware as hw
    orig = hw.check_shared_mem

    def check_shared_mem(arch="none", tensor_idx=0):       # CPU tensors have device.index None
        return orig(arch, 0 if tensor_idx is None else tensor_idx)
    hw.check_shared_mem = check_shared_mem
    import fla.utils
    fla.utils.check_shared_mem = check_shared_mem
    return hw.IS_NVIDIA_HOPPER


def fla_ops() -> dict:
    """mixer name -> f(inputs in mixir's declaration order) -> o, with fla's chunk op."""
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    def scale(q):
        return q.shape[-1] ** -0.5
    return {
        "simple_gla": lambda q, k, v, g: first(chunk_simple_gla(q, k, v, g, scale=scale(q))),
        "gla": lambda q, k, v, gk: first(chunk_gla(q, k, v, gk, scale=scale(q))),
        "delta_rule": lambda q, k, v, beta: first(chunk_delta_rule(q, k, v, beta, scale=scale(q))),
        "gated_delta_rule": lambda q, k, v, beta, g: first(
            chunk_gated_delta_rule(q, k, v, g, beta, scale=scale(q))),
    }


# ---- counting -----------------------------------------------------------------------------------

_TUNE = []      # stack of autotuning contexts (one per Autotuner.run)


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _launch_meta(interp_fn, args, kwargs, grid):
    from mixir.lowering.common.launch import _arg_type
    if _TUNE and _TUNE[-1]["in_bench"]:
        return {}
    fn = interp_fn.fn
    params = inspect.signature(fn).parameters
    bound = dict(zip(interp_fn.arg_names, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    sig, consts, ok = [], [], True
    for name, p in params.items():
        v = bound.get(name, None if p.default is inspect.Parameter.empty else p.default)
        if "constexpr" in str(p.annotation) or v is None:
            sig.append([name, "constexpr"])
            consts.append([name, _jsonable(v)])
            ok = ok and _jsonable(v) == v
        else:
            try:
                sig.append([name, _arg_type(v)])
            except (TypeError, KeyError):
                sig.append([name, "?"])
                ok = False
    meta = {"module": fn.__module__, "fn": fn.__name__, "signature": sig, "constexprs": consts,
            "num_warps": int(kwargs.get("num_warps", 4)), "num_stages": int(kwargs.get("num_stages", 3)),
            "buildable": ok}
    if _TUNE:
        ctx = _TUNE[-1]
        cfg = ctx["tuner"].best_config
        meta["config"] = _config_dict(cfg)
        configs = ctx["configs"] or [cfg]
        meta["autotune"] = {"configs": [_config_dict(c) for c in configs], "combos": ctx["combos"]}
        ctx["final"] = True
    return meta


def _config_dict(c) -> dict:
    return {"kwargs": {k: _jsonable(v) for k, v in c.kwargs.items()}, "num_warps": int(c.num_warps),
            "num_stages": int(c.num_stages)}


def combo_key(kwargs: dict) -> str:
    return json.dumps(sorted(kwargs.items()))


def _patch_autotuner():
    import roofline_count as rc
    from triton.runtime.autotuner import Autotuner
    orig_run = Autotuner.run

    def run(self, *args, **kwargs):
        ctx = {"tuner": self, "configs": [], "combos": {}, "in_bench": False, "final": False}
        self.cache.clear()                      # every call tunes (and counts) its configs again
        self.cache_results = False
        _TUNE.append(ctx)
        rc.STATE.glue_off += 1                  # autotuning's resets / restores are not kernels
        try:
            return orig_run(self, *args, **kwargs)
        finally:
            rc.STATE.glue_off -= 1
            _TUNE.pop()

    def _bench(self, *args, config, **meta):
        ctx = _TUNE[-1]
        ctx["configs"].append(config)
        key = combo_key(config.kwargs)
        if key not in ctx["combos"]:
            current = dict(meta, **config.all_kwargs())
            full = {**self.nargs, **current}
            sink = []
            ctx["in_bench"] = True
            try:
                if config.pre_hook:
                    config.pre_hook(full)
                self.pre_hook(full)
                rc.STATE.pending = {"sink": sink}
                self.fn.run(*args, **current)
                self.post_hook(full, exception=None)
            finally:
                ctx["in_bench"] = False
            c = sink[0] if sink else None
            ctx["combos"][key] = None if c is None else {"load_bytes": c.load_bytes,
                                                         "store_bytes": c.store_bytes, "flops": c.flops}
        i = len(ctx["configs"])
        return [float(i), float(i), float(i)]          # the first listed config runs last

    Autotuner.run = run
    Autotuner._bench = _bench


def count(mixers, B, Ts, H, K, V, dtype) -> dict:
    import numpy as np
    import roofline_count as rc
    from mixir.library import MIXERS
    rc.install()
    rc.STATE.tensor_loops = True
    rc.STATE.on_launch = _launch_meta
    _patch_autotuner()
    ops = fla_ops()
    out = {}
    for name in mixers:
        if name not in ops:
            out[name] = {"error": f"no fla op mapped for {name}"}
            continue
        runs = {}
        for T in Ts:
            t0 = time.perf_counter()
            arrays = MIXERS[name].make_inputs(np.random.default_rng(0), B, T, H, K, V)
            xs = [torch.tensor(a, dtype=dtype).requires_grad_() for a in arrays]
            launches = []
            rc.warm_up(lambda op=ops[name], xs=xs: torch.autograd.grad(op(*xs).float().sum(), xs, allow_unused=True))
            try:
                with rc.counting(launches, "fwd"):
                    o = ops[name](*xs)
                do = torch.randn_like(o)
                with rc.counting(launches, "bwd"):
                    torch.autograd.grad(o, xs, do, allow_unused=True)
            except Exception as e:   # noqa: BLE001 - reported as the fla column's reason
                out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
                break
            runs[str(T)] = [x.as_dict() for x in launches]
            print(f"  fla {name} T={T}: {len(launches)} launches, {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        else:
            out[name] = {"runs": runs}
    return out


# ---- building -----------------------------------------------------------------------------------

def _jit(module, fn_name):
    from triton.runtime.jit import JITFunction
    obj = getattr(importlib.import_module(module), fn_name)
    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def build(jobs) -> list:
    import roofline_count as rc
    out = []
    for job in jobs:
        t0 = time.perf_counter()
        try:
            jit = _jit(job["module"], job["fn"])
            res = rc.build_counts(jit, job["fn"], [tuple(x) for x in job["signature"]],
                                  [tuple(x) for x in job["constexprs"]], job["num_warps"], job["num_stages"])
        except Exception as e:   # noqa: BLE001
            res = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]}
        res["key"] = job["key"]
        out.append(res)
        print(f"  built {job['fn']} w{job['num_warps']} s{job['num_stages']} "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("count", "build"))
    p.add_argument("paths", nargs="+")
    p.add_argument("--mixers", default="simple_gla")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=1)
    p.add_argument("--T", default="128,256")
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args(argv)
    import warnings
    warnings.filterwarnings("ignore")
    hopper = fake_hopper()
    if a.mode == "count":
        res = count(a.mixers.split(","), a.B, [int(t) for t in a.T.split(",")], a.H, a.K, a.V,
                    getattr(torch, a.dtype))
        res["_env"] = {"hopper": bool(hopper), "fla": importlib.import_module("fla").__version__}
        with open(a.paths[0], "w") as f:
            json.dump(res, f)
    else:
        with open(a.paths[0]) as f:
            jobs = json.load(f)
        with open(a.paths[1], "w") as f:
            json.dump(build(jobs), f)


if __name__ == "__main__":
    main()
