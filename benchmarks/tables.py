"""The benchmarks' table helpers: a markdown table with aligned columns (``markdown``) and the
slope of a series on log-log axes (``loglog_slope``: about 1 for a cost linear in T) and every
measured number as CSV (``write_csv``), shared by ``bench_gated_linear.py``, ``bench_delta.py``
and ``bench_lti.py``."""
from __future__ import annotations

import csv
import math


def markdown(head, body, right=()) -> str:
    """``head`` and the rows of ``body`` as a markdown table, columns padded to their widest cell;
    the column indices in ``right`` are right-aligned (numbers)."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def loglog_slope(points) -> float:
    """The least-squares slope of log(y) against log(x) over ``points`` [(x, y)], leaving out
    points without a positive y; NaN with fewer than two distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in points
           if y is not None and not isinstance(y, str) and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx, my = (sum(p[i] for p in pts) / len(pts) for i in (0, 1))
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else float("nan")


def write_csv(rows, path) -> None:
    """``rows`` (dicts) as CSV at ``path``, one column per key in first-seen order."""
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print(f"# csv written to {path}")
