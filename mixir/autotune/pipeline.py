"""The tuning pipeline behind ``mixir tune``: solve → rank → AOT-validate → (time) → database."""
from __future__ import annotations

import dataclasses
import math
import warnings

from ..errors import TuningError
from . import cost, db, hardware, spaces

STANDARD_SHAPES = ({"B": 8, "T": 2048, "H": 16}, {"B": 4, "T": 8192, "H": 16},
                   {"B": 1, "T": 16, "H": 16})
DEFAULT_HEAD = 128


@dataclasses.dataclass
class Candidate:
    config: dict
    predicted_s: float
    pred_smem: int
    pred_regs: int
    compiled: object = None        # aot_check.CompiledConfig
    measured_s: float | None = None
    dropped: str = ""


@dataclasses.dataclass
class StrategyResult:
    strategy: str
    shape: spaces.Shape
    n_feasible: int
    candidates: list
    best: Candidate | None
    source: str
    db_path: str | None = None

    @property
    def aot_share(self):
        comp = [c for c in self.candidates if c.compiled is not None]
        if not comp:
            return None
        return sum(1 for c in comp if c.compiled.ok) / len(comp)


@dataclasses.dataclass
class TuneResult:
    mixer: str
    gpu: hardware.GPU
    results: list

    def table(self) -> str:
        lines = []
        for r in self.results:
            s = r.shape
            lines.append(f"== {self.mixer} {r.strategy} on {self.gpu.name} ({self.gpu.arch}) "
                         f"B={s.B} T={s.T} H={s.H} K={s.K} V={s.V} {s.dtype}: "
                         f"{r.n_feasible} feasible configs")
            head = ("#", "config", "pred. ms", "pred. smem KiB", "AOT smem KiB", "AOT regs",
                    "spills B", "measured ms", "status")
            rows = [head]
            for i, c in enumerate(r.candidates):
                cc = c.compiled
                rows.append((str(i + 1), " ".join(f"{k}={v}" for k, v in c.config.items()),
                             f"{c.predicted_s * 1e3:.3f}", f"{c.pred_smem / 1024:.1f}",
                             f"{cc.max_shared / 1024:.1f}" if cc else "-",
                             str(cc.max_registers) if cc else "-", str(cc.spills) if cc else "-",
                             f"{c.measured_s * 1e3:.3f}" if c.measured_s not in (None, math.inf) else
                             ("fail" if c.measured_s == math.inf else "-"),
                             ("BEST" if r.best is c else "") + (c.dropped and f"dropped: {c.dropped}")
                             or ("ok" if cc is not None and cc.ok else "")))
            w = [max(len(x[j]) for x in rows) for j in range(len(head))]
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[:1]]
            lines.append("  ".join("-" * n for n in w))
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[1:]]
            if r.aot_share is not None:
                lines.append(f"predicted-feasible configs that compile without spills: "
                             f"{r.aot_share:.0%}")
            if r.best is not None:
                lines.append(f"chosen ({r.source}): {r.best.config}"
                             + (f"  -> {r.db_path}" if r.db_path else ""))
            lines.append("")
        return "\n".join(lines)


def form_sizes(mixer, K=DEFAULT_HEAD, V=DEFAULT_HEAD):
    """(K, V) of the mixer's main gated-linear form for user-level head sizes K, V."""
    from ..library import MIXERS
    from ..lowering.analysis import analyse
    plan = analyse(mixer)
    entry = MIXERS.get(mixer.name)
    if entry is not None and entry.mixer is mixer:
        sizes = entry.sizes(K, V)
    else:
        key_dims = {f.k_dim for _, f in list(plan.aux) + [(None, plan.main)] if f.k_dim}
        sizes = {d: (K if d in key_dims else V) for d in mixer.feature_dims()}
    f = plan.main
    return (sizes[f.k_dim] if f.k_dim else 1), (sizes[f.v_dim] if f.v_dim else 1), plan.strategies


def diverse(ranked, k, skip=()):
    """The first k of ``ranked`` [(config, Cost)] that differ in more than num_stages (configs
    that differ only in stages go to the end), skipping configs in ``skip``."""
    seen, first, rest = set(), [], []
    for cfg, c in ranked:
        if tuple(cfg.items()) in skip:
            continue
        sig = tuple((n, v) for n, v in cfg.items() if n != "num_stages")
        (rest if sig in seen else first).append((cfg, c))
        seen.add(sig)
    return (first + rest)[:k]


def feasible(space, shape, gpu) -> list:
    from . import solver
    if solver.available():
        return solver.enumerate_feasible(space, shape, gpu)
    warnings.warn("ortools is not installed: enumerating the tuning space by brute force")
    out = spaces.feasible_bruteforce(space, shape, gpu)
    if not out:
        raise TuningError(f"no feasible config for {space.name} on {gpu.name} (install ortools "
                          f"for an explanation)")
    return out


def tune(mixer, gpu="h100", *, B=8, T=4096, H=16, K=DEFAULT_HEAD, V=DEFAULT_HEAD, dtype="bf16",
         strategies=None, top_k=4, aot=True, timed=False, write=True, directory=None,
         workers=None, progress=None) -> TuneResult:
    """Tune ``mixer`` for one problem shape on ``gpu``; returns a ``TuneResult`` (``.table()``)."""
    say = progress or (lambda msg: None)
    gpu = hardware.get(gpu)
    dtype = db.dtype_name(dtype)
    fK, fV, avail = form_sizes(mixer, K, V)
    strategies = [s for s in (strategies or avail) if s in avail]
    results = []
    for strategy in strategies:
        sp_ = spaces.space(strategy)
        shape = spaces.Shape(B, T, H, fK, fV, dtype)
        say(f"[{strategy}] solving {sp_.name} for {gpu.name}")
        feas = feasible(sp_, shape, gpu)
        ranked = cost.rank(sp_, shape, gpu, feas)
        say(f"[{strategy}] {len(feas)} feasible configs; best predicted {ranked[0][1].time_s * 1e3:.3f} ms")
        cands = []
        for cfg, c in diverse(ranked, top_k):
            res = spaces.resources(sp_, shape, cfg)
            cands.append(Candidate(sp_.to_config(cfg, shape), c.time_s, res["smem"], res["regs"]))
        source = "model"
        survivors = list(cands)
        if aot:
            from . import aot_check
            rounds, start = 0, top_k
            while True:
                todo = [c for c in cands if c.compiled is None]
                say(f"[{strategy}] AOT-compiling {len(todo)} configs for {gpu.arch}")
                comp = aot_check.compile_configs(mixer, strategy, [c.config for c in todo], gpu.arch,
                                                 dtype=dtype, K=fK, V=fV, workers=workers,
                                                 progress=lambda m: say(f"[{strategy}]   {m}"))
                for c, cc in zip(todo, comp):
                    c.compiled = cc
                    if not cc.ok:
                        c.dropped = cc.reason()
                    elif cc.max_shared > gpu.smem_block:
                        c.dropped = f"shared memory {cc.max_shared} B > {gpu.smem_block} B"
                survivors = [c for c in cands if not c.dropped]
                rounds += 1
                if survivors or rounds >= 3 or start >= len(ranked):
                    break
                tried = {tuple(c.config.items()) for c in cands}
                more = diverse(ranked, top_k, skip=tried)
                start += top_k
                for cfg, c in more:
                    res = spaces.resources(sp_, shape, cfg)
                    cands.append(Candidate(sp_.to_config(cfg, shape), c.time_s, res["smem"], res["regs"]))
            source = "aot"
        if timed and survivors:
            import torch
            if torch.cuda.is_available():
                from .timing import time_configs
                ts = time_configs(mixer, strategy, [c.config for c in survivors], B=B, T=T, H=H,
                                  K=K, V=V, dtype=dtype, l2_bytes=gpu.l2_bytes, progress=say)
                for c, t in zip(survivors, ts):
                    c.measured_s = t
                good = [c for c in survivors if c.measured_s is not None and math.isfinite(c.measured_s)]
                if good:
                    survivors = sorted(good, key=lambda c: c.measured_s)
                    source = "timed"
            else:
                say(f"[{strategy}] --time: no CUDA device here; keeping the model's ranking")
        best = survivors[0] if survivors else None
        r = StrategyResult(strategy, shape, len(feas), cands, best, source)
        if best is not None and write:
            cc = best.compiled
            compiled = None if cc is None else {"max_shared": cc.max_shared,
                                                "max_registers": cc.max_registers, "spills": cc.spills}
            r.db_path = db.record(mixer.fingerprint, gpu, dtype, B, T, H, fK, fV, strategy,
                                  best.config, source=source, predicted_s=best.predicted_s,
                                  measured_s=best.measured_s, compiled=compiled, directory=directory)
        results.append(r)
    return TuneResult(mixer.name, gpu, results)


__all__ = ["tune", "TuneResult", "StrategyResult", "Candidate", "STANDARD_SHAPES", "form_sizes"]
