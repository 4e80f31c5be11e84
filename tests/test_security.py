"""Local users on a shared machine (issue: hardening, section 1):

- the CUDA emulation builds in a private directory it created, never loads or writes through what
  another user planted in the shared temporary directory;
- the kernel cache refuses a directory others could write (or that is not the user's), falls back to
  a private ``mkdtemp`` (never a predictable shared path), runs generated modules from the verified
  source only (never ``__pycache__`` bytecode; Triton's ``inspect.getsource`` sees the same text)
  and honours the umask;
- compile workers do not import from their current directory.
"""
import hashlib
import importlib.util
import inspect
import os
import py_compile
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

from mixir.errors import MixirError
from mixir.lowering.common import kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = hasattr(os, "getuid") and os.getuid() == 0


# ---- the CUDA emulation --------------------------------------------------------------------------
_KERNEL = r"""
#include <cuda_fp16.h>
extern "C" __global__ void add_one(float* __restrict__ x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}
"""


def test_emulation_never_uses_a_planted_shared_directory(tmp_path, monkeypatch):
    from mixir.lowering.rnn import cuda_emulation as ce
    if ce.available():
        pytest.skip(ce.available())
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(ce, "_DIR", [], raising=False)
    monkeypatch.setattr(ce, "_CACHE", {})
    # what another user can plant at the old, predictable location
    unit = ce.HEADER + _KERNEL + "\n" + ce._driver("add_one", ce._parse_kernel(_KERNEL, "add_one"))
    key = hashlib.sha256(unit.encode()).hexdigest()[:24]
    planted = shared / f"mixir-cuda-emulation-{os.getuid()}"
    (planted / "include").mkdir(parents=True)
    (planted / "include" / "cuda_fp16.h").write_text("#error planted header\n")
    (planted / f"k_{key}.so").write_bytes(b"not a library")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, planted / f"k_{key}.cpp")

    k = ce.build(_KERNEL, "add_one")
    x = torch.zeros(40)
    k.launch((2, 1), 32, 0, x, 40)
    assert torch.equal(x, torch.ones(40))
    assert victim.read_text() == "precious\n"
    d = ce._build_dir()
    assert os.path.dirname(d) == str(shared) and d != str(planted)
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    # owner and mode are checked every time: a directory that became accessible is refused
    os.chmod(d, 0o755)
    with pytest.raises(ce.EmulationError, match="no longer private"):
        ce.build(_KERNEL.replace("1.0f", "2.0f"), "add_one")
    os.chmod(d, 0o700)


# ---- the kernel cache ----------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXIR_CACHE_DIR", str(tmp_path / "mixir-cache"))
    monkeypatch.setattr(kernel_cache, "_warned", set(), raising=False)
    return tmp_path / "mixir-cache" / "kernels"


def _source(tag):
    return f"# mixir test module {tag} {os.urandom(8).hex()}\nX = 'real'\n\ndef f():\n    return X\n"


def test_planted_bytecode_is_never_run(cache, tmp_path):
    src = _source("pyc")
    path = kernel_cache.write_source(src)
    evil = tmp_path / "evil.py"
    evil.write_text("X = 'planted'\n\ndef f():\n    return 'planted'\n")
    pyc = importlib.util.cache_from_source(path)
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    py_compile.compile(str(evil), cfile=pyc,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    _, module = kernel_cache.import_source(src)
    assert module.X == "real" and module.f() == "real"
    # the file swapped after the import: Triton's inspect.getsource still sees what ran
    with open(path, "w") as fh:
        fh.write("def f():\n    return 'swapped'\n")
    assert "return X" in inspect.getsource(module.f)
    # a worker re-importing a cache file by path checks it against its SHA-256 name
    with pytest.raises(MixirError, match="does not match its SHA-256"):
        kernel_cache.exec_source("mixir_test_tampered", path)


@pytest.mark.parametrize("how", ["group_writable", "other_owner"])
def test_unsafe_cache_directory_is_refused(cache, how):
    if how == "other_owner" and not IS_ROOT:
        pytest.skip("chown to another user needs root")
    cache.mkdir(parents=True)
    if how == "group_writable":
        os.chmod(cache, 0o777)
    else:
        os.chown(cache, 65534, 65534)
    with pytest.warns(UserWarning, match="not using the kernel cache"):
        path = kernel_cache.write_source(_source(how))
    d = os.path.dirname(path)
    assert d != str(cache) and not os.listdir(cache)
    st = os.stat(d)
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_unwritable_cache_uses_a_private_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MIXIR_CACHE_DIR", str(blocker))
    monkeypatch.setattr(kernel_cache, "_warned", set(), raising=False)
    with pytest.warns(UserWarning, match="not using the kernel cache"):
        path = kernel_cache.write_source(_source("unwritable"))
    d = os.path.dirname(path)
    assert "mixir-kernels-" in os.path.basename(d)            # mkdtemp, not mixir-<uid>/kernels
    assert d != os.path.join(tempfile.gettempdir(), f"mixir-{os.getuid()}", "kernels")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_cache_honours_the_umask(cache):
    old = os.umask(0o077)
    try:
        path = kernel_cache.write_source(_source("umask"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


# ---- compile workers -----------------------------------------------------------------------------
_PARENT = """
from mixir.lowering.common.aot_workers import _Worker
w = _Worker()
w.close()
print("exit", w.proc.returncode)
"""


def test_workers_do_not_import_from_the_current_directory(tmp_path):
    work, scripts = tmp_path / "work", tmp_path / "scripts"
    work.mkdir()
    scripts.mkdir()
    marker = tmp_path / "planted-ran"
    (work / "selectors.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()
        raise ImportError("planted selectors.py")
    """))
    (scripts / "parent.py").write_text(_PARENT)
    r = subprocess.run([sys.executable, str(scripts / "parent.py")], cwd=work, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "exit 0"
    assert not marker.exists()
