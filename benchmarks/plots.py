"""The benchmarks' one plotting helper: a PNG beside each table, time against T per implementation
(one panel per measured quantity: forward, forward+backward, ...) and peak memory against T.

Every ``bench_*.py`` takes ``--plot PNG`` (``add_argument``): ``auto`` (the default) writes
``<bench>_<device>.png`` into ``$OUT`` (the folder a device run brings back, where
``gpu_session.sh`` writes its logs) or else the current directory; ``none`` writes nothing.
matplotlib is optional (``pip install 'mixir[plot]'``): an explicit PNG without it is an error
before anything is measured; ``auto`` without it prints one line saying no plot was written.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mixir.autotune.plot import require_matplotlib
from mixir.errors import MixirError


@dataclasses.dataclass
class Panel:
    """One axis: ``series`` maps an implementation's label to its points [(T, value)]; points with
    a missing (None) or non-positive value are left out."""
    title: str
    ylabel: str
    series: dict = dataclasses.field(default_factory=dict)

    def add(self, label: str, T, value) -> None:
        if value is not None and not isinstance(value, str) and math.isfinite(value) and value > 0:
            self.series.setdefault(label, []).append((T, float(value)))


def add_argument(parser) -> None:
    parser.add_argument("--plot", metavar="PNG", default="auto",
                        help="PNG of time and peak memory against T per implementation (default "
                             "auto: <bench>_<device>.png in $OUT or the current directory; none: "
                             "no plot; needs matplotlib: pip install 'mixir[plot]')")


def resolve(value, bench: str, device: str) -> str | None:
    """The PNG path for ``--plot value`` (None for ``none``). An explicit path needs matplotlib:
    ``SystemExit`` with the reason before any measurement."""
    if value in (None, "none"):
        return None
    if value == "auto":
        return os.path.join(os.environ.get("OUT") or ".", f"{bench}_{str(device).split(':')[0]}.png")
    try:
        require_matplotlib(f"--plot {value}")
    except MixirError as e:
        raise SystemExit(f"error: {e}") from None
    return value


def save(path, panels, title: str = "", xlabel: str = "T (tokens)", extra=()) -> str | None:
    """Draw ``panels`` side by side, log-log, into ``path``, then one axis per callable of
    ``extra`` (``draw(ax)``: a benchmark's own picture); returns the path, or None (after a line
    saying why) when matplotlib is missing or nothing has points."""
    if path is None:
        return None
    panels = [p for p in panels if p.series]
    if not panels and not extra:
        print(f"# no plot: nothing measured to draw ({path})")
        return None
    try:
        plt = require_matplotlib("the benchmark plot")
    except MixirError as e:
        print(f"# no plot: {e}")
        return None
    labels = list(dict.fromkeys(label for p in panels for label in p.series))   # one style each
    n = len(panels) + len(extra)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.5), squeeze=False)
    for ax, draw in zip(axes[0][len(panels):], extra):
        draw(ax)
    for ax, p in zip(axes[0], panels):
        for label, pts in p.series.items():
            i = labels.index(label)
            pts = sorted(pts)
            ax.plot([t for t, _ in pts], [v for _, v in pts], marker="os^vDx*"[i % 7], ms=4,
                    label=label, color=f"C{i % 10}", ls="-" if i < 10 else "--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"# plot written to {path}")
    return path


def from_rows(rows, *, x: str, label, metrics) -> list:
    """Panels from dict rows: ``label(row)`` names the implementation, ``metrics`` is
    [(key, panel title, y label)]; one panel per metric."""
    panels = [Panel(title, ylabel) for _, title, ylabel in metrics]
    for r in rows:
        for (key, _, _), p in zip(metrics, panels):
            p.add(label(r), r[x], r.get(key))
    return panels
