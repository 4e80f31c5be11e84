"""The ``mixir`` command: list, show, verify, compile (AOT resource report), demo and tune."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from .errors import MixirError


def resolve(name: str):
    """A library mixer by name, or ``module:function`` / ``path/file.py:function`` of a user's."""
    from .dsl.mixer import Mixer
    if ":" not in name:
        from .library import MIXERS
        if name not in MIXERS:
            raise MixirError(f"no library mixer {name!r}; known: {', '.join(sorted(MIXERS))} "
                             "(or give module:function)")
        return MIXERS[name].mixer
    module, _, attr = name.rpartition(":")
    if module.endswith(".py") or os.sep in module:
        spec = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
        if spec is None or not os.path.exists(module):
            raise MixirError(f"cannot find the file {module!r}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise MixirError(f"cannot import module {module!r}: {e}") from e
    obj = getattr(mod, attr, None)
    if not isinstance(obj, Mixer):
        raise MixirError(f"{name} is not a mixer declared with @mixir.mixer (got {type(obj).__name__})")
    return obj


def cmd_list(args):
    from .library import MIXERS
    from .lowering.family import classify
    rows = [("name", "family", "class", "strategies")]
    for name, entry in sorted(MIXERS.items()):
        try:
            fam, plan = classify(entry.mixer)
            rows.append((name, fam.name, plan.transition, ", ".join(plan.strategies)))
        except MixirError as e:
            rows.append((name, "-", "unsupported: " + str(e).split("yet: ")[-1][:60], "-"))
    from .library.attention import MASKS
    for name in sorted(MASKS):
        rows.append((f"attention: {name}", "attention", "softmax attention, block-sparse mask",
                     "block-sparse tiles"))
    print(_table(rows))


def cmd_show(args):
    from .dsl import ir
    from .lowering.family import classify
    m = resolve(args.mixer)
    print(f"mixer {m.name}  fingerprint {m.fingerprint}")
    for a in m.args:
        print(f"  {a.kind:6s} {a.name}{list(a.dims)}" + (f" default {a.default}" if a.kind == "scalar" else ""))
    for s, u in zip(m.states, m.updates):
        print(f"  state  {s.name}{list(s.dims)} <- {ir.render(u)}")
    print(f"  output {ir.render(m.output)}")
    fam, plan = classify(m)
    print(fam.describe(m, plan))
    compiled = fam.compile(m, plan)
    for path in compiled.source_files():
        print(f"triton source: {path}")
    formulas = fam.tuning_formulas(plan)      # the autotuner's formulas for its strategies
    if formulas:
        print(formulas)


def cmd_verify(args):
    from .verify import verify
    m = resolve(args.mixer)
    report = verify(m, dtypes=args.dtype, T=args.T, seed=args.seed)
    print(report.table())
    return 0 if report.ok else 1


def _check_limits(args):
    """--timeout (seconds > 0) and --workers (>= 0) as clear errors naming the option."""
    from .errors import InputError
    if getattr(args, "timeout", None) is not None and not args.timeout > 0:
        raise InputError(f"--timeout takes the seconds one kernel compile may take (> 0), got {args.timeout}")
    if getattr(args, "workers", None) is not None and args.workers < 0:
        raise InputError(f"--workers takes a number of worker processes >= 0, got {args.workers}")


def _progress(msg):
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def cmd_compile(args):
    from .lowering.common import aot
    from .verify import record_kernels
    _check_limits(args)
    m = resolve(args.mixer)
    archs = [aot.parse_arch(a) for a in args.arch]
    records = record_kernels(m, dtype=args.dtype)
    _progress(f"compiling {len(records) * len(archs)} kernels for {', '.join(archs)} "
              f"(at most {args.timeout:g} s each)")
    resources = aot.build_all(list(records.values()), archs, workers=args.workers,
                              timeout_s=args.timeout, progress=_progress)
    print(aot.format_table(resources))
    spills = [r for r in resources if r.spills]
    if spills:
        print(f"warning: {len(spills)} kernel builds spill registers", file=sys.stderr)


def cmd_demo(args):
    """The end-to-end path on a built-in default: declare → compile → verify → AOT report."""
    print("== declare: gla from mixir.library (a gated linear recurrence with per-key decay)")
    ns = argparse.Namespace(mixer=args.mixer)
    cmd_show(ns)
    print("\n== verify against the float64 reference (CPU, Triton interpreter)")
    rc = cmd_verify(argparse.Namespace(mixer=args.mixer, dtype=["float32", "bfloat16"], T=40, seed=0))
    print("\n== ahead-of-time build for sm_90 (registers, spills, shared memory)")
    cmd_compile(argparse.Namespace(mixer=args.mixer, arch=["sm_90"], dtype="bfloat16", workers=None,
                                   timeout=300.0))
    return rc


# ---- `mixir tune` (mixir/tuning.py) ----------------------------------------------------------
def _parse_shapes(text):
    """``B=..,T=..,H=..[,K=..,V=..]``, several separated by ``;`` → [dict]."""
    from .errors import InputError
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
    from . import tuning
    from .autotune.report import accuracy_text
    _check_limits(args)
    if args.time:
        tuning.require_cuda()            # TuningError before any work
    if not args.all and not args.mixer:
        raise MixirError("mixir tune: give a mixer (NAME or module:function) or --all")
    if args.all and args.mixer:
        raise MixirError("mixir tune: give a mixer or --all, not both")
    shapes = _parse_shapes(args.shapes) if args.shapes else (
        [dict(s) for s in tuning.STANDARD_SHAPES] if args.all else [{"B": 8, "T": 4096, "H": 16}])
    strategies = None if args.strategy == "all" else [args.strategy]

    req = tuning.request(gpu=args.gpu, dtype=args.dtype, strategies=strategies, top_k=args.top_k,
                         aot=not args.no_aot, timed=args.time, write=not args.dry_run,
                         directory=args.db, workers=args.workers, timeout_s=args.timeout,
                         force=args.force, progress=_progress)
    if args.mixer and args.mixer.startswith("attention:"):
        return _tune_attention(args, shapes, req)
    results = []
    rc = 0
    if args.all:
        from .library import MIXERS
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
                print(f"mixir: not tuned (no {strategies[0]!r} strategy): {', '.join(other)}",
                      file=sys.stderr)
        results = tuning.tune_all(mixers, req, shapes, share=not args.no_share, on_error=on_error,
                                  on_result=lambda r: print(r.table(), flush=True))
        rc = 1 if failures else 0
    else:
        m = resolve(args.mixer)
        for shp in shapes:
            kw = {k: shp[k] for k in ("B", "T", "H", "K", "V") if k in shp}
            res = tuning.tune(m, req, **kw)
            print(res.table(), flush=True)
            results.append(res)
    if not args.no_aot:
        print(accuracy_text(results))
    return max(rc, _write_failures(results))


def _write_failures(results) -> int:
    """1 (after a message) when some result could not be written to the database, else 0."""
    failed = [r for res in results for r in res.results if getattr(r, "db_error", None)]
    if failed:
        print(f"mixir: error: {len(failed)} tuning result(s) were not written to the database "
              f"(shown above): {failed[0].db_error}", file=sys.stderr)
    return 1 if failed else 0


def _tune_attention(args, shapes, req):
    """``mixir tune attention:NAME[:ARG,...]``: a library attention mask (``mixir.tuning``, through
    the attention family's tuning target); K of --shapes is the head dim (default 128);
    --strategy does not apply."""
    from . import tuning
    from .autotune.report import accuracy_text
    results = []
    for shp in shapes:
        res = tuning.tune_library_mask(args.mixer.split(":", 1)[1], req, B=shp["B"], T=shp["T"],
                                       H=shp["H"], K=shp.get("K", 128))
        print(res.table(), flush=True)
        results.append(res)
    if not args.no_aot:
        print(accuracy_text(results))
    return _write_failures(results)


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="mixir", description="a compiler for token mixers")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="library mixers with their class and strategies").set_defaults(fn=cmd_list)
    s = sub.add_parser("show", help="traced IR, classification, strategy, generated Triton files")
    s.add_argument("mixer", help="library name or module:function")
    s.set_defaults(fn=cmd_show)
    s = sub.add_parser("verify", help="differential check against the reference on CPU")
    s.add_argument("mixer")
    s.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"])
    s.add_argument("--T", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("compile", help="ahead-of-time build and resource table")
    s.add_argument("mixer")
    s.add_argument("--arch", nargs="+", default=["sm_90"])
    s.add_argument("--dtype", default="bfloat16")
    s.add_argument("--workers", type=int, default=None,
                   help="compile worker processes (default: one per CPU; 0: in this process, "
                        "without the time limit)")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one kernel compile may take before its worker is killed (default 300)")
    s.set_defaults(fn=cmd_compile)
    s = sub.add_parser("demo", help="declare → compile → verify → AOT report on a built-in mixer")
    s.add_argument("mixer", nargs="?", default="gla")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("tune", help="constraint-solver autotuner: solve, rank, AOT-check, (time), write the DB")
    s.add_argument("mixer", nargs="?", help="library name or module:function, or attention:MASK[:ARG,..] "
                                            "(a library attention mask; K = head dim)")
    s.add_argument("--all", action="store_true", help="every library mixer on a standard shape set")
    s.add_argument("--no-share", action="store_true",
                   help="with --all: AOT-check every mixer, even those whose template kernels are "
                        "identical to another's")
    s.add_argument("--gpu", default="h100", help="GPU name or alias (see docs/autotune.md)")
    s.add_argument("--shapes", default=None,
                   help="B=..,T=..,H=..[,K=..,V=..], several separated by ';' (default B=8,T=4096,H=16; "
                        "with --all the standard shapes)")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    s.add_argument("--strategy", default="all",
                   choices=["all", "chunked", "recurrent", "fused", "alternating", "conv"],
                   help="strategies to tune (RNN mixers: fused, alternating; LTI mixers tune the "
                        "kernels of their conv strategy)")
    s.add_argument("--top-k", type=int, default=4, help="candidates compiled ahead of time")
    s.add_argument("--time", action="store_true", help="time the survivors (needs a CUDA GPU)")
    s.add_argument("--no-aot", action="store_true", help="skip the ahead-of-time compile check")
    s.add_argument("--dry-run", action="store_true", help="do not write the tuning database")
    s.add_argument("--db", default=None, help="database directory (default: $MIXIR_TUNING_DB or the user dir)")
    s.add_argument("--workers", type=int, default=None,
                   help="AOT compile worker processes (default: one per CPU, at least one)")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one kernel compile may take before its worker is killed (default 300)")
    s.add_argument("--force", action="store_true",
                   help="replace database entries from a stronger source (model < aot < timed)")
    s.set_defaults(fn=cmd_tune)
    args = p.parse_args(argv)
    try:
        return args.fn(args) or 0
    except MixirError as e:
        print(f"mixir: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
