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
the next power of two of T and of B*H.

Reading never raises: a file that cannot be used (unreadable, corrupt, nested too deeply, wrong
``format``, a ``version`` that is missing, not an integer or newer) is ignored with one warning,
and an entry whose config is not a dict of integers in ``[1, MAX_VALUE]`` (``num_warps`` a power of
two <= 32) is ignored with one warning naming its key (``autotune.select`` also checks it against
its space). Writes take an exclusive ``fcntl`` lock on ``.<file>.lock`` (same directory), sweep the
temporary files of killed writers, re-read the file, merge, write a uniquely named temporary file
(0666 less the umask) in the same directory, fsync and ``os.replace``: concurrent tuners never
corrupt the file and a killed writer leaves the old file intact. A file that could not be read is
never overwritten (``TuningError``), and an entry is not replaced by one from a weaker source
(``model`` < ``aot`` < ``timed``) unless ``force``. ``check_writable`` tells before any tuning work
whether a write would succeed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import secrets
import warnings

from ..errors import TuningError

FORMAT = "mixir-tuning-db"
FORMAT_VERSION = 1
#: the largest value a config entry may hold (tile sizes, warps, stages are far smaller)
MAX_VALUE = 1 << 16
#: provenance sources, weakest first: an entry is not replaced by one from a weaker source
SOURCES = ("model", "aot", "timed")
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


def _examine(text: str):
    """(the file's dict, None) or (None, what is wrong with it)."""
    try:
        data = json.loads(text)
    except RecursionError:
        return None, "is nested too deeply to be a tuning database"
    except ValueError as e:
        return None, f"is corrupted ({e})"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        return None, f"is not a {FORMAT} file (format {got!r})"
    if not isinstance(data.get("entries"), dict):
        return None, "has no 'entries' object"
    if "version" not in data:
        return None, "has no version"
    v = data["version"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return None, f"has an invalid version {v!r} (expected an integer, {FORMAT_VERSION})"
    if v > FORMAT_VERSION:
        return None, f"has version {v}, newer than this mixir understands ({FORMAT_VERSION})"
    return data, None


def _parse(text: str, path: str):
    """The file's dict, or None (after a warning) when it cannot be used."""
    data, problem = _examine(text)
    if problem:
        warnings.warn(f"mixir tuning database {path} {problem}; ignoring it", stacklevel=3)
    return data


_CACHE: dict = {}


def load(path: str):
    """Entries of one file ({} when missing or unusable, with a warning), cached by (mtime, size).
    Never raises."""
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
    except (OSError, UnicodeDecodeError, MemoryError) as e:
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


def config_problem(config) -> str | None:
    """What is wrong with a database entry's config (None: nothing): it must be a non-empty dict
    of names to integers in [1, MAX_VALUE], ``num_warps`` a power of two <= 32."""
    if not isinstance(config, dict) or not config:
        return f"its config is not a non-empty object ({type(config).__name__})"
    for k, v in config.items():
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{k} = {v!r} is not an integer"
        if not 1 <= v <= MAX_VALUE:
            return f"{k} = {v} is outside [1, {MAX_VALUE}]"
    w = config.get("num_warps")
    if w is not None and (w > 32 or w & (w - 1)):
        return f"num_warps = {w} is not a power of two <= 32"
    return None


_warned: set = set()


def warn_entry(key: str, problem: str) -> None:
    """One warning per database key: the entry is ignored (the model's pick is used)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"mixir tuning database entry {key!r}: {problem}; ignoring it (the cost "
                      f"model's pick is used)", stacklevel=3)


def _usable(key, e) -> dict | None:
    if not isinstance(e, dict):
        warn_entry(key, f"the entry is not an object ({type(e).__name__})")
        return None
    problem = config_problem(e.get("config"))
    if problem:
        warn_entry(key, problem)
        return None
    return dict(e["config"])


def lookup(fingerprint, gpu, dtype, B, T, H, *, K=None, V=None, strategy="chunked") -> dict | None:
    """The tuned config for this key, or None (also for an invalid entry: one warning naming its
    key). Without K / V, the first valid entry matching the rest of the key is returned."""
    try:
        ents = entries(gpu)
    except TuningError:
        return None
    if K is not None and V is not None:
        key = make_key(fingerprint, dtype, strategy, B, T, H, K, V)
        return _usable(key, ents[key]) if key in ents else None
    pre = f"{fingerprint}|{dtype_name(dtype)}|{strategy}|"
    suf = f"|T{bucket(T)}|BH{bucket(int(B) * int(H))}"
    for k, e in ents.items():
        if k.startswith(pre) and k.endswith(suf):
            cfg = _usable(k, e)
            if cfg is not None:
                return cfg
    return None


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


def _source_rank(entry) -> int:
    src = entry.get("provenance", {}).get("source") if isinstance(entry, dict) else None
    return SOURCES.index(src) if src in SOURCES else -1


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


def _tmp_pattern(name: str):
    # this module's ``.<name>.<pid>.<hex>.tmp`` and older mixirs' ``mkstemp`` ``.<name>.XXXXXXXX.tmp``
    return re.compile(rf"^\.{re.escape(name)}\.(\d+\.[0-9a-f]{{8}}|[A-Za-z0-9_]{{8}})\.tmp$")


def _sweep(directory: str, name: str) -> None:
    """Remove the temporary files of writers killed mid-write (called under the lock: no live
    writer of this file has one)."""
    pat = _tmp_pattern(name)
    with contextlib.suppress(OSError):
        for f in os.listdir(directory):
            if pat.match(f):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, f))


def _read_existing(path: str) -> dict | None:
    """The entries of the file at ``path`` (None when there is none); ``TuningError`` when it
    exists but cannot be read: it must not be overwritten."""
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, MemoryError) as e:
        problem = f"cannot be read ({e})"
    else:
        data, problem = _examine(text)
        if data is not None:
            return data["entries"]
    raise TuningError(f"the tuning database {path} {problem}; not overwriting it (its entries would "
                      f"be lost): move it aside or repair it, then write again")


def check_writable(gpu, directory=None) -> str:
    """The path a write for ``gpu`` would go to; ``TuningError`` (before any tuning work) when its
    directory cannot be created or written, or the file there cannot be read."""
    path = path_for(gpu, directory)
    d = os.path.dirname(path) or "."
    try:
        os.makedirs(d, exist_ok=True)
        probe = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TuningError(f"cannot write the tuning database in {d}: {e.strerror or e} (choose "
                          f"another directory with --db or $MIXIR_TUNING_DB, or use --dry-run)") from e
    _read_existing(path)
    return path


def _weaker_dirs(directory) -> list:
    """The directories read below the one written (the shipped data under the user directory)."""
    if directory is not None or os.environ.get("MIXIR_TUNING_DB"):
        return []
    return [d for d in read_dirs() if os.path.abspath(d) != os.path.abspath(write_dir())]


def write(gpu, new_entries: dict, directory=None, *, force: bool = False, kept=None) -> str:
    """Merge ``{key: entry}`` into the GPU's file (atomic, locked); returns the path. An entry
    whose key holds one from a stronger source (``SOURCES``; also in the shipped data when writing
    the user directory) is not written unless ``force``: ``kept`` (a list) gets ``(key, kept
    source, new source)``. ``TuningError`` when the file cannot be read or written."""
    name = _gpu_name(gpu)
    path = path_for(name, directory)
    d = os.path.dirname(path) or "."
    below = {}
    for other in _weaker_dirs(directory):
        below.update(load(path_for(name, other)))
    try:
        with _locked(path):
            _sweep(d, name)
            data = _empty(name)
            data["entries"].update(_read_existing(path) or {})
            for key, entry in new_entries.items():
                old = data["entries"].get(key, below.get(key))
                if not force and old is not None and _source_rank(old) > _source_rank(entry):
                    if kept is not None:
                        kept.append((key, SOURCES[_source_rank(old)],
                                     (entry.get("provenance") or {}).get("source")))
                    continue
                data["entries"][key] = entry
            tmp = os.path.join(d, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as e:
        raise TuningError(f"cannot write the tuning database {path}: {e.strerror or e}") from e
    _CACHE.pop(path, None)
    return path


def record(fingerprint, gpu, dtype, B, T, H, K, V, strategy, config, *, source, predicted_s=None,
           measured_s=None, compiled=None, directory=None, extra=None, force=False, kept=None) -> str:
    """Write one entry (``write``: ``force`` and ``kept`` as there). ``extra``: more provenance, e.g.
    ``shared_with`` (the mixer whose AOT results this entry reuses) and ``discrepancies`` (model
    mismatches the AOT check found)."""
    key = make_key(fingerprint, dtype, strategy, B, T, H, K, V)
    entry = {"config": {k: int(v) for k, v in config.items()}, "strategy": strategy,
             "predicted_s": predicted_s, "measured_s": measured_s, "compiled": compiled,
             "provenance": {**provenance(source), **(extra or {})}}
    return write(gpu, {key: entry}, directory, force=force, kept=kept)


__all__ = ["Key", "lookup", "record", "write", "load", "entries", "make_key", "bucket", "read_dirs",
           "write_dir", "user_dir", "path_for", "check_writable", "config_problem", "warn_entry",
           "FORMAT_VERSION", "SHIPPED_DIR", "SOURCES", "MAX_VALUE"]
