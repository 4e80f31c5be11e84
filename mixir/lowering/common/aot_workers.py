"""Worker processes for ``aot.build_all``: compile candidates with a hard per-candidate timeout.

Each worker is a fresh Python process in its own process group (``_Worker``), fed tasks as JSON
lines on stdin and answering JSON lines on its original stdout (``_worker_main``); it re-imports each
kernel's function by module + qualname, else by source file (``_resolve_fn``, from the source text:
no bytecode), and compiles it with ``aot._build_fn``. ``_build_in_workers`` keeps every worker busy,
kills a worker (with the ptxas it started) whose candidate exceeds the timeout, and replaces one
that crashes, so that a hanging or crashing compiler costs one candidate and not the run.

Workers start isolated (``python -I``: no current directory, no ``PYTHON*`` variables, no user
site) with the parent's ``sys.path`` given explicitly, and die with their parent: on Linux
``PR_SET_PDEATHSIG`` (``SIGKILL``) is set in the worker and in every process it starts (ptxas), and
a worker whose parent is already gone exits; elsewhere a watchdog thread polls the parent.
A worker killed from outside (``SIGKILL``, ``SIGTERM``, ...: not a crash of the compiler) is a
``WorkerDied`` error, which the tuner does not learn from.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import inspect
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ...errors import MixirError
from .kernel_cache import exec_source


class WorkerDied(MixirError):
    """A compile worker process was killed from outside (not a failure of the candidate)."""


#: signals that mean the compiler itself crashed (the candidate's fault, not the worker's)
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def _kernel_spec(record) -> dict:
    fn = record.kernel.fn
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        file = None
    return {"module": fn.__module__, "qualname": fn.__qualname__, "file": file and os.path.abspath(file),
            "name": record.kernel.name, "signature": tuple(record.signature),
            "constexprs": tuple(record.constexprs), "num_warps": record.num_warps,
            "num_stages": record.num_stages}


def _encode(obj) -> bytes:
    """One JSON line (tasks and results are plain data: names, numbers, lists)."""
    try:
        return json.dumps(obj).encode() + b"\n"
    except TypeError as e:
        raise MixirError(f"a compile task for a worker process must be plain data: {e}") from None


def _pairs(items) -> tuple:
    """JSON turns ((name, value), ...) into lists; give the tuples back."""
    return tuple(tuple(x) for x in items)


def _resources(d: dict):
    from .ptxas import KernelResources
    return KernelResources(**{**d, "constexprs": _pairs(d["constexprs"])})


def _unwrap(obj):
    """A plain function from a module attribute: Kernel (.fn), JITFunction (.fn) or function."""
    for _ in range(3):
        if inspect.isfunction(obj):
            return obj
        obj = getattr(obj, "fn", None)
    return obj if inspect.isfunction(obj) else None


def _lookup(module, qualname):
    obj = module
    for part in qualname.split("."):
        if part == "<locals>":
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return _unwrap(obj)


def _same_file(fn, file) -> bool:
    try:
        return file is None or os.path.samefile(inspect.getsourcefile(fn), file)
    except (TypeError, OSError):
        return False


_file_modules: dict = {}


def _resolve_fn(spec):
    """Re-import a kernel's function by module + qualname, else by (source file, qualname)."""
    module, qualname, file = spec["module"], spec["qualname"], spec["file"]
    if "<locals>" in qualname:
        raise MixirError(f"kernel {spec['name']}: defined inside a function ({qualname}); a worker "
                         f"process cannot re-import it (define it at module level or use workers=0)")
    if module and module != "__main__":
        try:
            fn = _lookup(importlib.import_module(module), qualname)
            if fn is not None and _same_file(fn, file):
                return fn
        except Exception:
            pass
    if not file or not os.path.isfile(file):
        raise MixirError(f"kernel {spec['name']}: cannot re-import {module}.{qualname} in a worker "
                         f"process (no source file)")
    mod = _file_modules.get(file)
    if mod is None:
        import hashlib
        modname = "_mixir_aot_" + hashlib.sha1(file.encode()).hexdigest()[:16]
        try:
            mod = exec_source(modname, file)        # from the source text, never __pycache__
        except MixirError:
            raise
        except BaseException as e:
            raise MixirError(f"kernel {spec['name']}: importing {file} failed: "
                             f"{type(e).__name__}: {e}") from e
        _file_modules[file] = mod
    fn = _lookup(mod, qualname)
    if fn is None:
        raise MixirError(f"kernel {spec['name']}: {qualname} not found in {file}")
    return fn


def _run_spec(spec, arch, align_pointers, timeout_s):
    import triton
    from .ptxas import _build_fn
    fn = _resolve_fn(spec)
    return _build_fn(triton.jit(fn), spec["name"], _pairs(spec["signature"]), _pairs(spec["constexprs"]),
                     spec["num_warps"], spec["num_stages"], arch, align_pointers=align_pointers,
                     timeout_s=timeout_s)


_PR_SET_PDEATHSIG = 1


def _set_death_signal(parent: int) -> bool:
    """Linux: SIGKILL this process when ``parent`` (the process that started it) ends. False where
    prctl is unavailable. Exits at once when the parent is already gone."""
    ok = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ok = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    if os.getppid() != parent:
        os._exit(1)
    return ok


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the worker processes
    """The worker, and every process it starts (ptxas), dies with ``parent``."""
    if _set_death_signal(parent):
        me, init = os.getpid(), subprocess.Popen.__init__

        def popen_init(self, *args, **kw):
            if len(args) < 7 and kw.get("preexec_fn") is None:
                kw["preexec_fn"] = lambda: _set_death_signal(me)
            init(self, *args, **kw)
        subprocess.Popen.__init__ = popen_init
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        with contextlib.suppress(Exception):
            os.killpg(os.getpgrp(), signal.SIGKILL)      # the worker and its compilers
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _worker_main(parent: int | None = None):  # pragma: no cover - runs in the worker processes
    """Loop: read a task line from stdin, write a result line to the original stdout."""
    if parent is not None:
        _die_with_parent(parent)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                       # anything printed goes to the worker's stderr file
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    while True:
        try:
            line = inp.readline()
        except EOFError:
            return
        if not line:
            return
        task = json.loads(line)
        if task is None:
            return
        index, spec, arch, align_pointers, timeout_s = task
        try:
            result = (index, True, dataclasses.asdict(_run_spec(spec, arch, align_pointers, timeout_s)))
        except BaseException as e:  # report, keep serving
            result = (index, False, f"{type(e).__name__}: {e}" if not isinstance(e, MixirError)
                      else str(e))
        out.write(_encode(result))
        out.flush()


# ``python -I``: sys.path is exactly the parent's (argv[1]), never the worker's current directory
_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from mixir.lowering.common.aot_workers import _worker_main; _worker_main(int(sys.argv[2]))")


def _worker_command() -> list:
    paths = [p for p in sys.path if isinstance(p, str)]
    paths = list(dict.fromkeys(os.path.abspath(p) if p else os.getcwd() for p in paths))
    return [sys.executable, "-I", "-c", _BOOT, json.dumps(paths), str(os.getpid())]


class _Worker:
    def __init__(self):
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(_worker_command(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errfile,
                                     start_new_session=True)
        self.task = None
        self.deadline = None

    def send(self, task, timeout_s):
        self.task = task
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.proc.stdin.write(_encode(task))
        self.proc.stdin.flush()

    def stderr_tail(self, n=15) -> str:
        try:
            self.errfile.seek(0)
            text = self.errfile.read().decode(errors="replace")
        except Exception:
            return ""
        return "\n    ".join(text.splitlines()[-n:])

    def kill(self):
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                os.killpg(self.proc.pid, signal.SIGKILL)   # the worker and any ptxas it started
            with contextlib.suppress(Exception):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        self._close()

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.kill()
        self._close()

    def _close(self):
        for f in (self.proc.stdin, self.proc.stdout, self.errfile):
            with contextlib.suppress(Exception):
                f.close()


def _default_workers(n_pairs: int, timeout_s=None) -> int:
    """Worker processes for ``n_pairs`` candidates: one per CPU up to ``n_pairs``; at least one
    whenever a ``timeout_s`` is set (only a worker process can be stopped at its time limit)."""
    cpus = os.cpu_count() or 1
    if timeout_s is not None:
        return max(1, min(n_pairs, cpus))
    # spawning a worker and importing triton costs ~2 s: only worth it for several candidates
    if n_pairs < 4 or cpus < 2:
        return 0
    return min(n_pairs, cpus)


def _death(w, label) -> MixirError:
    """The error of a worker that died while compiling: ``WorkerDied`` when it was killed from
    outside, a plain ``MixirError`` (a compile failure) when the compiler crashed or exited."""
    code = w.proc.returncode
    how, outside = f"exit status {code}", False
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-code).name}"
        outside = -code not in _CRASH_SIGNALS
    tail = w.stderr_tail()
    msg = (f"{label}: worker died ({how}) while compiling"
           + ("; killed from outside, not a failure of this candidate" if outside else "")
           + (f"; its stderr ends:\n    {tail}" if tail.strip() else ""))
    return WorkerDied(msg) if outside else MixirError(msg)


def _build_in_workers(pairs, n_workers, timeout_s, errors, align_pointers, progress=None):
    specs = [(i, _kernel_spec(rec), arch, align_pointers, timeout_s) for i, (rec, arch) in enumerate(pairs)]
    pending = list(reversed(specs))
    results: list = [None] * len(specs)
    done = 0
    pool: list[_Worker] = []
    sel = selectors.DefaultSelector()
    say = progress or (lambda msg: None)

    def label(task):
        return f"kernel {task[1]['name']} for {task[2]}"

    def finish(task, result, what):
        nonlocal done
        results[task[0]] = result
        done += 1
        say(f"[{done}/{len(specs)}] {label(task)}: {what}")

    def retire(w):
        with contextlib.suppress(Exception):
            sel.unregister(w.proc.stdout)
        pool.remove(w)

    try:
        while done < len(specs):
            # keep every worker busy
            while pending and len(pool) < n_workers:
                w = _Worker()
                pool.append(w)
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            for w in pool:
                if w.task is None and pending:
                    task = pending.pop()
                    try:
                        w.send(task, timeout_s)
                    except OSError:             # the worker died before reading its task
                        pass                    # its stdout reports EOF below: a crash
            busy = [w for w in pool if w.task is not None]
            now = time.monotonic()
            deadlines = [w.deadline for w in busy if w.deadline is not None]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            for key, _ in sel.select(timeout=wait if wait is None else min(wait, 60.0)):
                w = key.data
                try:
                    index, ok, payload = json.loads(w.proc.stdout.readline())
                except Exception:
                    task = w.task
                    w.kill()
                    err = _death(w, label(task))
                    retire(w)
                    finish(task, err, "worker died" if isinstance(err, WorkerDied) else "failed")
                    continue
                task, w.task, w.deadline = w.task, None, None
                finish(task, _resources(payload) if ok else MixirError(payload),
                       "ok" if ok else "failed")
            now = time.monotonic()
            for w in list(pool):
                if w.task is not None and w.deadline is not None and now >= w.deadline:
                    task = w.task
                    w.kill()
                    retire(w)
                    finish(task, MixirError(f"{label(task)}: timed out after {timeout_s} s "
                                            f"(worker and its compiler killed)"), "timed out")
            if errors == "raise":
                first = next((r for r in results if isinstance(r, BaseException)), None)
                if first is not None:
                    raise first
    finally:
        for w in list(pool):
            if w.task is not None:
                w.kill()
            else:
                w.close()
        sel.close()
    return results
