"""AOT feedback: where the resource model and the compiler disagree, the disagreement becomes a
constraint of the model and the space is solved again (design.md §4, step 3).

A config the model predicted feasible that compiles with register spills, with more shared memory
than the GPU allows, or not at all, is a **discrepancy**. ``Feedback.observe`` records it
(predicted vs compiled registers and shared memory of the offending kernel) and adds one
constraint per offending kernel: the strongest of these three that keeps every config already
compiled cleanly feasible (the model must not contradict what the compiler showed):

1. **correction** (``fb_regs_<kernel>_w<W>``, ``fb_smem_<kernel>_w<W>``): the kernel's register
   (shared-memory) estimate at this warp count is raised until this config is infeasible, i.e.
   ``regs_k <= predicted(config) - 1 if num_warps == W``. The estimate grows with every tile size
   and with num_stages, so this removes the config, every config at least as large, and every
   config the model rates at least as demanding at that warp count. (Guarded by the warp count:
   at 16 warps ptxas caps a thread at 128 registers, so a spill there says nothing about 4 warps.)
2. **dominance nogood** (``fb_dom_<n>``): no config with the same num_warps and every other
   parameter >= the offender's.
3. **exact nogood** (``fb_nogood_<n>``): this config only. Compile errors always get this one;
   a compile worker killed from outside (``CompiledConfig.transient``) teaches nothing.

``Store`` keeps one ``Feedback`` per (mixer, space, GPU, K, V, dtype): the formulas it constrains
depend on no other shape value, so one serves every B, T, H of a mixer (``mixir tune --all``
shares them across its shapes). Mixers with other gates compile other kernels and learn apart.
"""
from __future__ import annotations

import dataclasses

import sympy as sp

from . import space as _sp


@dataclasses.dataclass
class Discrepancy:
    """One predicted-feasible config that the compiler rejected, and what the model learned."""
    config: dict
    kernel: str                    # the offending template kernel (short name)
    kind: str                      # "spills" | "shared_memory" | "registers" | "error"
    predicted_regs: int            # the kernel's register estimate at this config
    compiled_regs: int | None
    predicted_smem: int            # the kernel's shared-memory estimate (bytes, + reserved)
    compiled_smem: int | None
    spills: int                    # bytes per thread (ptxas: stores + loads)
    level: str = ""                # "correction" | "dominance" | "nogood"
    constraint: str = ""           # the constraint added (rendered)
    excluded: int | None = None    # configs the re-solve removed (filled in by the pipeline)
    error: str = ""

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = {k: int(v) for k, v in self.config.items()}
        return {k: v for k, v in d.items() if v not in ("", None)}

    def what(self) -> str:
        cfg = " ".join(f"{k}={v}" for k, v in self.config.items())
        if self.kind == "error":
            return f"{cfg}: {self.kernel} failed to compile ({self.error})"
        what = {"spills": f"spills {self.spills} B/thread", "shared_memory": "exceeds the shared-memory limit",
                "registers": "exceeds the register file"}[self.kind]
        return (f"{cfg}: {self.kernel} {what}; registers predicted {self.predicted_regs}, compiled "
                f"{self.compiled_regs}; shared memory predicted {self.predicted_smem / 1024:.1f} KiB, "
                f"compiled {self.compiled_smem / 1024:.1f} KiB")

    def fix(self) -> str:
        ex = "" if self.excluded is None else f" (re-solve: {self.excluded} configs fewer)"
        return f"{self.level}: {self.constraint}{ex}"


def _short(kernel_name: str) -> str:
    return kernel_name.rsplit(".", 1)[-1]


class Feedback:
    """The discrepancies of one (space, arch, K, V, dtype) and the constraints learned from them."""

    def __init__(self, space, shape, gpu):
        self.space, self.shape, self.gpu = space, shape, gpu
        self.discrepancies: list[Discrepancy] = []
        self.constraints: list[_sp.Constraint] = []
        self.good: list[dict] = []          # configs (parameter values) that compiled cleanly
        self._kernels = {k.name: k for k in space.kernels}
        self._names = [str(p) for p in space.params]

    # ---- helpers
    def _values(self, config: dict) -> dict:
        return {n: int(config[n]) for n in self._names}

    def _tuple(self, values: dict) -> tuple:
        return tuple(values[n] for n in self._names)

    def excludes(self, config: dict) -> bool:
        vals = self._tuple(self._values(config))
        return any(not _sp._checker(c, self.space, self.shape)(vals) for c in self.constraints)

    def _consistent(self, c) -> bool:
        chk = _sp._checker(c, self.space, self.shape)
        return all(chk(self._tuple(g)) for g in self.good)

    def _formulas(self, kernel: str):
        k = self._kernels.get(kernel)
        if k is None:            # a kernel the space does not model: the space-wide maxima
            return self.space.regs, self.space.smem
        return k.regs, k.smem + _sp.SMEM_RESERVED

    def _predict(self, expr, values) -> int:
        return int(_sp.evaluate(expr, self.space, self.shape, values))

    # ---- learning
    def observe_all(self, pairs) -> list:
        """``observe`` every (config, CompiledConfig) of one batch, the clean ones first (so that no
        constraint learned from the batch contradicts a config of the same batch)."""
        pairs = list(pairs)
        clean = [(c, cc) for c, cc in pairs if cc.ok and cc.max_shared <= self.gpu.smem_block]
        out = []
        for c, cc in clean + [p for p in pairs if all(p is not q for q in clean)]:
            out += self.observe(c, cc)
        return out

    def observe(self, config: dict, compiled) -> list:
        """Record the AOT result ``compiled`` (a ``CompiledConfig`` of
        ``lowering.common.candidates``) of ``config``; returns the new discrepancies (each already
        turned into a constraint)."""
        values = self._values(config)
        limit = self.gpu.smem_block
        if compiled.ok and compiled.max_shared <= limit:
            self.good.append(values)
            return []
        new = []
        if compiled.errors and getattr(compiled, "transient", False):
            return []            # a worker killed from outside: nothing learned about the config
        if compiled.errors:
            regs_e, smem_e = self._formulas("")
            d = Discrepancy(dict(config), "compile", "error", self._predict(regs_e, values), None,
                            self._predict(smem_e, values), None, 0,
                            error=compiled.errors[0].splitlines()[0][:160])
            self._nogood(d, values, exact=True)
            return [d]
        worst = {}
        for r in compiled.resources:
            if r.spills > 0:
                kind = "spills"
            elif r.total_shared_bytes > min(limit, r.shared_limit):
                kind = "shared_memory"
            elif not r.fits:                      # registers x threads above the register file
                kind = "registers"
            else:
                continue
            key = (_short(r.kernel), kind)
            if key not in worst or (r.spills, r.total_shared_bytes) > (worst[key].spills, worst[key].total_shared_bytes):
                worst[key] = r
        for (name, kind), r in sorted(worst.items()):
            regs_e, smem_e = self._formulas(name)
            d = Discrepancy(dict(config), name, kind, self._predict(regs_e, values), int(r.registers),
                            self._predict(smem_e, values), int(r.total_shared_bytes), int(r.spills))
            expr = smem_e if kind == "shared_memory" else regs_e
            self._correct(d, values, expr, "smem" if kind == "shared_memory" else "regs")
            new.append(d)
        if not new:              # not ok, yet no kernel reported as bad: exclude the config only
            regs_e, smem_e = self._formulas("")
            d = Discrepancy(dict(config), "?", "error", self._predict(regs_e, values),
                            compiled.max_registers, self._predict(smem_e, values),
                            compiled.max_shared, compiled.spills, error=compiled.reason() or "rejected")
            self._nogood(d, values, exact=True)
            new.append(d)
        return new

    def _add(self, d: Discrepancy, c, level: str):
        self.constraints.append(c)
        d.level, d.constraint = level, c.render()
        self.discrepancies.append(d)

    def _correct(self, d: Discrepancy, values: dict, expr, what: str):
        w = values.get("num_warps")
        pred = self._predict(expr, values)
        name = f"fb_{what}_{d.kernel}_w{w}"
        unit = "registers" if what == "regs" else "bytes of shared memory"
        old = next((x for x in self.constraints if x.name == name), None)
        if old is not None and int(old.rhs) <= pred - 1:
            # compiled in the same batch as the config that taught the (stronger) correction
            d.level, d.constraint = "correction", old.render()
            self.discrepancies.append(d)
            return
        c = _sp.Constraint(
            name, expr, "le", sp.Integer(pred - 1),
            f"{d.kernel} at num_warps={w}: the compiler needed more than the model's {pred} {unit} "
            f"(AOT feedback)", when=(("num_warps", w),) if w is not None else ())
        if self._consistent(c):
            self.constraints = [x for x in self.constraints if x.name != name]   # superseded
            self._add(d, c, "correction")
            return
        self._nogood(d, values, exact=False)

    def _nogood(self, d: Discrepancy, values: dict, exact: bool):
        n = len(self.constraints)
        if not exact:
            terms = tuple((p, "==" if p == "num_warps" else ">=", v) for p, v in values.items())
            c = _sp.Constraint(f"fb_dom_{n}", sp.Integer(0), "forbid", sp.Integer(0),
                               f"no config at least as large as {values} at the same num_warps "
                               f"(AOT feedback)", terms=terms)
            if self._consistent(c):
                self._add(d, c, "dominance")
                return
        terms = tuple((p, "==", v) for p, v in values.items())
        c = _sp.Constraint(f"fb_nogood_{n}", sp.Integer(0), "forbid", sp.Integer(0),
                           f"not the config {values} (AOT feedback)", terms=terms)
        self._add(d, c, "nogood")


class Store:
    """Feedback objects by (space, GPU, K, V, dtype, mixer): one per tuning run, or shared by the
    runs of ``mixir tune --all``."""

    def __init__(self):
        self._by_key = {}

    def get(self, space, shape, gpu, kernels="") -> Feedback:
        """``kernels``: what identifies the compiled kernels besides the shape (the mixer's
        fingerprint: mixers with other gates compile other kernels, and learn their own)."""
        key = (space.name, gpu.arch, gpu.name, shape.K, shape.V, shape.dtype, shape.fp32_dots, kernels)
        fb = self._by_key.get(key)
        if fb is None:
            fb = self._by_key[key] = Feedback(space, shape, gpu)
        return fb


__all__ = ["Discrepancy", "Feedback", "Store"]
