"""The model of ``static_roofline.py``: scaling reduced-shape counts to the target shape, the
roofline time of a launch, the lower bound, the AOT build cache and fla's config choice.

Scaling: every kernel here is chunked over T and parallel over B·H, so each launch's bytes and
FLOPs are affine in T per (batch, head): c(T) = a·T + b (b: per-sequence terms such as a final
state). Two reduced runs (T1, T2) give a and b per launch (launches are matched by position, and
their names must agree); the target is c = (B·H)/(B_r·H_r) · (a·T + b). ``tests/test_static_roofline``
checks the fit against a third T.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PRECS = ("16bit", "tf32", "tf32x3", "fp32")


def peaks(gpu_name: str) -> dict:
    """HBM bytes/s and FLOP/s per dot precision class (``mixir.autotune.hardware``; tf32x3 is
    three tf32 passes, fp32 is the non-tensor FMA rate)."""
    from mixir.autotune import hardware
    g = hardware.get(gpu_name)
    return {"name": g.name, "arch": g.arch, "hbm": g.hbm_bw, "16bit": g.bf16_flops, "tf32": g.tf32_flops,
            "tf32x3": g.tf32_flops / 3, "fp32": g.fp32_flops}


# ---- scaling ------------------------------------------------------------------------------------

def _affine(c1, c2, T1, T2, T, f):
    a = (c2 - c1) / (T2 - T1)
    return max(0.0, f * (a * T + (c1 - a * T1)))


def _scale_counts(x1, x2, T1, T2, T, f) -> dict:
    flops = {p: _affine(x1["flops"].get(p, 0.0), x2["flops"].get(p, 0.0), T1, T2, T, f)
             for p in set(x1["flops"]) | set(x2["flops"])}
    return {"load_bytes": _affine(x1["load_bytes"], x2["load_bytes"], T1, T2, T, f),
            "store_bytes": _affine(x1["store_bytes"], x2["store_bytes"], T1, T2, T, f),
            "flops": {p: v for p, v in flops.items() if v > 0}}


def scale(run1: list, run2: list, T1: int, T2: int, T: int, f: float) -> list:
    """Launch dicts at the target shape from two reduced runs (see the module docstring)."""
    if [(x["phase"], x["name"]) for x in run1] != [(x["phase"], x["name"]) for x in run2]:
        raise RuntimeError(f"the launch sequence differs between T={T1} and T={T2}: "
                           f"{len(run1)} vs {len(run2)} launches; the T-scaling does not apply")
    out = []
    for x1, x2 in zip(run1, run2):
        y = copy.deepcopy(x1)
        y.update(_scale_counts(x1, x2, T1, T2, T, f))
        at1, at2 = x1["meta"].get("autotune"), x2["meta"].get("autotune")
        if at1 and at2:
            y["meta"]["autotune"]["combos"] = {
                k: _scale_counts(c, at2["combos"][k], T1, T2, T, f)
                for k, c in at1["combos"].items() if c and at2["combos"].get(k)}
        out.append(y)
    return out


# ---- roofline -----------------------------------------------------------------------------------

def launch_time(x: dict, pk: dict, overhead_s: float) -> float:
    """max(bytes / HBM, Σ FLOPs_p / peak_p) + the per-launch overhead, seconds."""
    mem = (x["load_bytes"] + x["store_bytes"]) / pk["hbm"]
    comp = sum(v / pk[p] for p, v in x["flops"].items())
    return max(mem, comp) + overhead_s


def summarize(launches: list, phases, pk: dict, overhead_s: float) -> dict:
    sel = [x for x in launches if x["phase"] in phases]
    flops = {p: sum(x["flops"].get(p, 0.0) for x in sel) for p in PRECS}
    builds = [x.get("build") or {} for x in sel if x["kind"] == "triton"]
    return {"launches": len(sel), "triton": sum(x["kind"] == "triton" for x in sel),
            "glue": sum(x["kind"] == "glue" for x in sel),
            "bytes": sum(x["load_bytes"] + x["store_bytes"] for x in sel), "flops": flops,
            "time_s": sum(launch_time(x, pk, overhead_s) for x in sel),
            "wgmma": sum(b.get("wgmma", 0) for b in builds), "mma": sum(b.get("mma", 0) for b in builds),
            "spilling": sum(1 for b in builds if b.get("spills", 0) > 0),
            "unbuilt": sum(1 for b in builds if "registers" not in b)}


def lower_bound_bytes(entry, B, T, H, K, V, itemsize) -> dict:
    """Issue 13's lower bound, "inputs read once, outputs written once" per pass: the forward
    reads the inputs and writes the output; the backward reads the inputs again (nothing of the
    size of an input survives between the passes in a GPU's caches) and ``do``, and writes every
    input's gradient. Per-head parameters count once per head. (At B=8 T=4096 H=16 K=V=128 bf16:
    simple_gla's 442 µs fwd+bwd, the figure the issue states.)"""
    sizes = entry.sizes(K, V)
    n_in = 0
    for spec in entry.mixer.inputs:
        lead = B * T * H if spec.kind == "input" else H
        n = lead
        for d in spec.dims:
            n *= sizes[d]
        n_in += n
    n_out = B * T * H
    for d in entry.mixer.output.dims:
        n_out *= sizes[d]
    fwd = (n_in + n_out) * itemsize
    return {"fwd": fwd, "fwdbwd": fwd + (n_in + n_out + n_in) * itemsize}


# ---- builds -------------------------------------------------------------------------------------

SHAPE_CONSTEXPRS = ("B", "H", "HQ", "HV")


def target_constexprs(constexprs, B, H) -> list:
    """Shape-valued constexprs (B, H, HQ, HV) set to the target's (the reduced run used 1)."""
    sub = {"B": B, "H": H, "HQ": H, "HV": H}
    return [[n, sub[n] if n in sub and isinstance(v, int) and not isinstance(v, bool) else v]
            for n, v in constexprs]


def build_key(*parts) -> str:
    import triton
    return hashlib.sha256(json.dumps([triton.__version__, *parts], default=str).encode()).hexdigest()[:24]


class BuildCache:
    """AOT build results (registers, spills, HGMMA / HMMA counts) by key, in a JSON file."""

    def __init__(self, path: str | None):
        self.path = path
        self.data = {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    def save(self):
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)


def fla_job(x: dict, config: dict | None, B: int, H: int, arch: str) -> dict:
    """The build job of an fla launch with ``config`` (an autotune config dict, or None)."""
    m = x["meta"]
    consts = {n: v for n, v in m["constexprs"]}
    warps, stages = m["num_warps"], m["num_stages"]
    if config is not None:
        consts.update(config["kwargs"])
        warps, stages = config["num_warps"], config["num_stages"]
    consts = target_constexprs(list(consts.items()), B, H)
    job = {"module": m["module"], "fn": m["fn"], "signature": m["signature"], "constexprs": consts,
           "num_warps": warps, "num_stages": stages, "arch": arch}
    job["key"] = build_key("fla", job)
    return job


def run_fla_builds(jobs: list, cache: BuildCache, env: dict, workers: int, log) -> None:
    """Build the jobs not in the cache, in ``workers`` subprocesses (roofline_fla.py build)."""
    todo = list({j["key"]: j for j in jobs if j["key"] not in cache.data}.values())
    if not todo:
        return
    log(f"building {len(todo)} fla kernel configs for sm_90 in {workers} process(es) ...")
    tmp = tempfile.mkdtemp(prefix="roofline-fla-build-")
    procs = []
    for i in range(workers):
        part = todo[i::workers]
        if not part:
            continue
        jp, op = os.path.join(tmp, f"jobs{i}.json"), os.path.join(tmp, f"out{i}.json")
        with open(jp, "w") as f:
            json.dump(part, f)
        procs.append((subprocess.Popen([sys.executable, os.path.join(HERE, "roofline_fla.py"), "build", jp, op],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), op))
    for p, op in procs:
        _, err = p.communicate()
        if p.returncode != 0 or not os.path.exists(op):
            log(f"fla build worker failed (exit {p.returncode}): {err.strip().splitlines()[-1:]}")
            continue
        with open(op) as f:
            for r in json.load(f):
                cache.data[r.pop("key")] = r
    cache.save()


def is_tuned(x: dict) -> bool:
    """An fla launch whose autotuner had several configs to choose from (counted per combination)."""
    return x["kind"] == "triton" and bool((x["meta"].get("autotune") or {}).get("combos"))


def _combo(kwargs) -> str:
    return json.dumps(sorted(kwargs.items()))


def choose_fla_configs(launches: list, pk: dict, B: int, H: int, arch: str, cache: BuildCache,
                       build, overhead_s: float, mode: str) -> None:
    """For each autotuned fla launch pick a config and set its counts, ``meta.config`` and
    ``build``: tile combinations in order of modelled time (``launch_time`` of their counts); the
    first one with a spill-free config that fits wins, among its configs the one with wgmma, then
    the fewest registers, then the first listed. ``build(jobs)`` builds what the cache lacks
    (None: no builds, the first listed config of the fastest combination). ``mode == "all"``
    builds every listed config up front; "lazy" builds one combination at a time."""
    tuned = [x for x in launches if is_tuned(x)]
    order = {}
    for i, x in enumerate(tuned):
        combos = x["meta"]["autotune"]["combos"]
        order[i] = sorted(combos, key=lambda k: launch_time(combos[k], pk, 0.0))
    if build is not None and mode == "all":
        build([fla_job(x, c, B, H, arch) for x in tuned for c in x["meta"]["autotune"]["configs"]])
    pending = set(range(len(tuned)))
    depth = 0
    while pending:
        jobs = []
        for i in list(pending):
            x = tuned[i]
            if depth >= len(order[i]):
                pending.discard(i)
                continue
            cfgs = [c for c in x["meta"]["autotune"]["configs"] if _combo(c["kwargs"]) == order[i][depth]]
            jobs += [fla_job(x, c, B, H, arch) for c in cfgs]
        if build is not None and jobs:
            build(jobs)
        for i in list(pending):
            x = tuned[i]
            if depth >= len(order[i]):
                continue
            key = order[i][depth]
            cfgs = [c for c in x["meta"]["autotune"]["configs"] if _combo(c["kwargs"]) == key]
            res = [(c, cache.data.get(fla_job(x, c, B, H, arch)["key"], {})) for c in cfgs]
            ok = [(c, r) for c, r in res if "registers" in r and r.get("spills", 1) == 0 and r.get("fits")]
            last = depth == len(order[i]) - 1
            if build is None or ok or last:
                pool = ok or [(c, r) for c, r in res if "registers" in r] or res
                if build is None:
                    c, r = cfgs[0], {}
                else:
                    c, r = min(pool, key=lambda cr: (cr[1].get("spills", 1e9), cr[1].get("wgmma", 0) == 0,
                                                      cr[1].get("registers", 1e9)))
                x.update(x["meta"]["autotune"]["combos"][key])
                x["meta"]["config"] = c
                x["build"] = r
                pending.discard(i)
        depth += 1
