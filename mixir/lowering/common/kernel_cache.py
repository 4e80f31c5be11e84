"""The content-addressed cache of generated kernel modules.

``write_source`` writes a module's text to ``<cache_dir>/<sha>.py`` (``$MIXIR_CACHE_DIR/kernels``,
default ``~/.cache/mixir/kernels``; atomic write through a temp file and ``os.replace``; an
existing identical file is reused; a per-user temp directory when the cache is not writable),
``import_source`` imports it from there with importlib, once per process (Triton reads a kernel's
source file), and ``load`` does both for a ``codegen.Generated`` and wraps its forward and
backward functions with ``launch.Kernel``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .codegen import Generated


def cache_dir() -> str:
    """Directory of generated kernel modules: ``$MIXIR_CACHE_DIR/kernels`` (default
    ``~/.cache/mixir/kernels``)."""
    root = os.environ.get("MIXIR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixir")
    return os.path.join(root, "kernels")


def write_source(source: str, sha: str | None = None) -> str:
    """Write ``source`` to ``<cache_dir>/<sha>.py`` unless an identical file is there; return the
    path. Falls back to a per-user temp directory when the cache directory is not writable."""
    sha = sha or hashlib.sha256(source.encode()).hexdigest()
    try:
        return _write(cache_dir(), source, sha)
    except OSError:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return _write(os.path.join(tempfile.gettempdir(), f"mixir-{uid}", "kernels"), source, sha)


def _write(d: str, source: str, sha: str) -> str:
    path = os.path.join(d, f"{sha}.py")
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == source:
                return path
    except OSError:
        pass
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sha[:16]}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


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
        modname = f"mixir_generated_{sha[:24]}"
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
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
