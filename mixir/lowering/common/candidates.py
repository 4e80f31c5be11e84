"""Candidate configs of a tuning run, run for real (every family's ``tuning_targets`` builds its
AOT and timing callables from these; ``autotune`` only calls them):

* ``record(run, keep)``: the template launches one config makes, recorded while ``run()`` runs
  the compiled mixer on tiny CPU inputs (launch parameters as on a GPU: ``record_launches``);
* ``compile_recorded(configs, record, arch)``: those launches built for a GPU architecture with the
  ahead-of-time builder (``aot.build_all``), one ``CompiledConfig`` per config (its kernels' real
  registers, spills and shared memory; kernels shared between configs compile once);
* ``time_configs``: one forward + backward per config on a CUDA device (``mixir tune --time``),
  each checked first against a reference strategy, scheduled by ``autotune.timing.measure``.

CPU recording runs Triton's interpreter, where bf16 dots always take fp32 operands; a template
whose dots take the input dtype is recorded in fp16 (same element size, 16-bit dots) and its pointer
types renamed back to bf16 (``gpu_faithful``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ...errors import TuningError

_TORCH = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclasses.dataclass
class CompiledConfig:
    config: dict
    resources: list                 # KernelResources of the config's template kernels
    errors: list                    # error strings (compile failures, timeouts)
    #: every error is a worker killed from outside (``aot.WorkerDied``): not the config's fault, so
    #: the tuner drops the config for this run but learns nothing from it
    transient: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.spills == 0 and r.fits for r in self.resources)

    @property
    def max_shared(self) -> int:
        return max((r.total_shared_bytes for r in self.resources), default=0)

    @property
    def max_registers(self) -> int:
        return max((r.registers for r in self.resources), default=0)

    @property
    def spills(self) -> int:
        return sum(r.spills for r in self.resources)

    def reason(self) -> str:
        if self.errors:
            return self.errors[0].splitlines()[0]
        bad = [r for r in self.resources if r.spills or not r.fits]
        if not bad:
            return ""
        r = bad[0]
        short = r.kernel.rsplit(".", 1)[-1]
        if r.spills:
            return f"{short} spills {r.spills} B/thread ({r.registers} regs)"
        return f"{short} does not fit ({r.total_shared_bytes} B shared, {r.registers} regs)"


def torch_dtype(name):
    """The torch dtype of "bf16" / "fp16" / "fp32"."""
    import torch
    return getattr(torch, _TORCH[name])


def gpu_faithful(rec, dtype: str):
    """Rewrite a launch recorded on the CPU in fp16 for ``dtype`` into the one a GPU makes (see the
    module docstring): bf16 pointers, and 16-bit dots that take fp32 operands as "tf32x3" unless
    the kernel recorded the GPU's precision itself."""
    sig = rec.signature
    consts = dict(rec.constexprs)
    if dtype == "bf16":
        sig = tuple((n, "*bf16" if t == "*fp16" else t) for n, t in sig)
    if dtype != "fp32" and "PREC" in consts and consts["PREC"] not in ("tf32", "tf32x3"):
        # a kernel that chose its precision for the CPU ("ieee"); one that chose the GPU's while
        # launches were recorded (``launch.targets_gpu``) keeps it
        consts["PREC"] = "tf32x3" if consts.get("DOT_F32") else "tf32"
    return dataclasses.replace(rec, signature=sig, constexprs=tuple(consts.items()))


def record(run, keep=None, rewrite=None) -> list:
    """The distinct ``LaunchRecord``s of the kernels ``run()`` launches that ``keep(record)``
    accepts (default: all), each passed through ``rewrite`` (default: as recorded)."""
    from .launch import record_launches
    with record_launches() as records:
        run()
    out = {}
    for rec in records.values():
        if keep is None or keep(rec):
            r = rewrite(rec) if rewrite is not None else rec
            out.setdefault(r.key(), r)
    return list(out.values())


def tensors(mixer, arrays, dtype, *, device="cpu", requires_grad=False, input_dtype=None):
    """Torch tensors of example ``arrays``: per-token inputs in ``input_dtype`` (default
    ``dtype``), the others (parameters, gates kept in fp32) in float32."""
    import torch
    idt = dtype if input_dtype is None else input_dtype
    return [torch.tensor(np.asarray(a), dtype=idt if spec.kind == "input" else torch.float32,
                         device=device).requires_grad_(requires_grad)
            for spec, a in zip(mixer.inputs, arrays)]


def state_tensors(h0, *, requires_grad=False):
    """The initial state of example inputs as fp32 tensors (a tuple for several states)."""
    import torch
    if isinstance(h0, tuple):
        return tuple(torch.tensor(np.asarray(h), dtype=torch.float32, requires_grad=requires_grad)
                     for h in h0)
    return torch.tensor(np.asarray(h0), dtype=torch.float32, requires_grad=requires_grad)


def compile_recorded(configs: list, record, arch: str, *, workers=None, timeout_s: float = 300,
                     progress=None) -> list:
    """Build the kernels ``record(config)`` launches for every config, for ``arch``; one
    ``CompiledConfig`` per config. Kernels shared between configs compile once."""
    from . import aot
    per_config, unique = [], {}
    for i, cfg in enumerate(configs):
        recs = record(cfg)
        per_config.append([r.key() for r in recs])
        for r in recs:
            unique.setdefault(r.key(), r)
        if progress:
            progress(f"recorded config {i + 1}/{len(configs)} ({len(unique)} distinct kernels)")
    keys = list(unique)
    if progress:
        progress(f"compiling {len(keys)} kernels for {arch}")
    results = aot.build_all([unique[k] for k in keys], arch, workers=workers, timeout_s=timeout_s,
                            errors="collect", progress=progress)
    by_key = dict(zip(keys, results))
    out = []
    for cfg, ks in zip(configs, per_config):
        res = [by_key[k] for k in ks]
        errs = [r for r in res if isinstance(r, BaseException)]
        out.append(CompiledConfig(dict(cfg), [r for r in res if not isinstance(r, BaseException)],
                                  [str(r) for r in errs],
                                  bool(errs) and all(isinstance(e, aot.WorkerDied) for e in errs)))
    return out


def time_configs(mixer, request, configs, *, strategy, reference, K=None, V=None, l2_bytes=None,
                 tol=2e-2, warmup=3, reps=10, close=0.05, extra_reps=10, flush_bytes=None,
                 progress=None) -> list:
    """Median seconds of one forward + backward of ``mixer`` per config (``inf``: a wrong output or
    a failure) on the current CUDA device, at the request's B, T, H and dtype with head sizes K, V
    (default the request's): each config's output is first compared with strategy ``reference``'s
    (relative RMS error <= ``tol``), then ``autotune.timing.measure`` schedules the runs (L2 flush,
    CUDA events, interleaved rounds, medians, close contenders re-timed). ``TuningError`` without
    CUDA."""
    import torch

    from ...autotune.timing import FLUSH_BYTES, measure, rel_rms
    from ..family import compile_mixer
    if not torch.cuda.is_available():
        raise TuningError("timing configs needs a CUDA device; torch.cuda.is_available() is False")
    say = progress or (lambda m: None)
    arrays, _ = request.example_inputs(mixer, B=request.B, T=request.T, H=request.H,
                                       K=K or request.K, V=V or request.V, seed=0)
    xs = tensors(mixer, arrays, torch_dtype(request.dtype_name), device="cuda")
    with torch.no_grad():
        ref = compile_mixer(mixer, strategy=reference)(*xs, strategy=reference).float()
    nbytes = max(int(flush_bytes or FLUSH_BYTES), 2 * int(l2_bytes or 0))
    flush = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")

    def make_run(cfg):
        f = compile_mixer(mixer, strategy=strategy, config=dict(cfg))
        leaves = [x.detach().clone().requires_grad_(True) for x in xs]

        def run():
            for t in leaves:
                t.grad = None
            o = f(*leaves, strategy=strategy)
            o.float().sum().backward()
        return f, run

    runs = []
    for i, cfg in enumerate(configs):
        try:
            f, run = make_run(cfg)
            with torch.no_grad():
                err = rel_rms(f(*xs, strategy=strategy), ref)
        except Exception as e:      # noqa: BLE001 - a failing candidate is out, not the tuning
            say(f"config {i + 1}/{len(configs)} {cfg}: failed ({type(e).__name__}: {e})")
            runs.append(None)
            continue
        good = math.isfinite(err) and err <= tol
        say(f"checked config {i + 1}/{len(configs)}: rel. RMS error vs {reference} {err:.1e}"
            + ("" if good else f" > {tol:.0e}: not timed"))
        runs.append(run if good else None)

    def timer(run):
        flush.zero_()                                   # evict L2 (outside the events)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3                   # ms -> s

    return measure(runs, timer, warmup=warmup, reps=reps, close=close, extra_reps=extra_reps,
                   sync=torch.cuda.synchronize, progress=say)


def timer(mixer, request, *, strategy, reference, K=None, V=None):
    """A ``TuningTarget.time``: ``(configs, gpu, progress) -> [seconds]`` (``time_configs``)."""
    def time(configs, gpu, progress=None):
        return time_configs(mixer, request, configs, strategy=strategy, reference=reference, K=K,
                            V=V, l2_bytes=gpu.l2_bytes, progress=progress)
    return time


__all__ = ["CompiledConfig", "torch_dtype", "gpu_faithful", "record", "tensors", "state_tensors",
           "compile_recorded", "time_configs", "timer"]
