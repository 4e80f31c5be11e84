"""The schedule of GPU timing of candidate configs (``mixir tune --time``). What runs a compiled
mixer on CUDA is ``mixir.lowering.common.candidates.time_configs`` (a family's ``TuningTarget.time``);
it raises ``TuningError`` without a CUDA device and hands its runs to ``measure`` here.

NOTE: reviewed and unit-tested (the schedule, with a fake timer) without a GPU; it has not run on
one yet.

Per candidate: the compiled mixer's forward + backward on random CUDA inputs of the tuned shape.

1. **Check first**: the candidate's forward output is compared with a reference strategy's
   (the family's: recurrent, or alternating for RNNs; relative RMS error <= ``tol``); a candidate that fails, or raises, gets ``inf`` and is never
   timed.
2. **Warm-up**: ``warmup`` untimed runs per candidate (the first builds the kernels), then a
   device synchronise.
3. **Rounds**: ``reps`` rounds; each round runs every candidate once, **interleaved**, in an order
   rotated by one per round (no candidate always runs first, right after a synchronise). Each
   run is preceded by an **L2 flush** (writing a 256 MiB buffer, at least twice the L2) and timed
   with a pair of **CUDA events** recorded on the current stream around the run (the flush is
   outside them); the end event is synchronised before reading the time.
4. **Median** of each candidate's times.
5. **Close contenders**: the candidates whose median is within ``close`` (5 %) of the best get
   ``extra_reps`` more interleaved rounds among themselves, and their medians are taken over all
   their samples.

The schedule (3-5) is ``measure``, which takes the per-run timer as an argument: the tests drive it
with a fake timer on the CPU.
"""
from __future__ import annotations

import math
import statistics

FLUSH_BYTES = 256 * 2**20


def measure(runs, timer, *, warmup=3, reps=10, close=0.05, extra_reps=10, sync=None,
            progress=None) -> list:
    """Median seconds per run (``inf`` for a ``None`` run or one that raises).

    ``runs``: callables (or None: skipped); ``timer(run) -> seconds`` times one run (flush
    included); ``sync()`` is called after the warm-up."""
    n = len(runs)
    live = [i for i, r in enumerate(runs) if r is not None]
    failed = set()

    def attempt(i, timed):
        if i in failed:
            return
        try:
            if timed:
                samples[i].append(float(timer(runs[i])))
            else:
                runs[i]()
        except Exception as e:       # a candidate that fails at run time is out, not the tuning
            failed.add(i)
            if progress:
                progress(f"candidate {i + 1} failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")

    samples = [[] for _ in range(n)]
    for i in live:
        for _ in range(warmup):
            attempt(i, False)
    if sync:
        sync()

    def rounds(idx, count, label):
        for r in range(count):
            k = r % len(idx) if idx else 0
            for i in idx[k:] + idx[:k]:          # rotated: every candidate gets every position
                attempt(i, True)
            if progress:
                progress(f"{label} round {r + 1}/{count}")

    rounds(live, reps, "timing")

    def medians():
        return [statistics.median(samples[i]) if samples[i] and i not in failed else math.inf
                for i in range(n)]
    med = medians()
    best = min(med, default=math.inf)
    if math.isfinite(best) and extra_reps > 0:
        contenders = [i for i in live if med[i] <= best * (1 + close) and i not in failed]
        if len(contenders) > 1:
            rounds(contenders, extra_reps, f"re-timing {len(contenders)} close contenders:")
            med = medians()
    return med


def rel_rms(o, ref) -> float:
    o, ref = o.float(), ref.float()
    return float(((o - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-30)).sqrt())


__all__ = ["measure", "rel_rms", "FLUSH_BYTES"]
