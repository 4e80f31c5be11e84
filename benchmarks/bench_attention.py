#!/usr/bin/env python
"""Benchmark of mixir's block-sparse softmax attention (``mixir.attention``) against T and mask
density, with baselines.

For each T and each mask (families: sliding windows of several widths, packed documents of several
lengths, MoBA with several top-k; plus ``full`` = no mask, the 100 % reference, and ``causal``) it
measures, on inputs q, k, v ``[B, T, H, D]``:

- **mixir**: ``mixir.attention.attention(q, k, v, block_mask)`` with the ``BlockMask`` built
  beforehand (``create_block_mask``; the metadata build is not timed), forward and
  forward+backward (``torch.autograd.grad`` of q, k, v for a fixed random output gradient);
- **dense**: plain PyTorch, ``F.scaled_dot_product_attention`` with the dense boolean mask (layout
  ``[B, H, T, D]``); skipped where the T x T scores would exceed ``--dense-max-gb``;
- **flex** (CUDA only): ``torch.compile(flex_attention)`` with the same mask as a ``mask_mod`` and
  FlexAttention's own ``create_block_mask`` (built beforehand);
- **sdpa** (``full`` and ``causal`` rows only): ``F.scaled_dot_product_attention`` without a mask
  / with ``is_causal=True`` (flash-attention on a GPU).

Columns: the mask's exact **density** (allowed entries / T², computed chunk-wise, never T x T),
the **visited** tile fraction (``BlockMask.visited_fraction()``), the times in ms (median of
``--repeats`` runs after ``--warmup``; CUDA events on a GPU, ``time.perf_counter`` on the CPU), and
**err** = ``max|x_mixir - x_dense| / max|x_dense|`` over o, dq, dk, dv (where dense fits; ``!`` when
above the dtype's tolerance). A second table gives, per mask family, time(mixir) / time(mixir,
full) next to the visited fraction: for block-sparse kernels both should be about equal.

    python benchmarks/bench_attention.py                      # defaults for the device
    python benchmarks/bench_attention.py --T 4096,16384 --families sliding,moba --plot attn.png

On the CPU mixir's Triton kernels run in Triton's interpreter (Python/NumPy): the CPU defaults are
tiny and the numbers measure the interpreter, not kernel speed.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))      # the repository root: mixir without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import plots  # noqa: E402
import tables  # noqa: E402
import mixir.attention as mxa  # noqa: E402
from mixir.reference.attention import evaluate_mask  # noqa: E402
from mixir.lowering.attention.tiles import choose  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
FAMILIES = ("sliding", "document", "moba")

GPU_DEFAULTS = dict(T="1024,2048,4096,8192,16384,32768", B=1, H=16, D=128, dtype="bf16",
                    warmup=3, repeats=10, dense_max_gb=24.0)
CPU_DEFAULTS = dict(T="128,256", B=1, H=2, D=32, dtype="fp32", warmup=1, repeats=2,
                    dense_max_gb=2.0)
CPU_NOTE = ("CPU: mixir's Triton kernels run in Triton's interpreter (Python/NumPy); these numbers "
            "measure the interpreter, not kernel speed. Dense/sdpa are native PyTorch CPU code.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark mixir's block-sparse attention against T and mask density.",
        epilog="Defaults depend on the device. GPU: "
               + ", ".join(f"{k}={v}" for k, v in GPU_DEFAULTS.items())
               + ". CPU: " + ", ".join(f"{k}={v}" for k, v in CPU_DEFAULTS.items()))
    p.add_argument("--device", choices=("cuda", "cpu"), default=None)
    p.add_argument("--T", default=None, help="comma-separated sequence lengths")
    p.add_argument("--B", type=int, default=None)
    p.add_argument("--H", type=int, default=None)
    p.add_argument("--D", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--families", default=",".join(FAMILIES),
                   help="mask families among sliding,document,moba (full and causal always run)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU only: torch.set_num_threads")
    p.add_argument("--dense-max-gb", type=float, default=None,
                   help="skip the dense baseline when its T x T scores (fp32) exceed this")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    plots.add_argument(p)
    p.add_argument("--csv", default=None)
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    d = GPU_DEFAULTS if a.device == "cuda" else CPU_DEFAULTS
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.T = [int(x) for x in str(a.T).split(",") if x]
    a.plot = plots.resolve(a.plot, "bench_attention", a.device)
    a.dtype = DTYPES[a.dtype]
    a.families = [f for f in a.families.split(",") if f]
    bad = [f for f in a.families if f not in FAMILIES]
    if bad:
        p.error(f"unknown families {bad}; choose from {FAMILIES}")
    return a


# ---- masks ---------------------------------------------------------------------------------------

class Case:
    """One mask at one T: the mixir mask and data, the flex mask_mod, the tile size."""

    def __init__(self, family, name, mask, data, mask_mod, block_size=None, sdpa_causal=None):
        self.family, self.name, self.mask, self.data = family, name, mask, data
        self.mask_mod, self.block_size, self.sdpa_causal = mask_mod, block_size, sdpa_causal


def make_cases(T, families, q, k, device):
    cases = [Case("ref", "full", None, {}, None, sdpa_causal=False),
             Case("ref", "causal", mxa.causal_mask(), {}, lambda b, h, i, j: j <= i, sdpa_causal=True)]
    if "sliding" in families:
        for div in (64, 16, 4):
            w = max(1, T // div)
            cases.append(Case("sliding", f"sliding w=T/{div}", mxa.sliding_window_mask(w), {},
                              lambda b, h, i, j, w=w: (j <= i) & (i - j < w)))
    if "document" in families:
        for div in (32, 8, 2):
            L = max(1, T // div)
            doc = (torch.arange(T, device=device) // L).to(torch.int32)[None].expand(q.shape[0], T).contiguous()
            cases.append(Case("document", f"document L=T/{div}", mxa.document_mask(), {"doc": doc},
                              lambda b, h, i, j, doc=doc: (doc[b, i] == doc[b, j]) & (j <= i)))
    if "moba" in families:
        # MoBA block = T/32, but at least the default tile (so its tiles match the other rows')
        blk = 64 if device == "cuda" else 32
        bs = max(blk, T // 32)
        tile = max(16, min(64, 1 << (bs.bit_length() - 1)))
        nb = math.ceil(T / bs)
        for i, topk in enumerate((1, 3, 8)):
            if i and topk >= nb - 1:        # every past block: the same mask as causal
                continue
            sel = mxa.moba_selection(q, k, bs, topk)
            label = f"moba bs=T/32 k={topk}" if bs == T // 32 else f"moba bs={bs} k={topk}"
            cases.append(Case("moba", label, mxa.moba_mask(bs), {"sel": sel},
                              lambda b, h, i, j, sel=sel, bs=bs: (j <= i) & sel[b, h, i, j // bs],
                              block_size=tile))
    return cases


def density(mask, B, H, T, data, device) -> float:
    """Allowed entries / (T*T), averaged over (b, h); evaluated in chunks of query rows."""
    if mask is None:
        return 1.0
    Bm = B if mask.depends_on_batch() else 1
    Hm = H if mask.depends_on_head() else 1
    chunk = max(1, min(T, (1 << 26) // max(1, Bm * Hm * T)))
    total = 0
    kv = torch.arange(T, device=device)[None, None, None, :]
    env0 = {"b": torch.arange(Bm, device=device)[:, None, None, None],
            "h": torch.arange(Hm, device=device)[None, :, None, None], "kv": kv}
    for q0 in range(0, T, chunk):
        q = torch.arange(q0, min(T, q0 + chunk), device=device)[None, None, :, None]
        r = evaluate_mask(mask.node, dict(env0, q=q), data)
        r = r if r.dtype == torch.bool else r != 0
        total += int(r.expand(Bm, Hm, q.shape[2], T).sum())
    return total / (Bm * Hm * T * T)


# ---- timing --------------------------------------------------------------------------------------

class OOM(Exception):
    pass


def time_ms(fn, device, warmup, repeats):
    try:
        for _ in range(warmup):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(max(1, repeats)):
            if device == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    except torch.OutOfMemoryError as e:
        if device == "cuda":
            torch.cuda.empty_cache()
        raise OOM from e


def measure(fwd, inputs, do, args, backward=True):
    """(fwd ms, fwd+bwd ms, (o, dq, dk, dv) of one run); fwd returns o in [B, T, H, D]."""
    def fb():
        o = fwd()
        return (o, *torch.autograd.grad(o, inputs, do))
    tf = time_ms(lambda: fwd(), args.device, args.warmup, args.repeats)
    tb = time_ms(fb, args.device, args.warmup, args.repeats) if backward else None
    res = fb() if backward else (fwd().detach(),)
    return tf, tb, tuple(r.detach() for r in res)


def rel_err(xs, refs):
    e = 0.0
    for x, r in zip(xs, refs):
        den = r.float().abs().max().item()
        e = max(e, (x.float() - r.float()).abs().max().item() / (den if den > 0 else 1.0))
    return e


# ---- main ----------------------------------------------------------------------------------------

def fmt(x, nd=2):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}" if x < 1e4 else f"{x:.3g}"


def main(argv=None):
    args = parse_args(argv)
    dev = args.device
    if dev == "cpu":
        torch.set_num_threads(args.threads)
    B, H, D, dt = args.B, args.H, args.D, args.dtype
    flex = flex_bm = None
    if dev == "cuda" and not args.no_baselines:
        try:
            from torch.nn.attention.flex_attention import create_block_mask as flex_bm
            from torch.nn.attention.flex_attention import flex_attention
            flex = torch.compile(flex_attention)
        except Exception as e:  # noqa: BLE001
            print(f"# flex_attention unavailable: {e!r}")
    name = torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or platform.machine()
    print(f"# mixir block-sparse attention benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# device {dev} ({name}), torch {torch.__version__}, B={B} H={H} D={D} "
          f"dtype={str(dt).replace('torch.', '')}, warmup={args.warmup}, median of {args.repeats}")
    if dev == "cpu":
        print("# " + CPU_NOTE)
    print("# times in ms; block-mask metadata is built beforehand (not timed); err = max rel error "
          "of mixir vs dense over o, dq, dk, dv")
    print()
    hdr = ["mask", "T", "density", "visited", "mixir fwd", "mixir fwd+bwd", "dense fwd",
           "dense fwd+bwd", "flex fwd", "flex fwd+bwd", "sdpa fwd", "sdpa fwd+bwd", "err"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for T in args.T:
        q, k, v, do = (torch.randn(B, T, H, D, device=dev, dtype=dt, generator=gen) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        # baselines' layout [B, H, T, D]: separate leaves
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()
        for c in make_cases(T, args.families, q.detach(), k.detach(), dev):
            r = dict(mask=c.name, family=c.family, T=T)
            r["density"] = density(c.mask, B, H, T, c.data, dev)
            tile = c.block_size
            if tile is None:   # the tiles the runtime would choose (the tuner's on a GPU)
                cfg = choose(q, (c.mask or mxa.FULL).key, T)
                tile = (cfg["BM"], cfg["BN"])
            bm = mxa.create_block_mask(c.mask, B, H, T, T, block_size=tile, data=c.data,
                                       device=dev)
            r["visited"] = bm.visited_fraction()
            bwd = not args.no_backward
            try:
                r["mixir_fwd"], r["mixir_fb"], mres = measure(
                    lambda: mxa.attention(q, k, v, bm), (q, k, v), do, args, bwd)
            except OOM:
                r["mixir_fwd"] = r["mixir_fb"] = "OOM"
                mres = None

            def to_bthd(res):
                return tuple(x.transpose(1, 2) for x in res)
            if not args.no_baselines:
                fits = B * H * T * T * 4 / 2**30 <= args.dense_max_gb
                if fits:
                    am = None if c.mask is None else mxa.dense_mask(
                        c.mask, B if c.mask.depends_on_batch() else 1,
                        H if c.mask.depends_on_head() else 1, T, T, c.data, dev).contiguous()
                    try:
                        r["dense_fwd"], r["dense_fb"], dres = measure(
                            lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=am),
                            (qt, kt, vt), dot, args, bwd)
                        if mres is not None:
                            r["err"] = rel_err(mres, to_bthd(dres))
                    except OOM:
                        r["dense_fwd"] = r["dense_fb"] = "OOM"
                    del am
                else:
                    r["dense_fwd"] = r["dense_fb"] = "skip"
                if flex is not None:
                    try:
                        fbm = None if c.mask_mod is None else flex_bm(
                            c.mask_mod, B if (c.mask is not None and c.mask.depends_on_batch()) else None,
                            H if (c.mask is not None and c.mask.depends_on_head()) else None, T, T,
                            device=dev)
                        r["flex_fwd"], r["flex_fb"], _ = measure(
                            lambda: flex(qt, kt, vt, block_mask=fbm), (qt, kt, vt), dot, args, bwd)
                    except OOM:
                        r["flex_fwd"] = r["flex_fb"] = "OOM"
                    except Exception as e:  # noqa: BLE001
                        print(f"# flex failed for {c.name} T={T}: {type(e).__name__}: {e}")
                        r["flex_fwd"] = r["flex_fb"] = "fail"
                if c.sdpa_causal is not None:
                    try:
                        r["sdpa_fwd"], r["sdpa_fb"], _ = measure(
                            lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=c.sdpa_causal),
                            (qt, kt, vt), dot, args, bwd)
                    except OOM:
                        r["sdpa_fwd"] = r["sdpa_fb"] = "OOM"
            err = r.get("err")
            errs = "n/a" if err is None else f"{err:.1e}" + ("!" if err > TOLERANCE[dt] else "")
            cells = [c.name, str(T), f"{100 * r['density']:.1f}%", f"{100 * r['visited']:.1f}%"]
            cells += [fmt(r.get(x)) for x in ("mixir_fwd", "mixir_fb", "dense_fwd", "dense_fb",
                                              "flex_fwd", "flex_fb", "sdpa_fwd", "sdpa_fb")]
            print("| " + " | ".join(cells + [errs]) + " |", flush=True)
            rows.append(r)
            del bm, c
        if dev == "cuda":
            torch.cuda.empty_cache()

    # ---- time relative to full attention vs visited fraction ------------------------------------
    print()
    print("## time(mixir) / time(mixir, full = 100 % density) against the visited tile fraction")
    print("(block-sparse kernels: the ratios should track `visited`; the interpreter on the CPU "
          "adds a per-launch overhead, so small ratios come out larger there)")
    print()
    print("| family | mask | T | visited | fwd ratio | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|")
    full = {r["T"]: r for r in rows if r["mask"] == "full"}
    for fam in ["ref"] + args.families:
        for r in rows:
            if r["family"] != fam:
                continue
            f = full.get(r["T"])

            def ratio(key):
                a, b = r.get(key), f.get(key) if f else None
                return f"{a / b:.3f}" if isinstance(a, float) and isinstance(b, float) and b > 0 else "n/a"
            print(f"| {fam} | {r['mask']} | {r['T']} | {r['visited']:.3f} | {ratio('mixir_fwd')} | "
                  f"{ratio('mixir_fb')} |")

    if args.csv:
        keys = ["mask", "family", "T", "density", "visited", "mixir_fwd", "mixir_fb", "dense_fwd",
                "dense_fb", "flex_fwd", "flex_fb", "sdpa_fwd", "sdpa_fb", "err"]
        tables.write_csv([{k_: r.get(k_) for k_ in keys} for r in rows], args.csv)
    plot(rows, args)
    return rows


def plot(rows, args):
    """fwd+bwd time against T per mask and implementation (``plots``; no memory is measured
    here), and mixir's time relative to full attention against the visited tile fraction."""
    panel = plots.Panel("fwd+bwd", "time (ms)")
    for key, who in (("mixir_fb", "mixir"), ("dense_fb", "dense"), ("flex_fb", "flex")):
        for r in rows:
            if isinstance(r.get(key), float):
                panel.add(f"{r['mask']} {who}", r["T"], r[key])
    full = {r["T"]: r for r in rows if r["mask"] == "full"}
    colors = {"ref": "k", "sliding": "tab:blue", "document": "tab:orange", "moba": "tab:green"}

    def visited(ax):
        for fam in colors:
            pts = [(r["visited"], r["mixir_fb"] / full[r["T"]]["mixir_fb"]) for r in rows
                   if r["family"] == fam and isinstance(r.get("mixir_fb"), float)
                   and isinstance(full.get(r["T"], {}).get("mixir_fb"), float)]
            if pts:
                ax.scatter(*zip(*pts), c=colors[fam], label=fam, s=18)
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="time ∝ visited")
        ax.set_xlabel("visited tile fraction")
        ax.set_ylabel("mixir fwd+bwd time / full")
        ax.legend(fontsize=7)
    plots.save(args.plot, [panel], f"mixir attention, {args.device}, B={args.B} H={args.H} D={args.D}",
               extra=[visited])


if __name__ == "__main__":
    main()
