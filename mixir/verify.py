"""What ``mixir verify`` and ``mixir compile`` run: the differential check of every strategy, and
a recording of every kernel launch for the ahead-of-time build."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .lowering.family import classify, compile_mixer
from .lowering.common.launch import record_launches

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name):
    from .errors import InputError
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def input_ranges(mixer) -> dict:
    """Value ranges that keep a user's mixer stable, read off its analysis by its family
    (``Family.input_ranges``: e.g. an input used directly as a log-decay is drawn from (-3, 0));
    everything else N(0, 1)."""
    fam, plan = classify(mixer)
    return dict(fam.input_ranges(mixer, plan))


def example_inputs(mixer, *, B=2, T=40, H=2, K=16, V=16, seed=0):
    """(arrays, initial_state) for ``mixer``: the library's samplers for a built-in, else ranges
    from ``input_ranges``. Feature dims take size K if the analysis makes them the key dim, else V."""
    from .library import MIXERS
    rng = np.random.default_rng(seed)
    entry = MIXERS.get(mixer.name)
    if entry is not None and entry.mixer is mixer:
        arrays = entry.make_inputs(rng, B, T, H, K, V)
        h0 = entry.make_initial_state(rng, B, H, K, V)
        return list(arrays), h0
    from .testing.strategies import Shape, make_inputs
    fam, plan = classify(mixer)
    key_dims = fam.key_dims(mixer, plan)
    sizes = {d: (K if d in key_dims else V) for d in mixer.feature_dims()}
    shape = Shape(B, T, H, sizes)
    arrays = make_inputs(mixer, shape, seed, ranges=input_ranges(mixer))
    h0 = tuple(0.5 * rng.standard_normal(shape.state_shape(s)) for s in mixer.states)
    return arrays, (h0[0] if len(h0) == 1 else h0)


@dataclasses.dataclass
class VerifyReport:
    rows: list
    ok: bool

    def table(self):
        head = ("strategy", "dtype", "quantity", "rel. RMS error", "bound", "ok")
        rows = [head] + [tuple(str(c) for c in r) for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("all checks passed" if self.ok else "SOME CHECKS FAILED")
        return "\n".join(lines)


def verify(mixer, *, dtypes=("float32", "bfloat16", "float16"), T=40, seed=0, grads=True):
    """Run the differential checker for every strategy and dtype; return a ``VerifyReport``."""
    from .testing.checker import check
    compiled = compile_mixer(mixer)
    arrays, h0 = example_inputs(mixer, T=T, seed=seed)
    rows, ok = [], True
    for strategy in compiled.strategies:
        for name in dtypes:
            dtype = parse_dtype(name)
            rep = check(mixer, compiled, arrays, dtype=dtype, strategy=strategy, initial_state=h0,
                        grads=grads, seed=seed)
            ok &= rep.ok
            for problem in rep.problems:
                rows.append((strategy, name, "problem", problem, "", "FAIL"))
            for q in rep.quantities:
                kind = "fwd" if q.kind in ("output", "state") else "bwd"
                rows.append((strategy, name, f"{kind} {q.name}", f"{q.error:.2e}", f"{q.bound:.0e}",
                             "ok" if q.ok else "FAIL"))
    return VerifyReport(rows, bool(ok))


def record_kernels(mixer, *, dtype="bfloat16", T=40, seed=0):
    """Run every strategy forward and backward on small CPU inputs and record each kernel launch
    (signature, constexprs, launch options) for the ahead-of-time builder."""
    compiled = compile_mixer(mixer)
    arrays, h0 = example_inputs(mixer, T=T, seed=seed)
    dt = parse_dtype(dtype)
    with record_launches() as records:
        for strategy in compiled.strategies:
            xs = []
            for spec, a in zip(mixer.inputs, arrays):
                t = torch.tensor(np.asarray(a), dtype=dt if spec.kind == "input" else torch.float32)
                xs.append(t.requires_grad_())
            init = (tuple(torch.tensor(h, dtype=torch.float32, requires_grad=True) for h in h0)
                    if isinstance(h0, tuple) else torch.tensor(h0, dtype=torch.float32, requires_grad=True))
            o, S = compiled(*xs, initial_state=init, output_final_state=True, strategy=strategy)
            loss = o.float().sum() + sum(s.sum() for s in (S if isinstance(S, tuple) else (S,)))
            loss.backward()
    return records


__all__ = ["verify", "record_kernels", "example_inputs", "input_ranges", "VerifyReport"]
