"""The LTI kernels' tuning space (``mixir.lowering.lti.space``): sympy formulas, the CP-SAT
enumeration against brute force, the runtime's tile choice (CPU default, recordings and CUDA:
database → cost model), the default configs built ahead of time with no spills (sm_80, sm_90,
fp32 and fp64), and the memory of kernel generation (no N × L buffer)."""
import os
import sys

import numpy as np
import pytest
import sympy as sp
import torch

import mixir as mx
from mixir.autotune import db, hardware, select, space as spaces
from mixir.lowering.lti import space as lti_space
from mixir.library import lti
from mixir.lowering.common import aot
from mixir.lowering.lti import kernels as lti_kernels
from mixir.lowering.common.launch import LaunchRecord, record_launches

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

A100, H100 = hardware.get("A100-80GB"), hardware.get("H100-SXM")
#: the reference shapes whose default configs are built ahead of time (S4: rank 4, Q = 25)
REF = {"vandermonde": dict(R=8, Q=1, N=64, L=4096), "cauchy": dict(R=8, Q=25, N=64, L=2049)}


def test_formulas_are_sympy_with_re_im_accumulators_and_fp64_words():
    for kind in lti_space.KINDS:
        sp_ = lti_space.space(kind)
        assert [k.name for k in sp_.kernels] == (
            ["lti_vandermonde_fwd", "lti_vandermonde_red"] if kind == "vandermonde"
            else ["lti_cauchy_fwd", "lti_cauchy_bwd"])
        assert {str(s) for s in sp_.params} == {"BN", "BL", "num_warps", "num_stages"}
        for k in sp_.kernels:
            assert isinstance(k.live_fp32, sp.Expr) and {lti_space.BN, lti_space.BL} <= k.live_fp32.free_symbols
            assert spaces.db in k.live_fp32.free_symbols          # fp64 tiles take two registers
    cfg = {"BN": 32, "BL": 128, "num_warps": 4, "num_stages": 1}
    r32 = lti_space.predicted("cauchy", lti_space.shape(8, 25, 64, 4096), cfg)
    r64 = lti_space.predicted("cauchy", lti_space.shape(8, 25, 64, 4096, "fp64"), cfg)
    assert abs(r64["regs"] - 2 * r32["regs"]) <= 1        # every word and the overhead doubled
    # the re/im accumulators: the Cauchy forward holds two BL vectors, the Vandermonde one
    fwd_c, fwd_v = lti_space.space("cauchy").kernels[0], lti_space.space("vandermonde").kernels[0]
    d = sp.expand(fwd_c.live_fp32 - fwd_v.live_fp32)
    assert d.coeff(lti_space.BL) != 0


@pytest.mark.parametrize("kind", lti_space.KINDS)
@pytest.mark.parametrize("compute", ["fp32", "fp64"])
def test_cp_sat_enumeration_equals_bruteforce(kind, compute):
    from mixir.autotune import solver
    if not solver.available():
        pytest.skip("ortools not installed")
    shp = lti_space.shape(**REF[kind], compute=compute)
    sp_ = lti_space.space(kind)
    brute = spaces.feasible_bruteforce(sp_, shp, A100)
    assert brute and brute == solver.enumerate_feasible(sp_, shp, A100)
    # every feasible config is predicted to fit; the largest tiles do not (fp64 even less)
    big = {"BN": 128, "BL": 1024, "num_warps": 1, "num_stages": 1}
    assert big not in brute and spaces.violated(sp_, shp, A100, big)
    if kind == "vandermonde" and compute == "fp32":     # measured AOT spills are excluded
        for bn, bl, w in lti_space.VANDERMONDE_FP32_SPILLS:
            assert {"BN": bn, "BL": bl, "num_warps": w, "num_stages": 1} not in brute


def test_default_configs_respect_the_shape_and_the_gpu():
    for kind in lti_space.KINDS:
        for compute in ("fp32", "fp64"):
            for gpu in (A100, H100):
                cfg = lti_space.default_config(kind, compute, **REF[kind], gpu=gpu)
                assert set(cfg) == {"BN", "BL", "num_warps", "num_stages"}
                res = lti_space.predicted(kind, lti_space.shape(**REF[kind], compute=compute), cfg)
                assert res["regs"] <= 255 and res["regs"] * res["threads"] <= 65536
        small = lti_space.default_config(kind, R=2, Q=1, N=5, L=20)     # tiles clamp to the shape
        assert small["BN"] <= 8 and small["BL"] <= 32


@pytest.mark.interp
def test_runtime_tiles_cpu_default_recording_and_user_config():
    e = lti.LTI_ENTRIES["s4d"]
    rng = np.random.default_rng(0)
    arrays = [torch.tensor(a, dtype=torch.float32) for a in e.make_inputs(rng, B=1, T=40, H=2, K=6, V=6)]
    fn = mx.compile(e.mixer)
    # CPU, no recording: the interpreter's fixed tiles
    assert lti_kernels.launch_config("vandermonde", 2, 1, 6, 39, torch.float32, torch.device("cpu")) \
        == lti_kernels.cpu_config(6, 39)
    # a recording (what a GPU would run): the cost model's choice for the reference GPU
    with record_launches() as recs:
        fn(*arrays, strategy="conv")
    # the Vandermonde launch (the other: the parameter trees' generated kernel)
    (rec,) = [r for r in recs.values() if "vandermonde" in r.kernel.name]
    want = lti_space.gpu_config(-1, "vandermonde", "fp32", 2, 1, 6, 39)
    got = dict(rec.constexprs)
    assert (got["BLOCK_N"], got["BLOCK_L"], rec.num_warps, rec.num_stages) == \
        (want["BN"], want["BL"], want["num_warps"], want["num_stages"])
    # a user config wins, key by key
    user = {"BN": 8, "BL": 64, "num_warps": 2, "num_stages": 1}
    with record_launches() as recs:
        y = mx.compile(e.mixer, config=user)(*arrays, strategy="conv")
    (rec,) = [r for r in recs.values() if "vandermonde" in r.kernel.name]
    assert dict(rec.constexprs)["BLOCK_L"] == 64 and rec.num_warps == 2
    torch.testing.assert_close(y, fn(*arrays, strategy="conv"), rtol=1e-5, atol=1e-5)


def test_cuda_selection_reads_the_database_then_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path))
    monkeypatch.setattr(select, "_gpu_for", lambda idx: H100)
    args = ("vandermonde", "fp32", 8, 1, 64, 4096, 0)
    model = lti_space.tuned(*args)
    assert model == lti_space.default_config("vandermonde", R=8, N=64, L=4096, gpu=H100)
    tuned = {"BN": 16, "BL": 256, "num_warps": 8, "num_stages": 2}
    db.record("lti_vandermonde", H100, "fp32", 1, 4096, 8, 64, 1, "lti_vandermonde", tuned,
              source="timed")
    assert lti_space.tuned(*args) == tuned
    # fp64 has no database key: the model's choice
    assert lti_space.tuned("vandermonde", "fp64", 8, 1, 64, 4096, 0) == \
        lti_space.default_config("vandermonde", "fp64", R=8, N=64, L=4096, gpu=H100)


# ---- ahead-of-time: the default configs build with no spills -----------------------------------

_PTRS = {"lti_vandermonde_fwd": 5, "lti_vandermonde_red": 7, "lti_cauchy_fwd": 8, "lti_cauchy_bwd": 12}


def _record(kernel, dt, cfg):
    """The LaunchRecord of ``kernel`` with pointers of dtype ``dt`` and the tiles of ``cfg``."""
    name = kernel.name.rsplit(".", 1)[-1]
    sig, ce = [], []
    for i, n in enumerate(kernel.arg_names):
        if i < _PTRS[name]:
            sig.append((n, "*" + dt))
        elif n in kernel.constexpr_names:
            v = {"BLOCK_N": cfg["BN"], "BLOCK_L": cfg["BL"], "WITH_P": True}[n]
            sig.append((n, "constexpr"))
            ce.append((n, v))
        else:
            sig.append((n, "i32"))
    return LaunchRecord(kernel, tuple(sig), tuple(ce), cfg["num_warps"], cfg["num_stages"])


def _default_records(shapes):
    out = {}
    for kind, shape in shapes:
        kernels = lti_kernels.KERNELS[:2] if kind == "vandermonde" else lti_kernels.KERNELS[2:4]
        for dt in ("fp32", "fp64"):
            cfg = lti_space.default_config(kind, dt, **shape)
            for k in kernels:
                rec = _record(k, dt, cfg)
                out[rec.key()] = (rec, kind, dt, shape, cfg)
    return list(out.values())


def _check_built(entries, archs):
    results = aot.build_all([e[0] for e in entries], archs, workers=0)
    for i, (rec, kind, dt, shape, cfg) in enumerate(entries):
        pred = lti_space.predicted(kind, lti_space.shape(**shape, compute=dt), cfg)
        for r in results[i * len(archs):(i + 1) * len(archs)]:
            assert r.spills == 0 and r.fits, (kind, dt, cfg, aot.format_table([r]))
            assert r.registers <= pred["regs"], (kind, dt, cfg, r.registers, pred)
            assert r.total_shared_bytes <= pred["smem"], (kind, dt, cfg, r.total_shared_bytes, pred)
    return results


@pytest.mark.slow   # many AOT builds; tests/test_family_contract.py builds one declaration per family in the fast lane
@pytest.mark.aot
def test_default_configs_build_without_spills(fresh_triton_cache):
    """The reference shapes' default configs (sm_80 cost model) for fp32 and fp64, built for
    sm_80 and sm_90: no spills, and registers / shared memory within the space's predictions."""
    entries = _default_records(REF.items())
    results = _check_built(entries, ["sm_80", "sm_90"])
    print("\n" + aot.format_table(results))


@pytest.mark.slow
@pytest.mark.aot
def test_default_configs_over_shapes_build_without_spills(fresh_triton_cache):
    shapes = [(kind, dict(R=R, Q=Q, N=N, L=L)) for kind, Q in (("vandermonde", 1), ("cauchy", 25))
              for N in (8, 64, 1000) for L in (256, 65536) for R in (1, 64)]
    _check_built(_default_records(shapes), ["sm_80", "sm_90"])


# ---- memory of kernel generation -----------------------------------------------------------------

@pytest.mark.interp
def test_kernel_generation_memory_has_no_n_by_l_buffer():
    """Peak bytes of torch's allocator while generating the S4D kernel (N = 64 modes, L = 4096,
    one channel): far below the N × L Vandermonde matrix (N·L·8 bytes as complex64), which the
    materialised computation does allocate (the measurement can see it)."""
    from bench_lti import systems, torch_cpu_peak_bytes, vandermonde_naive

    from mixir.lowering.lti.system import kernel_powers
    N, L = 64, 4096
    s4d, s4 = systems(1, N, torch.device("cpu"))
    with torch.no_grad():
        ours, _ = torch_cpu_peak_bytes(lambda: kernel_powers(s4d, s4d.beta, L))
        naive, _ = torch_cpu_peak_bytes(lambda: vandermonde_naive(s4d, L))
        dplr, _ = torch_cpu_peak_bytes(lambda: kernel_powers(s4, s4.beta, L))
    assert ours is not None and naive is not None, "torch.profiler memory events unreadable"
    assert naive >= N * L * 8                     # the N x L matrix is there, and seen
    assert ours < N * L * 8 / 20, (ours, N * L * 8)
    # S4 (DPLR, rank 4): O(N² + r²·L) — the 2N × 2N transition and the Woodbury terms, not N × L
    assert dplr < N * L * 8, (dplr, N * L * 8)
