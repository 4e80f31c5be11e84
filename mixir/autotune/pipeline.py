"""The tuning engine behind ``mixir tune``: per ``TuningTarget`` (a space, the core shape its
formulas see, an AOT compiler of configs), solve → rank → AOT-validate, feeding mismatches back as
constraints and re-solving → (time) → database.

The engine knows no family: a family's ``tuning_targets(mixer, plan, request)`` (the contract,
``lowering/family.py``) turns a ``TuneRequest`` into targets, and ``mixir.tuning.tune`` hands them
to ``tune_targets`` here.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

from ..errors import TuningError
from . import cost, db, hardware, space as spaces
from .feedback import Store
from .results import Candidate, StrategyResult, TuneResult

# The shapes ``mixir tune --all`` tunes (and the shipped defaults cover): one training shape. Kept
# to one so that the shipped database stays small (one entry per mixer and strategy) and
# ``--all`` runs in minutes; other shapes fall back to the cost model's best at run time.
STANDARD_SHAPES = ({"B": 8, "T": 4096, "H": 16},)
DEFAULT_HEAD = 128
MAX_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class TuneRequest:
    """What to tune for: the GPU, the user-level shape (B, T, H; head sizes K, V), the input dtype,
    the strategies (None: every tunable one) and how (``top_k`` candidates per AOT round, up to
    ``max_rounds`` rounds, ``aot`` check with at most ``timeout_s`` seconds per kernel compile,
    ``timed`` on CUDA, ``write`` to the database in ``directory``; ``force``: replace an entry from
    a stronger source, ``model`` < ``aot`` < ``timed``). ``feedback``: a ``feedback.Store`` shared
    with other requests (other shapes of one ``tune_all``).

    The driver (``mixir.tuning.request``) fills in what lives above the lowering: ``inputs``
    (``(declaration, *, B, T, H, K, V, seed) -> (arrays, initial state)``, the example inputs the
    AOT recording and the timing run on), ``sizes`` (``(mixer, key_dims, K, V) -> {dim: size}``,
    the library's feature sizes for head sizes K, V), ``data`` (``(B, H, T) -> {name: tensor}``,
    an attention mask's data), ``label`` (the name results show) and ``provenance`` (more
    provenance written with every database entry)."""
    gpu: object = "h100"
    B: int = 8
    T: int = 4096
    H: int = 16
    K: int = DEFAULT_HEAD
    V: int = DEFAULT_HEAD
    dtype: str = "bf16"
    strategies: tuple | None = None
    top_k: int = 4
    aot: bool = True
    timed: bool = False
    write: bool = True
    directory: str | None = None
    workers: int | None = None
    timeout_s: float | None = 300
    force: bool = False
    progress: Callable | None = None
    feedback: Store | None = None
    max_rounds: int = MAX_ROUNDS
    inputs: Callable | None = None
    sizes: Callable | None = None
    data: Callable | None = None
    label: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    @property
    def dtype_name(self) -> str:
        return db.dtype_name(self.dtype)

    def feature_sizes(self, mixer, key_dims) -> dict:
        """Each feature dim's size for the request's head sizes: ``sizes`` (the library's own
        mapping) when set, else K for ``key_dims`` and V for the others."""
        if self.sizes is not None:
            return dict(self.sizes(mixer, key_dims, self.K, self.V))
        return {d: (self.K if d in key_dims else self.V) for d in mixer.feature_dims()}

    def example_inputs(self, declaration, **shape):
        """``inputs(declaration, **shape)``; a ``TuningError`` when the request has none."""
        if self.inputs is None:
            raise TuningError("this tuning request has no example inputs to run the mixer on; build "
                              "it with mixir.tuning.request(...)")
        return self.inputs(declaration, **shape)


@dataclasses.dataclass(frozen=True)
class TuningTarget:
    """One strategy to tune: its database ``strategy`` name, the ``space`` and the core ``shape``
    the space's formulas see; ``compile(configs, arch, *, workers, progress)`` builds every
    config's kernels ahead of time (one ``CompiledConfig`` per config: ``ok``, ``max_shared``,
    ``resources``, ``errors``, ``reason()``); ``time(configs, gpu, progress)`` times them on CUDA
    (seconds, ``inf`` for a failure; None: not timed). ``learn``: AOT mismatches become constraints
    of the model and the space is solved again (False: rounds stop at the first one with a
    survivor)."""
    strategy: str
    space: spaces.Space
    shape: spaces.Shape
    compile: Callable | None = None
    time: Callable | None = None
    learn: bool = True


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


def _re_solve(sp_, shape, gpu, constraints):
    try:
        return feasible(sp_, shape, gpu, constraints)
    except TuningError:
        return []


def tune_target(fingerprint, target: TuningTarget, gpu, request: TuneRequest, store) -> StrategyResult:
    """Solve → rank → AOT rounds (with feedback) for one target; the ``StrategyResult``."""
    strategy, sp_, shape = target.strategy, target.space, target.shape
    say = request.say
    top_k = request.top_k
    base = sp_.constraints(shape, gpu)
    say(f"[{strategy}] solving {sp_.name} for {gpu.name}")
    feas = feasible(sp_, shape, gpu, base)
    n_model = len(feas)
    aot = request.aot and target.compile is not None
    fb = store.get(sp_, shape, gpu, fingerprint) if aot and target.learn else None
    if fb is not None and fb.constraints:      # corrections learned at another shape of this run
        feas = _re_solve(sp_, shape, gpu, base + fb.constraints)
    ranked = cost.rank(sp_, shape, gpu, feas)
    say(f"[{strategy}] {n_model} feasible configs"
        + (f" ({len(feas)} after earlier AOT feedback)" if len(feas) != n_model else "")
        + (f"; best predicted {ranked[0][1].time_s * 1e3:.3f} ms" if ranked else ""))
    if not aot:
        cands = [_candidate(sp_, shape, cfg, c, 0) for cfg, c in diverse(ranked, top_k)]
        return StrategyResult(strategy, shape, n_model, cands, cands[0] if cands else None, "model")
    cands, by_key, found, rounds = [], {}, [], 0
    for rnd in range(1, request.max_rounds + 1):
        pick = diverse(ranked, top_k, skip=set(by_key))
        if fb is not None and ranked and _key(ranked[0][0]) not in by_key \
                and all(_key(p[0]) != _key(ranked[0][0]) for p in pick):
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
        comp = target.compile([c.config for c in todo], gpu.arch, workers=request.workers,
                              timeout_s=request.timeout_s,
                              progress=lambda m: say(f"[{strategy}]   {m}"))
        for c, cc in zip(todo, comp):
            c.compiled = cc
            if not cc.ok:
                c.dropped = cc.reason()
            elif cc.max_shared > gpu.smem_block:
                c.dropped = f"shared memory {cc.max_shared} B > {gpu.smem_block} B"
        if fb is None:                              # nothing learned: stop at the first survivor
            if any(c.ok for c in todo):
                break
            continue
        new = _learn(fb, sp_, shape, gpu, base, feas, todo)
        if new:
            before = len(feas)
            feas = _re_solve(sp_, shape, gpu, base + fb.constraints)
            say(f"[{strategy}] {len(new)} model mismatch(es) fed back as "
                f"{len({d.constraint for d in new})} constraint(s); re-solved: {before} -> {len(feas)} "
                f"feasible configs")
            found += new
            ranked = cost.rank(sp_, shape, gpu, feas)
        top = by_key.get(_key(ranked[0][0])) if ranked else None
        if not ranked or (top is not None and top.ok):
            break
    survivors = sorted((c for c in cands if c.ok), key=lambda c: c.predicted_s)
    return StrategyResult(strategy, shape, n_model, cands, survivors[0] if survivors else None, "aot",
                          n_feasible_after=len(feas), discrepancies=found, rounds=rounds)


def _learn(fb, sp_, shape, gpu, base, feas, todo) -> list:
    """Feed one round's AOT results to ``fb``; the new discrepancies, each with the number of
    configs of ``feas`` its constraint excludes."""
    known = {x.render() for x in fb.constraints}
    new = fb.observe_all([(c.config, c.compiled) for c in todo])
    names = [str(p) for p in sp_.params]
    for d in new:
        c = next((x for x in fb.constraints if x.render() == d.constraint), None)
        if c is not None and d.constraint not in known:
            known.add(d.constraint)
            chk = spaces._checker(c, sp_, shape)
            d.excluded = sum(1 for v in feas if not chk(tuple(v[n] for n in names)))
    return new


def time_result(target: TuningTarget, r: StrategyResult, gpu, say) -> None:
    """Time the survivors of ``r`` (the AOT survivors, or the model's candidates) with
    ``target.time``; the fastest correct one becomes ``r.best`` (source "timed")."""
    if target.time is None:
        say(f"[{r.strategy}] not timed: no timing run for this target")
        return
    survivors = [c for c in r.candidates if c.ok] if r.source == "aot" else list(r.candidates)
    if not survivors:
        return
    ts = target.time([c.config for c in survivors], gpu, lambda m: say(f"[{r.strategy}] {m}"))
    for c, t in zip(survivors, ts):
        c.measured_s = t
    good = sorted((c for c in survivors if c.measured_s is not None and math.isfinite(c.measured_s)),
                  key=lambda c: c.measured_s)
    if good:
        r.best, r.source = good[0], "timed"
    else:
        r.best = None


def record_result(fingerprint, gpu, request: TuneRequest, r: StrategyResult, extra=None) -> str | None:
    """Write ``r.best`` to the database under (fingerprint, dtype, strategy, the core shape's K and
    V, the request's user-level B, T, H); returns the file's path and sets ``r.db_path``. A failed
    write does not raise: ``r.db_error`` says why (and None is returned), so that the result is
    still shown; an entry kept because it comes from a stronger source sets ``r.db_kept``."""
    best = r.best
    cc = best.compiled
    compiled = None if cc is None else {"max_shared": cc.max_shared,
                                        "max_registers": cc.max_registers, "spills": cc.spills}
    ex = {**request.provenance, **(extra or {})}
    if r.discrepancies:
        ex["discrepancies"] = [d.as_dict() for d in r.discrepancies]
    kept = []
    try:
        path = db.record(fingerprint, gpu, request.dtype_name, request.B, request.T, request.H,
                         r.shape.K, r.shape.V, r.strategy, best.config, source=r.source,
                         predicted_s=best.predicted_s, measured_s=best.measured_s, compiled=compiled,
                         directory=request.directory, extra=ex, force=request.force, kept=kept)
    except TuningError as e:
        r.db_error = str(e)
        request.say(f"[{r.strategy}] not written: {e}")
        return None
    r.db_path = path
    if kept:
        r.db_kept = kept[0][1]
        request.say(f"[{r.strategy}] kept the database's {kept[0][1]} entry (this run: {kept[0][2]}; "
                    f"--force replaces it)")
    return path


def tune_targets(name: str, fingerprint: str, targets, request: TuneRequest) -> TuneResult:
    """Tune every target of one declaration (``name`` for the table, ``fingerprint`` for the
    database) for ``request``: per target ``tune_target`` → (``time_result``) → (``record_result``).
    ``timed`` needs a CUDA device, and ``write`` a writable database location with no unreadable
    file there (``TuningError`` otherwise, before any work)."""
    if request.timed:
        require_cuda()
    gpu = hardware.get(request.gpu)
    if request.write:
        db.check_writable(gpu, request.directory)     # TuningError before any work
    store = request.feedback if request.feedback is not None else Store()
    results = []
    for target in targets:
        r = tune_target(fingerprint, target, gpu, request, store)
        if request.timed:
            time_result(target, r, gpu, request.say)
        if r.best is not None and request.write:
            record_result(fingerprint, gpu, request, r)
        results.append(r)
    return TuneResult(name, gpu, results)


__all__ = ["TuneRequest", "TuningTarget", "tune_targets", "tune_target", "time_result",
           "record_result", "TuneResult", "StrategyResult", "Candidate", "STANDARD_SHAPES",
           "DEFAULT_HEAD", "MAX_ROUNDS", "diverse", "feasible", "require_cuda"]
