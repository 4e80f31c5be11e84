"""``mixir tune``: tune declarations through the family contract.

``tune(declaration, request)`` classifies the declaration (``lowering.family.classify``), asks its
family for its ``tuning_targets(declaration, plan, request)`` (one space, core shape and AOT
compiler per strategy) and hands them to the engine (``autotune.pipeline.tune_targets``: solve →
rank → AOT rounds with feedback → (time) → database). ``tune_all`` tunes several mixers on several
shapes, once per group of mixers whose kernels are identical (the families' ``kernel_signature``).

This module sits above ``mixir.library`` and ``mixir.verify``: it gives every request the library's
example inputs (``verify.example_inputs``) and feature sizes (``feature_sizes``), which the families'
AOT recordings and timing runs use, and it resolves library attention masks
(``tune_library_mask("sliding_window:1024")``). The CLI calls only this module.
"""
from __future__ import annotations

import dataclasses

from .autotune import db, hardware
from .autotune.feedback import Store
from .autotune.pipeline import (DEFAULT_HEAD, STANDARD_SHAPES, TuneRequest, TuneResult, record_result,
                                require_cuda, tune_targets)
from .errors import MixirError, TuningError, UnsupportedMixerError
from .lowering.family import classify
from .verify import example_inputs


def feature_sizes(mixer, key_dims, K, V) -> dict:
    """Each feature dim's size for user-level head sizes K, V: a library mixer's own mapping
    (``LibraryEntry.sizes``), else K for the plan's key dims and V for the others."""
    from .library import MIXERS
    entry = MIXERS.get(mixer.name)
    if entry is not None and entry.mixer is mixer:
        return entry.sizes(K, V)
    return {d: (K if d in key_dims else V) for d in mixer.feature_dims()}


def request(base: TuneRequest | None = None, **fields) -> TuneRequest:
    """A ``TuneRequest`` (``base`` with ``fields`` replaced, or a new one) whose example inputs and
    feature sizes are the library's (unless given): what the families' AOT recordings and timing
    runs use."""
    req = dataclasses.replace(base, **fields) if base is not None else TuneRequest(**fields)
    fill = {}
    if req.strategies is not None and not isinstance(req.strategies, tuple):
        fill["strategies"] = tuple(req.strategies)
    if req.inputs is None:
        fill["inputs"] = example_inputs
    if req.sizes is None:
        fill["sizes"] = feature_sizes
    return dataclasses.replace(req, **fill) if fill else req


def tunable_strategies(declaration) -> tuple:
    """The strategy names ``tune`` accepts for ``declaration`` (``Family.tunable_strategies``: an
    LTI mixer tunes the kernels of its conv strategy only)."""
    fam, plan = classify(declaration)
    return tuple(fam.tunable_strategies(plan))


def _targets(declaration, req) -> tuple:
    """(family, targets) of ``declaration`` for ``req``; ``TuningError`` when no family lowers it
    or its family has nothing to tune."""
    try:
        fam, plan = classify(declaration)
    except UnsupportedMixerError as e:
        raise TuningError(f"{declaration.name}: no family lowers it, so there is nothing to tune "
                          f"({str(e).splitlines()[0]})") from e
    targets = fam.tuning_targets(declaration, plan, req)
    if not targets and req.strategies is None:
        raise TuningError(f"{declaration.name}: the {fam.name} family has no tuning space; its "
                          f"kernels use their template's default tiles")
    return fam, targets


def tunable(declaration, req: TuneRequest | None = None) -> bool:
    """Whether ``declaration``'s family tunes it: a family lowers it and has tuning targets for it
    (a request that fails for its shape still counts: ``tune`` then reports why)."""
    try:
        fam, plan = classify(declaration)
    except UnsupportedMixerError:
        return False
    try:
        return bool(fam.tuning_targets(declaration, plan, request(req, strategies=None, aot=False,
                                                                  progress=None)))
    except MixirError:
        return True


def tune(declaration, req: TuneRequest | None = None, **fields) -> TuneResult:
    """Tune ``declaration`` (a mixer, or an attention mask with head dim ``K``) for the request's
    shape on its GPU; a ``TuneResult`` (``.table()``). ``fields`` replace those of ``req`` (e.g.
    ``tune(m, gpu="a100", T=2048)``). ``timed`` needs a CUDA device (``TuningError`` otherwise,
    before any work)."""
    req = request(req, **fields)
    if req.timed:
        require_cuda()
    _, targets = _targets(declaration, req)
    return tune_targets(req.label or declaration.name, declaration.fingerprint, targets, req)


def group_by_kernels(mixers, req: TuneRequest | None = None, **fields) -> list:
    """[[mixer, ...], ...]: mixers whose families give equal ``kernel_signature``s for the request
    (identical kernels: one tuning run serves the group), in input order; a family without a
    signature tunes its mixers one at a time."""
    req = request(req, **fields)
    groups = {}
    for m in mixers:
        try:
            fam, plan = classify(m)
        except UnsupportedMixerError:
            sig = None
        else:
            sig = fam.kernel_signature(m, plan, req)
        key = ("own", m.name, m.fingerprint) if sig is None else (fam.name, sig)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def tune_all(mixers, req: TuneRequest | None = None, shapes=STANDARD_SHAPES, *, share=True,
             on_result=None, on_error=None, **fields) -> list:
    """Tune every mixer on every shape (``{"B", "T", "H"[, "K", "V"]}``); returns [TuneResult].
    With ``share`` (and the AOT check on), mixers whose kernels are identical
    (``group_by_kernels``) are tuned once, by the group's first mixer, and the others get its
    result (their database entries record ``provenance.shared_with``). AOT feedback is shared
    across the shapes and mixers of one call. ``on_result(TuneResult)`` is called as each result
    is ready; a failing mixer raises unless ``on_error(mixer, shape, exc)`` is given. With
    ``write``, an unwritable database location is a ``TuningError`` before any work."""
    req = request(req, **fields)
    gpu = hardware.get(req.gpu)
    if req.timed:
        require_cuda()
    if req.write:
        db.check_writable(gpu, req.directory)          # TuningError before any work
    req = dataclasses.replace(req, gpu=gpu, dtype=req.dtype_name,
                              feedback=req.feedback if req.feedback is not None else Store())
    out, by_size = [], {}
    for shp in shapes:
        K, V = shp.get("K", DEFAULT_HEAD), shp.get("V", DEFAULT_HEAD)
        sreq = dataclasses.replace(req, B=shp["B"], T=shp["T"], H=shp["H"], K=K, V=V)
        if (K, V) not in by_size:
            by_size[(K, V)] = (group_by_kernels(mixers, sreq) if share and req.aot
                               else [[m] for m in mixers])
        for group in by_size[(K, V)]:
            rep = group[0]
            args = dict(B=shp["B"], T=shp["T"], H=shp["H"], K=K, V=V)
            try:
                res = tune(rep, sreq)
            except MixirError as e:
                if on_error is None:
                    raise
                for m in group:
                    on_error(m, args, e)
                continue
            results = [res] + [_shared(m, rep, res, gpu, sreq) for m in group[1:]]
            for r in results:
                out.append(r)
                if on_result:
                    on_result(r)
    return out


def _shared(mixer, rep, res, gpu, req) -> TuneResult:
    """``res`` (tuned for ``rep``) as ``mixer``'s result, written under its fingerprint."""
    copies = []
    for r in res.results:
        c = dataclasses.replace(r, shared_from=rep.name, db_path=None, db_error=None, db_kept=None)
        if req.write and c.best is not None:
            record_result(mixer.fingerprint, gpu, req, c, extra={"shared_with": rep.name})
        copies.append(c)
    return TuneResult(mixer.name, gpu, copies)


def compile_configs(declaration, strategy: str, configs: list, arch: str,
                    req: TuneRequest | None = None, **fields) -> list:
    """The AOT check of ``configs`` of one strategy of ``declaration`` for ``arch`` (its family's
    tuning target's compiler): one ``CompiledConfig`` per config."""
    req = request(req, strategies=(strategy,), **fields)
    _, targets = _targets(declaration, req)
    (target,) = [t for t in targets if t.strategy == strategy] or targets[:1]
    return target.compile(list(configs), arch, workers=req.workers, timeout_s=req.timeout_s,
                          progress=req.progress)


# ---- library attention masks (mixir tune attention:NAME[:ARG,...]) ----------------------------
def library_mask(spec: str):
    """(name, Mask, data_fn) of ``NAME[:ARG,ARG...]``, a library mask with its integer arguments
    (e.g. ``sliding_window:1024``, ``moba:64,3``: block size and top-k; default: the example
    arguments of ``library.MASKS``)."""
    from .library import attention as library
    name, _, rest = spec.partition(":")
    if name not in library.MASKS:
        raise MixirError(f"no library attention mask {name!r}; known: {', '.join(sorted(library.MASKS))}")
    try:
        args = tuple(int(x) for x in rest.split(",") if x.strip()) if rest else None
    except ValueError:
        raise MixirError(f"attention mask arguments must be integers, got {rest!r}") from None
    factory, example = library.MASKS[name]
    margs = example if args is None else args
    mask = factory(*(margs[:1] if name == "moba" else margs))

    def data_fn(B, H, T):
        return library.example_data(name, B, H, T, margs if name == "moba" else ())
    return name + (f"({','.join(map(str, margs))})" if margs else ""), mask, data_fn


def tune_library_mask(spec: str, req: TuneRequest | None = None, **fields) -> TuneResult:
    """``tune`` a library attention mask given as ``NAME[:ARG,...]`` (``library_mask``); the head
    dim is ``K``. Its result is named ``attention:NAME(ARGS)`` and its database entry records the
    mask's name."""
    name, mask, data_fn = library_mask(spec)
    return tune(mask, req, label=f"attention:{name}", data=data_fn, provenance={"mask": name},
                **fields)


__all__ = ["request", "tune", "tune_all", "tunable", "tunable_strategies", "group_by_kernels",
           "compile_configs", "feature_sizes", "library_mask", "tune_library_mask", "TuneRequest",
           "TuneResult", "STANDARD_SHAPES", "require_cuda"]
