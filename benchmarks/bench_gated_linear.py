#!/usr/bin/env python
"""Benchmark of mixir's gated-linear family: time and memory against T, with baselines.

For each mixer × strategy (recurrent, chunked, fused where the mixer has it) × T it measures mixir's compiled mixer
(``mixir.compile(MIXERS[name].mixer)``):

- forward time and forward+backward time: the median of ``--repeats`` runs after ``--warmup``
  runs (CUDA events and ``torch.cuda.synchronize`` on a GPU, ``time.perf_counter`` on the CPU).
  The forward runs with inputs that require grad, as in training; forward+backward is the forward
  plus ``torch.autograd.grad`` of every input for a fixed random output gradient;
- the peak memory of one forward+backward, above what was allocated before it (the inputs):
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` on a GPU; on the CPU the
  peak of torch's CPU allocator as ``torch.profiler`` (``profile_memory=True``) reports it — the
  Triton interpreter's own NumPy buffers are not counted;

and the baselines on the same inputs (benchmarks/baselines.py): a plain PyTorch chunked
implementation (linear_attention, retention, simple_gla, gla, mamba2) and, where ``import fla``
works, flash-linear-attention's chunk kernels. Each baseline's output and input gradients are
compared with mixir's (max relative error, ``max|x_b - x_mixir| / max|x_mixir|`` over the output
and every gradient), so a wrong baseline, or a wrong mixir, is visible.

It prints a Markdown table, then the fitted slope of log(time) against log(T) per series
(linear in T ⇒ slope ≈ 1), and with ``--plot`` a log-log plot of time against T (needs
matplotlib), with ``--csv`` every number.

    python benchmarks/bench_gated_linear.py                        # defaults for the device
    python benchmarks/bench_gated_linear.py --device cuda --mixers gla,simple_gla --T 1024,4096
    python benchmarks/bench_gated_linear.py --plot gl.png --csv gl.csv

On the CPU mixir's Triton kernels run in Triton's interpreter (Python/NumPy): the CPU defaults are
tiny and the numbers measure the interpreter, not kernel speed.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)                       # baselines.py
sys.path.insert(1, os.path.dirname(_HERE))      # the repository root: mixir without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

import baselines  # noqa: E402
import plots  # noqa: E402
import tables  # noqa: E402
from cpu_memory import torch_cpu_peak_bytes  # noqa: E402
import mixir  # noqa: E402
from mixir.library import MIXERS  # noqa: E402

STRATEGIES = ("recurrent", "chunked", "fused")   # fused: scalar-decay mixers only
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
#: max relative error above which a row is flagged "!" (bf16 outputs and 16-bit decay gradients
#: are compared with fp32 baselines; fp32 everything agrees to ~1e-6)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}

GPU_DEFAULTS = dict(mixers="linear_attention,retention,simple_gla,gla,mamba2",
                    T="1024,2048,4096,8192,16384,32768", BH=32, H=16, K=128, V=128, dtype="bf16",
                    warmup=3, repeats=10)
CPU_DEFAULTS = dict(mixers="gla,simple_gla", T="64,128,256", BH=2, H=2, K=32, V=32, dtype="fp32",
                    warmup=1, repeats=2)

CPU_NOTE = ("CPU: mixir's Triton kernels run in Triton's interpreter (Python/NumPy); these numbers "
            "measure the interpreter, not kernel speed.")


# ---- arguments ---------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark mixir's gated-linear mixers (time, memory, baselines) against T.",
        epilog="Defaults depend on the device. GPU: " + ", ".join(f"{k}={v}" for k, v in GPU_DEFAULTS.items())
        + ". CPU (Triton interpreter): " + ", ".join(f"{k}={v}" for k, v in CPU_DEFAULTS.items()) + ".")
    p.add_argument("--mixers", help="comma-separated names from mixir.library.MIXERS")
    p.add_argument("--T", help="comma-separated sequence lengths")
    p.add_argument("--BH", type=int, help="batch × heads (split as H = gcd(BH, 16), B = BH / H "
                                          "unless --B/--H are given)")
    p.add_argument("--B", type=int, help="batch size (overrides the split of --BH)")
    p.add_argument("--H", type=int, help="heads (overrides the split of --BH)")
    p.add_argument("--K", type=int, help="key head size (the state's first feature dim)")
    p.add_argument("--V", type=int, help="value head size (the state's second feature dim)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the per-token inputs")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated: recurrent,chunked,fused (a mixer runs those it has)")
    p.add_argument("--warmup", type=int, help="warm-up runs per measurement")
    p.add_argument("--repeats", type=int, help="timed runs per measurement (the median is reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU only: torch.set_num_threads (default 1: the tensors are tiny, and more "
                        "threads only add synchronisation noise)")
    p.add_argument("--no-baselines", action="store_true", help="time mixir only")
    p.add_argument("--seed", type=int, default=0)
    plots.add_argument(p)
    p.add_argument("--csv", metavar="CSV", help="write every measurement as CSV")
    args = p.parse_args(argv)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    args.plot = plots.resolve(args.plot, "bench_gated_linear", args.device)
    d = GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    args.mixers = [m for m in (args.mixers or d["mixers"]).split(",") if m]
    unknown = [m for m in args.mixers if m not in MIXERS]
    if unknown:
        p.error(f"unknown mixers {unknown}; known: {', '.join(sorted(MIXERS))}")
    args.T = [int(t) for t in (args.T or d["T"]).split(",") if t]
    args.strategies = [s for s in args.strategies.split(",") if s]
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad:
        p.error(f"unknown strategies {bad}; expected {STRATEGIES}")
    if args.B is None and args.H is None:
        if args.BH is None:
            args.B, args.H = d["BH"] // d["H"], d["H"]
        else:
            args.H = math.gcd(args.BH, 16)
            args.B = args.BH // args.H
    elif args.H is None:
        args.H = max(1, (args.BH or d["BH"]) // args.B)
    elif args.B is None:
        args.B = max(1, (args.BH or d["BH"]) // args.H)
    args.K = args.K or d["K"]
    args.V = args.V or d["V"]
    args.dtype = DTYPES[args.dtype or d["dtype"]]
    args.warmup = d["warmup"] if args.warmup is None else args.warmup
    args.repeats = d["repeats"] if args.repeats is None else max(1, args.repeats)
    return args


# ---- measuring ---------------------------------------------------------------------------------


class Runner:
    """Times and measures callables on one device."""

    def __init__(self, device, warmup, repeats):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.repeats = warmup, repeats

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    #: short runs are repeated beyond ``repeats`` (up to MAX_RUNS) until they total MIN_TOTAL_MS
    MIN_TOTAL_MS, MAX_RUNS = 100.0, 50

    def time_ms(self, fn):
        """Median wall time of ``fn`` in ms over ``repeats`` runs, more (up to MAX_RUNS) while the
        runs total less than MIN_TOTAL_MS (no warm-up here)."""
        times = []
        while len(times) < self.repeats or (sum(times) < self.MIN_TOTAL_MS and len(times) < self.MAX_RUNS):
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                self.sync()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(self, fn):
        """(peak memory of one run of ``fn`` above what was allocated before it in MB, its result)."""
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            result = fn()
            self.sync()
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20, result
        return _cpu_peak_mb(fn)

    def measure(self, fwd, fwdbwd):
        """(fwd ms, fwd+bwd ms, peak MB, result of the first fwd+bwd run).

        The first run (a warm-up, made even with ``warmup=0``) gives the result that the error
        check uses; on the CPU it is also the memory run, on a GPU the memory run follows the
        warm-up."""
        if self.cuda:
            result = fwdbwd()
            for _ in range(self.warmup - 1):
                fwdbwd()
            peak, _ = self.peak_mb(fwdbwd)
        else:
            peak, result = self.peak_mb(fwdbwd)
            for _ in range(self.warmup - 1):
                fwdbwd()
        return self.time_ms(fwd), self.time_ms(fwdbwd), peak, result


def _cpu_peak_mb(fn):
    """(peak of torch's CPU allocator during ``fn`` in MB above its level before, None when the
    profiler's event tree cannot be read; the result of ``fn``)."""
    peak, result = torch_cpu_peak_bytes(fn)
    return (None if peak is None else peak / 2**20), result


# ---- inputs and calls --------------------------------------------------------------------------


def make_inputs(entry, B, T, H, K, V, dtype, device, seed):
    """Leaf tensors requiring grad in the declared order: per-token inputs in ``dtype``, per-head
    parameters in fp32."""
    rng = np.random.default_rng(seed)
    arrays = entry.make_inputs(rng, B, T, H, K, V)
    tensors = []
    for spec, a in zip(entry.mixer.inputs, arrays):
        dt = dtype if spec.kind == "input" else torch.float32
        tensors.append(torch.tensor(a, dtype=dt, device=device).requires_grad_(True))
    return tensors


def fwd_bwd(fn, inputs, do_holder):
    """One forward + backward; returns (output, gradients of every input)."""
    o = fn(*inputs)
    if do_holder[0] is None:
        g = torch.Generator(device="cpu").manual_seed(1234)
        do_holder[0] = torch.randn(o.shape, generator=g).to(device=o.device, dtype=o.dtype)
    grads = torch.autograd.grad(o, inputs, do_holder[0], allow_unused=True)
    return o, grads


def rel_err(result, reference):
    """max over the output and every gradient of max|x - ref| / max|ref|."""
    worst = 0.0
    (o, grads), (o_ref, grads_ref) = result, reference
    pairs = [(o, o_ref)] + [(g, r) for g, r in zip(grads, grads_ref) if g is not None and r is not None]
    out_err = grad_err = 0.0
    for i, (x, r) in enumerate(pairs):
        x, r = x.detach().float(), r.detach().float()
        if not torch.isfinite(x).all():
            e = math.inf
        else:
            e = ((x - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
        if i == 0:
            out_err = e
        else:
            grad_err = max(grad_err, e)
        worst = max(worst, e)
    return worst, out_err, grad_err


def _oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---- the benchmark -----------------------------------------------------------------------------


def run(args):
    runner = Runner(args.device, args.warmup, args.repeats)
    device = runner.device
    rows = []
    for name in args.mixers:
        entry = MIXERS[name]
        try:
            compiled = mixir.compile(entry.mixer)
        except mixir.MixirError as e:
            print(f"# {name}: mixir.compile failed: {e}", flush=True)
            continue
        strategies = [s for s in args.strategies if s in compiled.strategies]
        torch_fn = None if args.no_baselines else baselines.TORCH_BASELINES.get(name)
        fla_fn, fla_why = (None, "--no-baselines") if args.no_baselines else baselines.fla_baseline(name)
        if fla_fn is None and not args.no_baselines:
            print(f"# {name}: fla baseline n/a: {fla_why}", flush=True)
        for T in args.T:
            inputs = make_inputs(entry, args.B, T, args.H, args.K, args.V, args.dtype, device, args.seed)
            do = [None]
            base = {}
            for label, fn in (("torch", torch_fn), ("fla", fla_fn)):
                if fn is None:
                    continue
                try:
                    fwd_ms, fb_ms, peak, ref = runner.measure(lambda: fn(*inputs),
                                                              lambda: fwd_bwd(fn, inputs, do))
                    base[label] = dict(fwd=fwd_ms, fb=fb_ms, peak=peak, out=ref)
                except Exception as e:  # noqa: BLE001 - report and go on (OOM at large T, ...)
                    base[label] = dict(error="OOM" if _oom(e) else f"{type(e).__name__}: {e}")
                    print(f"# {name} T={T} {label}: {base[label]['error']}", flush=True)
                    if runner.cuda:
                        torch.cuda.empty_cache()
            for strategy in strategies:
                row = dict(mixer=name, strategy=strategy, T=T, B=args.B, H=args.H, K=args.K, V=args.V,
                           dtype=DTYPE_NAMES[args.dtype], device=str(device))

                def call(*a, _s=strategy):
                    return compiled(*a, strategy=_s)
                try:
                    row["fwd_ms"], row["fwdbwd_ms"], row["peak_mb"], mine = runner.measure(
                        lambda: call(*inputs), lambda: fwd_bwd(call, inputs, do))
                except Exception as e:  # noqa: BLE001
                    row["error"] = "OOM" if _oom(e) else f"{type(e).__name__}: {e}"
                    print(f"# {name} {strategy} T={T}: {row['error']}", flush=True)
                    mine = None
                    if runner.cuda:
                        torch.cuda.empty_cache()
                for label in ("torch", "fla"):
                    b = base.get(label)
                    if b is None:
                        continue
                    if "error" in b:
                        row[f"{label}_error"] = b["error"]
                        continue
                    row[f"{label}_fwd_ms"], row[f"{label}_fwdbwd_ms"], row[f"{label}_peak_mb"] = b["fwd"], b["fb"], b["peak"]
                    if mine is not None:
                        row[f"{label}_err"], row[f"{label}_err_out"], row[f"{label}_err_grad"] = rel_err(b["out"], mine)
                rows.append(row)
                print("# done " + _progress(row), flush=True)
            inputs = base = None   # free them before the next T
            if runner.cuda:
                torch.cuda.empty_cache()
    return rows


def _progress(row):
    f = row.get("fwd_ms")
    return (f"{row['mixer']} {row['strategy']} T={row['T']}: "
            + (f"fwd {f:.3g} ms, fwd+bwd {row['fwdbwd_ms']:.3g} ms" if f is not None else row.get("error", "")))


# ---- reporting ---------------------------------------------------------------------------------


def _ms(x):
    if x is None:
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _mb(x):
    return "n/a" if x is None else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _err(row, label, tol):
    if f"{label}_error" in row:
        return row[f"{label}_error"].split(":")[0]
    e = row.get(f"{label}_err")
    if e is None:
        return "n/a"
    return f"{e:.1e}" + (" !" if not e <= tol else "")


def header_lines(args, started):
    cuda = args.device == "cuda"
    lines = [f"mixir gated-linear benchmark, started {started:%Y-%m-%d %H:%M:%S %Z}"]
    dev = (torch.cuda.get_device_name(torch.device("cuda")) if cuda else f"CPU ({platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
    lines.append(f"device: {dev}; torch {torch.__version__}, triton {_triton_version()}")
    if not cuda:
        lines.append(CPU_NOTE)
    lines.append(f"B={args.B} H={args.H} (B·H={args.B * args.H}) K={args.K} V={args.V} "
                 f"dtype={DTYPE_NAMES[args.dtype]} (per-token inputs; per-head parameters fp32); "
                 f"warm-up {args.warmup}, median of {args.repeats} runs (more, up to "
                 f"{Runner.MAX_RUNS}, while they total < {Runner.MIN_TOTAL_MS:g} ms)")
    lines.append("time: " + ("CUDA events around each run, torch.cuda.synchronize" if cuda
                             else "time.perf_counter around each run")
                 + "; fwd with inputs requiring grad; fwd+bwd = fwd + autograd.grad of all inputs")
    lines.append("peak MB: " + ("torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the "
                                "memory allocated before the run (inputs), one fwd+bwd" if cuda else
                                "peak of torch's CPU allocator during one fwd+bwd (torch.profiler "
                                "profile_memory), above the level before it; the Triton interpreter's "
                                "NumPy buffers are not counted"))
    lines += ["baseline " + s for s in baselines.describe()]
    lines.append("max rel err: max|x_baseline - x_mixir| / max|x_mixir| over the output and every input "
                 f"gradient; '!' marks > {TOLERANCE[args.dtype]:g}")
    return lines


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001
        return "n/a"


def table(rows, args):
    tol = TOLERANCE[args.dtype]
    head = ["mixer", "strategy", "T", "fwd ms", "fwd+bwd ms", "peak MB", "torch-chunked fwd ms",
            "torch-chunked fwd+bwd ms", "fla fwd ms", "fla fwd+bwd ms", "max rel err torch", "max rel err fla"]
    body = []
    for r in rows:
        if "error" in r:
            mine = [r["error"].split(":")[0]] * 3
        else:
            mine = [_ms(r["fwd_ms"]), _ms(r["fwdbwd_ms"]), _mb(r["peak_mb"])]
        body.append([r["mixer"], r["strategy"], str(r["T"])] + mine
                    + [_ms(r.get("torch_fwd_ms")), _ms(r.get("torch_fwdbwd_ms")),
                       _ms(r.get("fla_fwd_ms")), _ms(r.get("fla_fwdbwd_ms")),
                       _err(r, "torch", tol), _err(r, "fla", tol)])
    return tables.markdown(head, body, right=set(range(2, len(head))))


def series(rows):
    """(label, metric) -> [(T, ms)] for every implementation measured, in the order: per mixer,
    mixir's strategies, then the baselines (measured once per mixer and T)."""
    out = {}
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    impls = [(f"mixir {s}", "", s) for s in strategies] + [("torch-chunked", "torch_", None), ("fla", "fla_", None)]
    for mixer in mixers:
        mine = [r for r in rows if r["mixer"] == mixer]
        first = mine[0]["strategy"]
        for impl, prefix, strategy in impls:
            for metric, key in (("fwd", "fwd_ms"), ("fwd+bwd", "fwdbwd_ms")):
                for r in mine:
                    if r["strategy"] != (strategy or first):
                        continue
                    v = r.get(prefix + key)
                    if v is not None and v > 0:
                        out.setdefault((f"{mixer} {impl}", metric), []).append((r["T"], v))
    return out


def slope_table(rows):
    body = []
    for (label, metric), pts in series(rows).items():
        pts = sorted(pts)
        if len(pts) < 2:
            continue
        slope = tables.loglog_slope(pts)
        body.append([label, metric, f"{pts[0][0]}–{pts[-1][0]}", f"{slope:.2f}"])
    if not body:
        return "(fewer than two T values: no slope)"
    return tables.markdown(["series", "metric", "T range", "slope d log(time) / d log(T)"], body,
                           right={3})


def plot(rows, path, args):
    """Time against T (fwd, fwd+bwd) per mixer and implementation, and peak memory (``plots``)."""
    fwd, fb = plots.Panel("forward", "time (ms)"), plots.Panel("forward + backward", "time (ms)")
    for (label, metric), pts in series(rows).items():
        for T, v in pts:
            (fwd if metric == "fwd" else fb).add(label, T, v)
    mem = plots.Panel("peak memory of fwd+bwd", "peak MB")
    for r in rows:
        mem.add(f"{r['mixer']} mixir {r['strategy']}", r["T"], r.get("peak_mb"))
        for label, prefix in (("torch-chunked", "torch_"), ("fla", "fla_")):
            if r["strategy"] == rows[0]["strategy"]:
                mem.add(f"{r['mixer']} {label}", r["T"], r.get(prefix + "peak_mb"))
    where = "GPU " + torch.cuda.get_device_name() if args.device == "cuda" else "CPU, Triton interpreter"
    plots.save(path, [fwd, fb, mem], f"mixir gated-linear ({where}; B={args.B} H={args.H} K={args.K} "
                                     f"V={args.V} {DTYPE_NAMES[args.dtype]})")


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    if args.device == "cpu" and args.dtype != torch.float32:
        print("# note: 16-bit dtypes on the CPU run through the interpreter too (slow, and not "
              "representative)")
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    rows = run(args)
    elapsed = time.perf_counter() - t0
    print()
    for line in header_lines(args, started):
        print("# " + line)
    print(f"# command: python {' '.join([os.path.relpath(__file__)] + sys.argv[1:])}")
    print(f"# total wall time: {elapsed:.0f} s")
    print()
    print(table(rows, args))
    print()
    print("Fitted slope of log(time) vs log(T) per series (linear in T => slope ~ 1):")
    print()
    print(slope_table(rows))
    plot(rows, args.plot, args)
    if args.csv:
        tables.write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
