"""The counting machinery of benchmarks/static_roofline.py (CPU, interpreter, no builds, no fla)."""
import os
import sys

import pytest
import torch
import triton.language as tl

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import roofline_count as rc  # noqa: E402
import roofline_model as rm  # noqa: E402
import static_roofline as sr  # noqa: E402

from mixir.library import MIXERS  # noqa: E402
from mixir.lowering.common.launch import Kernel  # noqa: E402


def _tile_kernel(X, Y, n_rows, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    m = r[:, None] < n_rows
    x = tl.load(X + r[:, None] * BLOCK + r[None, :], mask=m, other=0.0)
    y = tl.dot(x, x, input_precision="tf32")
    for i in range(2):                  # the loop variable is a Triton scalar, as when compiled
        y += i.to(tl.float32)
    tl.store(Y + r[:, None] * BLOCK + r[None, :], y, mask=m)


@pytest.mark.interp
def test_hooks_count_masked_bytes_and_dot_flops():
    k = Kernel(_tile_kernel)
    x, y = torch.randn(16, 16), torch.empty(16, 16)
    launches = []
    with rc.counting(launches, "fwd"):
        k[(1,)](x, y, 10, BLOCK=16)
    (launch,) = [t for t in launches if t.kind == "triton"]
    assert launch.load_bytes == 10 * 16 * 4            # only the unmasked rows
    assert launch.store_bytes == 10 * 16 * 4
    assert launch.flops == {"tf32": 2 * 16 * 16 * 16}
    # rows >= 10 load as zeros: y = x_m @ x_m + (0 + 1)
    torch.testing.assert_close(y[:10], x[:10, :10] @ x[:10] + 1.0, rtol=1e-2, atol=1e-2)


def test_lower_bound_known_case():
    # simple_gla, B=1 T=2 H=1 K=V=4, 2-byte inputs: q, k, v 8 elements each, g 2; o 8. The
    # backward reads the inputs again and do, and writes dq, dk, dv, dg
    lb = rm.lower_bound_bytes(MIXERS["simple_gla"], 1, 2, 1, 4, 4, 2)
    assert lb == {"fwd": (26 + 8) * 2, "fwdbwd": (26 + 8) * 2 + (26 + 8 + 26) * 2}
    # issue 13's figure: 442 µs fwd+bwd at B=8 T=4096 H=16 K=V=128 bf16 on 3.35 TB/s
    big = rm.lower_bound_bytes(MIXERS["simple_gla"], 8, 4096, 16, 128, 128, 2)
    assert big["fwdbwd"] / 3.35e12 == pytest.approx(442e-6, rel=2e-3)


def test_roofline_time_is_the_max_of_memory_and_compute():
    pk = {"hbm": 1e12, "16bit": 1e15, "tf32": 5e14, "tf32x3": 5e14 / 3, "fp32": 6e13}
    x = {"load_bytes": 1e9, "store_bytes": 1e9, "flops": {"16bit": 1e12}}
    assert rm.launch_time(x, pk, 0.0) == pytest.approx(2e-3)            # memory bound
    x["flops"] = {"fp32": 6e11}
    assert rm.launch_time(x, pk, 1e-6) == pytest.approx(1e-2 + 1e-6)     # compute bound


@pytest.mark.interp
def test_simple_gla_counts_scale_linearly_and_exceed_the_lower_bound():
    K = V = 32
    runs = {T: sr.count_mixir("simple_gla", 1, 1, T, K, V, torch.float16, (2, 4096, 2), "h100", False, {})[0]
            for T in (64, 128, 256)}
    assert all(len(r) > 0 for r in runs.values())
    assert any(x["kind"] == "triton" and x["flops"] for x in runs[64])
    # the affine fit of T = 64, 128 predicts T = 256 launch by launch
    pred = rm.scale(runs[64], runs[128], 64, 128, 256, 1.0)
    for p, x in zip(pred, runs[256]):
        assert p["name"] == x["name"]
        for key in ("load_bytes", "store_bytes"):
            assert p[key] == pytest.approx(x[key], rel=0.03, abs=64)
        for prec, v in x["flops"].items():
            assert p["flops"][prec] == pytest.approx(v, rel=0.03)
    B, T, H = 2, 4096, 2
    scaled = rm.scale(runs[64], runs[128], 64, 128, T, B * H)
    lb = rm.lower_bound_bytes(MIXERS["simple_gla"], B, T, H, K, V, 2)
    fwd = sum(x["load_bytes"] + x["store_bytes"] for x in scaled if x["phase"] == "fwd")
    both = sum(x["load_bytes"] + x["store_bytes"] for x in scaled)
    assert fwd >= lb["fwd"]
    assert both >= lb["fwdbwd"]
