"""``mixir tune`` (through ``mixir.tuning``): its options, the run, and its ``--plot``. Imports
only argparse-level modules at the top: ``mixir tune --help`` stays light."""
from __future__ import annotations

import os
import sys

from ..errors import MixirError
from .names import ATTENTION, resolve
from .table import check_limits, progress


def add_tune(sub, name_help: str, compile_options) -> None:
    s = sub.add_parser(
        "tune", help="constraint-solver autotuner: solve, rank, AOT-check, (time), write the DB",
        description="Solve the tuning space of each strategy with CP-SAT, rank the feasible configs "
                    "with the cost model, build the best ahead of time (mismatches fed back as "
                    "constraints), optionally time them on a CUDA GPU, and write the tuning database.")
    s.add_argument("mixer", nargs="?", help=name_help + "; for attention:MASK, K of --shapes is the head dim")
    s.add_argument("--all", action="store_true", help="every library mixer on a standard shape set")
    s.add_argument("--no-share", action="store_true",
                   help="with --all: AOT-check every mixer, even those whose template kernels are "
                        "identical to another's")
    s.add_argument("--gpu", default="h100", help="GPU name or alias (see docs/autotune.md; default h100)")
    s.add_argument("--shapes", default=None,
                   help="B=..,T=..,H=..[,K=..,V=..], several separated by ';' (default B=8,T=4096,H=16; "
                        "with --all the standard shapes)")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="input dtype (default bf16)")
    s.add_argument("--strategy", default="all",
                   choices=["all", "chunked", "recurrent", "fused", "alternating", "conv"],
                   help="strategies to tune (RNN mixers: fused, alternating; LTI mixers tune the "
                        "kernels of their conv strategy)")
    s.add_argument("--top-k", type=int, default=4, help="candidates compiled ahead of time per round (default 4)")
    s.add_argument("--time", action="store_true", help="time the survivors (needs a CUDA GPU)")
    s.add_argument("--no-aot", action="store_true", help="skip the ahead-of-time compile check")
    s.add_argument("--dry-run", action="store_true", help="do not write the tuning database")
    s.add_argument("--db", default=None, help="database directory (default: $MIXIR_TUNING_DB or the user dir)")
    s.add_argument("--force", action="store_true",
                   help="replace database entries from a stronger source (model < aot < timed)")
    s.add_argument("--plot", metavar="PNG", default=None,
                   help="write a PNG per run: the predicted cost of every config of the model's "
                        "feasible space (the candidates compiled marked), and with --time the "
                        "predicted cost against the measured time (needs matplotlib: "
                        "pip install 'mixir[plot]')")
    compile_options(s)
    s.set_defaults(fn=cmd_tune)


def parse_shapes(text):
    """``B=..,T=..,H=..[,K=..,V=..]``, several separated by ``;`` -> [dict]."""
    from ..errors import InputError
    shapes = []
    for one in filter(None, (x.strip() for x in (text or "").split(";"))):
        out = {}
        for part in filter(None, one.split(",")):
            k, _, v = part.partition("=")
            if not v or not v.strip().isdigit() or k.strip() not in ("B", "T", "H", "K", "V"):
                raise InputError(f"--shapes takes B=..,T=..,H=.. (and optionally K=..,V=..), several "
                                 f"separated by ';', got {part!r}")
            out[k.strip()] = int(v)
        shapes.append(out)
    return shapes


def cmd_tune(args):
    from .. import tuning
    from ..autotune.report import accuracy_text
    check_limits(args)
    if args.time:
        tuning.require_cuda()            # TuningError before any work
    if not args.all and not args.mixer:
        raise MixirError("mixir tune: give a mixer (NAME or module:function) or --all")
    if args.all and args.mixer:
        raise MixirError("mixir tune: give a mixer or --all, not both")
    if args.plot:
        if args.all:
            raise MixirError("mixir tune --plot: give one mixer (--all has too many runs for one picture)")
        from ..autotune.plot import require_matplotlib
        require_matplotlib("mixir tune --plot")        # before any work
    shapes = parse_shapes(args.shapes) if args.shapes else (
        [dict(s) for s in tuning.STANDARD_SHAPES] if args.all else [{"B": 8, "T": 4096, "H": 16}])
    strategies = None if args.strategy == "all" else [args.strategy]

    req = tuning.request(gpu=args.gpu, dtype=args.dtype, strategies=strategies, top_k=args.top_k,
                         aot=not args.no_aot, timed=args.time, write=not args.dry_run,
                         directory=args.db, workers=args.workers, timeout_s=args.timeout,
                         force=args.force, progress=progress)
    results, runs, rc = [], [], 0      # runs: (declaration, request fields, TuneResult) for --plot
    if args.all:
        results, rc = _tune_all(args, tuning, req, shapes, strategies)
    elif args.mixer.startswith(ATTENTION):
        spec = args.mixer[len(ATTENTION):]
        _, mask, data_fn = tuning.library_mask(spec)
        for shp in shapes:
            res = tuning.tune_library_mask(spec, req, B=shp["B"], T=shp["T"], H=shp["H"], K=shp.get("K", 128))
            print(res.table(), flush=True)
            results.append(res)
            fields = {"B": shp["B"], "T": shp["T"], "H": shp["H"], "K": shp.get("K", 128), "data": data_fn}
            runs.append((mask, fields, res))
    else:
        m = resolve(args.mixer).declaration
        for shp in shapes:
            kw = {k: shp[k] for k in ("B", "T", "H", "K", "V") if k in shp}
            res = tuning.tune(m, req, **kw)
            print(res.table(), flush=True)
            results.append(res)
            runs.append((m, kw, res))
    if not args.no_aot:
        print(accuracy_text(results))
    if args.plot:
        for path in plot_runs(runs, req, args.plot):
            print(f"plot: {path}")
    return max(rc, _write_failures(results))


def _tune_all(args, tuning, req, shapes, strategies):
    from ..library import MIXERS
    failures = []

    def on_error(m, shp, e):
        print(f"mixir: {m.name} {shp}: {e}", file=sys.stderr)
        failures.append(m.name)
    mixers = [MIXERS[n].mixer for n in sorted(MIXERS)]
    skipped = sorted(m.name for m in mixers if not tuning.tunable(m, req))
    mixers = [m for m in mixers if m.name not in skipped]
    if skipped:
        print(f"mixir: not tuned (no tuning pipeline for their family yet): {', '.join(skipped)}",
              file=sys.stderr)
    if strategies:
        other = [m.name for m in mixers if strategies[0] not in tuning.tunable_strategies(m)]
        mixers = [m for m in mixers if m.name not in other]
        if other:
            print(f"mixir: not tuned (no {strategies[0]!r} strategy): {', '.join(other)}", file=sys.stderr)
    results = tuning.tune_all(mixers, req, shapes, share=not args.no_share, on_error=on_error,
                              on_result=lambda r: print(r.table(), flush=True))
    return results, (1 if failures else 0)


def _write_failures(results) -> int:
    """1 (after a message) when some result could not be written to the database, else 0."""
    failed = [r for res in results for r in res.results if getattr(r, "db_error", None)]
    if failed:
        print(f"mixir: error: {len(failed)} tuning result(s) were not written to the database "
              f"(shown above): {failed[0].db_error}", file=sys.stderr)
    return 1 if failed else 0


def feasible_space(declaration, req, fields) -> dict:
    """{strategy: [predicted seconds of every config of the model's feasible space]} for the
    request's GPU and the shape in ``fields`` (solved again from the family's tuning targets, as
    ``mixir.tuning.tune`` solves it before any AOT feedback)."""
    from .. import tuning
    from ..autotune import cost, hardware
    from ..autotune.pipeline import feasible
    from ..lowering.family import classify
    fam, plan = classify(declaration)
    sreq = tuning.request(req, aot=False, progress=None, **fields)
    gpu = hardware.get(sreq.gpu)
    out = {}
    for t in fam.tuning_targets(declaration, plan, sreq):
        feas = feasible(t.space, t.shape, gpu, t.space.constraints(t.shape, gpu))
        out[t.strategy] = [c.time_s for _, c in cost.rank(t.space, t.shape, gpu, feas)]
    return out


def plot_runs(runs, req, path) -> list:
    """One PNG per tuning run (``path`` itself for a single run, else ``path``'s stem with the
    run's index): a row per strategy (``autotune.plot``). Returns the paths written."""
    from ..autotune.plot import panel_from_result, save_tuning_plot
    stem, ext = os.path.splitext(path)
    written = []
    for i, (decl, fields, res) in enumerate(runs, 1):
        space = feasible_space(decl, req, fields)
        panels = []
        for r in res.results:
            s = r.shape
            title = f"{res.mixer} {r.strategy} B={s.B} T={s.T} H={s.H} K={s.K} V={s.V} {s.dtype}"
            panels.append(panel_from_result(title, space.get(r.strategy, []), r))
        out = path if len(runs) == 1 else f"{stem}-{i}{ext or '.png'}"
        written.append(save_tuning_plot(panels, out, title=f"mixir tune {res.mixer} on {res.gpu.name}"))
    return written
