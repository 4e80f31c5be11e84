"""The CUDA C lowering of the fused RNN forward: generated from the cell's IR, compiled with
``nvcc -arch=sm_80|sm_90 -c`` when nvcc is on PATH (or in the Triton wheel); skipped otherwise."""
import os
import shutil
import subprocess

import pytest

from mixir.library.rnn import RNN_MIXERS
from mixir.lowering.family import classify
from mixir.lowering.rnn.cuda import generate, shared_bytes


def _nvcc():
    path = shutil.which("nvcc")
    if path:
        return path
    try:
        import triton
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvcc")
        return cand if os.path.exists(cand) else None
    except ImportError:
        return None


NVCC = _nvcc()


def nvcc_builds(fast):
    """(cell, recurrent-weight type, arch) of nvcc builds: every cell for sm_80 and sm_90; the
    (cell, arch) pairs in ``fast`` in the fast lane, the rest in the slow lane."""
    return [pytest.param(n, r, a, id=f"{n}-{r}-{a}", marks=() if (n, a) in fast else pytest.mark.slow)
            for n, r in [("lstm", "__nv_bfloat16"), ("gru", "__half"), ("slstm", "float"),
                         ("elman", "__nv_bfloat16")]
            for a in ("sm_80", "sm_90")]


def _source(name, r_type="__nv_bfloat16"):
    m = RNN_MIXERS[name].mixer
    _, plan = classify(m)
    return plan, generate(plan, plan.inputs, r_type)


@pytest.mark.parametrize("name", ["lstm", "gru", "elman", "slstm"])
def test_source_is_generated_from_the_ir(name):
    plan, src = _source(name)
    assert f"rnn_fwd_{name}" in src and "__syncthreads" in src
    assert src.count("const rtype* __restrict__ R") == len(plan.gates)
    assert "Do not edit" in src and "tanhf" in src or "__expf" in src


def test_shared_memory_of_the_resident_weights():
    assert shared_bytes(4, 256, 2) == 4 * 256 * 256 * 2 + 1024     # 513 KiB: beyond one SM
    assert shared_bytes(4, 128, 2) <= 227 * 1024                    # fits an H100 block


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH nor in the Triton wheel")
@pytest.mark.aot
@pytest.mark.parametrize("name,r_type,arch", nvcc_builds({("lstm", "sm_80"), ("gru", "sm_90")}))
def test_generated_cuda_compiles(tmp_path, name, r_type, arch):
    _, src = _source(name, r_type)
    cu = tmp_path / f"{name}.cu"
    cu.write_text(src)
    res = subprocess.run([NVCC, f"-arch={arch}", "-c", str(cu), "-o", str(tmp_path / f"{name}.o")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


# ---- the load_inline launcher (strategy "fused_cuda") -------------------------------------------

def test_launcher_source_and_cpu_refusal():
    import torch
    import mixir as mx
    from mixir.errors import InputError
    from mixir.lowering.rnn.cuda import launcher_source
    plan, _ = _source("lstm")
    decl, src = launcher_source(plan, plan.inputs, "__nv_bfloat16")
    assert decl.startswith("void launch(") and "cudaFuncAttributeMaxDynamicSharedMemorySize" in src
    assert src.count("reinterpret_cast<const rtype*>(Rs[") == len(plan.gates)
    assert "getCurrentCUDAStream" in src and "C10_CUDA_KERNEL_LAUNCH_CHECK" in src
    m = RNN_MIXERS["elman"].mixer
    x, R, b = torch.randn(1, 3, 1, 8), torch.randn(1, 8, 8), torch.randn(1, 8)
    with pytest.raises(InputError, match="needs CUDA tensors"):
        mx.compile(m)(x, R, b, strategy="fused_cuda")


def _torch_includes():
    from torch.utils.cpp_extension import include_paths
    return [f"-I{p}" for p in include_paths()]


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH nor in the Triton wheel")
@pytest.mark.aot
def test_launcher_compiles_against_torch_headers(tmp_path):
    """The exact CUDA source ``load_inline`` builds, compiled with nvcc -c (kernel + launcher)."""
    from mixir.lowering.rnn.cuda import launcher_source
    plan, _ = _source("gru")
    _, src = launcher_source(plan, plan.inputs, "__half")
    cu = tmp_path / "gru_launch.cu"
    cu.write_text(src)
    # a CPU-only torch wheel lacks this generated header of CUDA builds (one macro): stub it
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    res = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-c", str(cu), "-o", str(tmp_path / "g.o")]
                         + _torch_includes() + [f"-I{tmp_path / 'stub'}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype", [("lstm", "bfloat16"), ("gru", "float32"), ("slstm", "float16"),
                                        ("elman", "float32")])
def test_fused_cuda_matches_reference(name, dtype):
    """The load_inline-built CUDA C forward on a GPU against the float64 reference (inference:
    no gradients, the forward kernel alone)."""
    import torch
    import mixir as mx
    from mixir.testing.checker import assert_close, check
    from test_rnn import inputs
    m = RNN_MIXERS[name].mixer
    arrays, h0 = inputs(name, B=3, T=40, H=2, D=48, seed=1)
    assert_close(check(m, mx.compile(m), arrays, dtype=getattr(torch, dtype), strategy="fused_cuda",
                       initial_state=h0, grads=False, device="cuda"))


# ---- training through the CUDA C kernels (strategy "fused_cuda" with gradients) ----------------

def test_training_launcher_source_casts_by_the_kernel_signatures():
    """``rnn_cuda_train.launcher_source``: one ``launch_kernel`` for both training kernels, every
    pointer cast to its parameter's type (R in the R type), the ints in order, shared memory
    opted in above 48 KiB, the current stream. (The host glue around it is the one the CPU
    emulator runs: tests/test_rnn_cuda_emulated.py.)"""
    from mixir.lowering.rnn import cuda as rnn_cuda, cuda_train as ct
    plan, _ = _source("lstm")
    k = rnn_cuda.generate_training(plan, plan.inputs, "__nv_bfloat16")
    decl, src = ct.launcher_source(k)
    assert decl.startswith("void launch_kernel(")
    for name in (k.fwd, k.bwd):
        params = ct.kernel_params(k.source, name)
        n_ptr = sum(p.pointer for p in params)
        assert f"ptrs.size() == {n_ptr}" in src and f"{name}<<<grid" in src
        assert [p.ctype for p in params if not p.pointer] == ["int", "int", "int"]
    assert src.count("reinterpret_cast<const __nv_bfloat16*>") == 2 * len(plan.gates)
    assert src.count("cudaFuncAttributeMaxDynamicSharedMemorySize") == 2
    assert "getCurrentCUDAStream" in src and "C10_CUDA_KERNEL_LAUNCH_CHECK" in src


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH nor in the Triton wheel")
@pytest.mark.aot
def test_training_launcher_compiles_against_torch_headers(tmp_path):
    from mixir.lowering.rnn import cuda as rnn_cuda, cuda_train as ct
    plan, _ = _source("gru")
    _, src = ct.launcher_source(rnn_cuda.generate_training(plan, plan.inputs, "__half"))
    cu = tmp_path / "gru_train.cu"
    cu.write_text(src)
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    res = subprocess.run([NVCC, "-arch=sm_80", "-std=c++17", "-c", str(cu), "-o", str(tmp_path / "g.o")]
                         + _torch_includes() + [f"-I{tmp_path / 'stub'}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype", [("lstm", "float32"), ("gru", "bfloat16"), ("slstm", "float32")])
def test_fused_cuda_training_matches_reference(name, dtype):
    """Forward and every gradient of ``strategy="fused_cuda"`` on a GPU against the float64
    reference (D = 48: not a multiple of 32, idle threads in the last warp)."""
    import torch
    import mixir as mx
    from mixir.testing.checker import assert_close, check
    from test_rnn import inputs
    m = RNN_MIXERS[name].mixer
    arrays, h0 = inputs(name, B=3, T=40, H=2, D=48, seed=2)
    assert_close(check(m, mx.compile(m), arrays, dtype=getattr(torch, dtype), strategy="fused_cuda",
                       initial_state=h0, device="cuda"))
