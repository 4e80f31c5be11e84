"""What a tuning run returns: per strategy the ranked candidates with their predicted and
compiled resources (``Candidate``), the chosen one and the model mismatches (``StrategyResult``),
and per mixer the printable table (``TuneResult.table``, ``mixir tune``'s output)."""
from __future__ import annotations

import dataclasses
import math

from . import hardware, space as spaces


@dataclasses.dataclass
class Candidate:
    config: dict
    predicted_s: float
    pred_smem: int
    pred_regs: int
    compiled: object = None        # lowering.common.candidates.CompiledConfig (AOT build)
    measured_s: float | None = None
    dropped: str = ""
    round: int = 1                 # AOT round that compiled it

    @property
    def ok(self) -> bool:
        return self.compiled is not None and not self.dropped


@dataclasses.dataclass
class StrategyResult:
    strategy: str
    shape: spaces.Shape
    n_feasible: int                # feasible configs of the model (before any AOT feedback)
    candidates: list
    best: Candidate | None
    source: str
    db_path: str | None = None
    n_feasible_after: int | None = None   # after the feedback constraints (None: no feedback)
    discrepancies: list = dataclasses.field(default_factory=list)
    rounds: int = 0
    shared_from: str | None = None        # AOT results of this mixer (identical template kernels)
    db_error: str | None = None           # why the database write failed (the result stands)
    db_kept: str | None = None            # source of a stronger entry the write kept (no --force)

    @property
    def compiled(self) -> list:
        return [c for c in self.candidates if c.compiled is not None]

    @property
    def aot_share(self):
        """Share of the compiled (all predicted-feasible) configs that compile without spills and
        within the limits; None when nothing was compiled."""
        comp = self.compiled
        if not comp:
            return None
        return sum(1 for c in comp if c.ok) / len(comp)


def _cfg_text(cfg) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


@dataclasses.dataclass
class TuneResult:
    mixer: str
    gpu: hardware.GPU
    results: list

    def table(self) -> str:
        lines = []
        for r in self.results:
            s = r.shape
            n = f"{r.n_feasible} feasible configs"
            if r.n_feasible_after is not None and r.n_feasible_after != r.n_feasible:
                n += f", {r.n_feasible_after} after AOT feedback"
            lines.append(f"== {self.mixer} {r.strategy} on {self.gpu.name} ({self.gpu.arch}) "
                         f"B={s.B} T={s.T} H={s.H} K={s.K} V={s.V} {s.dtype}: {n}")
            if r.shared_from:
                lines.append(f"(AOT results of {r.shared_from}: the same template kernels)")
            head = ("#", "config", "pred. ms", "pred. smem KiB", "AOT smem KiB", "pred. regs",
                    "AOT regs", "spills B", "measured ms", "status")
            rows = [head]
            for i, c in enumerate(r.candidates):
                cc = c.compiled
                if c.measured_s is None:
                    meas = "-"
                else:
                    meas = "fail" if c.measured_s == math.inf else f"{c.measured_s * 1e3:.3f}"
                status = ("BEST" if r.best is c else "") + (c.dropped and f"dropped: {c.dropped}") \
                    or ("ok" if cc is not None and cc.ok else "")
                rows.append((str(i + 1), _cfg_text(c.config), f"{c.predicted_s * 1e3:.3f}",
                             f"{c.pred_smem / 1024:.1f}", f"{cc.max_shared / 1024:.1f}" if cc else "-",
                             str(c.pred_regs), str(cc.max_registers) if cc else "-",
                             str(cc.spills) if cc else "-", meas, status))
            w = [max(len(x[j]) for x in rows) for j in range(len(head))]
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[:1]]
            lines.append("  ".join("-" * n for n in w))
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[1:]]
            if r.aot_share is not None:
                comp = r.compiled
                lines.append(f"predicted-feasible configs that compile without spills: "
                             f"{sum(c.ok for c in comp)}/{len(comp)} ({r.aot_share:.0%}) in {r.rounds} "
                             f"AOT round(s)")
            if r.discrepancies:
                lines.append("model mismatches fed back as constraints (then re-solved):")
                for d in r.discrepancies:
                    lines.append(f"  - {d.what()}")
                    lines.append(f"      -> {d.fix()}")
            if r.best is not None:
                lines.append(f"chosen ({r.source}): {r.best.config}"
                             + (f"  -> {r.db_path}" if r.db_path else ""))
                if r.db_kept:
                    lines.append(f"  (the database keeps its {r.db_kept} entry for this key: a "
                                 f"{r.source} result does not replace it without --force)")
                if r.db_error:
                    lines.append(f"  NOT WRITTEN to the database: {r.db_error}")
            else:
                lines.append("chosen: none (no candidate survived the AOT check)")
            lines.append("")
        return "\n".join(lines)



__all__ = ["Candidate", "StrategyResult", "TuneResult"]
