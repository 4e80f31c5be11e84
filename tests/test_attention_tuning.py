"""The attention tuning space (mixir/autotune/attention_space.py), the runtime's config choice
(mixir/attention/tiles.py, autotune/select.py) and `mixir tune attention:<mask>`."""
import pytest
import sympy as sp
import torch

import mixir.attention as A
from mixir.attention import library as L
from mixir.attention import tiles, tuning
from mixir.autotune import attention_space as asp
from mixir.autotune import db, hardware, select, solver, spaces
from mixir.errors import TuningError
from mixir.lowering.launch import record_launches


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
    with pytest.raises(TuningError, match="registers per thread") as e:
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
    model = select.tuned_attention_config(key, 64, "bf16", 4, 1024, 8, 0)
    assert model == asp.default_config("h100", "bf16", 64, B=4, T=1024, H=8)
    mine = {"BM": 128, "BN": 16, "num_warps": 8, "num_stages": 3}
    db.record(key, "h100", "bf16", 4, 1024, 8, 64, 64, "attention", mine, source="model")
    assert select.tuned_attention_config(key, 64, "bf16", 4, 1024, 8, 0) == mine
    # a database entry whose tiles contradict the given block size is not used
    fixed = select.tuned_attention_config(key, 64, "bf16", 4, 1024, 8, 0, {"BM": 32, "BN": 32})
    assert (fixed["BM"], fixed["BN"]) == (32, 32)


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
    from mixir.autotune.aot_check import CompiledConfig
    from mixir.lowering.aot import KernelResources

    def fake(mask, configs, arch, **kw):
        out = []
        for i, c in enumerate(configs):
            r = KernelResources("mixir.attention.x.fwd", arch, c["num_warps"], c["num_stages"],
                                200, 64 if i == 0 else 0, 1024, 0, ())
            out.append(CompiledConfig(dict(c), [r], []))
        return out
    monkeypatch.setattr(tuning, "compile_configs", fake)
    res = tuning.tune_library_mask("causal", "a100", B=2, T=512, H=4, D=64, top_k=2, write=False)
    r = res.results[0]
    assert r.candidates[0].dropped.startswith("fwd spills") and r.best is r.candidates[1]
    assert "dropped: fwd spills" in res.table()
