"""Markdown renderings of the tuning spaces and the hardware table (docs/autotune.md is generated
from these: ``python -m mixir.autotune.report``)."""
from __future__ import annotations

import sympy as sp

from . import hardware, spaces


def formulas_markdown() -> str:
    out = []
    for sp_ in spaces.SPACES.values():
        out.append(f"### `{sp_.name}` (strategy `{sp_.strategy}`)\n")
        doms = ", ".join(f"{s} ∈ {{{', '.join(map(str, d))}}}" if not callable(d) else f"{s} = PK"
                         for s, d in sp_.params.items())
        out.append(f"Parameters: {doms}.\n")
        for k in sp_.kernels:
            out.append(f"**{k.name}** (launches per training step: {k.count})\n")
            out.append("| quantity | formula |\n|---|---|")
            for name, e in spaces.formulas(sp_)[k.name].items():
                if name == "launches per step":
                    continue
                out.append(f"| {name} | `{sp.sstr(sp.sympify(e))}` |")
            out.append("")
        out.append("Constraints (for H100, bf16, K = V = 128):\n")
        for c in sp_.constraints(spaces.Shape(8, 4096, 16, 128, 128, "bf16"), hardware.get("h100")):
            out.append(f"- `{c.name}`: {c.what} — `{c.render()}`")
        out.append("")
    return "\n".join(out)


def hardware_markdown() -> str:
    rows = ["| GPU | cc | SMs | smem/block (opt-in) KiB | smem/SM KiB | max threads/SM | max blocks/SM "
            "| HBM GB/s | L2 MiB | fp32 TFLOP/s | bf16/fp16 TFLOP/s | tf32 TFLOP/s | source |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in hardware.GPUS.values():
        rows.append(f"| {g.name} | {g.cc} | {g.sms} | {g.smem_block // 1024} | {g.smem_sm // 1024} | "
                    f"{g.max_threads_sm} | {g.max_blocks_sm} | {g.hbm_bw / 1e9:.0f} | "
                    f"{g.l2_bytes / 2**20:.0f} | {g.fp32_flops / 1e12:g} | {g.bf16_flops / 1e12:g} | "
                    f"{g.tf32_flops / 1e12:g} | {g.source} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(hardware_markdown())
    print()
    print(formulas_markdown())
