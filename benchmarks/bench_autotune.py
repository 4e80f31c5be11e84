"""Solver time and number of feasible configs per template and GPU, and the resource model's
accuracy against the compiler (CPU only; the AOT step needs Triton's ptxas, no GPU).

    python benchmarks/bench_autotune.py [--shape B,T,H,K,V] [--dtype bf16]
                                        [--aot-mixers gla,hgrn] [--aot-gpus h100] [--aot-k 4]

The accuracy part runs the tuner's AOT loop (``mixir.tuning.tune``, nothing written) per mixer
and GPU and prints predicted vs compiled shared memory and registers per validated config, the
share of predicted-feasible configs that compile without spills, and the mismatches fed back as
constraints. ``--aot-k 0`` skips it.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixir.autotune import cost, hardware, solver, space as spaces  # noqa: E402
from mixir.lowering.gated_linear import space as gla_space


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,4096,16,128,128")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--aot-mixers", default="gla", help="library mixers for the accuracy report")
    p.add_argument("--aot-gpus", default="h100", help="GPUs (their architectures) for the accuracy report")
    p.add_argument("--aot-k", type=int, default=4, help="candidates compiled per round (0: skip)")
    a = p.parse_args(argv)
    B, T, H, K, V = map(int, a.shape.split(","))
    shape = spaces.Shape(B, T, H, K, V, a.dtype)
    rows = [("template", "GPU", "space", "feasible", "solver s", "brute s", "rank s", "best predicted config", "pred ms")]
    for sp_ in gla_space.SPACES.values():
        size = 1
        for d in sp_.domains(shape).values():
            size *= len(d)
        for g in hardware.GPUS.values():
            t0 = time.perf_counter()
            feas = solver.enumerate_feasible(sp_, shape, g, explain=False)
            t1 = time.perf_counter()
            brute = spaces.feasible_bruteforce(sp_, shape, g)
            t2 = time.perf_counter()
            ranked = cost.rank(sp_, shape, g, feas) if feas else []
            t3 = time.perf_counter()
            assert len(brute) == len(feas)
            best = " ".join(f"{k}={v}" for k, v in ranked[0][0].items()) if ranked else "-"
            rows.append((sp_.name, g.name, str(size), str(len(feas)), f"{t1 - t0:.2f}", f"{t2 - t1:.2f}",
                         f"{t3 - t2:.2f}", best, f"{ranked[0][1].time_s * 1e3:.3f}" if ranked else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"shape B={B} T={T} H={H} K={K} V={V} {a.dtype}")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(x) for c, x in zip(r, w)))
        if i == 0:
            print("  ".join("-" * x for x in w))
    if a.aot_k > 0:
        accuracy(a, B, T, H, K, V)


def accuracy(a, B, T, H, K, V):
    from mixir.autotune.report import accuracy_text
    from mixir.tuning import tune
    from mixir.library import MIXERS
    results = []
    for g in a.aot_gpus.split(","):
        for name in a.aot_mixers.split(","):
            t0 = time.perf_counter()
            res = tune(MIXERS[name].mixer, gpu=g, B=B, T=T, H=H, K=K, V=V, dtype=a.dtype,
                       top_k=a.aot_k, write=False)
            print()
            print(res.table())
            print(f"({name} on {res.gpu.name}: {time.perf_counter() - t0:.1f} s)")
            results.append(res)
    print(accuracy_text(results))


if __name__ == "__main__":
    main()
