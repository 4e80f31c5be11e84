"""The tuning database: versioned JSON, one file per GPU (``<GPU name>.json``).

Directories: ``$MIXIR_TUNING_DB`` when set (read and written); otherwise reads merge the package's
shipped ``mixir/autotune/data/`` with the user directory ``$XDG_CACHE_HOME/mixir/tuning`` (default
``~/.cache/mixir/tuning``; user entries win) and writes go to the user directory.

File format (``FORMAT_VERSION`` 1)::

    {"format": "mixir-tuning-db", "version": 1, "gpu": "H100-SXM",
     "entries": {"<key>": {"config": {...}, "strategy": "chunked", "predicted_s": 0.0012,
                           "measured_s": null, "compiled": {...} | null,
                           "provenance": {"source": "model" | "aot" | "timed", "mixir": "0.1.0",
                                          "triton": "3.6.0", "torch": "2.13", "ortools": "9.15",
                                          "date": "2025-01-01T00:00:00Z"}}}}

Key: ``<mixer fingerprint>|<dtype>|<strategy>|K<K>|V<V>|T<bucket>|BH<bucket>`` with the buckets
the next power of two of T and of B*H. Writes take an exclusive ``fcntl`` lock on ``.<file>.lock`` (same directory),
re-read the file, merge, write a temporary file in the same directory, fsync and ``os.replace``:
concurrent tuners never corrupt the file and a killed writer leaves the old file intact. A
corrupted file or one with a newer version is ignored with a warning when reading.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import tempfile
import warnings

from ..errors import TuningError

FORMAT = "mixir-tuning-db"
FORMAT_VERSION = 1
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "data")
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16",
           "float32": "fp32", "fp32": "fp32"}


def dtype_name(dtype) -> str:
    s = str(dtype).replace("torch.", "")
    if s not in _DTYPES:
        raise TuningError(f"dtype must be bf16, fp16 or fp32, got {dtype!r}")
    return _DTYPES[s]


def bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def make_key(fingerprint, dtype, strategy, B, T, H, K, V) -> str:
    return (f"{fingerprint}|{dtype_name(dtype)}|{strategy}|K{int(K)}|V{int(V)}"
            f"|T{bucket(T)}|BH{bucket(int(B) * int(H))}")


@dataclasses.dataclass(frozen=True)
class Key:
    """One database key, as the runtime looks it up: the mixer (``fingerprint``; a mask's key for
    attention, a kernel pair's name for the LTI kernel-level entries), the database ``strategy``,
    the input ``dtype`` (a torch dtype or a name: normalised by ``dtype_name`` when looked up), the
    user-level shape B, T, H and the head sizes K, V the entry was tuned for."""
    fingerprint: str
    strategy: str
    dtype: object
    B: int
    T: int
    H: int
    K: int
    V: int

    def text(self) -> str:
        return make_key(self.fingerprint, self.dtype, self.strategy, self.B, self.T, self.H, self.K,
                        self.V)


def user_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mixir", "tuning")


def read_dirs() -> list:
    """Directories read, lowest priority first."""
    env = os.environ.get("MIXIR_TUNING_DB")
    if env:
        return [env]
    return [SHIPPED_DIR, user_dir()]


def write_dir() -> str:
    return os.environ.get("MIXIR_TUNING_DB") or user_dir()


def _gpu_name(gpu) -> str:
    from . import hardware
    return hardware.get(gpu).name if not hasattr(gpu, "name") else gpu.name


def path_for(gpu, directory=None) -> str:
    return os.path.join(directory or write_dir(), f"{_gpu_name(gpu)}.json")


def _empty(gpu_name):
    return {"format": FORMAT, "version": FORMAT_VERSION, "gpu": gpu_name, "entries": {}}


def _parse(text: str, path: str):
    """The file's dict, or None (after a warning) when it is corrupt or from a newer version."""
    try:
        data = json.loads(text)
    except ValueError as e:
        warnings.warn(f"mixir tuning database {path} is corrupted ({e}); ignoring it", stacklevel=3)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        warnings.warn(f"mixir tuning database {path} is not a {FORMAT} file; ignoring it", stacklevel=3)
        return None
    v = data.get("version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        warnings.warn(f"mixir tuning database {path} has version {v!r}, newer than this mixir "
                      f"understands ({FORMAT_VERSION}); ignoring it", stacklevel=3)
        return None
    return data


_CACHE: dict = {}


def load(path: str):
    """Entries of one file ({} when missing, corrupt or newer), cached by (mtime, size)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    sig = (st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == sig:
        return hit[1]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        warnings.warn(f"cannot read mixir tuning database {path}: {e}; ignoring it", stacklevel=2)
        return {}
    data = _parse(text, path)
    entries = data["entries"] if data else {}
    _CACHE[path] = (sig, entries)
    return entries


def entries(gpu) -> dict:
    out = {}
    for d in read_dirs():
        out.update(load(path_for(gpu, d)))
    return out


def lookup(fingerprint, gpu, dtype, B, T, H, *, K=None, V=None, strategy="chunked") -> dict | None:
    """The tuned config for this key, or None. Without K / V, any entry matching the rest of the key
    (the first found) is returned."""
    try:
        ents = entries(gpu)
    except TuningError:
        return None
    if K is not None and V is not None:
        e = ents.get(make_key(fingerprint, dtype, strategy, B, T, H, K, V))
    else:
        pre = f"{fingerprint}|{dtype_name(dtype)}|{strategy}|"
        suf = f"|T{bucket(T)}|BH{bucket(int(B) * int(H))}"
        e = next((v for k, v in ents.items() if k.startswith(pre) and k.endswith(suf)), None)
    if not isinstance(e, dict) or not isinstance(e.get("config"), dict):
        return None
    return dict(e["config"])


def provenance(source: str) -> dict:
    from importlib import metadata
    vers = {}
    for mod in ("mixir", "triton", "torch", "ortools", "sympy"):   # no imports (ortools stays out)
        with contextlib.suppress(Exception):
            vers[mod] = metadata.version(mod)
    if "mixir" not in vers:
        from ..version import __version__
        vers["mixir"] = __version__
    return {"source": source, **vers,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


@contextlib.contextmanager
def _locked(path):
    import fcntl
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    lock = os.path.join(os.path.dirname(path) or ".", "." + os.path.basename(path) + ".lock")
    with open(lock, "a+") as lk:
        fcntl.flock(lk.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lk.fileno(), fcntl.LOCK_UN)


def write(gpu, new_entries: dict, directory=None) -> str:
    """Merge ``{key: entry}`` into the GPU's file (atomic, locked); returns the path."""
    name = _gpu_name(gpu)
    path = path_for(name, directory)
    with _locked(path):
        data = _empty(name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            try:
                old = json.loads(text)
            except ValueError:
                old = None
            if isinstance(old, dict) and isinstance(old.get("version"), int) and old["version"] > FORMAT_VERSION:
                raise TuningError(f"{path} was written by a newer mixir (version {old['version']}); "
                                  f"not overwriting it")
            parsed = _parse(text, path)
            if parsed is not None:
                data["entries"].update(parsed["entries"])
        data["entries"].update(new_entries)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)        # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _CACHE.pop(path, None)
    return path


def record(fingerprint, gpu, dtype, B, T, H, K, V, strategy, config, *, source, predicted_s=None,
           measured_s=None, compiled=None, directory=None, extra=None) -> str:
    """Write one entry. ``extra``: more provenance, e.g. ``shared_with`` (the mixer whose AOT
    results this entry reuses) and ``discrepancies`` (model mismatches the AOT check found)."""
    key = make_key(fingerprint, dtype, strategy, B, T, H, K, V)
    entry = {"config": {k: int(v) for k, v in config.items()}, "strategy": strategy,
             "predicted_s": predicted_s, "measured_s": measured_s, "compiled": compiled,
             "provenance": {**provenance(source), **(extra or {})}}
    return write(gpu, {key: entry}, directory)


__all__ = ["Key", "lookup", "record", "write", "load", "entries", "make_key", "bucket", "read_dirs",
           "write_dir", "user_dir", "path_for", "FORMAT_VERSION", "SHIPPED_DIR"]
