"""Pictures of a tuning run (``mixir tune --plot``), from plain data (no tuning objects needed):

- the feasible space the model searched: the predicted time of every feasible config, ranked,
  with the candidates compiled ahead of time marked (kept, dropped, chosen);
- when the candidates were timed, their predicted cost against the measured time (the model is
  good where the points lie along a line: only the ranking matters to the tuner).

matplotlib is optional (``pip install 'mixir[plot]'``): ``require_matplotlib`` raises a
``MixirError`` saying so when it is missing.
"""
from __future__ import annotations

import bisect
import dataclasses
import math

from ..errors import MixirError


def require_matplotlib(what: str = "plotting"):
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or ``MixirError`` naming
    ``what`` needed it and how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MixirError(f"{what} needs matplotlib, which is not installed here ({e}); install it "
                         f"with pip install 'mixir[plot]' (or pip install matplotlib)") from None
    return plt


@dataclasses.dataclass
class Panel:
    """One strategy of one tuning run: ``space`` the predicted seconds of every feasible config
    (any order); ``candidates`` dicts with ``predicted_s``, ``measured_s`` (None: not timed; inf:
    failed) and ``status`` ("best", "ok", "dropped" or "")."""
    title: str
    space: list
    candidates: list


def panel_from_result(title: str, space_s: list, result) -> Panel:
    """A ``Panel`` of a ``results.StrategyResult`` and the predicted seconds of its feasible space."""
    cands = []
    for c in result.candidates:
        status = "best" if result.best is c else ("dropped" if c.dropped else ("ok" if c.ok else ""))
        cands.append({"predicted_s": c.predicted_s, "measured_s": c.measured_s, "status": status})
    return Panel(title, list(space_s), cands)


# drawn in this order: the chosen config last, on top
_STYLE = {"": ("o", "tab:gray", "candidates (not compiled)"),
          "dropped": ("x", "tab:red", "compiled, dropped"),
          "ok": ("o", "tab:blue", "compiled, kept"), "best": ("*", "tab:green", "chosen")}


def _space_axis(ax, p: Panel) -> None:
    space = sorted(p.space)
    ax.plot(range(1, len(space) + 1), [s * 1e3 for s in space], color="0.6", lw=1,
            label=f"feasible configs ({len(space)})")
    for status, (marker, color, label) in _STYLE.items():
        pts = [c for c in p.candidates if c["status"] == status]
        if not pts:
            continue
        xs = [min(len(space), bisect.bisect_left(space, c["predicted_s"]) + 1) if space else 1 for c in pts]
        ax.scatter(xs, [c["predicted_s"] * 1e3 for c in pts], marker=marker, color=color,
                   s=90 if status == "best" else 40, zorder=3, label=label)
    ax.set_xlabel("config, ranked by predicted time")
    ax.set_ylabel("predicted time (ms)")
    if space and space[0] > 0:
        ax.set_yscale("log")
    ax.set_title(f"{p.title}: feasible space", fontsize=9)
    ax.legend(fontsize=7)


def _timing_axis(ax, p: Panel) -> None:
    timed = [c for c in p.candidates if c["measured_s"] is not None and math.isfinite(c["measured_s"])]
    if not timed:
        ax.text(0.5, 0.5, "not timed\n(mixir tune --time on a CUDA GPU)", ha="center", va="center",
                transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
        return
    for status, (marker, color, label) in _STYLE.items():
        pts = [c for c in timed if c["status"] == status]
        if pts:
            ax.scatter([c["predicted_s"] * 1e3 for c in pts], [c["measured_s"] * 1e3 for c in pts],
                       marker=marker, color=color, s=40, label=label)
    lo = min(min(c["predicted_s"], c["measured_s"]) for c in timed) * 1e3
    hi = max(max(c["predicted_s"], c["measured_s"]) for c in timed) * 1e3
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--", label="measured = predicted")
    ax.set_xlabel("predicted time (ms)")
    ax.set_ylabel("measured time (ms)")
    ax.set_title(f"{p.title}: model vs measurement", fontsize=9)
    ax.legend(fontsize=7)


def save_tuning_plot(panels: list, path: str, title: str = "") -> str:
    """One row per ``Panel`` (feasible space | predicted vs measured) in a PNG at ``path``."""
    if not panels:
        raise MixirError("nothing to plot: the tuning run has no strategy results")
    plt = require_matplotlib("mixir tune --plot")
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for row, p in zip(axes, panels):
        _space_axis(row[0], p)
        _timing_axis(row[1], p)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["Panel", "panel_from_result", "require_matplotlib", "save_tuning_plot"]
