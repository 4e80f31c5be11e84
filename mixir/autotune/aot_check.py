"""AOT validation of candidate configs: record the template launches one config makes (by running
the mixer on tiny CPU inputs with ``mixir.compile(mixer, config=...)`` inside
``record_launches()``), compile them for the target architecture with ``aot.build_all`` and read the
real registers, spills and shared memory.

CPU recording runs Triton's interpreter, where bf16 dots always take fp32 operands; to compile what
the GPU runs, bf16 is recorded as fp16 (same element size, 16-bit dots) and the pointer types are
renamed back to bf16; 16-bit dots that take fp32 operands get ``PREC="tf32x3"`` as on NVIDIA GPUs.
"""
from __future__ import annotations

import dataclasses

import numpy as np

TEMPLATE_MODULES = ("gated_linear.kernels.chunked", "gated_linear.kernels.recurrent")


@dataclasses.dataclass
class CompiledConfig:
    config: dict
    resources: list                 # KernelResources of the config's template kernels
    errors: list                    # error strings (compile failures, timeouts)

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


def _torch_dtype(name):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _is_template(rec) -> bool:
    return any(f".{m}." in rec.kernel.name for m in TEMPLATE_MODULES)


def _gpu_faithful(rec, dtype: str):
    """Rewrite a CPU-recorded launch into the one the GPU makes (see the module docstring)."""
    sig = rec.signature
    consts = dict(rec.constexprs)
    if dtype == "bf16":
        sig = tuple((n, "*bf16" if t == "*fp16" else t) for n, t in sig)
    if dtype != "fp32" and "PREC" in consts:
        consts["PREC"] = "tf32x3" if consts.get("DOT_F32") else "tf32"
    return dataclasses.replace(rec, signature=sig, constexprs=tuple(consts.items()))


def record_config(mixer, strategy: str, config: dict, *, dtype: str = "bf16", K: int = 64,
                  V: int = 64, T: int | None = None, backward: bool = True) -> list:
    """The template ``LaunchRecord``s that running ``mixer`` with ``config`` makes (CPU, tiny)."""
    import torch

    import mixir
    from ..lowering.common.launch import record_launches
    from ..verify import example_inputs
    if T is None:
        T = int(config.get("BT", 16)) + 3 if strategy == "chunked" else 3
    arrays, h0 = example_inputs(mixer, B=1, T=T, H=1, K=K, V=V)
    rec_dtype = _torch_dtype("fp16" if dtype == "bf16" else dtype)
    compiled = mixir.compile(mixer, strategy=strategy, config=dict(config))
    with record_launches() as records:
        xs = [torch.tensor(np.asarray(a), dtype=rec_dtype if spec.kind == "input" else torch.float32)
              .requires_grad_(backward) for spec, a in zip(mixer.inputs, arrays)]
        if isinstance(h0, tuple):
            init = tuple(torch.tensor(h, dtype=torch.float32, requires_grad=backward) for h in h0)
        else:
            init = torch.tensor(h0, dtype=torch.float32, requires_grad=backward)
        o, S = compiled(*xs, initial_state=init, output_final_state=True, strategy=strategy)
        if backward:
            loss = o.float().sum() + sum(s.sum() for s in (S if isinstance(S, tuple) else (S,)))
            loss.backward()
    out = {}
    for rec in records.values():
        if _is_template(rec):
            r = _gpu_faithful(rec, dtype)
            out.setdefault(r.key(), r)
    return list(out.values())


def compile_recorded(configs: list, record, arch: str, *, workers=None, timeout_s: float = 300,
                     progress=None) -> list:
    """Build the kernels ``record(config)`` launches for every config, for ``arch``; one
    ``CompiledConfig`` per config. Kernels shared between configs compile once. Shared by every
    family's tuner (gated-linear here, Householder in delta_space, attention in attention.tuning)."""
    from ..lowering.common import aot
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
                            errors="collect")
    by_key = dict(zip(keys, results))
    out = []
    for cfg, ks in zip(configs, per_config):
        res = [by_key[k] for k in ks]
        out.append(CompiledConfig(dict(cfg), [r for r in res if not isinstance(r, BaseException)],
                                  [str(r) for r in res if isinstance(r, BaseException)]))
    return out


def compile_configs(mixer, strategy: str, configs: list, arch: str, *, dtype: str = "bf16",
                    K: int = 64, V: int = 64, backward: bool = True, workers=None,
                    timeout_s: float = 300, progress=None) -> list:
    """Compile every config's template kernels for ``arch``; one ``CompiledConfig`` per config."""
    return compile_recorded(
        configs, lambda cfg: record_config(mixer, strategy, cfg, dtype=dtype, K=K, V=V, backward=backward),
        arch, workers=workers, timeout_s=timeout_s, progress=progress)


__all__ = ["CompiledConfig", "record_config", "compile_configs", "compile_recorded"]
