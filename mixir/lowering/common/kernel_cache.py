"""The content-addressed cache of generated kernel modules.

``write_source`` writes a module's text to ``<cache_dir>/<sha>.py`` (``$MIXIR_CACHE_DIR/kernels``,
default ``~/.cache/mixir/kernels``; atomic write through a uniquely named temp file and
``os.replace``; an existing identical file is reused), ``import_source`` imports it from there,
once per process (Triton reads a kernel's source file), and ``load`` does both for a
``codegen.Generated`` and wraps its forward and backward functions with ``launch.Kernel``.

Security (a shared machine): the cache directory must be owned by the user and not writable by
group or others (its parent likewise, or sticky like ``/tmp``); otherwise - or when it cannot be
created or written - the process uses a private ``mkdtemp`` directory (0700, removed at exit) and
warns once. Directories are created 0755 and files 0666, both less the umask. A module is executed
from the source text mixir generated and compared with the file (``exec_source``): never from
bytecode (``__pycache__``), and Triton's ``inspect.getsource`` sees that same text (``linecache``).
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import linecache
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import warnings
from typing import TYPE_CHECKING

from ...errors import MixirError

if TYPE_CHECKING:  # pragma: no cover
    from .codegen import Generated


def cache_dir() -> str:
    """Directory of generated kernel modules: ``$MIXIR_CACHE_DIR/kernels`` (default
    ``~/.cache/mixir/kernels``)."""
    root = os.environ.get("MIXIR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixir")
    return os.path.join(root, "kernels")


def unsafe_reason(d: str) -> str | None:
    """Why directory ``d`` must not hold code this process runs (None: it may): not a directory,
    not owned by this user, writable by group or others, or a parent that others can write
    without the sticky bit."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    st = os.stat(d)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if uid is None:              # pragma: no cover - no POSIX owners
        return None
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.filemode(st.st_mode)})"
    parent = os.path.dirname(os.path.abspath(d))
    pst = os.stat(parent)
    if pst.st_uid not in (uid, 0):
        return f"its parent {parent} is owned by uid {pst.st_uid}"
    if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
        return f"its parent {parent} is writable by group or others without the sticky bit"
    return None


_private: list = []          # [(pid, path)]: this process's fallback directory
_warned: set = set()


def _remove(pid: int, d: str) -> None:
    if os.getpid() == pid:               # not in a forked child
        shutil.rmtree(d, ignore_errors=True)


def _private_dir(why: str) -> str:
    if not _private or _private[0][0] != os.getpid():
        d = tempfile.mkdtemp(prefix="mixir-kernels-")
        _private[:] = [(os.getpid(), d)]
        atexit.register(_remove, os.getpid(), d)
    d = _private[0][1]
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"mixir: not using the kernel cache {why}; generated kernels go to the "
                      f"private directory {d} for this process (set MIXIR_CACHE_DIR to a directory "
                      f"only you can write, or `chmod go-w` it)", stacklevel=4)
    return d


def _usable_cache_dir() -> tuple:
    """(directory, None) when the cache directory is safe and exists (created when missing), else
    (None, why)."""
    d = cache_dir()
    try:
        os.makedirs(os.path.dirname(d), mode=0o755, exist_ok=True)
        os.makedirs(d, mode=0o755, exist_ok=True)
        why = unsafe_reason(d)
    except OSError as e:
        return None, f"{d} ({e.strerror or e})"
    return (d, None) if why is None else (None, f"{d} ({why})")


def write_source(source: str, sha: str | None = None) -> str:
    """Write ``source`` to ``<cache_dir>/<sha>.py`` unless an identical file is there; return the
    path. Uses a private temp directory (with a warning) when the cache directory is unsafe or
    not writable."""
    sha = sha or hashlib.sha256(source.encode()).hexdigest()
    d, why = _usable_cache_dir()
    if d is not None:
        try:
            return _write(d, source, sha)
        except OSError as e:
            why = f"{d} ({e.strerror or e})"
    return _write(_private_dir(why), source, sha)


def _write(d: str, source: str, sha: str) -> str:
    path = os.path.join(d, f"{sha}.py")
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == source:
                return path
    except (OSError, UnicodeDecodeError):
        pass
    tmp = os.path.join(d, f".{sha[:16]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # 0o666 less the umask (os.open applies it), never through a symlink
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Executes the given source text compiled fresh: never bytecode from ``__pycache__``."""

    def __init__(self, fullname: str, path: str, source: str):
        super().__init__(fullname, path)
        self._source = source

    def get_code(self, fullname):
        return compile(self._source, self.path, "exec", dont_inherit=True)

    def get_source(self, fullname):
        return self._source


_SHA_NAME = re.compile(r"^[0-9a-f]{64}\.py$")


def exec_source(modname: str, path: str, source: str | None = None):
    """A new module ``modname`` (registered in ``sys.modules``) executed from ``source`` (default:
    the text of ``path``; a file named ``<sha256>.py``, as the cache names them, must match its
    hash), with ``__file__ = path``. No bytecode is read or written, and ``linecache`` holds the
    same text, so that ``inspect.getsource`` (Triton) sees what was executed."""
    if source is None:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
        name = os.path.basename(path)
        if _SHA_NAME.match(name) and hashlib.sha256(source.encode()).hexdigest() != name[:-3]:
            raise MixirError(f"generated kernel module {path} does not match its SHA-256 name: "
                             f"refusing to run it")
    loader = _SourceLoader(modname, path, source)
    spec = importlib.util.spec_from_file_location(modname, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)
    sys.modules[modname] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


_modules: dict = {}
_lock = threading.Lock()


def import_source(source: str, sha: str | None = None):
    """(path, module): the cached module of ``source``, written and imported once per process."""
    sha = sha or hashlib.sha256(source.encode()).hexdigest()
    with _lock:
        path = write_source(source, sha)
        key = (sha, path)
        if key in _modules:
            return path, _modules[key]
        module = exec_source(f"mixir_generated_{sha[:24]}", path, source)
        _modules[key] = module
        return path, module


@dataclasses.dataclass(frozen=True)
class Loaded:
    generated: Generated
    path: str
    module: object
    fwd: object          # launch.Kernel or None
    bwd: object          # launch.Kernel or None


def load(generated: Generated) -> Loaded:
    """Write (once) and import the module of ``generated``; wrap its kernels with ``Kernel``."""
    from .launch import Kernel
    path, module = import_source(generated.source, generated.sha)
    tag = f"mixir.pointwise.{generated.mixer_name}.{generated.sha[:12]}"
    fwd = Kernel(getattr(module, generated.fwd.fn_name), name=tag + ".fwd") if generated.fwd else None
    bwd = Kernel(getattr(module, generated.bwd.fn_name), name=tag + ".bwd") if generated.bwd else None
    return Loaded(generated, path, module, fwd, bwd)
