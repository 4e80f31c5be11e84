"""Static roofline of mixir's and fla's kernels on a named GPU, computed on the CPU (no GPU).

    python benchmarks/static_roofline.py                      # 4 mixers, B=8 T=4096 H=16 K=V=128 bf16, H100
    python benchmarks/static_roofline.py --K 64 --V 64 --json out.json --plot out.png
    python benchmarks/static_roofline.py --install-fla        # fla-core --no-deps into the cache dir

For each library mixer at the target shape: launches, HBM bytes, dot FLOPs by precision, static
wgmma / mma.sync instruction counts and a roofline time of the forward and of forward+backward,
for mixir and for flash-linear-attention (fla) when fla can be imported, beside the lower bound.

How (details in benchmarks/README.md, "static_roofline.py"):

* Counting. The mixer runs forward then backward (``torch.autograd.grad`` of every input with a
  random ``do``) on CPU tensors at a reduced shape (B_r = H_r = 1, T_r = 128 and 256 by default)
  in Triton's interpreter, with hooks on the interpreter's builder (``roofline_count``): bytes of
  every unmasked element loaded or stored, 2·M·N·K FLOPs per ``tl.dot`` by operand precision. The
  torch operators between the kernels count as launches too (bytes read + written). mixir runs
  under ``record_launches`` so its launch parameters and dot precisions are those it records for
  the GPU; bf16 inputs go through the interpreter as they are (values may be wrong there: counts
  do not depend on them). mixir's config is the one its runtime would pick on the GPU at the
  target shape (tuning database, else cost model, else default; ``--config default``: template).
  Each counted step follows an uncounted one with every kernel skipped (``roofline_count.warm_up``),
  so host-side caches (mixir's chunk tables) are warm: the counts are a steady-state step.
* Scaling. Bytes and FLOPs are affine in T per (batch, head): the two reduced runs give them at the
  target, times B·H (``roofline_model.scale``). No cache model: every load counts as HBM traffic
  (tiles re-read by several programs may hit L2 on a GPU: the byte counts are upper bounds).
* fla runs in a subprocess (``roofline_fla.py``, ``TRITON_INTERPRET=1``) that makes fla see an H100;
  its autotuned kernels: every tile combination is counted, the configs are built for sm_90 and
  the best spill-free one (modelled time, then wgmma, then registers) is taken.
* Builds. Every launched kernel is compiled for sm_90 (``triton.compile``, ptxas and cuobjdump
  from the Triton wheel): registers, spills, static HGMMA (wgmma) and HMMA (mma.sync) counts.
  Results are cached in ``--cache-dir``; ``--no-build`` skips them.
* Roofline: per launch max(bytes / HBM, Σ FLOPs_p / peak_p) + ``--overhead-us`` (default 2 µs),
  summed. Lower bound (issue 13's): inputs read and output written once (fwd), plus the inputs
  and ``do`` read again and every input gradient written once (fwd+bwd), at the input dtype, /
  HBM bandwidth.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import roofline_count as rc  # noqa: E402
import roofline_model as rm  # noqa: E402

DEFAULT_MIXERS = "simple_gla,gla,delta_rule,gated_delta_rule"
_T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ---- mixir --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _mixir_launch_meta():
    """Tag each interpreted launch of a ``launch.Kernel`` with its name and ``LaunchRecord``."""
    from mixir.lowering.common.launch import Kernel
    orig = Kernel.__getitem__

    def getitem(self, grid):
        inner = orig(self, grid)

        def launch(*args, num_warps: int = 4, num_stages: int = 2, **kwargs):
            bound = dict(zip(self.arg_names, args))
            bound.update(kwargs)
            tmp = {}
            with contextlib.suppress(Exception):
                self._record(tmp, bound, num_warps, num_stages)
            parts = self.name.rsplit(".", 1)
            name = parts[-1] if parts[-1] not in ("fwd", "bwd") else f"pieces_{parts[-1]}"
            rc.STATE.pending = {"name": name,
                                "record": next(iter(tmp.values()), None)}
            return inner(*args, num_warps=num_warps, num_stages=num_stages, **kwargs)
        return launch

    Kernel.__getitem__ = getitem
    try:
        yield
    finally:
        Kernel.__getitem__ = orig


@contextlib.contextmanager
def _gpu_config(fn, gpu_name, shape, used: list, tuned: bool):
    """The compiled mixer's ``_config`` as on a CUDA device of ``gpu_name`` at the target
    ``shape`` (B, T, H): tuning database, else cost model, else default; and, for a family whose
    default strategy depends on the GPU and the shape (``default_strategy(b, form, device, N)``),
    the strategy a call at the target shape picks there."""
    from mixir.autotune import hardware, select
    orig, saved = getattr(fn, "_config", None), select.current_gpu
    if orig is None:
        yield
        return
    strategy_of = getattr(fn, "default_strategy", None)

    def config(strategy, K, V, dtype, *rest, **kw):
        cfg = orig(strategy, K, V, dtype, shape, torch.device("cuda")) if tuned else \
            orig(strategy, K, V, dtype, *rest, **kw)
        used.append({"strategy": strategy, **dict(cfg)})
        return cfg

    def default_strategy(b, form=None, device=None, N=None):
        # the reduced run counts B = H = 1; the target has B sequences of H heads
        return strategy_of(dataclasses.replace(b, B=shape[0], H=shape[2], N=shape[0]), form,
                           torch.device("cuda"), shape[0])
    fn._config = config
    if strategy_of is not None and "device" in inspect.signature(strategy_of).parameters:
        fn.default_strategy = default_strategy
    select.current_gpu = lambda device: hardware.get(gpu_name)
    try:
        yield
    finally:
        select.current_gpu = saved
        del fn._config
        fn.__dict__.pop("default_strategy", None)


def count_mixir(name, Br, Hr, T, K, V, dtype, target, gpu, tuned, records: dict, strategy=None):
    """Launch dicts of mixir's fwd + bwd at (Br, T, Hr); LaunchRecords go to ``records``."""
    import mixir
    from mixir.library import MIXERS
    from mixir.lowering.common.launch import record_launches
    rc.install()
    entry = MIXERS[name]
    xs = [torch.tensor(a, dtype=dtype).requires_grad_()
          for a in entry.make_inputs(np.random.default_rng(0), Br, T, Hr, K, V)]
    fn = mixir.compile(entry.mixer, strategy=strategy)
    launches, used = [], []
    with record_launches(), _mixir_launch_meta(), _gpu_config(fn, gpu, target, used, tuned):
        rc.warm_up(lambda: torch.autograd.grad(fn(*xs).float().sum(), xs, allow_unused=True))
        with rc.counting(launches, "fwd"):
            o = fn(*xs)
        do = torch.randn_like(o)
        with rc.counting(launches, "bwd"):
            torch.autograd.grad(o, xs, do, allow_unused=True)
    out = []
    for x in launches:
        d = x.as_dict()
        rec = d["meta"].pop("record", None)
        if rec is not None:
            d["meta"]["record_id"] = id(rec)
            records[id(rec)] = rec
        out.append(d)
    configs = list({json.dumps(c, sort_keys=True): c for c in used}.values())
    return out, configs


def _source_digest(fn) -> str:
    """Hash of the kernel's source file and of the mixir modules its globals reach (helpers)."""
    files = set()
    with contextlib.suppress(TypeError, OSError):
        files.add(inspect.getsourcefile(fn))
    for v in fn.__globals__.values():
        mod = v if inspect.ismodule(v) else sys.modules.get(getattr(getattr(v, "fn", v), "__module__", None) or "")
        if mod is not None and mod.__name__.startswith("mixir") and getattr(mod, "__file__", None):
            files.add(mod.__file__)
    h = hashlib.sha256()
    for path in sorted(f for f in files if f):
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def mixir_job(rec, B, H, arch):
    consts = rm.target_constexprs([list(c) for c in rec.constexprs], B, H)
    key = rm.build_key("mixir", rec.kernel.name, _source_digest(rec.kernel.fn), rec.signature, consts,
                       rec.num_warps, rec.num_stages, arch)
    return key, consts


def build_mixir(launches, records, cache, B, H, arch, enabled):
    for x in launches:
        rec = records.get(x["meta"].get("record_id"))
        if x["kind"] != "triton" or rec is None:
            continue
        key, consts = mixir_job(rec, B, H, arch)
        if enabled and key not in cache.data:
            t0 = time.perf_counter()
            try:
                cache.data[key] = rc.build_counts(rec.kernel.jit, rec.kernel.name, rec.signature,
                                                  [tuple(c) for c in consts], rec.num_warps, rec.num_stages, arch)
            except Exception as e:  # noqa: BLE001 - reported in the table (unbuilt)
                cache.data[key] = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]}
            log(f"  built {x['name']} ({time.perf_counter() - t0:.1f} s)")
        x["build"] = cache.data.get(key, {})
        x["meta"]["config"] = {"num_warps": rec.num_warps, "num_stages": rec.num_stages,
                               "constexprs": {n: v for n, v in consts if isinstance(v, (int, float, str, bool))}}
        x["meta"].pop("record_id", None)


# ---- fla ----------------------------------------------------------------------------------------

def fla_site(args) -> str:
    return args.fla_path or os.path.join(args.cache_dir, "fla-site")


def install_fla(args):
    target = fla_site(args)
    log(f"installing fla-core and einops (--no-deps) into {target}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                    "fla-core", "einops"], check=True)


def fla_env(args, interpret: bool) -> dict:
    env = dict(os.environ)
    paths = [p for p in (fla_site(args), ROOT, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["TRITON_CACHE_DIR"] = os.path.join(args.cache_dir, "triton")
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def fla_available(args) -> str | None:
    """None when fla imports (with the fla dir on the path), else the reason."""
    r = subprocess.run([sys.executable, "-c", "import fla, einops"], env=fla_env(args, True),
                       capture_output=True, text=True)
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return f"fla not importable ({last}); run with --install-fla"


def start_fla_count(args, mixers, out_path):
    cmd = [sys.executable, os.path.join(HERE, "roofline_fla.py"), "count", out_path, "--mixers", ",".join(mixers),
           "--B", str(args.reduced_B), "--H", str(args.reduced_H), "--T", args.reduced_T,
           "--K", str(args.K), "--V", str(args.V), "--dtype", args.dtype]
    return subprocess.Popen(cmd, env=fla_env(args, True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


# ---- report -------------------------------------------------------------------------------------

def _fmt_row(mixer, K, V, impl, s_f, s_fb, lb, ratio):
    fl = s_fb["flops"]
    gf = "/".join(f"{fl[p] / 1e9:.0f}" for p in rm.PRECS)
    return (f"| {mixer} | {K} | {V} | {impl} | {s_f['launches']} ({s_f['triton']}+{s_f['glue']}) "
            f"| {s_f['bytes'] / 1e9:.2f} | {s_f['time_s'] * 1e6:.0f} "
            f"| {s_fb['launches']} ({s_fb['triton']}+{s_fb['glue']}) | {s_fb['bytes'] / 1e9:.2f} "
            f"| {s_fb['time_s'] * 1e6:.0f} | {gf} | {s_fb['wgmma']}/{s_fb['mma']}"
            + (f" ({s_fb['spilling']} spill)" if s_fb['spilling'] else "")
            + (f" ({s_fb['unbuilt']} unbuilt)" if s_fb['unbuilt'] else "")
            + f" | {s_fb['time_s'] / lb:.2f} | {ratio} |")


HEAD = ("| mixer | K | V | impl | fwd launches (triton+glue) | fwd GB | fwd µs | fwd+bwd launches "
        "| fwd+bwd GB | fwd+bwd µs | fwd+bwd dot GFLOP 16bit/tf32/tf32x3/fp32 | wgmma/mma.sync (SASS, "
        "fwd+bwd) | fwd+bwd × lower bound | fwd+bwd mixir ÷ fla |\n" + "|---" * 14 + "|")


def detail_table(res) -> str:
    lines = ["| mixer | impl | phase | kernel | GB | GFLOP | µs | regs | spills | wgmma | mma | config |",
             "|---" * 12 + "|"]
    for mixer, impls in res.items():
        for impl, r in impls.items():
            for ph in ("fwd", "bwd"):
                glue = [x for x in r.get("launches", []) if x["kind"] == "glue" and x["phase"] == ph]
                if glue:
                    names = sorted({x["name"][5:] for x in glue})
                    lines.append(f"| {mixer} | {impl} | {ph} | {len(glue)} torch ops ({', '.join(names)}) "
                                 f"| {sum(x['load_bytes'] + x['store_bytes'] for x in glue) / 1e9:.3f} | 0 "
                                 f"| {sum(x['time_us'] for x in glue):.0f} | | | | | |")
            for x in r.get("launches", []):
                if x["kind"] != "triton":
                    continue
                b = x.get("build") or {}
                cfg = x["meta"].get("config") or {}
                c = cfg.get("kwargs", cfg.get("constexprs", {}))
                c = {k: v for k, v in c.items() if k.startswith("B") or k in ("PREC", "DOT_F32", "DOT_PRECISION")}
                lines.append(f"| {mixer} | {impl} | {x['phase']} | {x['name']} "
                             f"| {(x['load_bytes'] + x['store_bytes']) / 1e9:.3f} "
                             f"| {sum(x['flops'].values()) / 1e9:.1f} | {x['time_us']:.0f} "
                             f"| {b.get('registers', '-')} | {b.get('spills', '-')} | {b.get('wgmma', '-')} "
                             f"| {b.get('mma', '-')} | w{cfg.get('num_warps')} s{cfg.get('num_stages')} "
                             f"{json.dumps(c)} |")
    return "\n".join(lines)


def plot(path, res, K, V):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    mixers = list(res)
    impls = ["mixir", "fla", "lower bound"]
    fig, ax = plt.subplots(figsize=(2.2 * len(mixers) + 2, 4))
    w = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        ys = [res[m].get(impl, {}).get("fwdbwd", {}).get("time_s", 0) * 1e6 for m in mixers]
        ax.bar([i + j * w for i in range(len(mixers))], ys, w, label=impl)
    ax.set_xticks([i + w for i in range(len(mixers))], mixers)
    ax.set_ylabel("modelled fwd+bwd µs")
    ax.set_title(f"static roofline, K={K} V={V}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log(f"plot written to {path}")


# ---- main ---------------------------------------------------------------------------------------

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixers", default=DEFAULT_MIXERS)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--gpu", default="h100")
    p.add_argument("--overhead-us", type=float, default=2.0, help="added per launch (default 2)")
    p.add_argument("--config", default="tuned", choices=("tuned", "default"),
                   help="mixir's config: the GPU runtime's choice at the target shape, or the template's")
    p.add_argument("--strategy", default=None,
                   help="run mixir's mixers with this strategy (e.g. fused); default: the runtime's rule")
    p.add_argument("--reduced-T", default="128,256", help="the two reduced sequence lengths")
    p.add_argument("--reduced-B", type=int, default=1)
    p.add_argument("--reduced-H", type=int, default=1)
    p.add_argument("--no-build", action="store_true", help="skip the sm_90 builds (no registers / MMA counts)")
    p.add_argument("--no-fla", action="store_true")
    p.add_argument("--install-fla", action="store_true", help="pip install fla-core --no-deps into the cache dir")
    p.add_argument("--fla-path", default=None, help="a directory holding fla (default: CACHE/fla-site)")
    p.add_argument("--fla-build", default="lazy", choices=("lazy", "all"),
                   help="lazy: build fla's configs one tile combination at a time; all: every listed config")
    p.add_argument("--jobs", type=int, default=2, help="processes for fla's builds")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "mixir-static-roofline"))
    p.add_argument("--detail", action="store_true", help="also print one row per kernel launch")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import warnings
    warnings.filterwarnings("ignore")
    os.makedirs(args.cache_dir, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = os.path.join(args.cache_dir, "triton")
    from mixir.library import MIXERS
    mixers = args.mixers.split(",")
    for m in mixers:
        if m not in MIXERS:
            raise SystemExit(f"unknown mixer {m!r}; library mixers: {', '.join(MIXERS)}")
    dtype = getattr(torch, args.dtype)
    pk = rm.peaks(args.gpu)
    T1, T2 = (int(t) for t in args.reduced_T.split(","))
    f = args.B * args.H / (args.reduced_B * args.reduced_H)
    ovh = args.overhead_us * 1e-6
    cache = rm.BuildCache(os.path.join(args.cache_dir, "builds.json"))
    if args.install_fla:
        install_fla(args)
    fla_reason = "--no-fla" if args.no_fla else fla_available(args)
    tmp = tempfile.mkdtemp(prefix="static-roofline-")
    fla_proc = None
    if fla_reason is None:
        log("fla: counting in the interpreter (subprocess) ...")
        fla_proc = start_fla_count(args, mixers, os.path.join(tmp, "fla.json"))
    res = {}
    for m in mixers:
        log(f"mixir {m}: counting at T={T1}, {T2} ...")
        records = {}
        runs, cfgs = [], None
        for T in (T1, T2):
            launches, cfgs = count_mixir(m, args.reduced_B, args.reduced_H, T, args.K, args.V, dtype,
                                         (args.B, args.T, args.H), pk["name"], args.config == "tuned", records,
                                         args.strategy)
            runs.append(launches)
        try:
            scaled = rm.scale(runs[0], runs[1], T1, T2, args.T, f)
        except RuntimeError as e:      # e.g. a per-token loop (the RNNs' alternating strategy)
            res[m] = {"mixir": {"error": f"not modelled: {e}", "config": cfgs}}
            continue
        res[m] = {"mixir": {"launches": scaled, "config": cfgs, "_records": records}}
    for m in mixers:
        r = res[m]["mixir"]
        if "error" in r:
            continue
        if not args.no_build:
            log(f"mixir {m}: sm_90 builds ...")
        build_mixir(r["launches"], r.pop("_records"), cache, args.B, args.H, pk["arch"], not args.no_build)
        cache.save()
    if fla_proc is not None:
        _, err = fla_proc.communicate()
        path = os.path.join(tmp, "fla.json")
        if fla_proc.returncode != 0 or not os.path.exists(path):
            fla_reason = f"fla run failed: {(err.strip().splitlines() or ['?'])[-1]}"
        else:
            with open(path) as fh:
                fla = json.load(fh)
            env = fla_env(args, False)
            builder = None if args.no_build else (
                lambda jobs: rm.run_fla_builds(jobs, cache, env, args.jobs, log))
            for m in mixers:
                d = fla.get(m, {})
                if "error" in d:
                    res[m]["fla"] = {"error": d["error"]}
                    continue
                scaled = rm.scale(d["runs"][str(T1)], d["runs"][str(T2)], T1, T2, args.T, f)
                rm.choose_fla_configs(scaled, pk, args.B, args.H, pk["arch"], cache, builder, ovh, args.fla_build)
                plain = [x for x in scaled if x["kind"] == "triton" and not rm.is_tuned(x)]
                jobs = [rm.fla_job(x, None, args.B, args.H, pk["arch"]) for x in plain]
                if builder is not None:
                    builder(jobs)
                for x, j in zip(plain, jobs):
                    x["build"] = cache.data.get(j["key"], {})
                res[m]["fla"] = {"launches": scaled, "version": fla.get("_env", {}).get("fla")}
    print(report(args, res, pk, mixers, fla_reason, ovh, T1, T2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "peaks": pk, "fla_reason": fla_reason, "results": res}, fh, indent=1)
        log(f"json written to {args.json}")
    if args.plot:
        plot(args.plot, res, args.K, args.V)
    log("done")


def report(args, res, pk, mixers, fla_reason, ovh, T1, T2) -> str:
    from mixir.library import MIXERS
    item = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    out = [f"# static roofline: B={args.B} T={args.T} H={args.H} K={args.K} V={args.V} {args.dtype}, "
           f"{pk['name']} model (modelled, not measured)",
           "",
           f"- peaks: HBM {pk['hbm'] / 1e12:.2f} TB/s; dot TFLOP/s 16bit {pk['16bit'] / 1e12:.0f}, "
           f"tf32 {pk['tf32'] / 1e12:.0f}, tf32x3 {pk['tf32x3'] / 1e12:.0f}, fp32 (FMA) {pk['fp32'] / 1e12:.0f}; "
           f"+{args.overhead_us:g} µs per launch",
           f"- counted in Triton's interpreter at B={args.reduced_B} H={args.reduced_H} T={T1},{T2} "
           f"({args.dtype} inputs, mixir under record_launches: the GPU's launch parameters and dot "
           f"precisions), scaled affinely in T and by B·H; bytes = every load and store (no cache model)",
           f"- mixir config: {args.config}; fla: {fla_reason or 'counted (fake H100 in the interpreter), autotuned kernels: best spill-free config of the sm_90 builds'}",
           f"- builds: {'skipped (--no-build)' if args.no_build else 'sm_90 (triton.compile + ptxas), static SASS counts'}",
           "", HEAD]
    for m in mixers:
        lb = rm.lower_bound_bytes(MIXERS[m], args.B, args.T, args.H, args.K, args.V, item)
        lbt = {k: v / pk["hbm"] for k, v in lb.items()}
        sums = {}
        for impl, r in res[m].items():
            if "launches" not in r:
                continue
            for x in r["launches"]:
                x["time_us"] = rm.launch_time(x, pk, ovh) * 1e6
            r["fwd"] = rm.summarize(r["launches"], ("fwd",), pk, ovh)
            r["fwdbwd"] = rm.summarize(r["launches"], ("fwd", "bwd"), pk, ovh)
            sums[impl] = r
        for impl, r in sums.items():
            ratio = "-"
            if impl == "mixir" and "fla" in sums:
                ratio = f"{r['fwdbwd']['time_s'] / sums['fla']['fwdbwd']['time_s']:.2f}"
            out.append(_fmt_row(m, args.K, args.V, impl, r["fwd"], r["fwdbwd"], lbt["fwdbwd"], ratio))
        if "mixir" not in sums:
            out.append(f"| {m} | {args.K} | {args.V} | mixir | n/a: {res[m]['mixir']['error']} |"
                       + " |" * 9)
        if "fla" not in sums:
            reason = res[m].get("fla", {}).get("error") or fla_reason
            out.append(f"| {m} | {args.K} | {args.V} | fla | n/a: {reason} |" + " |" * 9)
        res[m]["lower bound"] = {"fwd": {"bytes": lb["fwd"], "time_s": lbt["fwd"]},
                                 "fwdbwd": {"bytes": lb["fwdbwd"], "time_s": lbt["fwdbwd"]}}
        out.append(f"| {m} | {args.K} | {args.V} | lower bound | - | {lb['fwd'] / 1e9:.2f} | {lbt['fwd'] * 1e6:.0f} "
                   f"| - | {lb['fwdbwd'] / 1e9:.2f} | {lbt['fwdbwd'] * 1e6:.0f} | - | - | 1.00 | - |")
    for m in mixers:
        cfg = res[m]["mixir"].get("config")
        if cfg:
            out.append(f"\nmixir {m} config: {json.dumps(cfg)}")
    if args.detail:
        out += ["", detail_table(res)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
