"""Compile workers: time limits, progress, orphans (issue: hardening, section 3).

- every compile has a time limit: ``build_all`` uses a worker process whenever a timeout is set,
  ``mixir compile`` / ``mixir tune`` take ``--timeout`` and report progress on stderr;
- a worker killed from outside is ``WorkerDied`` ("worker died"), and the tuner learns nothing from
  it (no permanent exclusion of the config); a timeout is still a failure of the candidate;
- a parent that dies (even by SIGKILL) takes its workers, and the compilers they started, with it.

The "kernels" here are modules whose import hangs: the worker re-imports a kernel's module by name,
so it is busy for as long as the test wants, without Triton compiling anything.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from mixir.autotune import hardware
from mixir.autotune.feedback import Store
from mixir.autotune.pipeline import TuneRequest, TuningTarget, tune_targets
from mixir.errors import MixirError
from mixir.lowering.common import aot, aot_workers, candidates
from mixir.lowering.gated_linear import space as gla_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SLEEPY = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
with open({pidfile!r} + ".tmp", "w") as fh:
    fh.write(f"{{os.getpid()}} {{child.pid}}")
os.replace({pidfile!r} + ".tmp", {pidfile!r})
time.sleep(300)
"""


def _sleepy_module(tmp_path, name):
    """A module ``name`` in ``tmp_path / "mods"`` whose import starts ``sleep 300``, writes
    "<pid> <child pid>" to the returned file and hangs."""
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    pidfile = str(tmp_path / f"{name}.pids")
    (mods / f"{name}.py").write_text(_SLEEPY.format(pidfile=pidfile))
    return str(mods), pidfile


def _record(module):
    def fn():
        pass
    fn.__module__, fn.__qualname__ = module, "fn"
    kern = types.SimpleNamespace(fn=fn, name=f"test.{module}")
    return types.SimpleNamespace(kernel=kern, signature=(), constexprs=(), num_warps=1,
                                 num_stages=1, key=lambda: module)


def _wait_pids(pidfile, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(pidfile):
            return [int(x) for x in open(pidfile).read().split()]
        time.sleep(0.1)
    raise AssertionError(f"the worker never started ({pidfile})")


def _gone(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"        # a zombie has ended
    except FileNotFoundError:
        return True


def test_a_timeout_always_gets_a_worker(monkeypatch):
    assert aot_workers._default_workers(1, 300) == 1
    assert aot_workers._default_workers(1, None) == 0
    seen = []
    monkeypatch.setattr(aot, "_build_in_workers", lambda pairs, n, *a: seen.append(n) or ["w"])
    assert aot.build_all([_record("unused")], "sm_90") == ["w"] and seen == [1]
    with pytest.raises(MixirError, match="timeout_s"):
        aot.build_all([_record("unused")], "sm_90", timeout_s=0)


def test_killed_worker_is_worker_died_and_teaches_nothing(tmp_path, monkeypatch):
    mods, pidfile = _sleepy_module(tmp_path, "mixir_test_sleepy_kill")
    monkeypatch.syspath_prepend(mods)
    rec = _record("mixir_test_sleepy_kill")

    pids = []

    def killer():
        pids.extend(_wait_pids(pidfile))
        os.kill(pids[0], signal.SIGKILL)                # from outside: not the compiler's crash
    t = threading.Thread(target=killer)
    t.start()
    said = []
    cfg = {"BT": 64, "BC": 16, "BK": 64, "BKS": 64, "BV": 64, "BVS": 64, "num_warps": 4, "num_stages": 2}
    (cc,) = candidates.compile_recorded([cfg], lambda c: [rec], "sm_90", workers=1, timeout_s=120,
                                        progress=said.append)
    t.join()
    assert cc.transient and not cc.ok
    assert "worker died (killed by SIGKILL)" in cc.errors[0] and "killed from outside" in cc.errors[0]
    assert any("worker died" in m for m in said)
    fb = Store().get(gla_space.CHUNKED, gla_space.core_shape(8, 4096, 16, 64, 64, "bf16"),
                     hardware.get("h100"))
    assert fb.observe(cfg, cc) == [] and fb.constraints == []
    _assert_ends(pids[1])                 # the compiler it started died with it (PDEATHSIG)


def _assert_ends(*pids, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if not _gone(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "orphaned worker or compiler"


def test_timeout_is_a_failure_of_the_candidate(tmp_path, monkeypatch):
    mods, pidfile = _sleepy_module(tmp_path, "mixir_test_sleepy_timeout")
    monkeypatch.syspath_prepend(mods)
    (out,) = aot.build_all([_record("mixir_test_sleepy_timeout")], "sm_90", workers=1,
                           timeout_s=3, errors="collect")
    assert isinstance(out, MixirError) and not isinstance(out, aot.WorkerDied)
    assert "timed out after 3 s" in str(out)
    if os.path.exists(pidfile):            # (unless the worker was still importing triton)
        _assert_ends(*_wait_pids(pidfile))          # killed with the compilers it started


_PARENT = """
import json, sys
sys.path.insert(0, {mods!r})
from mixir.lowering.common.aot_workers import _Worker
w = _Worker()
spec = {{"module": "mixir_test_sleepy_orphan", "qualname": "fn", "file": None, "name": "sleepy",
        "signature": [], "constexprs": [], "num_warps": 1, "num_stages": 1}}
w.send([0, spec, "sm_90", True, 300], 300)
print(w.proc.pid, flush=True)
import time
time.sleep(300)
"""


def test_workers_die_with_their_parent(tmp_path):
    mods, pidfile = _sleepy_module(tmp_path, "mixir_test_sleepy_orphan")
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(mods=mods)], cwd=ROOT,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        worker, child = _wait_pids(pidfile)
    finally:
        parent.kill()                                  # SIGKILL: no cleanup in the parent
        parent.wait()
    _assert_ends(worker, child)


# ---- the time limit and progress reach every compile ---------------------------------------------
def test_tuning_passes_the_time_limit_and_does_not_learn_from_dead_workers():
    seen = {}

    def compile_(configs, arch, **kw):
        seen.update(kw)
        return [candidates.CompiledConfig(dict(c), [], ["kernel k for sm_90: worker died (killed "
                                                        "by SIGKILL) while compiling"], True)
                for c in configs]
    target = TuningTarget("chunked", gla_space.CHUNKED,
                          gla_space.core_shape(2, 256, 4, 32, 32, "bf16"), compile=compile_)
    store = Store()
    req = TuneRequest(gpu="h100", B=2, T=256, H=4, K=32, V=32, top_k=2, write=False,
                      timeout_s=12.5, feedback=store)
    (r,) = tune_targets("m", "fp", [target], req).results
    assert seen["timeout_s"] == 12.5
    assert r.best is None and all("worker died" in c.dropped for c in r.candidates)
    assert not r.discrepancies
    assert all(not fb.constraints for fb in store._by_key.values())


def test_cli_compile_has_a_time_limit_and_progress(monkeypatch, capsys):
    import mixir.verify
    from mixir.cli import main
    seen = {}

    def build_all(records, archs, **kw):
        seen.update(kw)
        kw["progress"]("[1/1] kernel k for sm_90: ok")
        return []
    monkeypatch.setattr(mixir.verify, "record_kernels", lambda m, dtype: {"k": object()})
    monkeypatch.setattr(aot, "build_all", build_all)
    assert main(["compile", "gla", "--timeout", "12.5"]) == 0
    err = capsys.readouterr().err
    assert seen["timeout_s"] == 12.5 and seen["workers"] is None
    assert "at most 12.5 s each" in err and "[1/1] kernel k for sm_90: ok" in err
    assert main(["compile", "gla", "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err
    assert main(["tune", "gla", "--no-aot", "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_cli_tune_passes_timeout_and_force(monkeypatch):
    from mixir import tuning
    from mixir.cli import main
    seen = []

    def tune(m, req, **kw):
        seen.append(req)
        raise MixirError("stop here")
    monkeypatch.setattr(tuning, "tune", tune)
    assert main(["tune", "gla", "--timeout", "7", "--force", "--dry-run"]) == 2
    assert seen[0].timeout_s == 7 and seen[0].force is True and seen[0].workers is None
