"""The autotuner's AOT loop: mismatches fed back as constraints (with fake compile results), the
accuracy report, `mixir show`'s formulas, `--time` without CUDA, the timing schedule, the shipped
defaults, and the AOT check of predicted-feasible configs (a deterministic sample in CI, every
config in the slow test)."""
import json
import os
import random

import pytest
import sympy as sp

from mixir.autotune import cost, db, feedback, hardware, pipeline, report, space as spaces, timing
from mixir.errors import TuningError
from mixir.lowering.common.aot import KernelResources
from mixir.lowering.common.candidates import CompiledConfig
from mixir.lowering.gated_linear import space as gla_space
from mixir.lowering.gated_linear.family import GatedLinearFamily
from mixir.tuning import request, tune, tune_all

solver = pytest.importorskip("mixir.autotune.solver")
pytest.importorskip("ortools")

H100 = hardware.get("h100")
# K = V = 64: the space is a quarter of K = 128's, and the solver / brute-force comparisons of
# every test below run over it whole (the constraints do not depend on K beyond the padded sizes)
SHAPE = spaces.Shape(8, 4096, 16, 64, 64, "bf16")
MOD = "mixir.lowering.gated_linear.kernels.chunked."


def _res(kernel, regs, spills=0, smem=16384, warps=8, mod=MOD):
    return KernelResources(kernel=mod + kernel, arch="sm_90", num_warps=warps, num_stages=1,
                           registers=regs, spills=spills, shared_bytes=smem, local_bytes=0,
                           constexprs=())


def _clean(cfg, regs=200):
    regs = min(regs, 65536 // (32 * cfg["num_warps"]))           # as ptxas caps them
    return CompiledConfig(dict(cfg), [_res("chunk_gla_states", regs, warps=cfg["num_warps"])], [])


def _spill(cfg, kernel="chunk_gla_states", mod=MOD):
    return CompiledConfig(dict(cfg), [_res(kernel, 255, spills=64, warps=cfg["num_warps"], mod=mod)], [])


def _key(cfg):
    return tuple(sorted(cfg.items()))


def _dominates(a, b):
    """a is at least as large as b at the same warp count."""
    return a["num_warps"] == b["num_warps"] and all(a[k] >= b[k] for k in b if k != "num_warps")


def _solve(space, shape, fb):
    cs = space.constraints(shape, H100) + fb.constraints
    got = solver.enumerate_feasible(space, shape, H100, constraints=cs, explain=False)
    brute = spaces.feasible_bruteforce(space, shape, H100, constraints=cs)
    assert sorted(map(_key, got)) == sorted(map(_key, brute))      # the solver honours the guards
    return got


# ---- 1. mismatches fed back as constraints -----------------------------------------------------
def test_spill_becomes_register_correction_and_the_config_is_excluded():
    feas = solver.enumerate_feasible(gla_space.CHUNKED, SHAPE, H100)
    bad = {"BT": 64, "BC": 16, "BK": 32, "BKS": 32, "BV": 64, "BVS": 64, "num_warps": 8, "num_stages": 1}
    assert bad in feas
    fb = feedback.Feedback(gla_space.CHUNKED, SHAPE, H100)
    (d,) = fb.observe(bad, _spill(bad))                        # fake compile result: spills
    assert d.level == "correction" and d.kernel == "chunk_gla_states" and d.kind == "spills"
    assert d.compiled_regs == 255 and d.spills == 64
    pred = int(spaces.evaluate(gla_space._chunk_states.regs, gla_space.CHUNKED, SHAPE, bad))
    assert d.predicted_regs == pred and f"<= {pred - 1} if num_warps == 8" in d.constraint
    after = _solve(gla_space.CHUNKED, SHAPE, fb)
    assert bad not in after and 0 < len(after) < len(feas)
    # every config at least as large (same warps) is gone too; other warp counts are untouched
    assert not any(_dominates(c, bad) for c in after)
    assert [c for c in feas if c["num_warps"] != 8] == [c for c in after if c["num_warps"] != 8]
    assert fb.excludes(bad) and d.as_dict()["config"] == bad


def test_feedback_never_excludes_a_config_that_compiled_cleanly():
    # measured on sm_90 (docs/autotune.md): BT=64 BK=32 spills in chunk_gla_states where BT=32 BK=64
    # does not, though the model rates the latter heavier: a register correction would remove the
    # clean one, so the feedback falls back to a dominance nogood
    bad = {"BT": 64, "BC": 16, "BK": 32, "BKS": 32, "BV": 64, "BVS": 64, "num_warps": 8, "num_stages": 1}
    good = {"BT": 32, "BC": 16, "BK": 64, "BKS": 64, "BV": 64, "BVS": 64, "num_warps": 8, "num_stages": 1}
    fb = feedback.Feedback(gla_space.CHUNKED, SHAPE, H100)
    new = fb.observe_all([(bad, _spill(bad)), (good, _clean(good))])     # clean ones first
    assert [d.level for d in new] == ["dominance"]
    after = _solve(gla_space.CHUNKED, SHAPE, fb)
    assert good in after and bad not in after
    assert not any(_dominates(c, bad) for c in after)


def test_spill_at_16_warps_leaves_fewer_warps_alone():
    shape = spaces.Shape(8, 4096, 16, 128, 128, "bf16")
    feas = solver.enumerate_feasible(gla_space.RECURRENT, shape, H100)
    bad = {"BK": 128, "BV": 16, "num_warps": 16, "num_stages": 1}
    assert bad in feas
    fb = feedback.Feedback(gla_space.RECURRENT, shape, H100)
    fb.observe(bad, _spill(bad, "recurrent_gla_bwd", "mixir.lowering.gated_linear.kernels.recurrent."))
    after = _solve(gla_space.RECURRENT, shape, fb)
    assert bad not in after
    assert [c for c in feas if c["num_warps"] < 16] == [c for c in after if c["num_warps"] < 16]


def test_shared_memory_over_the_limit_and_compile_errors():
    fb = feedback.Feedback(gla_space.CHUNKED, SHAPE, H100)
    big = {"BT": 64, "BC": 32, "BK": 64, "BKS": 64, "BV": 64, "BVS": 64, "num_warps": 4, "num_stages": 3}
    over = CompiledConfig(big, [_res("chunk_gla_output", 200, smem=H100.smem_block + 4096, warps=4)], [])
    (d,) = fb.observe(big, over)
    assert d.kind == "shared_memory" and d.compiled_smem > H100.smem_block and d.level == "correction"
    assert d.constraint.startswith("ob*(") or "BC" in d.constraint
    feas = solver.enumerate_feasible(gla_space.CHUNKED, SHAPE, H100)
    err = {"BT": 16, "BC": 16, "BK": 16, "BKS": 16, "BV": 16, "BVS": 16, "num_warps": 4, "num_stages": 1}
    assert err in feas and dict(err, num_warps=8) in feas
    (e,) = fb.observe(err, CompiledConfig(err, [], ["compiling kernel x failed: boom"]))
    assert e.kind == "error" and e.level == "nogood" and "boom" in e.what()
    after = _solve(gla_space.CHUNKED, SHAPE, fb)
    assert big not in after and err not in after
    # the nogood is exact: the same tiles with 8 warps stay
    assert dict(err, num_warps=8) in after


def test_guarded_and_forbid_constraints_match_bruteforce():
    rng = random.Random(7)
    shape = spaces.Shape(2, 1000, 4, 64, 64, "fp16")
    for space in (gla_space.CHUNKED, gla_space.RECURRENT):
        feas = spaces.feasible_bruteforce(space, shape, H100)
        fb = feedback.Feedback(space, shape, H100)
        for cfg in rng.sample(feas, 3):
            k = space.kernels[rng.randrange(len(space.kernels))]
            fb.observe(cfg, _spill(cfg, k.name, "x."))
        _solve(space, shape, fb)


def _fake_compiler(bad_keys, log):
    def compile_configs(mixer, strategy, configs, arch, request, **kw):
        log.append([dict(c) for c in configs])
        out = []
        for c in configs:
            mod = "x." if strategy == "chunked" else "y."
            kern = "chunk_gla_states" if strategy == "chunked" else "recurrent_gla_bwd"
            out.append(_spill(c, kern, mod) if _key(c) in bad_keys else _clean(c, 180))
        return out
    return compile_configs


def test_pipeline_feeds_mismatches_back_and_re_solves(monkeypatch):
    from mixir.library import MIXERS
    shape = spaces.Shape(8, 4096, 16, 64, 64, "bf16")
    feas = solver.enumerate_feasible(gla_space.CHUNKED, shape, H100)
    top2 = [c for c, _ in pipeline.diverse(cost.rank(gla_space.CHUNKED, shape, H100, feas), 2)]
    bad = {_key(c) for c in top2}                   # the model's two favourites spill
    log = []
    monkeypatch.setattr(gla_space, "compile_configs", _fake_compiler(bad, log))
    store = feedback.Store()
    res = tune(MIXERS["gla"].mixer, gpu="h100", B=8, T=4096, H=16, K=64, V=64,
               strategies=["chunked"], top_k=2, write=False, feedback=store)
    (r,) = res.results
    assert len(log) >= 2                              # round 1 failed: re-solved, round 2
    assert r.discrepancies and r.n_feasible_after < r.n_feasible == len(feas)
    assert r.best is not None and r.best.ok and _key(r.best.config) not in bad
    # the chosen config is the corrected model's best (nothing feasible is predicted faster)
    learned = store.get(gla_space.CHUNKED, shape, H100, MIXERS["gla"].mixer.fingerprint).constraints
    assert learned and all(c.name.startswith("fb_") for c in learned)
    after = solver.enumerate_feasible(gla_space.CHUNKED, shape, H100,
                                      constraints=gla_space.CHUNKED.constraints(shape, H100) + learned)
    assert len(after) == r.n_feasible_after and not any(_key(c) in bad for c in after)
    top = cost.rank(gla_space.CHUNKED, shape, H100, after)[0][0]
    assert _key(top) == _key(r.best.config)
    table = res.table()
    assert "model mismatches fed back as constraints" in table and "registers predicted" in table
    acc = report.accuracy([res])
    n_bad = sum(_key(c.config) in bad for c in r.compiled)
    assert acc["n"] == len(r.compiled) and acc["n_ok"] == len(r.compiled) - n_bad and n_bad >= 1
    text = report.accuracy_text([res])
    assert "predicted-feasible configs that compile without spills" in text
    assert f"{acc['n_ok']}/{acc['n']}" in text and "pred. smem KiB" in text


def test_feedback_persists_in_the_database_entry(monkeypatch, tmp_path):
    from mixir.library import MIXERS
    shape = spaces.Shape(8, 4096, 16, 128, 128, "bf16")
    feas = solver.enumerate_feasible(gla_space.RECURRENT, shape, H100)
    top = cost.rank(gla_space.RECURRENT, shape, H100, feas)[0][0]
    monkeypatch.setattr(gla_space, "compile_configs", _fake_compiler({_key(top)}, []))
    tune(MIXERS["simple_gla"].mixer, gpu="h100", strategies=["recurrent"], top_k=2,
         directory=str(tmp_path))
    (entry,) = db.load(str(tmp_path / "H100-SXM.json")).values()
    (d,) = entry["provenance"]["discrepancies"]
    assert d["config"] == top and d["compiled_regs"] == 255 and d["predicted_regs"] > 0
    assert entry["provenance"]["source"] == "aot" and entry["config"] != top


def test_tune_all_shares_aot_results_between_identical_kernels(monkeypatch, tmp_path):
    from mixir.library import MIXERS
    log = []
    monkeypatch.setattr(gla_space, "compile_configs", _fake_compiler(set(), log))
    monkeypatch.setattr(GatedLinearFamily, "kernel_signature",
                        lambda self, m, plan, req: "g" if m.name != "gla" else "x")
    mixers = [MIXERS[n].mixer for n in ("gla", "retention", "simple_gla")]
    # one strategy (the recurrent one: its space is enumerated in a blink; the chunked spaces'
    # CP-SAT enumeration took 9 s here and tests nothing about the sharing)
    out = tune_all(mixers, request(gpu="h100", strategies=["recurrent"]),
                   [{"B": 8, "T": 4096, "H": 16}], top_k=1, directory=str(tmp_path))
    assert [t.mixer for t in out] == ["gla", "retention", "simple_gla"]
    assert len(log) == 2                               # gla and retention compile, once each
    ents = db.load(str(tmp_path / "H100-SXM.json"))
    assert len(ents) == 3
    shared = [e for k, e in ents.items() if k.startswith(MIXERS["simple_gla"].mixer.fingerprint)]
    assert len(shared) == 1 and all(e["provenance"]["shared_with"] == "retention" for e in shared)
    assert report.accuracy(out)["n"] == 2             # the copy is not counted twice


@pytest.mark.interp
def test_kernel_signature_groups_identical_template_kernels():
    from mixir.library import MIXERS
    from mixir.lowering.family import classify
    req = request(strategies=["recurrent"])
    sig = {}
    for n in ("simple_gla", "retention", "gla"):
        fam, plan = classify(MIXERS[n].mixer)
        sig[n] = fam.kernel_signature(MIXERS[n].mixer, plan, req)
    assert sig["simple_gla"] == sig["retention"] != sig["gla"]


# ---- 2.-3. report, `mixir show` ---------------------------------------------------------------
def test_show_prints_the_formulas_from_the_sympy_expressions(capsys):
    from mixir.cli import main
    assert main(["show", "gla"]) == 0
    out = capsys.readouterr().out
    assert "tuning spaces" in out and "gla_chunked" in out and "gla_recurrent" in out
    for space in gla_space.SPACES.values():
        for k in space.kernels:
            assert k.name in out
            for e in (k.smem, k.regs, k.grid, k.bytes_moved):
                assert sp.sstr(sp.sympify(e)) in out          # the single source, verbatim
    assert "FLOPs  tensor " in out and "K = dim K, V = dim V" in out


def test_cli_tune_prints_the_accuracy_report(monkeypatch, tmp_path, capsys):
    from mixir.cli import main
    monkeypatch.setattr(gla_space, "compile_configs", _fake_compiler(set(), []))
    assert main(["tune", "retention", "--top-k", "2", "--db", str(tmp_path),
                 "--shapes", "B=2,T=512,H=4;B=4,T=1024,H=4"]) == 0
    out = capsys.readouterr().out
    assert out.count("== retention chunked") == 2 and "== model accuracy (H100-SXM)" in out
    assert "predicted-feasible configs that compile without spills: 8/8 (100%)" in out
    assert len(db.load(str(tmp_path / "H100-SXM.json"))) == 4


# ---- 6. GPU timing ----------------------------------------------------------------------------
def test_time_without_cuda_is_a_clear_error(monkeypatch, capsys):
    import torch

    from mixir.cli import main
    from mixir.library import MIXERS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from mixir.lowering.common.candidates import time_configs
    with pytest.raises(TuningError, match="needs a CUDA device"):
        tune(MIXERS["gla"].mixer, gpu="h100", timed=True, aot=False, write=False)
    with pytest.raises(TuningError, match="CUDA device"):
        time_configs(MIXERS["gla"].mixer, request(B=1, T=16, H=1, K=16, V=16), [{}],
                     strategy="chunked", reference="recurrent")
    assert main(["tune", "gla", "--time", "--no-aot", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "mixir: error: mixir tune --time needs a CUDA device" in err


def test_timing_schedule_interleaves_rotates_and_retimes_close_contenders():
    order = []
    base = {"a": 1.00, "b": 1.02, "c": 2.0, "d": 1.5}
    calls = {k: 0 for k in base}

    def run_of(name):
        def run():
            calls[name] += 1
            if name == "d" and calls[name] > 4:
                raise RuntimeError("launch failed")
        run.name = name
        return run

    def timer(run):
        order.append(run.name)
        run()
        return base[run.name] + (0.5 if len(order) % 7 == 0 else 0.0)     # an outlier now and then
    runs = [run_of("a"), None, run_of("b"), run_of("c"), run_of("d")]
    synced = []
    med = timing.measure(runs, timer, warmup=2, reps=5, close=0.05, extra_reps=4,
                         sync=lambda: synced.append(1))
    assert synced == [1]
    assert med[1] == float("inf") and med[4] == float("inf")        # skipped, failed at run time
    assert med[0] == pytest.approx(1.0) and med[2] == pytest.approx(1.02) and med[3] == pytest.approx(2.0)
    first = order[:4]
    assert first == ["a", "b", "c", "d"] and order[4:8] != first     # rotated between rounds
    assert {order[i * 4] for i in range(3)} == {"a", "b", "c"}
    # a and b are within 5 %: four more rounds each; c is not re-timed
    assert order.count("a") == 5 + 4 and order.count("b") == 5 + 4 and order.count("c") == 5


# ---- 4. shipped defaults ------------------------------------------------------------------------
def test_shipped_defaults_cover_every_library_mixer_on_h100():
    from mixir.library import MIXERS
    from mixir.lowering.family import classify
    path = os.path.join(db.SHIPPED_DIR, "H100-SXM.json")
    with open(path) as f:
        data = json.load(f)
    ents = data["entries"]
    assert len(ents) <= 36                   # tests/test_tuned_configs.py runs each of them
    # the RNN cells (alternating: the fused kernel does not fit at D = 128) and the LTI mixers
    # (their conv strategy's kernel pair, keyed lti_<kind> with V = the rows' count Q)
    rnn_keys = {name: db.make_key(MIXERS[name].mixer.fingerprint, "bf16", "alternating", 8, 4096, 16, 128, 128)
                for name in ("lstm", "gru", "elman", "slstm")}
    assert all(k in ents for k in rnn_keys.values()), rnn_keys
    for name in ("s4d", "s4d_bilinear", "s4"):
        fp = MIXERS[name].mixer.fingerprint
        assert any(k.startswith(fp + "|bf16|lti_") and ents[k]["compiled"]["spills"] == 0 for k in ents), name
    for name, entry in MIXERS.items():
        if entry.family != "gated_linear" or entry.requires:   # the tuner's spaces: gated-linear
            continue
        m = entry.mixer
        plan = classify(m)[1]
        fK, fV = gla_space.form_sizes(m, plan, request())
        # the strategies the runtime picks by default (opt-in ones are tuned on request only)
        strategies = [s for s in plan.strategies if s not in gla_space.OPT_IN]
        for shp in pipeline.STANDARD_SHAPES:
            for s in strategies:
                key = db.make_key(m.fingerprint, "bf16", s, shp["B"], shp["T"], shp["H"], fK, fV)
                assert key in ents, (name, s)
                e = ents[key]
                assert e["provenance"]["source"] in ("aot", "timed"), key
                assert e["compiled"]["spills"] == 0 and e["compiled"]["max_shared"] <= H100.smem_block
                cfg = e["config"]
                sh = spaces.Shape(shp["B"], shp["T"], shp["H"], fK, fV, "bf16")
                space = gla_space.spaces_for(plan.main)[s]    # the space the entry was tuned in
                assert not spaces.violated(space, sh, H100, cfg), (key, cfg)


# ---- 5. predicted-feasible configs compile for their arch ---------------------------------------
def _have_ptxas():
    try:
        from mixir.lowering.common import aot
        return aot._triton_bin("ptxas") is not None or bool(os.environ.get("TRITON_PTXAS_PATH"))
    except Exception:
        return False


needs_ptxas = pytest.mark.skipif(not _have_ptxas(), reason="Triton's ptxas is not available")
REP_SHAPE = spaces.Shape(8, 4096, 16, 64, 64, "bf16")       # gla (per-key decay: every kernel)


def _sample(strategy, n, seed=0):
    space = gla_space.SPACES[strategy]
    feas = solver.enumerate_feasible(space, REP_SHAPE, H100)
    feas = sorted(feas, key=_key)
    regs = lambda c: spaces.resources(space, REP_SHAPE, c)["regs"]  # noqa: E731
    smem = lambda c: spaces.resources(space, REP_SHAPE, c)["smem"]  # noqa: E731
    pick = [max(feas, key=lambda c: (regs(c), _key(c))), max(feas, key=lambda c: (smem(c), _key(c)))]
    rest = [c for c in feas if c not in pick]
    pick += random.Random(seed).sample(rest, max(0, n - len(pick)))
    return pick[:n]


def _check_compiles(strategy, configs, backward, workers=None):
    from mixir.library import MIXERS
    res = gla_space.compile_configs(MIXERS["gla"].mixer, strategy, configs, "sm_90",
                                    request(dtype="bf16", K=REP_SHAPE.K, V=REP_SHAPE.V),
                                    backward=backward, workers=workers)
    spills = 0
    for cfg, r in zip(configs, res):
        assert not r.errors, (cfg, r.errors)
        assert r.resources and all(x.fits for x in r.resources), cfg       # limits: never exceeded
        assert r.max_shared <= H100.smem_block, cfg
        spills += r.spills > 0
    print(f"{strategy}: {len(configs)} predicted-feasible configs compile for sm_90; "
          f"{spills} spill registers")
    return res


@needs_ptxas
@pytest.mark.aot
@pytest.mark.interp
def test_sample_of_feasible_configs_compiles_sm90():
    """CI: a deterministic sample - the configs with the largest predicted registers and shared
    memory plus seeded random ones - compiles for sm_90 (spills allowed, counted)."""
    _check_compiles("chunked", _sample("chunked", 3), backward=False, workers=0)
    _check_compiles("recurrent", _sample("recurrent", 1), backward=True, workers=0)


@pytest.mark.slow
@needs_ptxas
@pytest.mark.parametrize("strategy", ["recurrent", "chunked"])
@pytest.mark.aot
@pytest.mark.interp
def test_every_feasible_config_compiles_sm90(strategy):
    """Every predicted-feasible config of the template for one representative shape (gla,
    B=8 T=4096 H=16 K=V=64, bf16) compiles for sm_90, forward and backward (spills are counted)."""
    feas = solver.enumerate_feasible(gla_space.SPACES[strategy], REP_SHAPE, H100)
    _check_compiles(strategy, feas, backward=True)
