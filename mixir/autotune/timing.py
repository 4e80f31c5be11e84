"""GPU timing of candidate configs (do_bench style). Runs only when ``torch.cuda.is_available()``.

NOTE: written without a GPU at hand; untested on a GPU.

For each candidate: the compiled mixer's forward + backward on random CUDA inputs; its output is
first checked against the recurrent strategy (relative RMS error <= ``tol``), a failing candidate
gets ``inf``. Timing: ``warmup`` untimed runs each, then ``reps`` rounds in which the candidates run
interleaved, each run preceded by an L2 flush (zeroing a buffer of twice the L2 size) and timed with
CUDA events; the result is the median per candidate, in seconds.
"""
from __future__ import annotations

import math


def _inputs(mixer, B, T, H, K, V, dtype, seed=0):
    import numpy as np
    import torch

    from ..verify import example_inputs
    arrays, h0 = example_inputs(mixer, B=B, T=T, H=H, K=K, V=V, seed=seed)
    xs = [torch.tensor(np.asarray(a), dtype=dtype if s.kind == "input" else torch.float32,
                       device="cuda") for s, a in zip(mixer.inputs, arrays)]
    return xs


def time_configs(mixer, strategy, configs, *, B, T, H, K, V, dtype="bf16", warmup=3, reps=10,
                 tol=2e-2, l2_bytes=50 * 2**20, progress=None) -> list:
    import torch

    import mixir
    if not torch.cuda.is_available():
        raise RuntimeError("time_configs needs a CUDA device")
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    xs = _inputs(mixer, B, T, H, K, V, tdt)
    ref = mixir.compile(mixer, strategy="recurrent")(*xs).float()
    flush = torch.empty(max(1, 2 * l2_bytes // 4), dtype=torch.float32, device="cuda")

    def runner(cfg):
        f = mixir.compile(mixer, strategy=strategy, config=dict(cfg))
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]

        def run():
            for t in leaves:
                t.grad = None
            o = f(*leaves)
            o.float().sum().backward()
            return o
        return f, run

    runs, ok = [], []
    for i, cfg in enumerate(configs):
        f, run = runner(cfg)
        o = f(*xs).float()
        err = float(((o - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-30)).sqrt())
        ok.append(math.isfinite(err) and err <= tol)
        runs.append(run)
        if progress:
            progress(f"checked config {i + 1}/{len(configs)}: rel. RMS error {err:.1e}")
    for run, good in zip(runs, ok):
        if good:
            for _ in range(warmup):
                run()
    torch.cuda.synchronize()
    times = [[] for _ in configs]
    for r in range(reps):
        for i, (run, good) in enumerate(zip(runs, ok)):
            if not good:
                continue
            flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            run()
            b.record()
            torch.cuda.synchronize()
            times[i].append(a.elapsed_time(b) / 1e3)
        if progress:
            progress(f"timing round {r + 1}/{reps}")
    out = []
    for ts, good in zip(times, ok):
        out.append(sorted(ts)[len(ts) // 2] if good and ts else math.inf)
    return out
