"""``mixir list``, ``show``, ``verify``, ``compile`` and ``demo``: each takes any name ``mixir list``
prints, or a user's ``module:function`` / ``path/file.py:function`` (``names.resolve``).

A library attention mask (``attention:NAME[:ARGS]``) is verified here too: its block-sparse
kernels against the dense float64 reference, forward (o, lse) and backward (dq, dk, dv), with the
dtype's bounds of ``mixir.testing.tolerances``; and compiled from the launches of one forward
and backward call."""
from __future__ import annotations

import argparse
import sys
import time

from .names import resolve
from .table import check_limits, progress, resource_table, spill_warning


def cmd_list(args):
    from .table import list_text
    print(list_text(refresh=args.refresh))


def cmd_show(args):
    from ..lowering.family import classify
    target = resolve(args.mixer)
    decl = target.declaration
    if target.is_mask:
        print(f"attention mask {target.name}")
    else:
        from ..dsl import ir
        print(f"mixer {decl.name}  fingerprint {decl.fingerprint}")
        if target.note:
            print(f"  ({args.mixer}: {target.note})")
        for a in decl.args:
            print(f"  {a.kind:6s} {a.name}{list(a.dims)}" + (f" default {a.default}" if a.kind == "scalar" else ""))
        for s, u in zip(decl.states, decl.updates):
            print(f"  state  {s.name}{list(s.dims)} <- {ir.render(u)}")
        print(f"  output {ir.render(decl.output)}")
    fam, plan = classify(decl)
    print(fam.describe(decl, plan))
    compiled = fam.compile(decl, plan)
    for path in compiled.source_files():
        print(f"triton source: {path}")
    formulas = fam.tuning_formulas(plan)      # the autotuner's formulas for its strategies
    if formulas:
        print(formulas)


def cmd_verify(args):
    from ..verify import parse_dtype
    for d in args.dtype:
        parse_dtype(d)                          # InputError naming the choices, before any work
    if args.T < 1:
        from ..errors import InputError
        raise InputError(f"--T takes a sequence length >= 1, got {args.T}")
    target = resolve(args.mixer)
    if target.is_mask:
        report = verify_mask(target, dtypes=args.dtype, T=args.T, seed=args.seed)
        print(report.table())
        return 0 if report.ok else 1
    return _verify_mixer(target, args)


def _verify_mixer(target, args):
    """One dtype at a time through ``mixir.verify.verify``, with the shapes it tests and a line
    per step on stderr."""
    from ..lowering.family import compile_mixer
    from ..verify import VerifyReport, example_inputs, verify
    m = target.declaration
    if target.note:
        print(f"{args.mixer}: {target.note}")
    arrays, h0 = example_inputs(m, T=args.T, seed=args.seed)
    states = h0 if isinstance(h0, tuple) else (h0,)
    shapes = [f"{spec.name}{list(a.shape)}" for spec, a in zip(m.inputs, arrays)]
    shapes += [f"{s.name}0{list(h.shape)}" for s, h in zip(m.states, states)]
    strategies = compile_mixer(m).strategies
    print(f"shapes: {' '.join(shapes)} (B=2, T={args.T}, H=2; feature dims 16; inputs, then "
          f"initial states)")
    print(f"checking {', '.join(strategies)} x {', '.join(args.dtype)}: forward and gradients "
          f"against the float64 reference", flush=True)
    rows, ok = [], True
    for i, d in enumerate(args.dtype, 1):
        t0 = time.perf_counter()
        progress(f"[{i}/{len(args.dtype)}] {d}: {', '.join(strategies)} ...")
        rep = verify(m, dtypes=[d], T=args.T, seed=args.seed)
        rows += rep.rows
        ok &= rep.ok
        progress(f"[{i}/{len(args.dtype)}] {d}: {'ok' if rep.ok else 'FAILED'} "
                 f"({time.perf_counter() - t0:.1f} s)")
    report = VerifyReport(sorted(rows, key=lambda r: strategies.index(r[0])), bool(ok))
    print(report.table())
    return 0 if report.ok else 1


def cmd_compile(args):
    from ..lowering.common import aot
    check_limits(args)
    archs = [aot.parse_arch(a) for a in args.arch]
    target = resolve(args.mixer)
    if target.is_mask:
        progress(f"recording the kernels of {target.name} (forward and backward, {args.dtype})")
        records = record_mask(target, dtype=args.dtype)
    else:
        from ..verify import record_kernels
        progress(f"recording the kernels of {target.name} (every strategy, forward and backward, "
                 f"{args.dtype})")
        records = record_kernels(target.declaration, dtype=args.dtype)
    progress(f"compiling {len(records) * len(archs)} kernels for {', '.join(archs)} "
             f"(at most {args.timeout:g} s each)")
    resources = aot.build_all(list(records.values()), archs, workers=args.workers,
                              timeout_s=args.timeout, progress=progress)
    print(resource_table(resources))
    warning = spill_warning(resources)
    if warning:
        print(warning, file=sys.stderr)


def cmd_demo(args):
    """The end-to-end path on a built-in default: declare -> compile -> verify -> AOT report."""
    print(f"== declare: {args.mixer} from mixir.library")
    cmd_show(argparse.Namespace(mixer=args.mixer))
    print("\n== verify against the float64 reference (CPU, Triton interpreter)")
    rc = cmd_verify(argparse.Namespace(mixer=args.mixer, dtype=["float32", "bfloat16"], T=40, seed=0))
    print("\n== ahead-of-time build for sm_90 (registers, spills, shared memory)")
    cmd_compile(argparse.Namespace(mixer=args.mixer, arch=["sm_90"], dtype="bfloat16", workers=None,
                                   timeout=300.0))
    return rc


# ---- library attention masks -------------------------------------------------------------------

#: the shapes the checks use: batch, query heads, key/value heads (GQA), head dim, tile size
B, H, HKV, D, BLOCK = 2, 2, 1, 16, 16


def _inputs(T, dtype, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to(dtype)
    k, v = (torch.randn(B, T, HKV, D, generator=g).to(dtype) for _ in range(2))
    do = torch.randn(B, T, H, D, generator=g).to(dtype)
    return q, k, v, do


def verify_mask(target, *, dtypes, T=40, seed=0):
    """A ``mixir.verify.VerifyReport`` of the mask's kernels (strategy ``block_sparse``) per dtype."""
    import torch

    from ..attention import attention, attention_reference
    from ..testing.tolerances import bounds_for, rel_rms_error
    from ..verify import VerifyReport, parse_dtype
    mask = target.declaration
    data = target.data_fn(B, H, T)
    shapes = [f"q[{B}, {T}, {H}, {D}]", f"k,v[{B}, {T}, {HKV}, {D}]"]
    shapes += [f"{n}{list(t.shape)}" for n, t in data.items()]
    print(f"shapes: {' '.join(shapes)} (tiles {BLOCK}x{BLOCK})")
    print(f"checking {target.name} x {', '.join(dtypes)}: o, lse and dq, dk, dv against the "
          f"float64 dense reference", flush=True)
    rows, ok = [], True
    for i, name in enumerate(dtypes, 1):
        t0 = time.perf_counter()
        progress(f"[{i}/{len(dtypes)}] {name} ...")
        dtype = parse_dtype(name)
        bnd = bounds_for(dtype)
        q, k, v, do = _inputs(T, dtype, seed)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o, lse = attention(*leaves, mask=mask, data=data, block_size=BLOCK, return_lse=True)
        ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ro, rl = attention_reference(*ref, mask, None, None, data)
        fin = torch.isfinite(rl)
        checks = [("fwd o", rel_rms_error(o, ro, bnd.floor), bnd.output)]
        if not torch.equal(torch.isfinite(lse), fin):
            rows.append(("block_sparse", name, "problem", "lse is not -inf exactly on the empty rows",
                         "", "FAIL"))
            ok = False
        checks.append(("fwd lse", rel_rms_error(lse[fin], rl[fin], bnd.floor), bnd.output))
        grads = torch.autograd.grad(o, leaves, do)
        rgrads = torch.autograd.grad(ro, ref, do.double())
        checks += [(f"bwd d{n}", rel_rms_error(a, b, bnd.floor), bnd.grad)
                   for n, a, b in zip("qkv", grads, rgrads)]
        step_ok = True
        for what, err, bound in checks:
            good = err <= bound
            step_ok &= good
            rows.append(("block_sparse", name, what, f"{err:.2e}", f"{bound:.0e}", "ok" if good else "FAIL"))
        ok &= step_ok
        progress(f"[{i}/{len(dtypes)}] {name}: {'ok' if step_ok else 'FAILED'} "
                 f"({time.perf_counter() - t0:.1f} s)")
    return VerifyReport(rows, bool(ok))


def record_mask(target, *, dtype="bfloat16", T=40):
    """The ``LaunchRecord``s (by key) of one forward and backward call under the mask, recorded
    on CPU with the launch parameters a GPU would use (``launch.record_launches``)."""
    import torch

    from ..attention import attention
    from ..lowering.common.launch import record_launches
    from ..verify import parse_dtype
    q, k, v, do = _inputs(T, parse_dtype(dtype), 0)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    with record_launches() as records:
        o = attention(*leaves, mask=target.declaration, data=target.data_fn(B, H, T))
        torch.autograd.grad(o, leaves, do)
    return records


__all__ = ["cmd_compile", "cmd_demo", "cmd_list", "cmd_show", "cmd_verify", "record_mask", "verify_mask"]
