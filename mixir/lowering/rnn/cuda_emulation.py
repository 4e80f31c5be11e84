"""Run generated CUDA C kernels on the CPU (tests only): g++ with an emulation header.

A machine without a GPU can still check the *numerics* of the CUDA C that ``cuda.py`` generates:
the exact source is compiled as C++20 with a header prepended that gives the CUDA built-ins a
host meaning,

* ``__global__`` / ``__device__`` / ``__forceinline__`` / ``__shared__`` vanish, ``__restrict__``
  stays (g++ knows it);
* ``dim3`` and ``thread_local`` ``threadIdx`` / ``blockIdx`` / ``blockDim`` / ``gridDim``;
* ``__syncthreads()`` waits on a ``std::barrier`` shared by the threads of the running block;
* ``extern __shared__ unsigned char smem_raw[]`` (the kernels' dynamic shared memory) resolves to
  a static, 16-byte aligned buffer of ``SMEM_BYTES`` declared in the header (a block-scope
  ``extern`` declaration binds to the visible namespace-scope one);
* ``__expf`` / ``__logf`` / ``rsqrtf`` ... map to libm (exact, where nvcc's fast-math versions
  are approximate: the emulation checks the algorithm, not the GPU's rounding);
* ``cuda_fp16.h`` / ``cuda_bf16.h`` are empty stubs in an include dir of the build: fp32 R only.

A generated C++ driver ``extern "C" int mixir_emulate(void** ptrs, const long long* ints,
const double* reals, gx, gy, bx, smem)`` runs the grid: blocks one after another, each with
``blockDim.x`` ``std::thread``s running the kernel (so a missing ``__syncthreads`` is a real
race and a barrier mismatch a real hang, not an artefact of sequential emulation); a thread that
returns drops out of the barrier (``arrive_and_drop``), as exited threads do on the GPU. The
driver's argument unpacking follows the kernel's signature, parsed from the generated source.

Builds are cached in memory by the SHA-256 of the full translation unit, for the life of the
process. Security: everything is built in a **private** directory this process creates with
``tempfile.mkdtemp`` (mode 0700, owner and mode re-checked before every build, removed at exit);
files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and only libraries this process compiled
are loaded - nothing in a shared, predictable temporary path is read, trusted or written through
a symlink. The source always comes from the IR generator (``cuda.py``): nothing here evaluates
user strings.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading

import torch

from .cuda_train import FusedCudaFunction, RNNTraining, kernel_params, threads_for

__all__ = ["GXX", "SMEM_BYTES", "EmulationError", "EmulatedKernel", "build", "available"]

#: the emulated dynamic shared memory of one block (a GPU's opt-in limit is 227 KiB; more is fine)
SMEM_BYTES = 1 << 20

GXX = shutil.which("g++")

HEADER = r"""// mixir CUDA emulation header (host C++20): prepended to generated CUDA C.
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <math.h>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
thread_local dim3 threadIdx(0, 0, 0);
thread_local dim3 blockIdx(0, 0, 0);
thread_local dim3 blockDim(1, 1, 1);
thread_local dim3 gridDim(1, 1, 1);
thread_local std::barrier<>* mixir_block_barrier = nullptr;
inline void __syncthreads() { mixir_block_barrier->arrive_and_wait(); }
alignas(16) static unsigned char smem_raw[MIXIR_SMEM_BYTES];
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
// ---- the generated source -------------------------------------------------------------------
"""

_C_TORCH = {"float": torch.float32, "double": torch.float64, "int": torch.int32,
            "long long": torch.int64, "int64_t": torch.int64}


class EmulationError(RuntimeError):
    """The emulated kernel could not be built or launched."""


def available() -> str | None:
    """``None`` when kernels can be emulated here, else the reason they cannot."""
    if GXX is None:
        return "g++ is not on PATH (the CUDA emulation compiles generated CUDA C as C++20)"
    return None


def _parse_kernel(source: str, kernel: str) -> tuple:
    try:
        return kernel_params(source, kernel)
    except ValueError as e:
        raise EmulationError(str(e)) from None


def _driver(kernel: str, params: tuple) -> str:
    """The C++ driver: unpack arguments by the kernel's signature, run the grid block by block,
    ``blockDim.x`` threads per block sharing one barrier."""
    args, ip, rp, pp = [], 0, 0, 0
    for p in params:
        if p.pointer:
            t = ("const " if p.const else "") + p.ctype + "*"
            args.append(f"static_cast<{t}>(ptrs[{pp}])")
            pp += 1
        elif p.ctype in ("float", "double"):
            args.append(f"static_cast<{p.ctype}>(reals[{rp}])")
            rp += 1
        else:
            args.append(f"static_cast<{p.ctype}>(ints[{ip}])")
            ip += 1
    return "\n".join([
        "// ---- the emulation driver -------------------------------------------------------",
        "#include <thread>", "#include <vector>",
        'extern "C" int mixir_emulate(void** ptrs, const long long* ints, const double* reals,',
        "                             unsigned gx, unsigned gy, unsigned bx, unsigned long long smem) {",
        "  (void)ptrs; (void)ints; (void)reals;",
        "  if (smem > sizeof(smem_raw)) return 1;",
        "  if (bx == 0 || bx > 1024) return 2;",
        "  for (unsigned by_ = 0; by_ < gy; ++by_) {",
        "    for (unsigned bx_ = 0; bx_ < gx; ++bx_) {",
        "      std::barrier<> bar((std::ptrdiff_t)bx);",
        "      std::vector<std::thread> threads;",
        "      for (unsigned tx = 0; tx < bx; ++tx) {",
        "        threads.emplace_back([&, tx]() {",
        "          threadIdx = dim3(tx, 0, 0); blockIdx = dim3(bx_, by_, 0);",
        "          blockDim = dim3(bx, 1, 1); gridDim = dim3(gx, gy, 1);",
        "          mixir_block_barrier = &bar;",
        f"          {kernel}(" + ", ".join(args) + ");",
        "          bar.arrive_and_drop();",
        "        });",
        "      }",
        "      for (auto& th : threads) th.join();",
        "    }",
        "  }",
        "  return 0;",
        "}", ""])


_CACHE: dict = {}
_LOCK = threading.Lock()


_DIR: list = []            # [(pid, path)] of this process's private build directory
_STUB = "#pragma once\n// mixir CUDA emulation: stub (fp32 only)\n"


def _write_new(path: str, text: str) -> None:
    """Create ``path`` (which must not exist; never through a symlink) and write ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _check_private(d: str) -> None:
    """``d`` must be a real directory (not a symlink) owned by this user, with no access for the
    group or others: else ``EmulationError`` (nothing is built or loaded from it)."""
    try:
        st = os.lstat(d)
    except OSError as e:
        raise EmulationError(f"the CUDA emulation's private build directory {d} is gone ({e})") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise EmulationError(f"the CUDA emulation's private build directory {d} is no longer private "
                             f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}): not building "
                             f"or loading anything from it")


def _remove(pid: int, d: str) -> None:
    if os.getpid() == pid:               # not in a forked child
        shutil.rmtree(d, ignore_errors=True)


def _build_dir() -> str:
    """This process's private build directory (``mkdtemp``: 0700, created by this process), with
    the stub headers; owner and mode are checked on every call."""
    if not _DIR or _DIR[0][0] != os.getpid():
        d = tempfile.mkdtemp(prefix="mixir-cuda-emulation-")
        inc = os.path.join(d, "include")
        os.mkdir(inc, 0o700)
        for h in ("cuda_fp16.h", "cuda_bf16.h", "cuda_runtime.h"):
            _write_new(os.path.join(inc, h), _STUB)
        _DIR[:] = [(os.getpid(), d)]
        atexit.register(_remove, os.getpid(), d)
    d = _DIR[0][1]
    _check_private(d)
    _check_private(os.path.join(d, "include"))
    return d


class EmulatedKernel:
    """One ``__global__`` kernel of a generated CUDA C source, built for the host; call
    ``launch(grid, block, smem, *args)`` with CPU tensors for pointer parameters (contiguous, of
    the parameter's dtype; written in place) and Python numbers for scalar ones."""

    def __init__(self, source: str, kernel: str):
        why = available()
        if why:
            raise EmulationError(why)
        self.kernel = kernel
        self.params = _parse_kernel(source, kernel)
        unit = HEADER + source + "\n" + _driver(kernel, self.params)
        key = hashlib.sha256(unit.encode()).hexdigest()[:24]
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = _compile(unit, key)
        self.lib = _CACHE[key]
        self.fn = self.lib.mixir_emulate
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_longlong),
                            ctypes.POINTER(ctypes.c_double), ctypes.c_uint, ctypes.c_uint,
                            ctypes.c_uint, ctypes.c_ulonglong]

    def launch(self, grid, block: int, smem: int, *args):
        if len(args) != len(self.params):
            raise EmulationError(f"{self.kernel} takes {len(self.params)} arguments "
                                 f"({', '.join(p.name for p in self.params)}), got {len(args)}")
        ptrs, ints, reals, keep = [], [], [], []
        for p, a in zip(self.params, args):
            if p.pointer:
                if not isinstance(a, torch.Tensor) or a.device.type != "cpu" or not a.is_contiguous():
                    raise EmulationError(f"{self.kernel}: argument {p.name} must be a contiguous CPU tensor")
                want = _C_TORCH.get(p.ctype)
                if want is None or a.dtype != want:
                    raise EmulationError(f"{self.kernel}: argument {p.name} ({p.ctype}*) got {a.dtype}")
                keep.append(a)
                ptrs.append(a.data_ptr())
            elif p.ctype in ("float", "double"):
                reals.append(float(a))
            else:
                ints.append(int(a))
        gx, gy = (tuple(grid) + (1,))[:2] if isinstance(grid, (tuple, list)) else (int(grid), 1)
        if int(gx) == 0 or int(gy) == 0:
            return
        P = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        Ii = (ctypes.c_longlong * max(1, len(ints)))(*ints)
        Rr = (ctypes.c_double * max(1, len(reals)))(*reals)
        rc = self.fn(P, Ii, Rr, int(gx), int(gy), int(block), int(smem))
        if rc == 1:
            raise EmulationError(f"{self.kernel}: {smem} bytes of shared memory exceed the emulated "
                                 f"{SMEM_BYTES}")
        if rc != 0:
            raise EmulationError(f"{self.kernel}: bad block size {block}")


def _compile(unit: str, key: str):
    """Build ``unit`` in the private directory and load the library just built (never one that
    was already there)."""
    d = _build_dir()
    tag = f"k_{key}_{os.getpid()}_{threading.get_ident()}"
    cpp, so = os.path.join(d, tag + ".cpp"), os.path.join(d, tag + ".so")
    for p in (cpp, so):
        if os.path.lexists(p):
            os.unlink(p)
    _write_new(cpp, unit)
    cmd = [GXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w",
           f"-DMIXIR_SMEM_BYTES={SMEM_BYTES}", f"-I{os.path.join(d, 'include')}", cpp, "-o", so]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise EmulationError(f"g++ failed on the emulated CUDA source ({cpp}):\n{res.stderr[-4000:]}")
    _check_private(d)
    st = os.lstat(so)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise EmulationError(f"the emulated kernel library {so} is not the file g++ just built")
    return ctypes.CDLL(so)


def build(source: str, kernel: str) -> EmulatedKernel:
    """``EmulatedKernel(source, kernel)``."""
    return EmulatedKernel(source, kernel)


# ---- the RNN kernels of ``cuda.py``, launched as ``cuda.launcher_source``'s launcher does --

def rnn_forward(form, cell, mats, inits, B, T, H, D):
    """The fused CUDA C forward of ``cuda.generate(form, form.inputs, "float")`` run by the
    emulator with the launcher's configuration (grid ``(B, H)``, ``ceil32(D)`` threads,
    ``G·D²·4 + 4·D + 16`` bytes of dynamic shared memory). ``cell``: the cell's inputs in
    ``form.inputs`` order (CPU tensors ``[B, T, H, D]`` / ``[H, D]``), ``mats``: ``R_g`` as
    ``[H, D_in, D_out]``, ``inits``: ``[B, H, D]`` or None per state. Returns ``(out fp32
    [B, T, H, D], final states)``."""
    from . import cuda as rnn_cuda
    src = rnn_cuda.generate(form, form.inputs, "float")
    kern = EmulatedKernel(src, "rnn_fwd_" + re.sub(r"[^A-Za-z0-9_]", "_", form.mixer_name))
    xs = [x.float().contiguous() for x in cell]
    Rs = [R.float().contiguous() for R in mats]
    states = [(s.float().clone() if s is not None else torch.zeros((B, H, D))).contiguous() for s in inits]
    out = torch.empty((B, T, H, D), dtype=torch.float32)
    smem = len(form.gates) * D * D * 4 + 4 * D + 16
    kern.launch((B, H), threads_for(D), smem, *xs, *Rs, *states, out, T, H, D)
    return out, states


def emulated_launch(source: str):
    """The ``launch(kernel, grid, block, smem, *args)`` callable of
    ``rnn_cuda_train.RNNTraining`` on the emulator (kernels of ``source`` built on first use)."""
    kernels = {}

    def launch(kernel, grid, block, smem, *args):
        if kernel not in kernels:
            kernels[kernel] = EmulatedKernel(source, kernel)
        kernels[kernel].launch(grid, block, smem, *args)
    return launch


def emulated_training(form):
    """``RNNTraining`` of the fp32-R training kernels of ``form`` on the emulator: the host side
    the GPU runs (buffers, dR GEMM, parameter sums), with emulated launches."""
    from . import cuda as rnn_cuda
    k = rnn_cuda.generate_training(form, form.inputs, "float")
    return RNNTraining(form, form.inputs, k, emulated_launch(k.source), torch.float32)


class EmulatedRNNMixer:
    """A "compiled mixer" for ``mixir.testing.check`` whose forward and backward are the CUDA C
    training kernels run by the emulator (CPU tensors, fp32, no ``cu_seqlens``)."""

    def __init__(self, mixer):
        from ..family import classify
        self.mixer = mixer
        _, self.form = classify(mixer)
        self.training = emulated_training(self.form)

    def __call__(self, *arrays, initial_state=None, output_final_state=False, cu_seqlens=None,
                 strategy=None):
        if cu_seqlens is not None:
            raise EmulationError("the CUDA RNN kernels take no cu_seqlens")
        f, m = self.form, self.mixer
        env = {spec.name: a for spec, a in zip(m.inputs, arrays)}
        cell = [env[name] for name, _, _ in f.inputs]
        weights = [env[w] for w in f.weights]
        x0 = cell[[k for _, k, _ in f.inputs].index("input")]
        B, T, H, D = x0.shape[0], x0.shape[1], x0.shape[2], weights[0].shape[-1]
        S = len(f.states)
        inits = () if initial_state is None else (
            tuple(initial_state) if isinstance(initial_state, (tuple, list)) else (initial_state,))
        res = FusedCudaFunction.apply(self.training, (B, T, H, D), bool(inits), *cell, *weights, *inits)
        o, finals = res[0].to(x0.dtype), res[1:]
        if not output_final_state:
            return o
        return o, (finals[0] if S == 1 else tuple(finals))
