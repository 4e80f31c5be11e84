#!/usr/bin/env python
"""Benchmark of the LTI family: kernel generation and FFT convolution against T, with the naive
materialised computations as baselines.

For T in ``--T`` (default 1k…64k on a GPU, 1k…16k on the CPU), N complex modes (``--N``, default
64) and H channels (``--H``), it times (median of ``--repeats`` after a warm-up) and measures the
peak memory (``torch.cuda.max_memory_allocated`` on a GPU, torch's CPU allocator through
``torch.profiler`` on the CPU — the Triton interpreter's NumPy buffers are not counted) of:

- ``vandermonde``: mixir's S4D kernel ``K_l = 2 Re Σ_n c_n B̄_n λ_n^l`` (Triton, blocked over N and
  L, O(N + L) memory per channel);
- ``vandermonde-naive``: the same sum with the N × L Vandermonde matrix materialised
  (``exp(log λ ⊗ arange(L))``, S4D's "two lines");
- ``cauchy``: mixir's S4 (DPLR) kernel by the Cauchy kernel at the roots of unity + Woodbury;
- ``krylov-naive``: LSSL's materialised Krylov sequence ``[B̄, ĀB̄, Ā²B̄, …]`` by doubling
  (O(N·L) memory), then ``c·(…)``;
- ``fftconv``: ``y = K * u`` by real FFTs of length 2T (B = ``--B``).

Each mixir kernel is compared with its naive baseline (max relative error). Prints a Markdown
table and the fitted slope of log(time) against log(T).

    python benchmarks/bench_lti.py                       # defaults for the device
    python benchmarks/bench_lti.py --device cuda --N 64 --T 1024,4096,16384,65536

On the CPU mixir's Triton kernels run in Triton's interpreter: the CPU numbers measure the
interpreter, not kernel speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np   # noqa: E402
import torch         # noqa: E402

from cpu_memory import torch_cpu_peak_bytes                          # noqa: E402,F401 - re-exported
import plots  # noqa: E402
import tables  # noqa: E402
from mixir.library import lti                                         # noqa: E402
from mixir.lowering.lti.analysis import analyse                        # noqa: E402
from mixir.lowering.lti.runtime import CompiledLTIMixer  # noqa: E402
from mixir.lowering.lti.system import fft_conv, kernel_powers  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, repeats):
    fn()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def peak_mb(fn, device):
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    peak, _ = torch_cpu_peak_bytes(fn)
    return float("nan") if peak is None else peak / 2**20


def systems(H, N, device):
    """(S4D system from S4D-Lin, S4 system from HiPPO-LegS), fp32, on ``device``."""
    out = []
    for mixer, init in ((lti.s4d_mixer, lti.s4d_lin_init), (lti.s4_mixer, lti.s4_legs_init)):
        p = init(H, N, dt_min=1e-3, dt_max=1e-2)
        fn = CompiledLTIMixer(mixer, analyse(mixer))
        params = {}
        for spec in mixer.inputs:
            if spec.kind != "param":
                continue
            name = spec.name.replace("L_", "Lambda_")
            base, _, part = name.partition("_")
            src = p[name] if name in p else p[base]
            if part in ("re", "im") and src.is_complex():
                src = src.real if part == "re" else src.imag
            params[spec.name] = src.to(device)
        out.append(fn.system(params, H, {"N": N}, {}, torch.float32, device))
    return out


def vandermonde_naive(s, L):
    lam = s.lam
    V = torch.exp(torch.log(lam)[..., None] * torch.arange(L, device=lam.device))   # [H, N, L]
    return 2 * torch.einsum("hn,hnl->hl", s.c * s.beta, V).real


def krylov_naive(s, L):
    A = s.full_transition()
    x = torch.cat([s.beta, s.beta.conj()], -1)[..., None]                  # [H, 2N, 1]
    P = A
    while x.shape[-1] < L:                                                 # [B̄, ĀB̄, …] by doubling
        x = torch.cat([x, P @ x], -1)
        P = P @ P
    c = torch.cat([s.c, s.c.conj()], -1)
    return torch.einsum("hn,hnl->hl", c, x[..., :L]).real


def run(args):
    device = torch.device(args.device)
    s4d_sys, s4_sys = systems(args.H, args.N, device)
    rows = []
    for T in args.T:
        u = torch.randn(args.B, args.H, T, device=device)
        K = kernel_powers(s4d_sys, s4d_sys.beta, T)
        cases = {
            "vandermonde": (lambda: kernel_powers(s4d_sys, s4d_sys.beta, T), None),
            "vandermonde-naive": (lambda: vandermonde_naive(s4d_sys, T), "vandermonde"),
            "cauchy": (lambda: kernel_powers(s4_sys, s4_sys.beta, T), None),
            "krylov-naive": (lambda: krylov_naive(s4_sys, T), "cauchy"),
            "fftconv": (lambda: fft_conv(u, K), None),
        }
        results = {}
        for name, (fn, ref) in cases.items():
            if args.cases and name not in args.cases:
                continue
            if name.endswith("naive") and T > args.naive_max_T:
                rows.append((T, name, None, None, None))
                continue
            try:
                with torch.no_grad():
                    out = fn()
                    ms = time_ms(fn, device, args.repeats)
                    mb = peak_mb(fn, device)
            except (RuntimeError, MemoryError) as e:    # out of memory
                rows.append((T, name, None, None, f"failed: {type(e).__name__}"))
                continue
            results[name] = out
            err = None
            if ref in results:
                r = results[ref]
                err = float((out - r).abs().max() / r.abs().max())
            rows.append((T, name, ms, mb, err))
            print(f"T={T:6d} {name:18s} {ms:10.2f} ms {mb:10.2f} MB" + (f"  err {err:.1e}" if err is not None else ""),
                  file=sys.stderr)
    return rows


def table(rows, args):
    import platform
    import triton
    lines = [f"# LTI kernels: N = {args.N} modes, H = {args.H}, B = {args.B}, device {args.device}"
             f" ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU, Triton interpreter'})",
             f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {platform.machine()}, "
             f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; torch "
             f"{torch.__version__}, triton {triton.__version__}",
             f"# command: python benchmarks/bench_lti.py {' '.join(sys.argv[1:])}",
             f"# median of {args.repeats} runs after a warm-up; peak MB: "
             + ("torch.cuda.max_memory_allocated above the level before" if args.device.startswith("cuda")
                else "torch's CPU allocator (torch.profiler memory events) above the level before; the "
                     "interpreter's NumPy tiles are not counted"),
             "", "| T | what | ms | peak MB | max rel err vs mixir |", "|---|---|---:|---:|---:|"]
    for T, name, ms, mb, err in rows:
        f = lambda x, p: "—" if x is None else (x if isinstance(x, str) else f"{x:.{p}f}")  # noqa: E731
        e = "—" if err is None else (err if isinstance(err, str) else f"{err:.1e}")
        lines.append(f"| {T} | {name} | {f(ms, 2)} | {f(mb, 2)} | {e} |")
    lines += ["", "| what | slope of log(ms) vs log(T) |", "|---|---:|"]
    for name in dict.fromkeys(r[1] for r in rows):
        pts = [(T, ms) for T, n, ms, _, _ in rows if n == name and ms]
        if len(pts) >= 2:
            lines.append(f"| {name} | {tables.loglog_slope(pts):.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--H", type=int, default=8 if cuda else 2)
    ap.add_argument("--B", type=int, default=4 if cuda else 1)
    ap.add_argument("--T", default="1024,4096,16384,65536" if cuda else "1024,4096,16384")
    ap.add_argument("--naive-max-T", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=10 if cuda else 2)
    ap.add_argument("--threads", type=int, default=0 if cuda else 1,
                    help="torch CPU threads (default 1 on the CPU: steadier on a shared machine; 0: "
                         "torch's default)")
    ap.add_argument("--cases", default="", help="comma-separated subset of: vandermonde, "
                    "vandermonde-naive, cauchy, krylov-naive, fftconv (default: all)")
    plots.add_argument(ap)
    args = ap.parse_args(argv)
    args.plot = plots.resolve(args.plot, "bench_lti", args.device)
    args.cases = [c for c in args.cases.split(",") if c]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.T = [int(x) for x in str(args.T).split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = run(args)
    print(table(rows, args))
    time_p, mem_p = plots.Panel("time", "ms"), plots.Panel("peak memory", "peak MB")
    for T, name, ms, mb, _ in rows:
        time_p.add(name, T, ms)
        mem_p.add(name, T, mb)
    plots.save(args.plot, [time_p, mem_p], f"mixir LTI kernels on {args.device}, N={args.N} H={args.H} B={args.B}")


if __name__ == "__main__":
    main()
