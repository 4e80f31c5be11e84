"""Plain-text tables, progress lines and option checks shared by the subcommands, and the table
of ``mixir list``.

``mixir list`` prints every library name with its family, strategies and class, in 100 columns.

Classifying the library needs torch and every family (seconds); the table depends only on mixir's
own sources, so it is kept in ``$MIXIR_CACHE_DIR/cli/list-<key>.txt`` (default
``~/.cache/mixir``), where ``key`` hashes mixir's version and the path, size and modification time
of every ``.py`` file of the package. A changed source gives a new key, hence a fresh table;
``--refresh`` rebuilds it regardless. With the table cached, ``mixir list`` imports neither torch
nor the library.
"""
from __future__ import annotations

import hashlib
import os
import sys
import textwrap

#: the width ``mixir list`` keeps to
WIDTH = 100


def table(rows) -> str:
    """Left-aligned columns, a rule under the first row; trailing blanks stripped."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def check_limits(args) -> None:
    """--timeout (seconds > 0) and --workers (>= 0) as clear errors naming the option."""
    from ..errors import InputError
    if getattr(args, "timeout", None) is not None and not args.timeout > 0:
        raise InputError(f"--timeout takes the seconds one kernel compile may take (> 0), got {args.timeout}")
    if getattr(args, "workers", None) is not None and args.workers < 0:
        raise InputError(f"--workers takes a number of worker processes >= 0, got {args.workers}")


def _short(kernel: str) -> str:
    """A kernel's name without the ``mixir.lowering.`` every in-tree template shares."""
    return kernel.removeprefix("mixir.lowering.")


def resource_table(resources) -> str:
    """``aot.format_table``'s columns for ``KernelResources`` (errors: their first line), with the
    launch constants that tell apart rows of one kernel that would otherwise read the same, and
    identical rows merged into one with a count."""
    head = ("kernel", "arch", "warps", "stages", "regs", "spills B", "shared KiB", "local B", "variant")
    good = [r for r in resources if not isinstance(r, BaseException)]
    differ = {}                                   # kernel -> constexpr names whose values differ
    for r in good:
        differ.setdefault(r.kernel, {})
        for k, v in r.constexprs:
            differ[r.kernel].setdefault(k, set()).add(repr(v))
    rows, seen = [], {}
    for r in resources:
        if isinstance(r, BaseException):
            rows.append(["error: " + ((str(r).splitlines() or [type(r).__name__])[0])])
            continue
        keys = sorted(k for k, vals in differ[r.kernel].items() if len(vals) > 1)
        cx = dict(r.constexprs)
        variant = " ".join(f"{k}={cx[k]}" for k in keys if k in cx)
        shared = f"{r.total_shared_bytes / 1024:.1f}" + ("!" if r.total_shared_bytes > r.shared_limit else "")
        row = (_short(r.kernel), r.arch, str(r.num_warps), str(r.num_stages), str(r.registers),
               str(r.spills), shared, str(r.local_bytes), variant)
        if row in seen:
            seen[row][1] += 1
            continue
        seen[row] = [row, 1]
        rows.append(seen[row])
    body = []
    for item in rows:
        if len(item) == 1:
            body.append(item[0])
        else:
            row, n = item
            body.append(row[:-1] + ((row[-1] + f" (x{n})").strip(),) if n > 1 else row)
    plain = [b for b in body if not isinstance(b, str)]
    widths = [max([len(h)] + [len(b[i]) for b in plain]) for i, h in enumerate(head)]

    def fmt(row):
        cells = [c.ljust(w) for c, w in zip(row[:2], widths[:2])]
        cells += [c.rjust(w) for c, w in zip(row[2:8], widths[2:8])] + [row[8]]
        return "  ".join(cells).rstrip()
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [b if isinstance(b, str) else fmt(b) for b in body]
    return "\n".join(lines)


def spill_warning(resources) -> str | None:
    """One line naming each kernel build that spills registers (kernel, arch, bytes), or None."""
    spills = [r for r in resources if not isinstance(r, BaseException) and r.spills]
    if not spills:
        return None
    named = sorted({f"{_short(r.kernel)} ({r.arch}, {r.spills} B/thread)" for r in spills})
    return f"warning: {len(spills)} kernel build(s) spill registers: {', '.join(named)}"


# ---- mixir list ---------------------------------------------------------------------------------

_HEAD = ("name", "family", "strategies", "class")


def list_cache_path() -> str:
    from ..version import __version__
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # the mixir package
    h = hashlib.sha256(f"{__version__}\n{sys.version_info[:2]}\n".encode())
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                h.update(f"{os.path.relpath(os.path.join(d, f), root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    cache = os.environ.get("MIXIR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixir")
    return os.path.join(cache, "cli", f"list-{h.hexdigest()[:20]}.txt")


def list_rows() -> list:
    """(name, family, strategies, class) of every name ``names.library_names`` gives, in order."""
    from ..errors import MixirError
    from ..lowering.family import classify
    from .names import WRAPPERS, library_names, resolve
    out = []
    for name in library_names():
        target = resolve(name)
        try:
            fam, plan = classify(target.declaration)
        except MixirError as e:
            out.append((name, "-", "-", "unsupported: " + str(e).split("yet: ")[-1]))
            continue
        what = plan.transition
        if name in WRAPPERS:
            what = f"wrapper over {WRAPPERS[name][0]} (modes of a dense A): {what}"
        out.append((name, fam.name, ", ".join(plan.strategies), what))
    return out


def list_render(body: list, width: int = WIDTH) -> str:
    """The table of ``body`` rows, the last column wrapped so that every line fits ``width``."""
    fixed = [max(len(r[i]) for r in [_HEAD] + body) for i in range(len(_HEAD) - 1)]
    room = max(20, width - sum(fixed) - 2 * (len(_HEAD) - 1))
    lines = []
    for r in body:
        parts = textwrap.wrap(r[-1], room, break_on_hyphens=False) or [""]
        lines.append(tuple(r[:-1]) + (parts[0],))
        lines += [("",) * (len(_HEAD) - 1) + (p,) for p in parts[1:]]
    notes = textwrap.wrap("A mask takes integer arguments after a second colon "
                          "(attention:sliding_window:64); module:function or path/file.py:function "
                          "names a declaration of yours.", width)
    return table([_HEAD] + lines) + "\n\n" + "\n".join(notes)


def list_text(refresh: bool = False) -> str:
    """The table, from the cache when it is there (and ``refresh`` is false)."""
    path = list_cache_path()
    if not refresh and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    out = list_render(list_rows())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(out + "\n")
        os.replace(tmp, path)
    except OSError as e:
        print(f"mixir list: could not cache the table in {path} ({e}); the next call rebuilds it",
              file=sys.stderr)
    return out
