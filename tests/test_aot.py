"""Ahead-of-time builds: real Triton compiles for sm_80 / sm_90 on a machine without a GPU."""
import importlib.util
import sys
import textwrap

import pytest
import torch
import triton.language as tl

from mixir.errors import InputError, MixirError
from mixir.lowering.common import aot, ptxas
from mixir.lowering.common.launch import LaunchRecord, kernel, record_launches

pytestmark = pytest.mark.aot


@kernel
def aot_matmul(a, b, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.full((BM, BN), 0.0, tl.float32)   # tl.zeros is a @jit function: not interpretable here
    for k in range(0, K, BK):
        x = tl.load(a + rm[:, None] * K + (k + rk)[None, :],
                    mask=(rm[:, None] < M) & ((k + rk)[None, :] < K), other=0.0)
        y = tl.load(b + (k + rk)[:, None] * N + rn[None, :],
                    mask=((k + rk)[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(x, y)
    tl.store(c + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


_SIG = tuple(zip(aot_matmul.arg_names, ["*fp32"] * 3 + ["i32"] * 3 + ["constexpr"] * 3))


def _record(bm, bn, bk, num_warps, num_stages, kern=aot_matmul):
    """A launch record without running the interpreter (for big tiles / bad constexprs)."""
    return LaunchRecord(kern, _SIG, (("BM", bm), ("BN", bn), ("BK", bk)), num_warps, num_stages)


@pytest.fixture(scope="module", autouse=True)
def _fresh_cache(fresh_triton_cache):
    """Every run of this module exercises the real compile path."""
    return fresh_triton_cache


@pytest.fixture(scope="module")
def small_record():
    """Launch the kernel once on CPU (interpreter) and keep what record_launches collected."""
    torch.manual_seed(0)
    a, b = torch.randn(32, 32), torch.randn(32, 32)
    c = torch.empty(32, 32)
    with record_launches() as records:
        aot_matmul[(1, 1)](a, b, c, 32, 32, 32, BM=32, BN=32, BK=32, num_warps=4, num_stages=2)
    torch.testing.assert_close(c, a @ b, atol=1e-4, rtol=1e-4)
    (rec,) = records.values()
    assert rec.signature == _SIG and rec.constexprs == (("BM", 32), ("BN", 32), ("BK", 32))
    return rec


def test_parse_arch():
    for s in ("sm_90", "90", "sm90", 90, " SM_90 "):
        assert aot.parse_arch(s) == "sm_90"
    assert aot.parse_arch("sm_80") == "sm_80" and aot.ARCHS[aot.parse_arch("86")] == 86
    for bad in ("sm_70", "hopper", "", "sm_9", None, 9.0, True):
        with pytest.raises(InputError, match="architecture|arch must"):
            aot.parse_arch(bad)


def test_parsers():
    dump = textwrap.dedent("""
        Resource usage:
         Common:
          GLOBAL:0
         Function mm:
          REG:40 STACK:16 SHARED:1024 LOCAL:8 CONSTANT[0]:408 TEXTURE:0 SURFACE:0 SAMPLER:0
    """)
    usage = aot.parse_resource_usage(dump)
    assert usage["REG"] == 40 and usage["STACK"] == 16 and usage["SHARED"] == 1024 and usage["LOCAL"] == 8
    log = ("ptxas info    : Function properties for mm\n"
           "    5352 bytes stack frame, 12356 bytes spill stores, 11048 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 408 bytes cmem[0]\n")
    assert aot.parse_ptxas_log(log) == {"stack": 5352, "spill_stores": 12356,
                                        "spill_loads": 11048, "registers": 255}
    assert aot.parse_resource_usage("garbage") == {} and aot.parse_ptxas_log("") == {}


@pytest.mark.interp
def test_build_small_tile(small_record):
    r80 = aot.build(small_record, "sm_80")
    r90 = aot.build(small_record, "90")
    for r in (r80, r90):
        assert r.kernel == aot_matmul.name and r.num_warps == 4 and r.num_stages == 2
        assert r.constexprs == small_record.constexprs
        assert 0 < r.registers <= 255
        assert r.spills == 0 and r.spill_store_bytes == 0 and r.local_bytes == 0
        # a 2-stage tf32 dot stages its A and B tiles through shared memory: 2 x 32x32 fp32
        assert r.shared_bytes == 2 * 32 * 32 * 4
        assert r.fits
    assert (r80.arch, r90.arch) == ("sm_80", "sm_90")
    assert r80.static_shared_bytes == 0 and r90.static_shared_bytes == 1024   # sm_90 reserves 1 KiB
    # a second build comes from Triton's cache (+ the stored ptxas numbers) and agrees
    again = aot.build(small_record, "sm_80")
    assert again == r80 and again.compile_s < r80.compile_s
    table = aot.format_table([r80, r90])
    assert "sm_80" in table and "sm_90" in table and aot_matmul.name in table
    assert table.splitlines()[0].split()[:3] == ["kernel", "arch", "warps"]


def test_build_huge_tile_spills():
    # 64x64 fp32 accumulator held by one warp: 128 accumulator registers per thread + operands
    r = aot.build(_record(64, 64, 32, num_warps=1, num_stages=2), "sm_80")
    assert r.registers == 255
    assert r.spills > 0 and r.spill_store_bytes > 0 and r.spill_load_bytes > 0
    assert r.spills == r.spill_store_bytes + r.spill_load_bytes
    assert r.local_bytes > 0


def test_build_shared_above_limit():
    # 4 stages of 128x64 A and 64x128 B fp32 tiles: 3 buffered x 64 KiB = 192 KiB > 163 KiB on sm_80
    r = aot.build(_record(128, 128, 64, num_warps=4, num_stages=4), "sm_80")
    assert r.shared_bytes == 3 * (128 * 64 + 64 * 128) * 4
    assert r.shared_bytes > aot.MAX_SHARED_BYTES["sm_80"] and not r.fits
    assert "!" in aot.format_table([r])


def test_build_compile_error_names_kernel_and_arch():
    bad = _record(24, 32, 32, num_warps=4, num_stages=2)    # arange of 24: not a power of 2
    with pytest.raises(MixirError, match=r"aot_matmul.*sm_80[\s\S]*power of 2"):
        aot.build(bad, "sm_80")
    out = aot.build_all([bad], ["sm_80"], workers=0, errors="collect")
    assert len(out) == 1 and isinstance(out[0], MixirError)
    assert "error:" in aot.format_table(out)
    with pytest.raises(InputError):
        aot.build_all([bad], ["sm_80"], errors="ignore")


_GENERATED = '''
import triton.language as tl
from mixir.lowering.common.launch import kernel

@kernel
def generated_scale(x, y, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + offs, tl.load(x + offs, mask=offs < n) * alpha, mask=offs < n)
'''


@pytest.mark.interp
def test_build_all_workers(tmp_path, small_record):
    # a "generated" kernel imported from a cache directory by file path, under a module name no
    # other process can import: the worker must re-import it from its file
    path = tmp_path / "gen_cache_entry.py"
    path.write_text(_GENERATED)
    spec = importlib.util.spec_from_file_location("mixir_generated_test_xyz", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        x = torch.arange(10, dtype=torch.float32)
        y = torch.empty(10)
        with record_launches() as records:
            module.generated_scale[(1,)](x, y, 10, 2.0, BLOCK=16, num_warps=1, num_stages=1)
        torch.testing.assert_close(y, 2 * x)
        (gen,) = records.values()
    finally:
        sys.modules.pop(spec.name, None)
    bad = _record(24, 32, 32, num_warps=4, num_stages=2)

    out = aot.build_all([small_record, gen, bad], ["sm_80"], workers=2, errors="collect")
    assert [type(o) for o in out] == [aot.KernelResources, aot.KernelResources, MixirError]
    assert out[0] == aot.build(small_record, "sm_80")          # same numbers as in-process
    assert out[1].kernel.endswith("generated_scale") and out[1].registers > 0
    assert out[1].shared_bytes == 0 and out[1].spills == 0
    assert "sm_80" in str(out[2]) and "power of 2" in str(out[2])

    # a candidate past its timeout is killed (with its compiler) and reported, not waited for
    out = aot.build_all([_record(16, 16, 16, 1, 1)], ["sm_90"], workers=1, timeout_s=0.3,
                        errors="collect")
    assert isinstance(out[0], MixirError) and "timed out" in str(out[0])


@pytest.mark.interp
def test_missing_tools(small_record, monkeypatch):
    reference = aot.build(small_record, "sm_80")
    # without cuobjdump the register count comes from the ptxas -v numbers: the same
    real = ptxas._tool_path
    monkeypatch.setattr(ptxas, "_tool_path", lambda name: None if name == "cuobjdump" else real(name))
    assert aot.build(small_record, "sm_80") == reference
    # without ptxas nothing can be built: a clear error naming kernel and arch
    monkeypatch.setattr(ptxas, "_triton_bin", lambda name: None)
    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    with pytest.raises(MixirError, match=r"aot_matmul for sm_80: .*no ptxas"):
        aot.build(small_record, "sm_80")
