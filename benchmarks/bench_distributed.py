"""Context parallelism on gloo/CPU (docs/distributed.md): for W = 1, 2, 4 ranks and growing T,
the bytes each rank sends (must stay flat in T) and the time of the combine step (lengths
exchange, the decay pieces' cumulative sums, the pairs' all-gather, the prefix fold, the output
correction: everything of the call but the local kernel run, timed inside the same call) as a
ratio of the rank's local kernel time. A gated-linear mixer (the local run is
``CompiledMixer._run``). Prints a table; writes a PNG when matplotlib is installed.

    python benchmarks/bench_distributed.py [--mixer simple_gla] [--T 64 128 256] [--png out.png]

Kernels run through Triton's interpreter on CPU here, so the local kernel time is the
interpreter's (orders of magnitude above a GPU's) and the ratio is a lower bound of the combine's
share on a GPU; the bytes are exact.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

H, K, V = 2, 16, 16


def _timed(fn, spent):
    run = type(fn)._run

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = run(fn, *a, **k)
        spent[0] += time.perf_counter() - t0
        return out
    return timed


def _run_rank(rank, world, init_file, out_file, mixer, Ts):
    import torch.distributed as dist

    import mixir
    from mixir.distributed import even_lengths, record_traffic
    from mixir.library import MIXERS
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    e = MIXERS[mixer]
    fn = mixir.compile(e.mixer)
    rows = []
    for T in Ts:
        arrays = [torch.tensor(a, dtype=torch.float32) for a in e.make_inputs(np.random.default_rng(0), 1, T, H, K, V)]
        n = even_lengths(T, world)
        a = sum(n[:rank])
        mine = [x[:, a:a + n[rank]] if s.kind == "input" else x for s, x in zip(e.mixer.inputs, arrays)]
        group = dist.group.WORLD if world > 1 else None
        fn(*mine, output_final_state=True, group=group)         # warm (kernel cache)
        spent = [0.0]
        fn._run = _timed(fn, spent)      # the local kernel's share of the call, timed inside it
        dist.barrier()
        with record_traffic() as log:
            t0 = time.perf_counter()
            fn(*mine, output_final_state=True, group=group)
            total = time.perf_counter() - t0
        del fn._run
        local = spent[0]
        sent = sum(b for _, b in log)
        rows.append((T, world, n[rank], sent, local, max(total - local, 0.0)))
    if rank == world - 1:       # the last rank: it runs the correction (the worst case)
        torch.save(rows, out_file)
    dist.destroy_process_group()


def measure(mixer, Ts, worlds):
    import torch.multiprocessing as mp
    out = []
    for W in worlds:
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "rows.pt")
            mp.spawn(_run_rank, args=(W, os.path.join(d, "rdv"), f, mixer, Ts), nprocs=W, join=True)
            out += torch.load(f)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixer", default="simple_gla")
    ap.add_argument("--T", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--W", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--png", default="benchmarks/bench_distributed.png")
    args = ap.parse_args(argv)
    rows = measure(args.mixer, args.T, args.W)
    print(f"{args.mixer}, H = {H}, K = {K}, V = {V}, fp32, gloo on CPU (interpreted kernels); "
          "last rank of each W")
    print(f"{'W':>3} {'T':>6} {'T/rank':>7} {'bytes sent':>11} {'local s':>9} {'combine s':>10} {'ratio':>7}")
    for T, W, n, sent, local, comb in rows:
        print(f"{W:>3} {T:>6} {n:>7} {sent:>11} {local:>9.3f} {comb:>10.3f} {comb / local:>7.3f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return rows
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for W in args.W:
        r = [x for x in rows if x[1] == W]
        ax[0].plot([x[0] for x in r], [x[3] for x in r], marker="o", label=f"W = {W}")
        ax[1].plot([x[0] for x in r], [x[5] / x[4] for x in r], marker="o", label=f"W = {W}")
    ax[0].set(xlabel="T (global)", ylabel="bytes sent per rank", xscale="log")
    ax[1].set(xlabel="T (global)", ylabel="combine time / local kernel time", xscale="log")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
