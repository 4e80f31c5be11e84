"""The CUDA C lowering of the fused RNN forward: generated from the cell's IR, compiled with
``nvcc -arch=sm_80|sm_90 -c`` when nvcc is on PATH (or in the Triton wheel); skipped otherwise."""
import os
import shutil
import subprocess

import pytest

from mixir.library.rnn import RNN_MIXERS
from mixir.lowering.families import classify
from mixir.lowering.rnn_cuda import generate, shared_bytes


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
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name,r_type", [
    ("lstm", "__nv_bfloat16"), ("gru", "__half"),
    pytest.param("slstm", "float", marks=pytest.mark.slow),
    pytest.param("elman", "__nv_bfloat16", marks=pytest.mark.slow)])
def test_generated_cuda_compiles(tmp_path, name, r_type, arch):
    _, src = _source(name, r_type)
    cu = tmp_path / f"{name}.cu"
    cu.write_text(src)
    res = subprocess.run([NVCC, f"-arch={arch}", "-c", str(cu), "-o", str(tmp_path / f"{name}.o")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
