"""The tuning pipeline behind ``mixir tune``:
solve → rank → AOT-validate, feeding mismatches back as constraints and re-solving → (time) → database.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

from ..errors import MixirError, TuningError
from . import cost, db, hardware, space as spaces
from .feedback import Store

# The shapes ``mixir tune --all`` tunes (and the shipped defaults cover): one training shape. Kept
# to one so that the shipped database stays small (one entry per mixer and strategy) and
# ``--all`` runs in minutes; other shapes fall back to the cost model's best at run time.
STANDARD_SHAPES = ({"B": 8, "T": 4096, "H": 16},)
DEFAULT_HEAD = 128
MAX_ROUNDS = 3


def require_cuda(what="mixir tune --time"):
    """Raise ``TuningError`` unless a CUDA device is usable here."""
    try:
        import torch
        ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception as e:          # pragma: no cover - torch is a dependency
        raise TuningError(f"{what} needs a CUDA device; torch cannot query CUDA: {e}") from e
    if not ok:
        raise TuningError(f"{what} needs a CUDA device, and torch.cuda.is_available() is False on "
                          f"this machine; run without --time (the configs are then ranked by the "
                          f"cost model and validated by the AOT compile), or on a machine with an "
                          f"NVIDIA GPU")


def _key(cfg) -> tuple:
    return tuple(sorted((str(k), int(v)) for k, v in cfg.items()))


@dataclasses.dataclass
class Candidate:
    config: dict
    predicted_s: float
    pred_smem: int
    pred_regs: int
    compiled: object = None        # aot_check.CompiledConfig
    measured_s: float | None = None
    dropped: str = ""
    round: int = 1                 # AOT round that compiled it

    @property
    def ok(self) -> bool:
        return self.compiled is not None and not self.dropped


@dataclasses.dataclass
class StrategyResult:
    strategy: str
    shape: spaces.Shape
    n_feasible: int                # feasible configs of the model (before any AOT feedback)
    candidates: list
    best: Candidate | None
    source: str
    db_path: str | None = None
    n_feasible_after: int | None = None   # after the feedback constraints (None: no feedback)
    discrepancies: list = dataclasses.field(default_factory=list)
    rounds: int = 0
    shared_from: str | None = None        # AOT results of this mixer (identical template kernels)

    @property
    def compiled(self) -> list:
        return [c for c in self.candidates if c.compiled is not None]

    @property
    def aot_share(self):
        """Share of the compiled (all predicted-feasible) configs that compile without spills and
        within the limits; None when nothing was compiled."""
        comp = self.compiled
        if not comp:
            return None
        return sum(1 for c in comp if c.ok) / len(comp)


def _cfg_text(cfg) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


@dataclasses.dataclass
class TuneResult:
    mixer: str
    gpu: hardware.GPU
    results: list

    def table(self) -> str:
        lines = []
        for r in self.results:
            s = r.shape
            n = f"{r.n_feasible} feasible configs"
            if r.n_feasible_after is not None and r.n_feasible_after != r.n_feasible:
                n += f", {r.n_feasible_after} after AOT feedback"
            lines.append(f"== {self.mixer} {r.strategy} on {self.gpu.name} ({self.gpu.arch}) "
                         f"B={s.B} T={s.T} H={s.H} K={s.K} V={s.V} {s.dtype}: {n}")
            if r.shared_from:
                lines.append(f"(AOT results of {r.shared_from}: the same template kernels)")
            head = ("#", "config", "pred. ms", "pred. smem KiB", "AOT smem KiB", "pred. regs",
                    "AOT regs", "spills B", "measured ms", "status")
            rows = [head]
            for i, c in enumerate(r.candidates):
                cc = c.compiled
                if c.measured_s is None:
                    meas = "-"
                else:
                    meas = "fail" if c.measured_s == math.inf else f"{c.measured_s * 1e3:.3f}"
                status = ("BEST" if r.best is c else "") + (c.dropped and f"dropped: {c.dropped}") \
                    or ("ok" if cc is not None and cc.ok else "")
                rows.append((str(i + 1), _cfg_text(c.config), f"{c.predicted_s * 1e3:.3f}",
                             f"{c.pred_smem / 1024:.1f}", f"{cc.max_shared / 1024:.1f}" if cc else "-",
                             str(c.pred_regs), str(cc.max_registers) if cc else "-",
                             str(cc.spills) if cc else "-", meas, status))
            w = [max(len(x[j]) for x in rows) for j in range(len(head))]
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[:1]]
            lines.append("  ".join("-" * n for n in w))
            lines += ["  ".join(x[j].ljust(w[j]) for j in range(len(head))).rstrip() for x in rows[1:]]
            if r.aot_share is not None:
                comp = r.compiled
                lines.append(f"predicted-feasible configs that compile without spills: "
                             f"{sum(c.ok for c in comp)}/{len(comp)} ({r.aot_share:.0%}) in {r.rounds} "
                             f"AOT round(s)")
            if r.discrepancies:
                lines.append("model mismatches fed back as constraints (then re-solved):")
                for d in r.discrepancies:
                    lines.append(f"  - {d.what()}")
                    lines.append(f"      -> {d.fix()}")
            if r.best is not None:
                lines.append(f"chosen ({r.source}): {r.best.config}"
                             + (f"  -> {r.db_path}" if r.db_path else ""))
            else:
                lines.append("chosen: none (no candidate survived the AOT check)")
            lines.append("")
        return "\n".join(lines)


def feature_sizes(mixer, key_dims, K, V) -> dict:
    """Each feature dim's size for user-level head sizes K, V: a library mixer's own mapping
    (``LibraryEntry.sizes``), else K for the plan's key dims and V for the others."""
    from ..library import MIXERS
    entry = MIXERS.get(mixer.name)
    if entry is not None and entry.mixer is mixer:
        return entry.sizes(K, V)
    return {d: (K if d in key_dims else V) for d in mixer.feature_dims()}


def form_sizes(mixer, K=DEFAULT_HEAD, V=DEFAULT_HEAD):
    """(K, V) of the mixer's main gated-linear form for user-level head sizes K, V."""
    from ..lowering.gated_linear.analysis import analyse
    plan = analyse(mixer)
    sizes = feature_sizes(mixer, {f.k_dim for _, f in list(plan.aux) + [(None, plan.main)] if f.k_dim}, K, V)
    f = plan.main
    return (sizes[f.k_dim] if f.k_dim else 1), (sizes[f.v_dim] if f.v_dim else 1), plan.strategies


def diverse(ranked, k, skip=()):
    """The first k of ``ranked`` [(config, Cost)] that differ in more than num_stages (configs
    that differ only in stages from an earlier one, or from one in ``skip``, go to the end),
    skipping configs in ``skip`` (configs or their ``_key``)."""
    skip = {_key(dict(s)) for s in skip}

    def sig(cfg):
        return tuple((n, v) for n, v in sorted(cfg.items()) if n != "num_stages")
    seen = {tuple(x for x in s if x[0] != "num_stages") for s in skip}
    first, rest = [], []
    for cfg, c in ranked:
        if _key(cfg) in skip:
            continue
        (rest if sig(cfg) in seen else first).append((cfg, c))
        seen.add(sig(cfg))
    return (first + rest)[:k]


def feasible(space, shape, gpu, constraints=None) -> list:
    from . import solver
    if solver.available():
        return solver.enumerate_feasible(space, shape, gpu, constraints=constraints)
    warnings.warn("ortools is not installed: enumerating the tuning space by brute force")
    out = spaces.feasible_bruteforce(space, shape, gpu, constraints=constraints)
    if not out:
        raise TuningError(f"no feasible config for {space.name} on {gpu.name} (install ortools "
                          f"for an explanation)")
    return out


def _candidate(sp_, shape, cfg, c, rnd):
    res = spaces.resources(sp_, shape, cfg)
    return Candidate(sp_.to_config(cfg, shape), c.time_s, res["smem"], res["regs"], round=rnd)


def _tune_strategy(mixer, strategy, gpu, B, T, H, K, V, fK, fV, dtype, top_k, aot, workers, say,
                   store, max_rounds, *, space_=None, shape=None, compile_fn=None):
    # space_, shape, compile_fn: another family's space, core shape and AOT compiler
    # (delta_space.tune); default: the gated-linear spaces and aot_check
    sp_ = space_ if space_ is not None else spaces.space(strategy)
    if shape is None:
        shape = spaces.Shape(B, T, H, fK, fV, dtype)
    base = sp_.constraints(shape, gpu)
    say(f"[{strategy}] solving {sp_.name} for {gpu.name}")
    feas = feasible(sp_, shape, gpu, base)
    n_model = len(feas)
    fb = store.get(sp_, shape, gpu, mixer.fingerprint) if aot else None
    if fb is not None and fb.constraints:      # corrections learned at another shape of this run
        try:
            feas = feasible(sp_, shape, gpu, base + fb.constraints)
        except TuningError:
            feas = []
    ranked = cost.rank(sp_, shape, gpu, feas)
    say(f"[{strategy}] {n_model} feasible configs"
        + (f" ({len(feas)} after earlier AOT feedback)" if len(feas) != n_model else "")
        + (f"; best predicted {ranked[0][1].time_s * 1e3:.3f} ms" if ranked else ""))
    cands, by_key = [], {}
    found = []
    rounds = 0
    if not aot:
        for cfg, c in diverse(ranked, top_k):
            cands.append(_candidate(sp_, shape, cfg, c, 0))
        return StrategyResult(strategy, shape, n_model, cands, cands[0] if cands else None, "model")
    from . import aot_check
    for rnd in range(1, max_rounds + 1):
        pick = diverse(ranked, top_k, skip=set(by_key))
        if ranked and _key(ranked[0][0]) not in by_key and all(_key(p[0]) != _key(ranked[0][0]) for p in pick):
            pick = [ranked[0]] + pick[:max(0, top_k - 1)]     # the corrected model's best, always
        if not pick:
            break
        todo = []
        for cfg, c in pick:
            cand = _candidate(sp_, shape, cfg, c, rnd)
            by_key[_key(cfg)] = cand
            cands.append(cand)
            todo.append(cand)
        rounds = rnd
        say(f"[{strategy}] AOT round {rnd}: compiling {len(todo)} configs for {gpu.arch}")
        # the recording takes user-level head sizes (K, V), not the form's
        comp = (compile_fn or aot_check.compile_configs)(
            mixer, strategy, [c.config for c in todo], gpu.arch, dtype=dtype, K=K, V=V,
            workers=workers, progress=lambda m: say(f"[{strategy}]   {m}"))
        for c, cc in zip(todo, comp):
            c.compiled = cc
            if not cc.ok:
                c.dropped = cc.reason()
            elif cc.max_shared > gpu.smem_block:
                c.dropped = f"shared memory {cc.max_shared} B > {gpu.smem_block} B"
        known = {x.render() for x in fb.constraints}
        new = fb.observe_all([(c.config, c.compiled) for c in todo])
        if new:
            before = feas
            try:
                feas = feasible(sp_, shape, gpu, base + fb.constraints)
            except TuningError:
                feas = []
            learned = {d.constraint for d in new}
            for d in new:
                c = next((x for x in fb.constraints if x.render() == d.constraint), None)
                if c is not None and d.constraint not in known:
                    known.add(d.constraint)
                    chk = spaces._checker(c, sp_, shape)
                    names = [str(p) for p in sp_.params]
                    d.excluded = sum(1 for v in before if not chk(tuple(v[n] for n in names)))
            say(f"[{strategy}] {len(new)} model mismatch(es) fed back as {len(learned)} constraint(s); "
                f"re-solved: {len(before)} -> {len(feas)} feasible configs")
            found += new
            ranked = cost.rank(sp_, shape, gpu, feas)
        top = by_key.get(_key(ranked[0][0])) if ranked else None
        if not ranked or (top is not None and top.ok):
            break
    survivors = sorted((c for c in cands if c.ok), key=lambda c: c.predicted_s)
    r = StrategyResult(strategy, shape, n_model, cands, survivors[0] if survivors else None, "aot",
                       n_feasible_after=len(feas), discrepancies=found, rounds=rounds)
    return r


def _time(mixer, r, B, T, H, K, V, dtype, gpu, say):
    from .timing import time_configs
    survivors = [c for c in r.candidates if c.ok] if r.source == "aot" else list(r.candidates)
    if not survivors:
        return
    ts = time_configs(mixer, r.strategy, [c.config for c in survivors], B=B, T=T, H=H, K=K, V=V,
                      dtype=dtype, l2_bytes=gpu.l2_bytes, progress=lambda m: say(f"[{r.strategy}] {m}"))
    for c, t in zip(survivors, ts):
        c.measured_s = t
    good = sorted((c for c in survivors if c.measured_s is not None and math.isfinite(c.measured_s)),
                  key=lambda c: c.measured_s)
    if good:
        r.best, r.source = good[0], "timed"
    else:
        r.best = None


def _write(mixer, gpu, dtype, B, T, H, r, directory, extra=None):
    best = r.best
    cc = best.compiled
    compiled = None if cc is None else {"max_shared": cc.max_shared,
                                        "max_registers": cc.max_registers, "spills": cc.spills}
    ex = dict(extra or {})
    if r.discrepancies:
        ex["discrepancies"] = [d.as_dict() for d in r.discrepancies]
    return db.record(mixer.fingerprint, gpu, dtype, B, T, H, r.shape.K, r.shape.V, r.strategy,
                     best.config, source=r.source, predicted_s=best.predicted_s,
                     measured_s=best.measured_s, compiled=compiled, directory=directory, extra=ex)


def tune(mixer, gpu="h100", *, B=8, T=4096, H=16, K=DEFAULT_HEAD, V=DEFAULT_HEAD, dtype="bf16",
         strategies=None, top_k=4, aot=True, timed=False, write=True, directory=None,
         workers=None, progress=None, feedback=None, max_rounds=MAX_ROUNDS) -> TuneResult:
    """Tune ``mixer`` for one problem shape on ``gpu``; returns a ``TuneResult`` (``.table()``).

    ``feedback``: a ``feedback.Store`` to share the learned constraints with other calls (e.g.
    other shapes); ``timed`` needs a CUDA device (``TuningError`` otherwise, before any work)."""
    if timed:
        require_cuda()
    family = _family(mixer)
    if family not in TUNED_FAMILIES:
        raise TuningError(f"{mixer.name}: the {family or 'unrecognised'} family has no tuning pipeline "
                          f"yet (tuned families: {', '.join(TUNED_FAMILIES)}); its kernels use their "
                          "template's default tiles")
    if family == "householder":              # the delta-rule templates: delta_space.py
        from ..lowering.householder.space import tune as tune_delta
        return tune_delta(mixer, gpu, B=B, T=T, H=H, K=K, V=V, dtype=dtype, strategies=strategies,
                          top_k=top_k, aot=aot, timed=timed, write=write, directory=directory,
                          workers=workers, progress=progress, feedback=feedback,
                          max_rounds=max_rounds)
    if family in ("lti", "rnn"):             # the LTI kernels: lti_space.py; RNN templates: rnn_space.py
        from ..lowering.lti import space as lti_space
        from ..lowering.rnn import space as rnn_space
        fam_tune = lti_space.tune if family == "lti" else rnn_space.tune
        return fam_tune(mixer, gpu, B=B, T=T, H=H, K=K, V=V, dtype=dtype, strategies=strategies,
                        top_k=top_k, aot=aot, timed=timed, write=write, directory=directory,
                        workers=workers, progress=progress, feedback=feedback, max_rounds=max_rounds)
    say = progress or (lambda msg: None)
    gpu = hardware.get(gpu)
    dtype = db.dtype_name(dtype)
    fK, fV, avail = form_sizes(mixer, K, V)
    strategies = [s for s in (strategies or avail) if s in avail]
    store = feedback if feedback is not None else Store()
    results = []
    for strategy in strategies:
        r = _tune_strategy(mixer, strategy, gpu, B, T, H, K, V, fK, fV, dtype, top_k, aot, workers,
                           say, store, max_rounds)
        if timed:
            _time(mixer, r, B, T, H, K, V, dtype, gpu, say)
        if r.best is not None and write:
            r.db_path = _write(mixer, gpu, dtype, B, T, H, r, directory)
        results.append(r)
    return TuneResult(mixer.name, gpu, results)


#: the families whose templates ``tune`` handles
TUNED_FAMILIES = ("gated_linear", "householder", "lti", "rnn")


def tunable_strategies(mixer) -> tuple:
    """The strategy names ``tune`` accepts for ``mixer``: its plan's strategies, except that an
    LTI mixer tunes the kernels of its conv strategy only (the recurrence has no tiles)."""
    from ..lowering.family import classify
    fam, plan = classify(mixer)
    return ("conv",) if fam.name == "lti" else tuple(plan.strategies)


def _family(mixer) -> str | None:
    """The lowering family that accepts ``mixer`` (None when none does)."""
    from ..lowering.family import analyse
    try:
        return analyse(mixer).family
    except MixirError:
        return None


# ---- several mixers (mixir tune --all) ---------------------------------------------------------
def _probe_config(strategy, fK, fV):
    PK, PV = spaces.padded(fK), spaces.padded(fV)
    if strategy == "chunked":
        return {"BT": 32, "BC": 16, "BK": min(64, PK), "BV": min(64, PV), "num_warps": 4, "num_stages": 1}
    return {"BK": PK, "BV": min(32, PV), "num_warps": 4, "num_stages": 1}


def kernel_signature(mixer, dtype="bf16", K=DEFAULT_HEAD, V=DEFAULT_HEAD, strategies=None):
    """What decides a mixer's AOT results: the form's (K, V), its strategies and, per strategy, the
    set of template launches (kernel, argument types, constexprs such as USE_G / USE_GK / USE_GV,
    warps, stages) that a probe config records. Two mixers with equal signatures compile to the
    same template kernels for every config (the config only sets the block sizes, warps and
    stages of the same launches), so one AOT run serves both."""
    from . import aot_check
    fK, fV, avail = form_sizes(mixer, K, V)
    sig = [("form", fK, fV, tuple(avail), db.dtype_name(dtype))]
    for s in (strategies or avail):
        if s not in avail:
            continue
        recs = aot_check.record_config(mixer, s, _probe_config(s, fK, fV), dtype=db.dtype_name(dtype),
                                       K=K, V=V)
        sig.append((s, frozenset(r.key() for r in recs)))
    return tuple(sig)


def group_by_kernels(mixers, dtype="bf16", K=DEFAULT_HEAD, V=DEFAULT_HEAD, strategies=None,
                     progress=None) -> list:
    """[[mixer, ...], ...]: mixers with the same ``kernel_signature``, in input order."""
    groups = {}
    for m in mixers:
        fam = _family(m)
        if fam == "lti":                     # the shared LTI kernels: same pair and (Q, N) → same tuning
            from ..lowering.lti.space import kernel_signature as lti_signature
            groups.setdefault(lti_signature(m, K, V) + (db.dtype_name(dtype),), []).append(m)
            continue
        if fam != "gated_linear":            # other families are tuned one mixer at a time
            groups[("own", m.name, m.fingerprint)] = [m]
            continue
        if progress:
            progress(f"recording {m.name}'s template launches")
        groups.setdefault(kernel_signature(m, dtype, K, V, strategies), []).append(m)
    return list(groups.values())


def tune_all(mixers, gpu="h100", shapes=STANDARD_SHAPES, *, share=True, write=True, directory=None,
             progress=None, on_result=None, **kw) -> list:
    """Tune every mixer on every shape; returns [TuneResult]. With ``share`` (and the AOT check on),
    mixers whose template kernels are identical (``group_by_kernels``) are tuned once, by the
    group's first mixer, and the others get its result (their database entries record
    ``provenance.shared_with``). AOT feedback is shared across the shapes and mixers of one call.
    ``on_result(TuneResult)`` is called as each result is ready; a failing mixer raises unless
    ``on_error(mixer, shape, exc)`` is given in ``kw``."""
    on_error = kw.pop("on_error", None)
    say = progress or (lambda msg: None)
    gpu = hardware.get(gpu)
    if kw.get("timed"):
        require_cuda()
    aot = kw.get("aot", True)
    dtype = db.dtype_name(kw.pop("dtype", "bf16"))
    store = kw.pop("feedback", None) or Store()
    out = []
    by_size = {}
    for shp in shapes:
        K, V = shp.get("K", DEFAULT_HEAD), shp.get("V", DEFAULT_HEAD)
        if (K, V) not in by_size:
            if share and aot:
                by_size[(K, V)] = group_by_kernels(mixers, dtype, K, V, kw.get("strategies"), say)
            else:
                by_size[(K, V)] = [[m] for m in mixers]
        for group in by_size[(K, V)]:
            rep = group[0]
            args = dict(B=shp["B"], T=shp["T"], H=shp["H"], K=K, V=V)
            try:
                res = tune(rep, gpu, dtype=dtype, write=write, directory=directory, progress=progress,
                           feedback=store, **args, **kw)
            except MixirError as e:
                if on_error is None:
                    raise
                for m in group:
                    on_error(m, args, e)
                continue
            out.append(res)
            if on_result:
                on_result(res)
            for m in group[1:]:
                copies = []
                for r in res.results:
                    c = dataclasses.replace(r, shared_from=rep.name, db_path=None)
                    if write and c.best is not None:
                        c.db_path = _write(m, gpu, dtype, shp["B"], shp["T"], shp["H"], c, directory,
                                           extra={"shared_with": rep.name})
                    copies.append(c)
                t = TuneResult(m.name, gpu, copies)
                out.append(t)
                if on_result:
                    on_result(t)
    return out


__all__ = ["TUNED_FAMILIES", "tune", "tune_all", "TuneResult", "StrategyResult", "Candidate", "STANDARD_SHAPES",
           "form_sizes", "diverse", "kernel_signature", "group_by_kernels", "require_cuda"]
