"""The Householder (delta-rule) templates in the autotuner (mixir/lowering/householder/space.py): the
CP-SAT enumeration equals the brute-force filter, the template defaults are feasible in the model,
infeasible requests name the binding constraint, the resource model bounds one real AOT build,
the runtime takes its config from the database / the model on CUDA tensors only, and
``mixir tune delta_rule`` writes a database entry."""
import dataclasses
import json
import os

import pytest
import torch

from mixir.autotune import db, hardware, select, space as spaces
from mixir.lowering.householder import space as ds
from mixir.errors import TuningError
from mixir.library import MIXERS
from mixir.lowering.householder import core as delta_core
from mixir.tuning import request, tune

pytest.importorskip("ortools")
from mixir.autotune import solver  # noqa: E402
from mixir.lowering.gated_linear import space as gla_space


def _values(strategy, K, V, dtype):
    """delta_core.default_config as a point of the space (the K-tile as the template clips it)."""
    cfg = delta_core.default_config(strategy, K, V, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    if strategy == "chunked":
        cfg["BKT"] = min(cfg["BK"], cfg["BKT"])
    return {str(p): int(cfg[str(p)]) for p in ds.space(strategy).params}


@pytest.mark.parametrize("strategy,K,V,dtype,gpu", [
    ("chunked", 64, 64, "bf16", "h100"), ("chunked", 128, 128, "fp32", "a100"),
    ("chunked", 32, 256, "bf16", "rtx4090"), ("recurrent", 64, 64, "bf16", "h100"),
    ("recurrent", 128, 128, "fp32", "l4")])
def test_cpsat_enumeration_equals_brute_force(strategy, K, V, dtype, gpu):
    shape = ds.shape(8, 4096, 16, K, V, dtype)
    g = hardware.get(gpu)
    sp_ = ds.space(strategy)
    assert sp_ is ds.SPACES[strategy] and sp_.name == f"delta_{strategy}"
    assert sp_.name not in {s.name for s in gla_space.SPACES.values()}
    got = solver.enumerate_feasible(sp_, shape, g)
    assert got == spaces.feasible_bruteforce(sp_, shape, g)
    assert got and all(not spaces.violated(sp_, shape, g, c) for c in got)


@pytest.mark.parametrize("gpu", ["a100", "h100"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("K", [64, 128])
@pytest.mark.parametrize("strategy", ["chunked", "recurrent"])
def test_template_defaults_are_feasible_in_the_model(strategy, K, dtype, gpu):
    """delta_core.default_config builds without spills for sm_90 at K = V = 64, 128 (and for sm_80
    but the 16-bit chunked one: tests/test_householder_aot.py): the model must not call it
    infeasible. The 16-bit chunked default's 64-token chunks need warpgroup MMA: on an A100 that is
    the one constraint it violates (the model picks BT ≤ 32 there)."""
    shape = ds.shape(8, 4096, 16, K, K, dtype)
    vals = _values(strategy, K, K, dtype)
    bad = spaces.violated(ds.space(strategy), shape, hardware.get(gpu), vals)
    if strategy == "chunked" and dtype == "bf16" and hardware.get(gpu).cc < 90:
        assert [c.name for c in bad] == ["bt64_needs_wgmma"]
        assert not spaces.violated(ds.space(strategy), shape, hardware.get(gpu), dict(vals, BT=32))
        return
    assert not bad, [c.name for c in bad]


def test_the_model_reflects_the_dtype():
    """fp32 inputs run tf32x3 dots (fp32 operands, split in two) where 16-bit inputs take 16-bit
    operands: the same tiles need more registers than with bf16 inputs, and fewer chunked configs
    are feasible."""
    g = hardware.get("h100")
    vals = _values("chunked", 128, 128, "bf16")
    r16 = spaces.resources(ds.CHUNKED, ds.shape(8, 4096, 16, 128, 128, "bf16"), vals)["regs"]
    r32 = spaces.resources(ds.CHUNKED, ds.shape(8, 4096, 16, 128, 128, "fp32"), vals)["regs"]
    assert r32 > r16
    n16 = len(spaces.feasible_bruteforce(ds.CHUNKED, ds.shape(8, 4096, 16, 64, 64, "bf16"), g))
    n32 = len(spaces.feasible_bruteforce(ds.CHUNKED, ds.shape(8, 4096, 16, 64, 64, "fp32"), g))
    assert n32 < n16


def test_infeasible_requests_name_the_binding_constraint():
    # the chunked kernels hold K in one tile: K = 512 cannot run chunked on any GPU
    with pytest.raises(TuningError, match="K in one tile"):
        ds.feasible("chunked", ds.shape(8, 4096, 16, 512, 128, "fp32"), "rtx4090")
    # K = V = 4096 fp32 recurrent: the state tile cannot live in registers
    with pytest.raises(TuningError, match="registers"):
        ds.feasible("recurrent", ds.shape(1, 64, 1, 4096, 4096, "fp32"), "a10")


@pytest.mark.slow   # 14 s: one CP-SAT minimisation per relaxed constraint of the chunked space
def test_infeasible_shared_memory_is_named_with_numbers():
    small = dataclasses.replace(hardware.get("rtx4090"), name="tiny", smem_block=4096)
    with pytest.raises(TuningError, match=r"needs >= \d+ KiB of shared memory per block; tiny has 4 KiB"):
        solver.enumerate_feasible(ds.CHUNKED, ds.shape(8, 4096, 16, 128, 128, "fp32"), small)


def test_model_best_and_runtime_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path))
    monkeypatch.setattr(select, "_gpu_for", lambda idx: hardware.get("h100"))
    dev = torch.device("cuda", 0)

    def tuned(strategy, dtype, T, n_h=1):
        """The runtime's lookup, as ``CompiledHouseholder._config`` makes it for mixer "fpD"."""
        return select.tuned_config(ds.space(strategy), db.Key("fpD", strategy, dtype, 8, T, 16, 64, 64),
                                   ds.core_shape(8, T, 16, 64, 64, dtype, n_h), dev)
    best = tuned("chunked", torch.bfloat16, 4096)
    assert best == ds.model_best("chunked", "h100", "bf16", 64, 64, 8, 4096, 16)
    assert set(best) == {"BT", "BK", "BV", "BKT", "num_warps", "num_stages"} and best["BK"] == 64
    rec = tuned("recurrent", torch.float32, 4096)
    assert set(rec) == {"BK", "BV", "bwd_BV", "checkpoint_every", "num_warps", "num_stages"}
    # DeltaProduct's core runs T·n_h tokens: the model sees the longer sequence
    assert tuned("chunked", torch.bfloat16, 2048, 2) == ds.model_best("chunked", "h100", "bf16", 64, 64, 8, 4096, 16)
    # another config of the space (a database entry must be one: ``select.config_problem``)
    mine = next(c for c in spaces.feasible_bruteforce(ds.CHUNKED, ds.core_shape(8, 4096, 16, 64, 64, "bf16"),
                                                       hardware.get("h100")) if c != best)
    db.record("fpD", "h100", "bf16", 8, 4096, 16, 64, 64, "chunked", mine, source="aot")
    assert tuned("chunked", torch.bfloat16, 3000) == mine

    # the compiled mixer: CUDA tensors ask the tuner, CPU tensors keep the template default, a
    # user's config= wins
    import mixir
    m = MIXERS["gated_delta_rule"].mixer
    c = mixir.compile(m)
    db.record(m.fingerprint, "h100", "bf16", 2, 100, 4, 64, 64, "chunked", mine, source="aot")
    on_gpu = c._config("chunked", 64, 64, torch.bfloat16, (2, 100, 4), torch.device("cuda", 0))
    assert on_gpu == mine
    on_cpu = c._config("chunked", 64, 64, torch.bfloat16, (2, 100, 4), torch.device("cpu"))
    assert on_cpu == delta_core.default_config("chunked", 64, 64, torch.bfloat16)
    c2 = mixir.compile(m, config={"BT": 32})
    assert c2._config("chunked", 64, 64, torch.bfloat16, (2, 100, 4), torch.device("cuda", 0))["BT"] == 32
    # no GPU identified: the default
    monkeypatch.setattr(select, "_gpu_for", lambda idx: None)
    assert c._config("chunked", 64, 64, torch.bfloat16, (2, 100, 4), torch.device("cuda", 0)) == on_cpu


def test_pipeline_feeds_aot_mismatches_back(monkeypatch):
    """The delta spaces run through the engine (``pipeline.tune_target``): a spilling top config is
    dropped, turned into a constraint, and the re-solved model's best is chosen."""
    from mixir.lowering.common.aot import KernelResources
    from mixir.lowering.common.candidates import CompiledConfig
    calls = []

    def fake(mixer, strategy, configs, arch, request, **kw):
        out = []
        for cfg in configs:
            spill = not calls       # the first config compiled spills
            calls.append(dict(cfg))
            r = KernelResources("mixir.lowering.householder.kernels.chunked_grads.delta_chunk_grads", arch,
                                cfg["num_warps"], cfg["num_stages"], 255 if spill else 200,
                                64 if spill else 0, 8192, 0, ())
            out.append(CompiledConfig(dict(cfg), [r], []))
        return out
    monkeypatch.setattr(ds, "compile_configs", fake)
    res = tune(MIXERS["delta_rule"].mixer, gpu="h100", K=64, V=64, strategies=["chunked"],
               top_k=2, write=False)
    r = res.results[0]
    assert r.discrepancies and r.discrepancies[0].kernel == "delta_chunk_grads"
    assert r.best is not None and r.best.config != calls[0] and r.best.compiled.ok
    assert "fed back as constraints" in res.table()


def test_cli_tune_delta_rule_writes_the_database(tmp_path, capsys):
    from mixir.cli import main
    rc = main(["tune", "delta_rule", "--gpu", "h100", "--no-aot", "--db", str(tmp_path),
               "--shapes", "B=2,T=1024,H=4,K=64,V=64"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "delta_rule chunked on H100-SXM" in out and "delta_rule recurrent" in out
    data = json.load(open(os.path.join(tmp_path, "H100-SXM.json")))
    fp = MIXERS["delta_rule"].mixer.fingerprint
    keys = sorted(data["entries"])
    assert keys == [f"{fp}|bf16|chunked|K64|V64|T1024|BH8", f"{fp}|bf16|recurrent|K64|V64|T1024|BH8"]
    ent = data["entries"][keys[0]]
    assert ent["provenance"]["source"] == "model"
    sp_ = ds.CHUNKED
    shape = ds.shape(2, 1024, 4, 64, 64, "bf16")
    assert not spaces.violated(sp_, shape, hardware.get("h100"), ent["config"])


def test_grads_bytes_count_the_reads_per_k_tile():
    """delta_chunk_grads loads dO, du and u once more per K-tile (docs/delta_rule.md): the model's
    bytes are those the static roofline counts (2.89 GB at the benchmark shape, BT = BV = BKT = 64)
    and grow with the number of K-tiles, so 64-wide K-tiles beat 32-wide ones at K = 128."""
    grads = next(k for k in ds.CHUNKED_KERNELS if k.name == "delta_chunk_grads")
    shape = ds.shape(8, 4096, 16, 128, 128, "bf16")
    vals = dict(_values("chunked", 128, 128, "bf16"), BT=64, BV=64)
    b = {bkt: float(spaces.evaluate(grads.bytes_moved, ds.CHUNKED, shape, dict(vals, BKT=bkt)))
         for bkt in (32, 64)}
    assert b[64] == pytest.approx(2.888e9, rel=2e-3)
    assert b[32] - b[64] == 8 * 4096 * 16 * 2 * (3 * 128 * (4 - 2))     # 3V more per token per K-tile


@pytest.mark.aot
@pytest.mark.interp
def test_predicted_resources_bound_a_real_aot_build(fresh_triton_cache):
    """One real build for sm_90 (the chunked default at K = V = 64, bf16; the two kernels the
    register model rates highest): compiled registers and shared memory within the prediction,
    no spills."""
    from mixir.lowering.common import aot
    m = MIXERS["gated_delta_rule"].mixer
    vals = _values("chunked", 64, 64, "bf16")
    recs = ds.record_config(m, "chunked", vals, request(dtype="bf16", K=64, V=64))
    names = {r.kernel.name.rsplit(".", 1)[-1] for r in recs}
    assert names == {k.name for k in ds.CHUNKED_KERNELS}
    shape = ds.shape(8, 4096, 16, 64, 64, "bf16")
    pred = {k.name: (int(spaces.evaluate(k.regs, ds.CHUNKED, shape, vals)),
                     int(spaces.evaluate(k.smem, ds.CHUNKED, shape, vals)) + spaces.SMEM_RESERVED)
            for k in ds.CHUNKED_KERNELS}
    top = sorted(pred, key=lambda n: -pred[n][0])[:2]
    picked = [r for r in recs if r.kernel.name.rsplit(".", 1)[-1] in top]
    picked = list({r.kernel.name: r for r in picked}.values())
    built = aot.build_all(picked, "sm_90", workers=0)
    for r in built:
        name = r.kernel.rsplit(".", 1)[-1]
        assert r.spills == 0, r
        assert r.registers <= pred[name][0], (name, r.registers, pred[name])
        assert r.total_shared_bytes <= pred[name][1], (name, r.total_shared_bytes, pred[name])


@pytest.mark.slow
@pytest.mark.parametrize("gpu, arch", [("h100", "sm_90"), ("a100-80gb", "sm_80"), ("l4", "sm_89")])
@pytest.mark.aot
@pytest.mark.interp
def test_runtime_picks_build_without_spills(gpu, arch):
    """What a CUDA call would run without a tuning database (the cost model's best) compiles with no
    register spills, both strategies, bf16 and fp32, K = V = 64 and 128."""
    import torch
    from mixir.lowering.householder import space as delta_space
    from mixir.autotune import hardware
    from mixir.lowering.common import aot
    from mixir.lowering.householder import core as dc
    from mixir.lowering.common.launch import record_launches
    g = hardware.get(gpu)
    recs = {}
    for dt, tdt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for K in (64, 128):
            x = [torch.randn(1, 40, 1, K).to(tdt) for _ in range(3)]
            beta, gate, h0 = torch.rand(1, 40, 1), -torch.rand(1, 40, 1), torch.randn(1, 1, K, K)
            for strategy in ("chunked", "recurrent"):
                cfg = delta_space.model_best(strategy, g, dt, K, K, 4, 4096, 8)
                with record_launches() as r:
                    dc.delta_forward(*x, beta, gate, h0, None, strategy, cfg)
                    dc.delta_backward(*x, beta, gate, h0, None, torch.randn(1, 40, 1, K),
                                      torch.randn(1, 1, K, K), strategy, cfg)
                recs.update(r)
    res = aot.build_all(list(recs.values()), [arch], workers=2)
    spilled = [r for r in res if r.spills]
    assert not spilled, "\n" + aot.format_table(spilled)
