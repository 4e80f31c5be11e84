"""Ahead-of-time builds: compile recorded launches for a GPU architecture and read real resources.

No GPU is needed. ``build`` compiles one ``LaunchRecord`` (see ``launch.record_launches``) with
``triton.compile`` for a ``GPUTarget`` and reads what the hardware would have to provide:

* ``registers``: 32-bit registers per thread, from ``cuobjdump --dump-resource-usage`` of the
  compiled cubin (falls back to the ``ptxas -v`` log when cuobjdump is unavailable);
* ``spills``: bytes per thread, ``spill stores + spill loads`` as reported by ``ptxas -v``
  (static instruction bytes, not dynamic traffic); also kept separately;
* ``shared_bytes``: dynamic shared memory Triton requests at launch (``compiled.metadata.shared``),
  bytes per program (CTA); ``static_shared_bytes`` is the static shared memory in the cubin
  (sm_90 ptxas reserves 1 KiB there);
* ``local_bytes``: per-thread local memory, stack frame + other local (spill slots live in the
  stack frame), bytes.

The ``ptxas -v`` log is captured from Triton's own ptxas run (``TRITON_DUMP_PTXAS_LOG``); when the
kernel comes from Triton's cache, the numbers come from a side file stored next to the cached
kernel, or, the first time, from re-running ``ptxas -v`` on the cached PTX with Triton's flags.

``build_all`` compiles many (record, arch) pairs, in worker processes with a per-candidate timeout
so that a hanging or crashing compiler costs one candidate and not the run (the worker processes
are in ``aot_workers``: isolated from the current directory, and they die with their parent).

Compile artefacts go to Triton's cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

from ...errors import InputError, MixirError
from .aot_workers import WorkerDied, _build_in_workers, _default_workers
from .ptxas import (ARCHS, MAX_REGISTERS_PER_THREAD, MAX_SHARED_BYTES, REGISTERS_PER_SM,  # noqa: F401
                    KernelResources, _build_fn, _tool_path, _triton_bin, build, parse_arch,
                    parse_ptxas_log, parse_resource_usage)

if TYPE_CHECKING:  # pragma: no cover
    from .launch import LaunchRecord

# ----------------------------------------------------------------------------------------------
# many candidates (the worker processes are in aot_workers)

def build_all(records: Iterable["LaunchRecord"], archs: Sequence[str] | str, *,
              workers: int | None = None, timeout_s: float | None = 300, errors: str = "raise",
              align_pointers: bool = True, progress=None) -> list:
    """Build every (record, arch) pair; results in order (for each record, for each arch).

    ``workers``: n > 0 uses n worker processes, each in its own process group, killed (with its
    ptxas) when a candidate exceeds ``timeout_s`` (seconds; None: no limit) or replaced when it
    crashes or is killed (a ``WorkerDied`` error: not the candidate's fault). ``None`` picks one
    worker per CPU (at most one per pair; with ``timeout_s=None`` and fewer than 4 pairs: in this
    process). 0 compiles in this process, where ``timeout_s`` bounds only the helper tools, not
    Triton's compile. ``errors="raise"``: the first failure (``MixirError``) is raised once the
    workers are stopped; ``errors="collect"``: a failed candidate's entry is the ``MixirError``
    instance instead of ``KernelResources``. ``progress(msg)``: one line per finished candidate.
    """
    if errors not in ("raise", "collect"):
        raise InputError(f"errors must be 'raise' or 'collect', got {errors!r}")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or not timeout_s > 0):
        raise InputError(f"timeout_s must be a number of seconds > 0 or None, got {timeout_s!r}")
    if isinstance(archs, (str, int)):
        archs = [archs]
    archs = [parse_arch(a) for a in archs]
    records = list(records.values() if isinstance(records, dict) else records)
    pairs = [(r, a) for r in records for a in archs]
    if workers is None:
        workers = _default_workers(len(pairs), timeout_s)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an int >= 0 or None, got {workers!r}")
    if not pairs:
        return []
    if workers == 0:
        results = []
        for i, (rec, arch) in enumerate(pairs):
            try:
                results.append(build(rec, arch, align_pointers=align_pointers, timeout_s=timeout_s))
            except MixirError as e:
                if errors == "raise":
                    raise
                results.append(e)
            if progress is not None:
                ok = not isinstance(results[-1], MixirError)
                progress(f"[{i + 1}/{len(pairs)}] kernel {rec.kernel.name} for {arch}: "
                         f"{'ok' if ok else 'failed'}")
        return results
    return _build_in_workers(pairs, min(workers, len(pairs)), timeout_s, errors, align_pointers,
                             progress)


# ----------------------------------------------------------------------------------------------

def format_table(resources) -> str:
    """Plain-text table; entries that are exceptions (``errors="collect"``) show their first line."""
    head = ("kernel", "arch", "warps", "stages", "regs", "spills B", "shared KiB", "local B")
    rows, errors = [], []
    for r in resources:
        if isinstance(r, KernelResources):
            shared = f"{r.total_shared_bytes / 1024:.1f}"
            if r.total_shared_bytes > r.shared_limit:
                shared += "!"          # above the architecture's per-CTA limit
            rows.append((r.kernel, r.arch, str(r.num_warps), str(r.num_stages), str(r.registers),
                         str(r.spills), shared, str(r.local_bytes)))
        else:
            rows.append(None)
            errors.append((str(r).splitlines() or [type(r).__name__])[0])
    widths = [max([len(h)] + [len(row[i]) for row in rows if row is not None])
              for i, h in enumerate(head)]

    def fmt(row):
        cells = [c.ljust(w) for c, w in zip(row[:2], widths[:2])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
        return "  ".join(cells).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    err = iter(errors)
    lines += [fmt(row) if row is not None else f"error: {next(err)}" for row in rows]
    return "\n".join(lines)


__all__ = ["ARCHS", "MAX_SHARED_BYTES", "KernelResources", "WorkerDied", "build", "build_all", "format_table",
           "parse_arch", "parse_ptxas_log", "parse_resource_usage"]
