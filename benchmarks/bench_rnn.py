"""Benchmark of the nonlinear RNN family (not a test): time per token of mixir's fused and
alternating strategies vs a PyTorch loop of ``torch.nn.LSTMCell``/``GRUCell``, cuDNN's
``torch.nn.LSTM`` (one dense head) and the ``flashrnn`` package when it is installed.

    python benchmarks/bench_rnn.py                 # GPU: hidden 64..1024, heads 1..16, B=16, T=1024
    python benchmarks/bench_rnn.py --cpu --T 16    # CPU smoke run (Triton interpreter: slow)

Issue targets (GPU): fused ≥ 20× the cell loop, ≥ flashrnn's fused kernel where both run, within
1.5× of cuDNN for a single dense head. Nothing here has been measured on a GPU yet.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import plots

from mixir.library.rnn import gru, lstm  # noqa: E402


def _time(fn, repeats, cuda):
    fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def cell_loop(cell, x, B, T, hidden):
    h = torch.zeros(B, hidden, device=x.device, dtype=x.dtype)
    c = torch.zeros_like(h)
    outs = []
    for t in range(T):
        if isinstance(cell, torch.nn.LSTMCell):
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
        outs.append(h)
    return torch.stack(outs, 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--hidden", type=int, nargs="*", default=[64, 256, 768, 1024])
    ap.add_argument("--heads", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16")
    plots.add_argument(ap)
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.cpu
    dev = "cuda" if cuda else "cpu"
    png = plots.resolve(a.plot, "bench_rnn", dev)
    panels = {}          # cell -> Panel of µs per token against the hidden size
    dt = getattr(torch, a.dtype) if cuda else torch.float32
    try:
        import flashrnn  # noqa: F401
        have_flashrnn = cuda
    except ImportError:
        have_flashrnn = False
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, B={a.B}, T={a.T}, dtype {dt}; "
          f"flashrnn {'present' if have_flashrnn else 'absent'}")
    print(f"{'cell':5s} {'hidden':>6s} {'H':>3s} {'D':>5s} {'strategy':>12s} {'ms':>9s} {'us/token':>9s} "
          f"{'loop ms':>9s} {'cudnn ms':>9s}")
    for cell_name, fn, G in (("lstm", lstm, 4), ("gru", gru, 3)):
        for hidden in a.hidden:
            x_dense = torch.randn(a.B, a.T, hidden, device=dev, dtype=dt)
            ref_cell = (torch.nn.LSTMCell if G == 4 else torch.nn.GRUCell)(hidden, hidden).to(dev, dt)
            loop_ms = _time(lambda: cell_loop(ref_cell, x_dense, a.B, a.T, hidden), max(1, a.repeats // 5), cuda) * 1e3
            rnn = (torch.nn.LSTM if G == 4 else torch.nn.GRU)(hidden, hidden, batch_first=True).to(dev, dt)
            cudnn_ms = _time(lambda: rnn(x_dense), a.repeats, cuda) * 1e3
            panel = panels.setdefault(cell_name, plots.Panel(f"{cell_name}, T={a.T}", "µs per token"))
            panel.add("torch cell loop", hidden, loop_ms * 1e3 / a.T)
            panel.add("torch.nn.LSTM/GRU (cuDNN on a GPU)", hidden, cudnn_ms * 1e3 / a.T)
            for H in a.heads:
                if hidden % H:
                    continue
                D = hidden // H
                x = torch.randn(a.B, a.T, G, H, D, device=dev, dtype=dt)
                R = (torch.randn(G, H, D, D, device=dev) / D ** 0.5).to(dt)
                b = torch.zeros(G, H, D, device=dev, dtype=dt)
                for strategy in ("fused", "alternating"):
                    try:
                        with torch.no_grad():
                            ms = _time(lambda: fn(x, R, b, strategy=strategy), a.repeats, cuda) * 1e3
                    except Exception as e:  # noqa: BLE001 - report and go on
                        print(f"{cell_name:5s} {hidden:6d} {H:3d} {D:5d} {strategy:>12s} failed: {e}")
                        continue
                    print(f"{cell_name:5s} {hidden:6d} {H:3d} {D:5d} {strategy:>12s} {ms:9.3f} "
                          f"{ms * 1e3 / a.T:9.2f} {loop_ms:9.3f} {cudnn_ms:9.3f}")
                    panel.add(f"mixir {strategy} H={H}", hidden, ms * 1e3 / a.T)
    plots.save(png, list(panels.values()), f"mixir RNN cells on {dev}, B={a.B}, T={a.T}, {dt} "
               "(no memory measured)", xlabel="hidden size (H x D)")


if __name__ == "__main__":
    main()
