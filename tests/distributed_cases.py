"""Helpers of tests/test_distributed.py: cases of context parallelism run in spawned gloo
processes (one spawn of W_max processes runs every case; a case of W < W_max runs on a subgroup
of the first W ranks), each rank saving its slice's results for the parent to compare with the
single-process run of the same compiled mixer.

A case: a library mixer (``MIXERS[name]``), the slice lengths (one per rank, maybe unequal or
0), ``cu_seqlens`` (global) or None, whether there is an initial state, the dtype. The loss on
rank r is ``Σ o_r·w_o[slice r] + Σ S_T·w_s / W`` (the final state is replicated on every rank;
1/W of its term on each keeps the sum over ranks the single-process loss).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

H, K, V = 1, 8, 8


@dataclasses.dataclass(frozen=True)
class Case:
    name: str                 # a MIXERS key
    lengths: tuple            # per-rank slice lengths (W = len(lengths))
    cu: tuple | None = None   # global cu_seqlens
    init: bool = False
    dtype: str = "float32"
    seed: int = 0
    wrapper: bool = False     # call the library wrapper (group= through registry.call)

    @property
    def W(self):
        return len(self.lengths)

    @property
    def B(self):
        return 1 if self.cu else 2

    def key(self, i):
        return f"case{i}"


def inputs(case: Case):
    """(per-token/param tensors, initial state or None, w_o, w_s): fixed by the case's seed."""
    from mixir.library import MIXERS
    e = MIXERS[case.name]
    rng = np.random.default_rng(case.seed)
    T = sum(case.lengths)
    dt = getattr(torch, case.dtype)
    arrays = []
    for spec, a in zip(e.mixer.inputs, e.make_inputs(rng, case.B, T, H, K, V)):
        t = torch.tensor(a, dtype=torch.float32)
        arrays.append(t.to(dt) if spec.kind == "input" and spec.name not in _FP32_INPUTS else t)
    N = len(case.cu) - 1 if case.cu else case.B
    h0 = None
    if case.init:
        st = e.make_initial_state(rng, N, H, K, V)
        h0 = (tuple(torch.tensor(x, dtype=torch.float32) for x in st) if isinstance(st, tuple)
              else torch.tensor(st, dtype=torch.float32))
    return e, arrays, h0, rng


_FP32_INPUTS = ("g", "gk", "beta", "dt", "delta")   # gates stay fp32 (fla's convention)


def _run(fn, e, arrays, h0, cu, rng_state, out_shape_fn, group=None, sl=None, W=1):
    """Forward and backward of one run; returns the dict of results (detached, fp32)."""
    xs = [a.clone().requires_grad_(True) for a in arrays]
    s0 = (None if h0 is None else tuple(x.clone().requires_grad_(True) for x in h0)
          if isinstance(h0, tuple) else h0.clone().requires_grad_(True))
    kw = {"cu_seqlens": cu} if cu is not None else {}
    if group is not None:
        kw["group"] = group
    run_xs = xs if sl is None else [x[:, sl] if s.kind == "input" else x for s, x in zip(e.mixer.inputs, xs)]
    from mixir.distributed import record_traffic
    with record_traffic() as log:
        o, sT = fn(*run_xs, initial_state=s0, output_final_state=True, **kw)
    sT = torch.cat([x.float().reshape(-1) for x in sT]) if isinstance(sT, tuple) else sT
    w_o, w_s = out_shape_fn(o, sT)
    loss = (o.float() * w_o).sum() + (sT.float() * w_s).sum() / W
    loss.backward()
    res = {"o": o.detach().float(), "sT": sT.detach().float(),
           "bytes": sum(n for what, n in log if what == "all_gather")}
    for s, x in zip(e.mixer.inputs, xs):
        gx = (x.grad if x.grad is not None else torch.zeros_like(x)).float()
        res["d_" + s.name] = gx[:, sl] if sl is not None and s.kind == "input" else gx
    if s0 is not None:
        res["d_h0"] = (torch.cat([x.grad.reshape(-1) for x in s0]) if isinstance(s0, tuple)
                       else s0.grad).float()
    return res


def _weights(case: Case, T, sl):
    g = torch.Generator().manual_seed(1234 + case.seed)

    def fn(o, sT):
        full = torch.randn((o.shape[0], T) + tuple(o.shape[2:]), generator=g)
        w_s = torch.randn(sT.shape, generator=g)
        return (full if sl is None else full[:, sl]), w_s
    return fn


def worker(rank: int, world: int, init_file: str, out_dir: str, cases: list):
    import faulthandler
    import sys

    import torch.distributed as dist

    import mixir
    faulthandler.dump_traceback_later(float(os.environ.get("MIXIR_CP_TEST_WATCHDOG", "600")), exit=True,
                                      file=sys.stderr)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    groups = {W: (dist.new_group(list(range(W))) if W < world else dist.group.WORLD)
              for W in sorted({c.W for c in cases})}
    try:
        for i, case in enumerate(cases):
            if rank >= case.W:
                continue
            e, arrays, h0, _ = inputs(case)
            fn = mixir.compile(e.mixer)
            T = sum(case.lengths)
            a = sum(case.lengths[:rank])
            sl = slice(a, a + case.lengths[rank])
            cu = None if case.cu is None else torch.tensor(case.cu, dtype=torch.int32)
            try:
                res = _run(e.wrapper if case.wrapper else fn, e, arrays, h0, cu, None,
                           _weights(case, T, sl), groups[case.W], sl, case.W)
            except Exception as err:
                raise RuntimeError(f"rank {rank}, {case}: {type(err).__name__}: {err}") from err
            torch.save(res, os.path.join(out_dir, f"{case.key(i)}_rank{rank}.pt"))
            if rank == 0:       # the single-process run of the same compiled mixer
                ref = _run(fn, e, arrays, h0, cu, None, _weights(case, T, None))
                torch.save(ref, os.path.join(out_dir, f"{case.key(i)}_single.pt"))
    finally:
        dist.destroy_process_group()


def run_cases(cases: list, tmp_dir: str):
    """Spawn max W gloo processes, run every case; ``{i: (single, [rank results])}``."""
    import torch.multiprocessing as mp
    world = max(c.W for c in cases)
    init_file = os.path.join(tmp_dir, "rendezvous")
    mp.spawn(worker, args=(world, init_file, tmp_dir, cases), nprocs=world, join=True)
    out = {}
    for i, case in enumerate(cases):
        single = torch.load(os.path.join(tmp_dir, f"{case.key(i)}_single.pt"))
        ranks = [torch.load(os.path.join(tmp_dir, f"{case.key(i)}_rank{r}.pt")) for r in range(case.W)]
        out[i] = (single, ranks)
    return out


def assembled(case: Case, ranks: list) -> dict:
    """The ranks' results put together: per-token tensors concatenated along T, the final state
    (rank 0's, after checking every rank holds the same), parameter and initial-state gradients
    summed over ranks."""
    from mixir.library import MIXERS
    e = MIXERS[case.name]
    out = {"o": torch.cat([r["o"] for r in ranks], 1), "sT": ranks[0]["sT"],
           "sT_spread": max(float((r["sT"] - ranks[0]["sT"]).abs().max()) for r in ranks)}
    for s in e.mixer.inputs:
        k = "d_" + s.name
        out[k] = (torch.cat([r[k] for r in ranks], 1) if s.kind == "input"
                  else sum(r[k] for r in ranks))
    if "d_h0" in ranks[0]:
        out["d_h0"] = sum(r["d_h0"] for r in ranks)
    return out
