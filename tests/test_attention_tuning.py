"""The attention tuning space (mixir/lowering/attention/space.py), the runtime's config choice
(mixir/lowering/attention/tiles.py, autotune/select.py) and `mixir tune attention:<mask>`."""
import pytest
import sympy as sp
import torch

import mixir.attention as A
from mixir.library import attention as L
from mixir.lowering.attention import tiles, tuning
from mixir.lowering.attention import space as asp
from mixir.autotune import db, hardware, select, solver, space as spaces
from mixir.errors import TuningError
from mixir.lowering.common.launch import record_launches


def test_shared_memory_formula_is_stages_times_kv_tiles_plus_q_tile():
    fwd = asp.ATTENTION.kernels[0]
    D, ob = spaces.PK, spaces.ob
    expect = (spaces.S * (asp.BN * D + asp.BN * D) + asp.BM * D) * ob
    assert sp.simplify(fwd.smem - expect) == 0
    # registers: the fp32 accumulator BM x D spread over the threads is part of the estimate
    shp = asp.shape(8, 4096, 16, 128, "bf16")
    v = {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}
    acc_regs = 64 * 128 // (32 * 4)
    assert spaces.evaluate(fwd.regs, asp.ATTENTION, shp, v) >= acc_regs + asp.REG_OVERHEAD


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_head_dims_16_to_256_get_a_config_or_a_named_constraint(dtype):
    """On every GPU of the table: a feasible config (checked against every constraint), or a
    TuningError naming the binding constraint."""
    for gpu in hardware.GPUS.values():
        for D in (16, 24, 32, 64, 96, 128, 192, 256):
            try:
                cfg = asp.default_config(gpu, dtype, D, B=4, T=2048, H=8)
            except TuningError as e:
                assert any(w in str(e) for w in ("shared memory", "registers")), str(e)
                continue
            shp = asp.shape(1, 2048, 32, D, dtype)
            assert not spaces.violated(asp.ATTENTION, shp, gpu, cfg), (gpu.name, D, cfg)


def test_infeasible_head_dim_names_shared_memory_of_the_gpu():
    with pytest.raises(TuningError, match=r"D=1024 in bf16 .* needs >= 129 KiB of shared memory "
                                          r"per block; A10 has 99 KiB"):
        asp.default_config("a10", "bf16", 1024)
    # an H100 has the shared memory; what binds there is the register file
    with pytest.raises(TuningError, match="registers per block") as e:
        asp.default_config("h100", "bf16", 1024)
    assert "shared memory" not in str(e.value)


def test_64x64_fp32_is_excluded_and_fp32_default_is_measured_clean():
    shp = asp.shape(8, 4096, 16, 64, "fp32")
    gpu = hardware.get("a100")
    for w in (4, 8, 16):
        for s in (1, 2, 3, 4):
            assert spaces.violated(asp.ATTENTION, shp, gpu, {"BM": 64, "BN": 64, "num_warps": w,
                                                             "num_stages": s})
    cfg = asp.default_config(None, "fp32", 64, B=1, T=130, H=2)
    assert cfg["num_warps"] == asp.FP32_WARPS and cfg["num_stages"] >= 2


def test_solver_agrees_with_brute_force():
    shp = asp.shape(2, 1024, 8, 128, "bf16")
    gpu = hardware.get("a10")
    if not solver.available():
        pytest.skip("ortools not installed")
    got = solver.enumerate_feasible(asp.ATTENTION, shp, gpu, explain=False)
    assert got == spaces.feasible_bruteforce(asp.ATTENTION, shp, gpu) and got


def test_tile_profile_is_the_visited_fraction_of_each_tile_shape():
    m = L.sliding_window_mask(40)
    prof = asp.tile_profile(m, 1, 1, 200, tiles=(16, 32, 64))
    for (bm, bn), f in prof.items():
        bmask = A.create_block_mask(m, 1, 1, 200, 200, block_size=(bm, bn))
        assert f == pytest.approx(bmask.visited_fraction())
    assert asp.tile_profile(None, 1, 1, 64, tiles=(16,)) == {(16, 16): 1.0}


def test_flops_are_restricted_to_visited_tiles():
    """A 10 %-dense profile costs a tenth of the dense FLOPs."""
    shp = asp.shape(8, 4096, 16, 64, "bf16")
    prof = {(bm, bn): 0.1 for bm in (16, 32, 64, 128) for bn in (16, 32, 64, 128)}
    sparse = asp.make_space(prof)
    v = {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}
    for kd, ks in zip(asp.ATTENTION.kernels, sparse.kernels):
        dense_f = spaces.evaluate(kd.tc_flops, asp.ATTENTION, shp, v)
        sparse_f = spaces.evaluate(ks.tc_flops, sparse, shp, v)
        assert sparse_f == pytest.approx(0.1 * dense_f)
    assert sparse.name != asp.ATTENTION.name


def test_cpu_uses_small_tiles_and_a_recording_uses_the_tuner():
    q = torch.zeros(1, 40, 2, 64)
    assert tiles.choose(q, "k", 40) == tiles.CPU_CONFIG
    assert tiles.choose(q, "k", 40, block=(16, 64))["BN"] == 64
    with record_launches():
        got = tiles.choose(q.to(torch.bfloat16), "k", 40)
    assert got == asp.default_config(None, "bf16", 64, B=1, T=40, H=2)


def test_select_reads_the_database_then_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path))
    monkeypatch.setattr(select, "_gpu_for", lambda i: hardware.get("h100"))
    key = L.causal_mask().key

    def gpu_config(BM=0, BN=0):     # what tiles.choose asks for on "cuda:0"
        return dict(zip(tiles.KEYS, tiles.gpu_config(0, key, "bf16", 64, 4, 1024, 8, BM, BN)))
    model = gpu_config()
    assert model == asp.default_config("h100", "bf16", 64, B=4, T=1024, H=8)
    mine = {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 3}       # valid, not the model's
    assert mine != model
    db.record(key, "h100", "bf16", 4, 1024, 8, 64, 64, "attention", mine, source="model")
    assert gpu_config() == mine
    # a database entry whose tiles contradict the given block size is not used
    fixed = gpu_config(32, 32)
    assert (fixed["BM"], fixed["BN"]) == (32, 32)
    assert fixed == asp.default_config("h100", "bf16", 64, B=4, T=1024, H=8, fixed={"BM": 32, "BN": 32})


def test_mixir_tune_attention_without_aot(tmp_path, capsys, monkeypatch):
    from mixir.cli import main
    assert main(["tune", "attention:sliding_window:128", "--no-aot", "--db", str(tmp_path),
                 "--shapes", "B=2,T=1024,H=4,K=64", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "== attention:sliding_window(128) attention on H100-SXM" in out and "chosen (model)" in out
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path))
    cfg = db.lookup(L.sliding_window_mask(128).key, "h100", "bf16", 2, 1024, 4, K=64, V=64,
                    strategy="attention")
    assert cfg is not None and set(cfg) == set(tiles.KEYS)


def test_tune_with_aot_drops_spilling_configs(monkeypatch):
    """The AOT round compiles the candidates; one that spills is dropped, the next one wins."""
    from mixir.lowering.common.aot import KernelResources
    from mixir.lowering.common.candidates import CompiledConfig
    from mixir.tuning import tune_library_mask

    def fake(mask, configs, arch, **kw):
        out = []
        for i, c in enumerate(configs):
            r = KernelResources("mixir.attention.x.fwd", arch, c["num_warps"], c["num_stages"],
                                200, 64 if i == 0 else 0, 1024, 0, ())
            out.append(CompiledConfig(dict(c), [r], []))
        return out
    monkeypatch.setattr(tuning, "compile_configs", fake)
    res = tune_library_mask("causal", gpu="a100", B=2, T=512, H=4, K=64, top_k=2, write=False)
    r = res.results[0]
    assert r.candidates[0].dropped.startswith("fwd spills") and r.best is r.candidates[1]
    assert "dropped: fwd spills" in res.table()


# ---- the cost model: what a FlashAttention-2 forward pays (docs/attention.md, "Cost model") ------
def test_mma_fraction_counts_16_rows_per_warp():
    frac = lambda rows, w, dt="bf16": spaces.evaluate(   # noqa: E731
        asp.mma_fraction(rows), asp.ATTENTION, asp.shape(1, 1024, 1, 64, dt),
        {"BM": 16, "BN": 16, "num_warps": w, "num_stages": 2})
    assert frac(asp.BM, 4) == pytest.approx(0.25)        # BM = 16 with 4 warps: 3 warps repeat
    assert frac(asp.BM, 8) == pytest.approx(0.125)
    assert frac(asp.BM * 4, 4) == 1 and frac(asp.BM * 8, 4) == 1
    assert frac(asp.BM, 4, "fp32") == 1                  # FMA dots: no MMA rows


def test_streamed_kv_bytes_scale_with_query_tiles():
    """Every query tile streams all its K/V tiles: the forward's bytes grow as 1/BM."""
    shp = asp.shape(1, 4096, 1, 128, "bf16")
    fwd = asp.ATTENTION.kernels[0]
    by = {bm: spaces.evaluate(fwd.bytes_moved, asp.ATTENTION, shp,
                              {"BM": bm, "BN": 64, "num_warps": 4, "num_stages": 2}) for bm in (16, 128)}
    streamed = lambda bm: (4096 // bm) * 4096 * 2 * 128 * 2 / asp.L2_OVER_HBM   # noqa: E731
    assert by[16] - by[128] == pytest.approx(streamed(16) - streamed(128))


@pytest.mark.parametrize("gpu", ["h100", "a100", "l4"])
def test_16_bit_picks_fill_the_tensor_cores(gpu):
    """No tiny tiles: for D = 32 ... 128 the forward's pick has BM >= 64 and at least half of the
    warps do distinct MMA work (BM >= 8 num_warps: D = 128 needs 8 warps for 64 x 64 tiles, whose
    dK/dV spills with 4), and it beats 16 x 16 by the model."""
    from mixir.autotune import cost
    g = hardware.get(gpu)
    for D in (32, 64, 128):
        for dt in ("bf16", "fp16"):
            cfg = asp.default_config(gpu, dt, D, B=8, T=4096, H=16)
            assert cfg["BM"] >= 64 and 2 * cfg["BM"] >= 16 * cfg["num_warps"], (gpu, D, dt, cfg)
            shp = asp.shape(8, 4096, 16, D, dt)
            tiny = cost.predict(asp.ATTENTION, shp, g, {"BM": 16, "BN": 16, "num_warps": 4,
                                                         "num_stages": 2})
            assert cost.predict(asp.ATTENTION, shp, g, cfg).time_s < 0.7 * tiny.time_s


def test_causal_profile_pick_on_h100_is_not_16x16():
    """The issue's case: D = 128, bf16, causal, T = 4096 on H100 (cost model + the mask's profile)."""
    from mixir.autotune import cost
    prof = asp.tile_profile(L.causal_mask(), 1, 1, 4096)
    space = asp.make_space(prof)
    shp = asp.shape(8, 4096, 16, 128, "bf16")
    best = cost.rank(space, shp, hardware.get("h100"), asp.feasible(space, shp, hardware.get("h100")))[0][0]
    assert best["BM"] >= 64 and (best["BM"], best["BN"]) != (16, 16), best


# ---- the runtime's picks build without spills (ptxas via lowering.aot) --------------------------
_PICK_SHAPES = ((8, 4096, 16), (1, 130, 2))     # the shape; the AOT test's recording shape


def _picks(D, dtype):
    """{config: [archs]}: the runtime's model picks for A100 (what a recording uses: built for
    sm_80 and sm_90) and H100 (built for sm_90) at the shapes above."""
    out = {}
    for B_, T_, H_ in _PICK_SHAPES:
        for gpu, archs in (("a100", ("sm_80", "sm_90")), ("h100", ("sm_90",))):
            cfg = asp.default_config(gpu, dtype, D, B=B_, T=T_, H=H_)
            key = tuple(cfg[k] for k in tiles.KEYS)
            out.setdefault(key, set()).update(archs)
    return out


def _build_picks(cases):
    from mixir.lowering.common import aot
    table = []
    for D, dtype in cases:
        for key, archs in _picks(D, dtype).items():
            cfg = dict(zip(tiles.KEYS, key))
            recs = tuning.record_config(L.causal_mask(), cfg, dtype=dtype, D=D)
            res = aot.build_all(recs, sorted(archs), errors="collect", workers=0)
            bad = [r for r in res if not isinstance(r, aot.KernelResources)]
            assert not bad, bad
            table += [(D, dtype, cfg, r) for r in res]
    print("\n".join(f"D={D} {dt} {c}: {r.kernel.rsplit('.', 1)[-1]} {r.arch} {r.registers} regs "
                    f"{r.spills} B spills" for D, dt, c, r in table))
    spilled = [(D, dt, c, r.kernel.rsplit(".", 1)[-1], r.arch, r.registers, r.spills)
               for D, dt, c, r in table if r.spills or not r.fits]
    assert not spilled, spilled


@pytest.mark.slow   # many AOT builds; tests/test_family_contract.py builds one declaration per family in the fast lane
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.aot
@pytest.mark.interp
def test_runtime_pick_builds_without_spills_d128(fresh_triton_cache):
    """The representative case (D = 128 bf16, where the old picks spilled)."""
    _build_picks([(128, "bf16")])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.aot
@pytest.mark.interp
def test_runtime_picks_build_without_spills(fresh_triton_cache):
    _build_picks([(32, "bf16"), (64, "bf16"), (128, "bf16"), (64, "fp32"), (64, "fp16")])
