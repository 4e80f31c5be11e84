"""One ahead-of-time kernel build: ``build`` compiles one recorded launch with ``triton.compile``
for a ``GPUTarget`` (no GPU needed) and reads its real resources — registers (cuobjdump), spills
and local memory (``ptxas -v``), shared memory — into a ``KernelResources`` (the numbers are
defined in ``aot.py``'s docstring). ``aot.build_all`` runs many of these in worker processes."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from typing import TYPE_CHECKING

from ...errors import InputError, MixirError

if TYPE_CHECKING:  # pragma: no cover
    from .launch import LaunchRecord

ARCHS = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}

# Largest shared memory one CTA may use (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes.
MAX_SHARED_BYTES = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}
MAX_REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 65536

_ARCH_RE = re.compile(r"^\s*(?:sm)?[_\-]?(\d{2,3})a?\s*$", re.IGNORECASE)


def parse_arch(s) -> str:
    """Canonical architecture name ("sm_90") for "sm_90", "sm90", "90" or 90."""
    if isinstance(s, bool) or not isinstance(s, (str, int)):
        raise InputError(f"arch must be a string like 'sm_90' or an int like 90, got {s!r}")
    m = _ARCH_RE.match(str(s))
    name = f"sm_{m.group(1)}" if m else None
    if name not in ARCHS:
        raise InputError(f"unknown GPU architecture {s!r}: expected one of "
                         f"{', '.join(ARCHS)} (also written '90' or 'sm90')")
    return name


@dataclasses.dataclass(frozen=True)
class KernelResources:
    """Resources of one compiled kernel for one architecture (units in the module docstring)."""
    kernel: str
    arch: str
    num_warps: int
    num_stages: int
    registers: int            # 32-bit registers per thread
    spills: int               # bytes per thread: spill stores + spill loads (ptxas -v)
    shared_bytes: int         # dynamic shared memory per CTA, bytes (Triton metadata)
    local_bytes: int          # local memory per thread (stack frame + local), bytes
    constexprs: tuple         # ((name, value), ...) of the launch
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    static_shared_bytes: int = 0
    compile_s: float = dataclasses.field(default=0.0, compare=False)

    @property
    def shared_limit(self) -> int:
        return MAX_SHARED_BYTES[self.arch]

    @property
    def total_shared_bytes(self) -> int:
        return self.shared_bytes + self.static_shared_bytes

    @property
    def fits(self) -> bool:
        """Launchable on the architecture: shared memory and registers within the hardware limits."""
        threads = 32 * self.num_warps
        return (self.total_shared_bytes <= self.shared_limit
                and self.registers <= MAX_REGISTERS_PER_THREAD
                and self.registers * threads <= REGISTERS_PER_SM)


# ----------------------------------------------------------------------------------------------
# tools and parsing

def _triton_bin(name: str) -> str | None:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _tool_path(name: str) -> str | None:
    """cuobjdump / ptxas: $TRITON_<NAME>_PATH, then Triton's bundled binary, then $PATH."""
    env = os.environ.get(f"TRITON_{name.upper().replace('-', '_')}_PATH")
    for cand in (env, _triton_bin(name), shutil.which(name)):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _ptxas_path(cap: int) -> str | None:
    """The ptxas Triton itself uses for this capability (3.9 uses ptxas-blackwell for sm_90)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(cap).path
    except Exception:
        return _tool_path("ptxas")


_RE_RES_FUNC = re.compile(r"^\s*Function\s+(\S+?)\s*:\s*$")
_RE_RES_KV = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")
_RE_SPILL = re.compile(r"(\d+)\s+bytes\s+stack\s+frame,\s*(\d+)\s+bytes\s+spill\s+stores,\s*"
                       r"(\d+)\s+bytes\s+spill\s+loads")
_RE_REGS = re.compile(r"Used\s+(\d+)\s+registers")


def parse_resource_usage(text: str, function: str | None = None) -> dict:
    """Parse ``cuobjdump --dump-resource-usage``: {"REG": 40, "STACK": 0, "SHARED": 0, ...}."""
    found: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _RE_RES_FUNC.match(line)
        if m:
            current = m.group(1)
            continue
        if current is not None and "REG:" in line:
            found[current] = {k: int(v) for k, v in _RE_RES_KV.findall(line)}
            current = None
    if not found:
        return {}
    if function is not None and function in found:
        return found[function]
    return next(iter(found.values()))


def parse_ptxas_log(text: str) -> dict:
    """Parse a ``ptxas -v`` log: {"registers", "stack", "spill_stores", "spill_loads"} (bytes)."""
    out = {}
    m = _RE_SPILL.search(text)
    if m:
        out.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
    m = _RE_REGS.search(text)
    if m:
        out["registers"] = int(m.group(1))
    return out


def _first_lines(text: str, n: int = 20) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    more = f"\n    ... ({len(lines) - n} more lines)" if len(lines) > n else ""
    return "\n    ".join(lines[:n]) + more


# ----------------------------------------------------------------------------------------------
# compiling one candidate

@contextlib.contextmanager
def _capture_ptxas_log():
    """Make Triton print its ptxas -v log (TRITON_DUMP_PTXAS_LOG, not cache-invalidating) and
    capture everything Triton prints to stdout meanwhile."""
    buf = io.StringIO()
    old_env = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    nv = None
    saved = inspect._empty
    try:
        import triton
        nv = getattr(getattr(triton, "knobs", None), "nvidia", None)
        if nv is not None and "dump_ptxas_log" in vars(nv):   # an explicit Python-side override
            saved = vars(nv).pop("dump_ptxas_log")
    except Exception:
        nv = None
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        if old_env is None:
            os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = old_env
        if nv is not None and saved is not inspect._empty:
            vars(nv)["dump_ptxas_log"] = saved


def _make_source(jit_fn, signature: dict, constexprs: dict, align_pointers: bool):
    from triton.compiler import ASTSource
    names = list(jit_fn.arg_names)
    # tuple-of-index keys are accepted by every Triton since 3.2 (3.9 also accepts names)
    consts = {(names.index(k),): v for k, v in constexprs.items()}
    attrs = None
    if align_pointers:
        # the JIT marks 16-byte aligned pointers (every fresh torch allocation) as divisible by 16
        try:
            from triton.backends.compiler import BaseBackend
            div = BaseBackend.parse_attr("D")
        except Exception:
            div = [["tt.divisibility", 16]]
        attrs = {(i,): div for i, n in enumerate(names) if str(signature[n]).startswith("*")}
    try:
        return ASTSource(fn=jit_fn, signature=signature, constexprs=consts, attrs=attrs)
    except Exception:
        return ASTSource(fn=jit_fn, signature=signature, constexprs=consts)


def _ptxas_flags(compiled) -> list[str]:
    """Triton's own ptxas flags (for re-running ptxas -v on a cached kernel's PTX)."""
    md = compiled.metadata
    flags = ["-lineinfo"]
    if os.environ.get("TRITON_DISABLE_LINE_INFO", "0") not in ("0", ""):
        flags += ["-suppress-debug-info"]
    if not getattr(md, "enable_fp_fusion", True):
        flags += ["--fmad=false"]
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        if "regAllocOptLevel=2" in inspect.getsource(CUDABackend.make_cubin):
            flags += ["--regAllocOptLevel=2"]
    except Exception:
        pass
    if getattr(md, "ptx_options", None):
        flags += str(md.ptx_options).split()
    return flags


def _rerun_ptxas(compiled, cap: int, name: str, arch: str, timeout_s) -> str:
    ptxas = _ptxas_path(cap)
    if not ptxas:
        raise MixirError(f"kernel {name} for {arch}: ptxas not found (looked in $TRITON_PTXAS_PATH, "
                         f"triton/backends/nvidia/bin and $PATH); cannot read spill counts")
    gpu = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
    with tempfile.TemporaryDirectory(prefix="mixir-aot-") as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        cmd = [ptxas, "-v", *_ptxas_flags(compiled), f"--gpu-name={gpu}", ptx,
               "-o", os.path.join(tmp, "kernel.cubin")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise MixirError(f"kernel {name} for {arch}: ptxas -v timed out after {timeout_s} s") from None
    if r.returncode != 0:
        raise MixirError(f"kernel {name} for {arch}: ptxas -v failed (exit {r.returncode}):\n    "
                         + _first_lines(r.stderr + r.stdout))
    return r.stderr + r.stdout


_SIDE_FILE = "mixir_ptxas.json"
# the ptxas-log capture swaps sys.stdout and an environment variable: one compile at a time
_COMPILE_LOCK = threading.Lock()


def _ptxas_numbers(compiled, log: str, cap: int, name: str, arch: str, timeout_s) -> dict:
    """Spill/stack/register numbers of the cubin from Triton's ptxas log, the side file stored in
    Triton's cache, or a ptxas -v re-run (then stored in the side file)."""
    numbers = parse_ptxas_log(log)
    manager = None
    try:
        from triton.runtime.cache import get_cache_manager
        manager = get_cache_manager(compiled.metadata.hash)
    except Exception:
        manager = None
    if "spill_stores" not in numbers and manager is not None:
        try:
            path = manager.get_file(_SIDE_FILE)
            if path:
                with open(path) as f:
                    numbers = json.load(f)
        except Exception:
            numbers = {}
    if "spill_stores" in numbers:
        fresh = "spill_stores" in parse_ptxas_log(log)
    else:
        numbers = parse_ptxas_log(_rerun_ptxas(compiled, cap, name, arch, timeout_s))
        fresh = True
        if "spill_stores" not in numbers:
            raise MixirError(f"kernel {name} for {arch}: could not parse the ptxas -v log")
    if fresh and manager is not None:
        with contextlib.suppress(Exception):
            manager.put(json.dumps(numbers), _SIDE_FILE, binary=False)
    return numbers


def _cuobjdump(compiled, name: str, arch: str, timeout_s) -> dict:
    tool = _tool_path("cuobjdump")
    if not tool:
        return {}
    with tempfile.TemporaryDirectory(prefix="mixir-aot-") as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        try:
            r = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True,
                               text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise MixirError(f"kernel {name} for {arch}: cuobjdump timed out after {timeout_s} s") from None
    if r.returncode != 0:
        raise MixirError(f"kernel {name} for {arch}: cuobjdump failed (exit {r.returncode}):\n    "
                         + _first_lines(r.stderr + r.stdout))
    return parse_resource_usage(r.stdout, getattr(compiled.metadata, "name", None))


def _build_fn(jit_fn, name: str, signature, constexprs, num_warps: int, num_stages: int, arch: str,
              *, align_pointers: bool = True, timeout_s=None) -> KernelResources:
    arch = parse_arch(arch)
    cap = ARCHS[arch]
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except Exception as e:  # pragma: no cover - triton is a dependency
        raise MixirError(f"kernel {name} for {arch}: cannot import triton: {e}") from e
    if _triton_bin("ptxas") is None and not os.environ.get("TRITON_PTXAS_PATH"):
        raise MixirError(f"kernel {name} for {arch}: Triton's NVIDIA backend has no ptxas "
                         f"(triton/backends/nvidia/bin/ptxas missing, TRITON_PTXAS_PATH unset)")
    sig = dict(signature)
    consts = dict(constexprs)
    if list(sig) != list(jit_fn.arg_names):
        raise MixirError(f"kernel {name} for {arch}: recorded signature {list(sig)} does not match "
                         f"the kernel's arguments {list(jit_fn.arg_names)}")
    src = _make_source(jit_fn, sig, consts, align_pointers)
    t0 = time.perf_counter()
    with _COMPILE_LOCK, _capture_ptxas_log() as out:
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                      options={"num_warps": num_warps, "num_stages": num_stages})
        except Exception as e:
            msg = str(e) or type(e).__name__
            raise MixirError(f"compiling kernel {name} for {arch} (num_warps={num_warps}, "
                             f"num_stages={num_stages}) failed: {type(e).__name__}:\n    "
                             + _first_lines(msg)) from e
    numbers = _ptxas_numbers(compiled, out.getvalue(), cap, name, arch, timeout_s)
    usage = _cuobjdump(compiled, name, arch, timeout_s)
    registers = usage.get("REG", numbers.get("registers"))
    if registers is None:
        raise MixirError(f"kernel {name} for {arch}: no register count (cuobjdump not found and "
                         f"the ptxas log has none)")
    stack = usage.get("STACK", numbers.get("stack", 0))
    stores, loads = numbers["spill_stores"], numbers["spill_loads"]
    return KernelResources(
        kernel=name, arch=arch, num_warps=int(compiled.metadata.num_warps), num_stages=num_stages,
        registers=int(registers), spills=stores + loads, shared_bytes=int(compiled.metadata.shared or 0),
        local_bytes=int(stack) + int(usage.get("LOCAL", 0)), constexprs=tuple(constexprs),
        spill_store_bytes=stores, spill_load_bytes=loads,
        static_shared_bytes=int(usage.get("SHARED", 0)), compile_s=time.perf_counter() - t0)


def build(record: "LaunchRecord", arch: str, *, align_pointers: bool = True,
          timeout_s: float | None = None) -> KernelResources:
    """Compile ``record`` for ``arch`` (no GPU needed) and return its real resources.

    ``align_pointers``: compile as the JIT does for 16-byte aligned pointer arguments (the usual
    case for torch tensors). ``timeout_s`` bounds the helper tools (cuobjdump, a ptxas re-run), not
    Triton's own compile; use ``build_all`` for a hard per-candidate timeout.
    """
    return _build_fn(record.kernel.jit, record.kernel.name, record.signature, record.constexprs,
                     record.num_warps, record.num_stages, arch, align_pointers=align_pointers,
                     timeout_s=timeout_s)
