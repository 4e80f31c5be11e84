"""A small language model built from mixir.nn layers, trained on multi-query associative recall.

The task (MQAR, Arora et al. 2023, *Zoology*, arXiv:2312.04927): a sequence lists ``n`` key-value
pairs ``k1 v1 k2 v2 ...`` and then asks for them again in a shuffled order ``k3 v3 k1 v1 ...``; the
model is scored on predicting each value after its key in the second half, which needs recalling
a binding seen earlier in the context. Guessing gives ``ln(num_values)`` per answer, recall 0.

The model: token embedding, ``len(layers)`` pre-norm residual blocks (a mixir layer, then a SwiGLU
MLP), a final RMSNorm and a tied LM head. The mixing layers run mixir's kernels: on the CPU the
Triton interpreter, so sizes are tiny. Run:

    .venv/bin/python examples/toy_lm.py                  # 250 steps, prints a table, saves a PNG
    .venv/bin/python examples/toy_lm.py --layers gdn,swa --steps 100 --out /tmp/toy

Returns (``main``) a dict with the loss curve; the slow-lane test ``tests/test_examples.py`` runs
it with fewer steps and checks that the loss falls.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import mixir.nn as mnn

LAYERS = {
    # name -> factory(d_model, args): each returns a [B, T, d] -> [B, T, d] module
    "gla": lambda d, a: mnn.GatedLinearAttention(d, num_heads=a.heads, expand_k=1.0, use_short_conv=True,
                                                 strategy=a.strategy),
    "gdn": lambda d, a: mnn.GatedDeltaNet(d, num_heads=a.heads, head_dim=d // a.heads, expand_v=1.0,
                                          allow_neg_eigval=a.neg_eigval, strategy=a.strategy),
    "mamba2": lambda d, a: mnn.Mamba2(d, d_state=16, headdim=d // a.heads, expand=1, strategy=a.strategy),
    "swa": lambda d, a: mnn.SlidingWindowAttention(d, num_heads=a.heads, window=a.window),
    "attn": lambda d, a: mnn.SparseAttention(d, num_heads=a.heads),
    "slstm": lambda d, a: mnn.SLSTM(d, num_heads=a.heads),         # its own strategies (fused, ...)
}


class MLP(nn.Module):
    """SwiGLU feed-forward: ``W_down(silu(W_gate x) ⊙ W_up x)``."""

    def __init__(self, d, hidden):
        super().__init__()
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, mixer, d):
        super().__init__()
        self.norm1, self.mixer = mnn.RMSNorm(d), mixer
        self.norm2, self.mlp = mnn.RMSNorm(d), MLP(d, 2 * d)

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyLM(nn.Module):
    def __init__(self, vocab, d, layers, args):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02 * math.sqrt(d))
        self.blocks = nn.ModuleList(Block(LAYERS[name](d, args), d) for name in layers)
        self.norm = mnn.RMSNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.embed.weight.T          # tied LM head


def mqar_batch(gen, batch, pairs, num_keys, num_values):
    """Tokens ``[batch, 4·pairs]`` (keys are ids ``0..num_keys-1``, values follow) and the targets
    (``-100`` except at the queries of the second half, whose target is the key's value)."""
    keys = torch.stack([torch.randperm(num_keys, generator=gen)[:pairs] for _ in range(batch)])
    vals = torch.randint(num_keys, num_keys + num_values, (batch, pairs), generator=gen)
    order = torch.stack([torch.randperm(pairs, generator=gen) for _ in range(batch)])
    qk, qv = keys.gather(1, order), vals.gather(1, order)
    first = torch.stack([keys, vals], -1).flatten(1)
    second = torch.stack([qk, qv], -1).flatten(1)
    tokens = torch.cat([first, second], 1)
    targets = torch.full_like(tokens, -100)
    targets[:, 2 * pairs::2] = qv                          # predict v at the position of its key
    return tokens, targets


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=250, help="optimiser steps")
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--pairs", type=int, default=3, help="key-value pairs per sequence (T = 4·pairs)")
    p.add_argument("--num-keys", type=int, default=8)
    p.add_argument("--num-values", type=int, default=8)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--layers", default="gla",
                   help=f"comma-separated mixing layers, one block each, from {sorted(LAYERS)}")
    p.add_argument("--window", type=int, default=2, help="sliding window of 'swa' layers")
    p.add_argument("--neg-eigval", action="store_true", help="gdn: β ∈ [0, 2] (allow_neg_eigval)")
    p.add_argument("--strategy", default="chunked",
                   help="strategy of the gla, gdn and mamba2 layers (at T = 12 on the CPU 'chunked' measured ~15 %% "
                        "quicker than 'recurrent' for GLA)")
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--out", default="examples/out", help="folder for toy_lm_loss.png and toy_lm_loss.csv")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    bad = [n for n in a.layers.split(",") if n not in LAYERS]
    if bad:
        p.error(f"unknown layer(s) {bad}; choose from {sorted(LAYERS)}")
    return a


def save_plot(steps, losses, path, chance):
    """The loss curve as a PNG; a clear message (and no PNG) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib; the loss curve "
              "is in the CSV beside it)", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1, alpha=0.4, label="loss per step")
    k = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
    ax.plot(steps, smooth, lw=2, label=f"running mean ({k})")
    ax.axhline(chance, color="gray", ls="--", lw=1, label="ln(num_values): guessing")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on the answers")
    ax.set_title("mixir toy LM: associative recall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    a = parse(argv)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    layers = a.layers.split(",")
    vocab = a.num_keys + a.num_values
    model = ToyLM(vocab, a.d_model, layers, a)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    warm = max(1, a.steps // 10)          # linear warm-up, then cosine decay to 10 %
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.55 + 0.45 * math.cos(math.pi * min(1.0, s / max(1, a.steps)))))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy LM: layers {layers}, d_model {a.d_model}, {n_params} parameters; MQAR with {a.pairs} pairs "
          f"(T = {4 * a.pairs}), batch {a.batch}, {a.steps} steps")
    print(f"{'step':>6} {'loss':>8} {'recall acc':>10} {'s/step':>8} {'elapsed':>8}")
    steps, losses, accs = [], [], []
    t0 = time.time()
    for step in range(1, a.steps + 1):
        tokens, targets = mqar_batch(gen, a.batch, a.pairs, a.num_keys, a.num_values)
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        mask = targets >= 0
        acc = float((logits.argmax(-1)[mask] == targets[mask]).float().mean())
        steps.append(step)
        losses.append(float(loss.detach()))
        accs.append(acc)
        if step == 1 or step % a.log_every == 0 or step == a.steps:
            el = time.time() - t0
            k = min(len(losses), a.log_every)
            print(f"{step:>6} {sum(losses[-k:]) / k:>8.4f} {sum(accs[-k:]) / k:>10.3f} {el / step:>8.2f} "
                  f"{el:>7.0f}s", flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "toy_lm_loss.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "recall_acc"])
        w.writerows(zip(steps, losses, accs))
    png = None if a.no_plot else save_plot(steps, losses, os.path.join(a.out, "toy_lm_loss.png"),
                                           math.log(a.num_values))
    k = max(1, min(25, len(losses) // 5))
    result = {"steps": steps, "losses": losses, "accs": accs, "initial_loss": sum(losses[:k]) / k,
              "final_loss": sum(losses[-k:]) / k, "final_acc": sum(accs[-k:]) / k, "png": png,
              "seconds": time.time() - t0}
    print(f"loss {result['initial_loss']:.3f} -> {result['final_loss']:.3f} (mean of {k} steps), recall "
          f"accuracy {result['final_acc']:.2f}, {result['seconds']:.0f} s" + (f"; plot: {png}" if png else ""))
    return result


if __name__ == "__main__":
    main()
