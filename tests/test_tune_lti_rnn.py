"""``mixir tune`` for the LTI and RNN families (``mixir.tuning.tune`` through their
``tuning_targets``): solve → rank → AOT-compile for H100 (sm_90) on the CPU → tuning database, and
the runtime's lookups of what tune wrote (``autotune.select.tuned_config``, through the compiled
mixers' config choice on a CUDA device object; no GPU needed)."""
import json
import warnings

import pytest
import torch

import mixir as mx
from mixir.autotune import db, hardware, select
from mixir.lowering.family import classify
from mixir.lowering.lti import space as lti_space
from mixir.lowering.rnn import space as rnn_space
from mixir.cli import main
from mixir.errors import TuningError
from mixir.library import MIXERS
from mixir.tuning import group_by_kernels, request, tunable, tunable_strategies, tune

H100 = hardware.get("h100")
#: tiny user-level shapes (the DB key) and head sizes: the AOT builds stay small
LTI_SHAPE = dict(B=2, T=256, H=2, K=16, V=16)
RNN_SHAPE = dict(B=4, T=64, H=2, K=32, V=32)
CUDA0 = torch.device("cuda", 0)      # a device object only: nothing runs on it


@pytest.fixture
def on_h100(monkeypatch, tmp_path):
    """The tuning database in ``tmp_path`` and "the current GPU" an H100 (``select._gpu_for``)."""
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path))
    monkeypatch.setattr(select, "_gpu_for", lambda idx: H100)
    return tmp_path


def _lti_tiles(m, dtype, B, T, H, N, Q):
    """What ``CompiledLTIMixer._tiles`` looks up for ``m`` on "cuda:0": the database's entry for the
    mixer (strategy lti_<kind>, K = N, V = Q), or None."""
    kind = lti_space.kind_of(classify(m)[1])
    cfg = select.tuned_config(None, db.Key(m.fingerprint, f"lti_{kind}", dtype, B, T, H, N, Q), None, 0)
    return {k: int(cfg[k]) for k in ("BN", "BL", "num_warps", "num_stages")} if cfg else None


def _rnn_config(m, strategy, D, dtype, B, T, H):
    """What ``CompiledRNN.launch_config`` looks up for ``m`` on "cuda:0": the database's entry, else
    the space's best (``rnn_space.best_config`` at T = 1024, H = 1)."""
    plan = classify(m)[1]
    G, S = len(plan.gates), len(plan.states)
    return select.tuned_config(
        None, db.Key(m.fingerprint, strategy, dtype, B, T, H, D, D), None, 0,
        model=lambda gpu: rnn_space.best_config(strategy, G, S, rnn_space.shape_of(B, 1024, 1, D, dtype), gpu))


def _entries(directory):
    with open(db.path_for(H100, str(directory)), encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == db.FORMAT
    return data["entries"]


# ---- LTI ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s4d_tuned(tmp_path_factory, fresh_triton_cache):
    d = tmp_path_factory.mktemp("db-lti")
    m = MIXERS["s4d"].mixer
    res = tune(m, gpu="h100", **LTI_SHAPE, dtype="bf16", top_k=2, aot=True, write=True,
               directory=str(d), workers=0)
    return m, res, d


@pytest.mark.aot
@pytest.mark.interp
def test_lti_tune_writes_an_aot_checked_entry_in_the_space(s4d_tuned):
    m, res, d = s4d_tuned
    (r,) = res.results
    assert r.strategy == "lti_vandermonde" and r.source == "aot"
    assert r.best is not None and r.best.ok and r.best.compiled.spills == 0
    # every compiled kernel of the pair was built for sm_90, the best within H100's shared memory
    kernels = {x.kernel.rsplit(".", 1)[-1] for x in r.best.compiled.resources}
    assert kernels == {"lti_vandermonde_fwd", "lti_vandermonde_red"}
    assert all(x.arch == "sm_90" for x in r.best.compiled.resources)
    assert r.best.compiled.max_shared <= H100.smem_block
    # the config is a feasible point of the space at the launch shape of the user-level shape
    plan = classify(m)[1]
    assert lti_space.state_size(m, plan, request(K=16, V=16)) == 16
    shp = lti_space.launch_shape(plan, 2, 256, 2, 16)
    assert (shp.H, shp.V, shp.K, shp.T) == (2, 1, 16, 255)
    assert r.best.config in [lti_space.to_config(c) for c in lti_space.feasible("vandermonde", shp, H100)]
    # the database entry: JSON, keyed by the mixer's fingerprint and the user-level shape
    key = db.make_key(m.fingerprint, "bf16", "lti_vandermonde", 2, 256, 2, 16, 1)
    e = _entries(d)[key]
    assert e["config"] == r.best.config and e["compiled"]["spills"] == 0
    assert e["provenance"]["source"] == "aot"
    assert "lti_vandermonde" in res.table() and "BEST" in res.table()


@pytest.mark.aot
@pytest.mark.interp
def test_lti_runtime_reads_the_entry_then_falls_back(s4d_tuned, monkeypatch):
    m, res, d = s4d_tuned
    best = res.results[0].best.config
    monkeypatch.setenv("MIXIR_TUNING_DB", str(d))
    monkeypatch.setattr(select, "_gpu_for", lambda idx: H100)
    assert _lti_tiles(m, "bf16", 2, 256, 2, 16, 1) == best
    # T and B·H are bucketed (next power of two): T = 200, B·H = 3 share the entry
    assert _lti_tiles(m, "bf16", 3, 200, 1, 16, 1) == best
    # the compiled mixer's choice on a CUDA device (the lookup only; nothing launches)
    fn = mx.compile(m)
    assert fn._tiles(torch.bfloat16, 2, 256, 2, 16, CUDA0) == best
    # another shape, dtype or GPU: no entry, the kernels take the kernel-level rule (None here)
    assert fn._tiles(torch.float32, 2, 256, 2, 16, CUDA0) is None
    assert fn._tiles(torch.bfloat16, 2, 4096, 2, 16, CUDA0) is None
    assert fn._tiles(torch.bfloat16, 2, 256, 2, 16, torch.device("cpu")) is None
    # a user's config wins
    user = {"BN": 8, "BL": 64, "num_warps": 2, "num_stages": 1}
    assert mx.compile(m, config=user)._tiles(torch.bfloat16, 2, 256, 2, 16, CUDA0) == user


# ---- RNN ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lstm_tuned(tmp_path_factory, fresh_triton_cache):
    d = tmp_path_factory.mktemp("db-rnn")
    m = MIXERS["lstm"].mixer
    res = tune(m, gpu="h100", **RNN_SHAPE, dtype="bf16", top_k=2, aot=True, write=True,
               directory=str(d), workers=0)
    return m, res, d


@pytest.mark.aot
@pytest.mark.interp
def test_rnn_tune_writes_aot_checked_entries_per_strategy(lstm_tuned):
    m, res, d = lstm_tuned
    assert [r.strategy for r in res.results] == ["fused", "alternating"]
    ents = _entries(d)
    shp = rnn_space.shape_of(4, 64, 2, 32, "bf16")
    for r in res.results:
        assert r.source == "aot" and r.best is not None and r.best.ok
        assert r.best.compiled.spills == 0 and r.best.compiled.max_shared <= H100.smem_block
        roles = {x.kernel.rsplit(".", 1)[-1] for x in r.best.compiled.resources}
        assert roles == ({"fwd_fused", "bwd_fused"} if r.strategy == "fused" else {"fwd_step", "bwd_step"})
        assert r.best.config in rnn_space.feasible(r.strategy, 4, 2, shp, H100)
        e = ents[db.make_key(m.fingerprint, "bf16", r.strategy, 4, 64, 2, 32, 32)]
        assert e["config"] == r.best.config and e["compiled"]["spills"] == 0


@pytest.mark.aot
@pytest.mark.interp
def test_rnn_runtime_reads_the_entry_then_the_model(lstm_tuned, monkeypatch):
    m, res, d = lstm_tuned
    monkeypatch.setenv("MIXIR_TUNING_DB", str(d))
    monkeypatch.setattr(select, "_gpu_for", lambda idx: H100)
    fn = mx.compile(m)
    # pin a DB entry that differs from the model's best, to see which one the runtime takes
    shp = rnn_space.shape_of(4, 1024, 1, 32, "bf16")
    model = rnn_space.best_config("alternating", 4, 2, shp, H100)
    pinned = {"BR": 8 if model["BR"] != 8 else 4, "num_warps": 8, "num_stages": 1}
    db.record(m.fingerprint, H100, "bf16", 4, 64, 2, 32, 32, "alternating", pinned, source="aot",
              directory=str(d))
    got = _rnn_config(m, "alternating", 32, "bf16", 4, 64, 2)
    assert got == pinned
    cfg = fn.launch_config(32, CUDA0, torch.bfloat16, 4, "alternating", True, T=64, H=2)
    assert (cfg["BR"], cfg["num_warps"]) == (pinned["BR"], 8)
    fused = res.results[0].best.config
    cfg = fn.launch_config(32, CUDA0, torch.bfloat16, 4, "fused", True, T=64, H=2)
    assert (cfg["BR"], cfg["num_warps"]) == (fused["BR"], fused["num_warps"])
    # no entry for this shape: the cost model's best for the GPU
    cfg = fn.launch_config(32, CUDA0, torch.bfloat16, 4, "alternating", True, T=8192, H=2)
    assert (cfg["BR"], cfg["num_warps"]) == (model["BR"], model["num_warps"])
    # a user's config wins
    cfg = mx.compile(m, config={"BR": 2}).launch_config(32, CUDA0, torch.bfloat16, 4, "alternating",
                                                         True, T=64, H=2)
    assert cfg["BR"] == 2


def test_corrupt_database_falls_back_without_raising(on_h100):
    m_rnn, m_lti = MIXERS["lstm"].mixer, MIXERS["s4d"].mixer
    with open(db.path_for(H100, str(on_h100)), "w") as f:
        f.write("{ not json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _lti_tiles(m_lti, "bf16", 2, 256, 2, 16, 1) is None
        assert mx.compile(m_lti)._tiles(torch.bfloat16, 2, 256, 2, 16, CUDA0) is None
        got = _rnn_config(m_rnn, "fused", 32, "bf16", 4, 64, 2)
        assert got == rnn_space.best_config("fused", 4, 2, rnn_space.shape_of(4, 1024, 1, 32, "bf16"), H100)
        cfg = mx.compile(m_rnn).launch_config(32, CUDA0, torch.bfloat16, 4, "fused", True, T=64, H=2)
        assert (cfg["BR"], cfg["num_warps"]) == (got["BR"], got["num_warps"])
    # a lookup that fails inside (a broken GPU table) is None, not an exception
    import mixir.autotune.db as dbm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orig = dbm.lookup
        try:
            dbm.lookup = lambda *a, **k: 1 / 0
            assert _lti_tiles(m_lti, "bf16", 2, 256, 2, 16, 1) is None
            assert mx.compile(m_lti)._tiles(torch.bfloat16, 2, 256, 2, 16, CUDA0) is None
        finally:
            dbm.lookup = orig


# ---- the pipeline and the CLI ---------------------------------------------------------------------

def test_pipeline_routes_lti_and_rnn_and_groups_the_shared_lti_kernels():
    assert tunable(MIXERS["s4"].mixer) and tunable(MIXERS["gru"].mixer)
    res = tune(MIXERS["s4"].mixer, gpu="h100", **LTI_SHAPE, aot=False, write=False)
    assert [r.strategy for r in res.results] == ["lti_cauchy"] and res.results[0].source == "model"
    shp = res.results[0].shape
    assert (shp.V, shp.K, shp.T) == (2, 16, 128)          # rank 1: Q = 2, L = (T-1)//2 + 1
    res = tune(MIXERS["gru"].mixer, gpu="h100", **RNN_SHAPE, aot=False, write=False,
               strategies=["alternating"])
    assert [r.strategy for r in res.results] == ["alternating"]
    with pytest.raises(TuningError):
        tune(MIXERS["s4d"].mixer, gpu="h100", **LTI_SHAPE, aot=False, write=False,
             strategies=["chunked"])
    # D = 256 LSTM: R does not fit on chip, so fused is skipped (alternating only)
    res = tune(MIXERS["lstm"].mixer, gpu="h100", B=8, T=256, H=2, K=256, V=256, aot=False,
               write=False)
    assert [r.strategy for r in res.results] == ["alternating"]
    ms = [MIXERS[n].mixer for n in ("s4d", "s4d_bilinear", "s4", "lstm", "gru")]
    groups = [[m.name for m in g] for g in group_by_kernels(ms, dtype="bf16", K=16, V=16)]
    assert ["s4d", "s4d_bilinear"] in groups and ["s4"] in groups and ["lstm"] in groups


def test_cli_tune_lti_and_rnn_print_tables(tmp_path, capsys):
    assert main(["tune", "s4d", "--gpu", "h100", "--no-aot", "--dry-run", "--shapes",
                 "B=2,T=256,H=2,K=16"]) == 0
    out = capsys.readouterr().out
    assert "== s4d lti_vandermonde on H100-SXM" in out and "chosen (model)" in out
    assert main(["tune", "lstm", "--gpu", "h100", "--no-aot", "--db", str(tmp_path),
                 "--strategy", "fused", "--shapes", "B=4,T=64,H=2,K=32,V=32"]) == 0
    out = capsys.readouterr().out
    assert "== lstm fused on H100-SXM" in out and str(tmp_path) in out
    m = MIXERS["lstm"].mixer
    assert db.make_key(m.fingerprint, "bf16", "fused", 4, 64, 2, 32, 32) in _entries(tmp_path)


@pytest.mark.slow
@pytest.mark.aot
@pytest.mark.interp
def test_cauchy_and_gru_tune_with_aot(tmp_path, fresh_triton_cache):
    for name, shape in (("s4", LTI_SHAPE), ("gru", RNN_SHAPE)):
        res = tune(MIXERS[name].mixer, gpu="h100", **shape, top_k=3, aot=True, write=True,
                   directory=str(tmp_path), workers=0)
        for r in res.results:
            assert r.best is not None and r.best.ok, res.table()


def test_tunable_strategies_per_family():
    """What ``mixir tune --all --strategy S`` keeps: LTI mixers tune their conv kernels only."""
    assert tunable_strategies(MIXERS["s4d"].mixer) == ("conv",)
    assert set(tunable_strategies(MIXERS["lstm"].mixer)) == {"fused", "alternating"}
    assert tunable_strategies(MIXERS["kda"].mixer) == ("recurrent",)
    assert set(tunable_strategies(MIXERS["gla"].mixer)) == {"chunked", "recurrent"}
