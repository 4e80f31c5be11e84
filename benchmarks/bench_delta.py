#!/usr/bin/env python
"""Benchmark of the Householder family (docs/delta_rule.md): forward and forward+backward time and
peak memory against T, mixir's chunked (WY) strategy vs flash-linear-attention's chunk kernels.

For each op in ``--ops`` (delta_rule, gated_delta_rule, gated_delta_product2/3, kda) and each T:
- mixir: ``mixir.library.<op>(..., use_qk_l2norm_in_kernel=True, strategy="chunked")`` (kda:
  ``strategy="recurrent"``, the only one mixir has for a key-diagonal gate);
- fla (when ``import fla`` works, the same GPU, the same run): ``chunk_delta_rule``,
  ``chunk_gated_delta_rule``, ``chunk_gated_delta_product``, ``chunk_kda`` with the same inputs and
  options.
Times are medians of ``--repeats`` runs after ``--warmup`` (CUDA events on a GPU, perf_counter on the
CPU); peak memory is ``torch.cuda.max_memory_allocated`` above the inputs (GPU only). The outputs and
input gradients of fla and mixir are compared (max relative error) so that a wrong row shows.
It prints a Markdown table and the slope of log(time) against log(T) (linear in T ⇒ ≈ 1).

    python benchmarks/bench_delta.py --device cuda                     # T = 1k … 32k, K = V = 128, bf16
    python benchmarks/bench_delta.py --device cuda --ops gated_delta_rule --T 4096,16384
    python benchmarks/bench_delta.py                                   # CPU: tiny, the interpreter

On the CPU mixir's kernels run in Triton's interpreter: the numbers measure the interpreter.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import plots  # noqa: E402
import tables  # noqa: E402
import torch  # noqa: E402

from mixir import library  # noqa: E402

OPS = ("delta_rule", "gated_delta_rule", "gated_delta_product2", "gated_delta_product3", "kda")


def make_inputs(op, B, T, H, K, V, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = int(op[-1]) if op.startswith("gated_delta_product") else 1

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)
    q = r(B, T, H, K).to(dtype)
    k = r(B, T * n, H, K).to(dtype)
    v = r(B, T * n, H, V).to(dtype)
    beta = torch.rand(B, T * n, H, generator=g).to(device).to(dtype)
    gate = torch.nn.functional.logsigmoid(r(*((B, T, H, K) if op == "kda" else (B, T, H)))).float()
    return n, q, k, v, gate, beta


def mixir_call(op, n, q, k, v, gate, beta):
    kw = dict(use_qk_l2norm_in_kernel=True, strategy="chunked")
    if op == "delta_rule":
        return library.delta_rule(q, k, v, beta, **kw)
    if op == "gated_delta_rule":
        return library.gated_delta_rule(q, k, v, gate, beta, **kw)
    if op == "kda":
        return library.kda(q, k, v, gate, beta, use_qk_l2norm_in_kernel=True, strategy="recurrent")
    return library.gated_delta_product(q, k, v, gate, beta, num_householder=n, **kw)


def fla_call(op):
    """fla's op, or None when fla is not importable."""
    try:
        if op == "delta_rule":
            from fla.ops.delta_rule import chunk_delta_rule

            def run(n, q, k, v, gate, beta):
                return chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)[0]
        elif op == "gated_delta_rule":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            def run(n, q, k, v, gate, beta):
                return chunk_gated_delta_rule(q, k, v, gate, beta, use_qk_l2norm_in_kernel=True)[0]
        elif op == "kda":
            from fla.ops.kda import chunk_kda

            def run(n, q, k, v, gate, beta):
                return chunk_kda(q, k, v, gate, beta, use_qk_l2norm_in_kernel=True)[0]
        else:
            from fla.ops.gated_delta_product import chunk_gated_delta_product

            def run(n, q, k, v, gate, beta):
                return chunk_gated_delta_product(q, k, v, gate, beta, num_householder=n,
                                                 use_qk_l2norm_in_kernel=True)[0]
        return run
    except Exception:  # noqa: BLE001 - fla absent or incompatible: no baseline
        return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(out)


def measure(fn, inputs, device, warmup, repeats):
    """(fwd ms, fwd+bwd ms, peak MB or None, (output, grads))."""
    leaves = [x.detach().requires_grad_() for x in inputs[1:]]
    args = (inputs[0], *leaves)
    o = fn(*args)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, leaves, do, allow_unused=True)
    fwd = timed(lambda: fn(*args), device, warmup, repeats)

    def fb():
        torch.autograd.grad(fn(*args), leaves, do, allow_unused=True)
    fwdbwd = timed(fb, device, warmup, repeats)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fb()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    return fwd, fwdbwd, peak, (o, grads)


def max_rel(a, b):
    errs = []
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        errs.append(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp(min=1e-12)).item())
    return max(errs) if errs else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ops", default=None, help="comma-separated subset of " + ", ".join(OPS))
    p.add_argument("--T", default=None, help="comma-separated sequence lengths")
    p.add_argument("--B", type=int, default=None)
    p.add_argument("--H", type=int, default=None)
    p.add_argument("--K", type=int, default=None, help="head size (K = V)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    plots.add_argument(p)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    png = plots.resolve(a.plot, "bench_delta", a.device)
    panels = [plots.Panel("forward", "time (ms)"), plots.Panel("forward + backward", "time (ms)"),
              plots.Panel("peak memory of fwd+bwd", "peak MB")]
    gpu = device.type == "cuda"
    Ts = [int(t) for t in (a.T or ("1024,2048,4096,8192,16384,32768" if gpu else "32,64")).split(",")]
    B, H = a.B or (4 if gpu else 1), a.H or (8 if gpu else 1)
    K = a.K or (128 if gpu else 16)
    warmup, repeats = a.warmup or (3 if gpu else 0), a.repeats or (10 if gpu else 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    ops = a.ops.split(",") if a.ops else (OPS if gpu else OPS[:2])
    print(f"# bench_delta  {datetime.datetime.now().isoformat(timespec='seconds')}  "
          f"{torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()}  "
          f"torch {torch.__version__}  B={B} H={H} K=V={K} {a.dtype}")
    print("| op | T | mixir fwd ms | mixir fwd+bwd ms | mixir peak MB | fla fwd ms | fla fwd+bwd ms "
          "| fla peak MB | fwd ratio | fwd+bwd ratio | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    series = {}
    for op in ops:
        base = fla_call(op) if gpu else None
        for T in Ts:
            inputs = make_inputs(op, B, T, H, K, K, dtype, device)
            mf, mfb, mpk, mres = measure(lambda *x: mixir_call(op, *x), inputs, device, warmup, repeats)
            series.setdefault((op, "mixir"), []).append(mfb)
            for panel, v in zip(panels, (mf, mfb, mpk)):
                panel.add(f"{op} mixir", T, v)
            row = [op, T, f"{mf:.3f}", f"{mfb:.3f}", "-" if mpk is None else f"{mpk:.0f}"]
            if base is not None:
                ff, ffb, fpk, fres = measure(base, inputs, device, warmup, repeats)
                series.setdefault((op, "fla"), []).append(ffb)
                for panel, v in zip(panels, (ff, ffb, fpk)):
                    panel.add(f"{op} fla", T, v)
                diff = max_rel([fres[0], *fres[1]], [mres[0], *mres[1]])
                row += [f"{ff:.3f}", f"{ffb:.3f}", "-" if fpk is None else f"{fpk:.0f}",
                        f"{mf / ff:.2f}", f"{mfb / ffb:.2f}", f"{diff:.1e}"]
            else:
                row += ["-"] * 6
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    print("\nslope of log(fwd+bwd time) vs log(T) (1 = linear):")
    for (op, who), ys in series.items():
        print(f"  {op:22s} {who:6s} {tables.loglog_slope(zip(Ts, ys)):.2f}")
    plots.save(png, panels, f"mixir Householder family on {a.device}, B={B} H={H} K=V={K} {a.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
