"""Context-parallel softmax attention (``group=``) on gloo: W = 2, 3, 4 spawned processes, each
holding a contiguous (unequal, maybe empty) slice of the sequence; o, lse and the gradients of
each rank's q/k/v slices (a loss using o and lse) against the single-process mixir run and the
float64 reference, and the ranks skipped by the block mask."""
import datetime
import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mixir
import mixir.attention as A
import mixir.distributed.attention as DA
from mixir.errors import InputError
from mixir.library import attention as L
from mixir.lowering.attention.context import last_exchange
from mixir.testing.tolerances import bounds_for, rel_rms_error

D = 16


@A.score_mod
def alibi(score, b, h, q, kv, slopes):
    return score + slopes[h] * (kv - q)


def _inputs(c):
    g = torch.Generator().manual_seed(c.get("seed", 0))
    T, B, H, HK = sum(c["lens"]), c.get("B", 1), c.get("H", 2), c.get("HK", 1)
    dt = c.get("dtype", torch.float32)
    DV = c.get("DV", D)
    q, k, v = (torch.randn(B, T, h, d, generator=g).to(dt) for h, d in ((H, D), (HK, D), (HK, DV)))
    return q, k, v, torch.randn(B, T, H, DV, generator=g), torch.randn(B, H, T, generator=g)


def _mask_data(c, T):
    """(mask, score_mod, data) of a case over the global sequence (for the reference)."""
    kind = c["kind"]
    if kind == "causal":
        return L.causal_mask(), None, {}
    if kind == "sliding":
        return L.sliding_window_mask(c["window"]), None, {}
    if kind == "document":
        return L.document_mask(), None, {"doc": L.doc_ids_from_cu_seqlens(c["cu"], T)}
    if kind == "doc_ids":
        return L.document_mask(), None, {"doc": c["ids"]}
    if kind == "alibi":     # a compiled mixer with a score modification reading global q, kv
        return L.causal_mask(), alibi, {"slopes": torch.tensor([0.5, 0.25])}
    if kind == "facade":    # a plain function closing over a tensor
        return L.sliding_window_mask(7), None, {}
    if kind == "moba":      # the selection of the whole sequence (single-process)
        q, k = _inputs(c)[:2]
        return L.moba_mask(c["block"]), None, {"sel": L.moba_selection(q, k, c["block"], c["topk"])}
    raise AssertionError(kind)


def _call(c, q, k, v, group=None, start=0):
    kw = {"block_size": 16, "return_lse": True, "group": group}
    kind = c["kind"]
    if kind == "causal":
        return L.causal_attention(q, k, v, **kw)
    if kind == "sliding":
        return L.sliding_window_attention(q, k, v, c["window"], **kw)
    if kind == "document":
        return L.document_attention(q, k, v, cu_seqlens=c["cu"], **kw)
    if kind == "doc_ids":
        return L.document_attention(q, k, v, c["ids"][:, start:start + q.shape[1]], **kw)
    if kind == "alibi":
        fn = mixir.compile(L.causal_mask())
        return fn(q, k, v, score_mod=alibi, data={"slopes": torch.tensor([0.5, 0.25])}, **kw)
    if kind == "facade":
        w = torch.tensor([7])

        def window(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < w[0])
        if group is None:
            return A.attention(q, k, v, mask=window, block_size=16, return_lse=True)
        return DA.attention(q, k, v, mask=window, **kw)
    if kind == "moba":
        return L.moba(q, k, v, c["block"], c["topk"], tile_size=16, return_lse=True, group=group)
    raise AssertionError(kind)


def _loss(o, lse, do, dl):
    return (o.to(do.dtype) * do).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * dl.to(lse.dtype)).sum()


def _grads(o, lse, do, dl, leaves):
    return torch.autograd.grad(_loss(o, lse, do, dl), leaves, allow_unused=True, materialize_grads=True)


def single(c):
    """(mixir single-process, float64 reference): each (o, lse, dq, dk, dv) over the whole
    sequence."""
    q, k, v, do, dl = _inputs(c)
    out = []
    for ref in (False, True):
        leaves = tuple((t.double() if ref else t).detach().requires_grad_() for t in (q, k, v))
        if ref:
            m, sm, data = _mask_data(c, q.shape[1])
            o, lse = A.attention_reference(*leaves, m, sm, None, data)
            g = _grads(o, lse, do.double(), dl.double(), leaves)
        else:
            o, lse = _call(c, *leaves)
            g = _grads(o, lse, do, dl, leaves)
        out.append(tuple(t.detach() for t in (o, lse, *g)))
    return out


def _check_rank(c, r, W, group, expected):
    lens = c["lens"]
    s, e = sum(lens[:r]), sum(lens[:r + 1])
    q, k, v, do, dl = _inputs(c)
    leaves = tuple(t[:, s:e].detach().requires_grad_() for t in (q, k, v))
    o, lse = _call(c, *leaves, group=group, start=s)
    stats = last_exchange()
    g = _grads(o, lse, do[:, s:e], dl[:, :, s:e], leaves)
    bnd = bounds_for(c.get("dtype", torch.float32))
    mine = (o, lse, *g)
    msgs = []
    for which, exp in zip(("single-process", "float64 reference"), expected):
        for name, a, b, kind in zip(("o", "lse", "dq", "dk", "dv"), mine, exp,
                                    ("output", "output", "grad", "grad", "grad")):
            b = b[:, :, s:e] if name == "lse" else b[:, s:e]
            assert a.dtype == (torch.float32 if name == "lse" else q.dtype), name
            if name == "lse":
                fin = torch.isfinite(b)
                assert torch.equal(torch.isfinite(a), fin), "lse: -inf exactly on the empty rows"
                a, b = a[fin], b[fin]
            err = rel_rms_error(a, b, bnd.floor)
            if not err <= bnd[kind]:
                msgs.append(f"{c['name']} W={W} rank {r}: {name} vs {which}: {err:.2e} > {bnd[kind]:.0e}")
    if "skipped" in c:
        want = c["skipped"][r]
        if stats["skipped"] != want:
            msgs.append(f"{c['name']} rank {r}: skipped {stats['skipped']}, expected {want}")
    row = q.shape[0] * k.shape[2] * (k.shape[3] + v.shape[3]) * q.element_size()
    got = sum(lens[j] * row for j in stats["needed"] if j != r)
    if stats["bytes_received"] != got:
        msgs.append(f"{c['name']} rank {r}: received {stats['bytes_received']} B, expected {got}")
    return msgs


def _worker(r, W, init, cases, expected, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=r, world_size=W,
                            timeout=datetime.timedelta(seconds=120))
    msgs = []
    try:
        mesh = None
        if any(c.get("mesh") for c in cases):
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh("cpu", (W,))
        for c, exp in zip(cases, expected):
            msgs += _check_rank(c, r, W, mesh if c.get("mesh") else dist.group.WORLD, exp)
    except Exception:                              # noqa: BLE001 - reported by the parent
        msgs.append(traceback.format_exc())
    with open(os.path.join(out_dir, f"rank{r}.txt"), "w") as f:
        f.write("\n".join(msgs))
    dist.destroy_process_group()


def run_cases(W, cases):
    expected = [single(c) for c in cases]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(W, os.path.join(tmp, "init"), cases, expected, tmp), nprocs=W)
        msgs = []
        for r in range(W):
            with open(os.path.join(tmp, f"rank{r}.txt")) as f:
                msgs.append(f.read())
    msgs = [m for m in msgs if m]
    assert not msgs, "\n".join(msgs)


def case(**kw):
    return kw


def _cu(*lens):
    return torch.tensor([0, *torch.cumsum(torch.tensor(lens), 0).tolist()], dtype=torch.int32)


def test_w3_fast():
    """W=3, one spawn: causal with unequal slices (rank 0 reads only itself: ranks 1, 2 skipped),
    a sliding window that reaches one neighbour, documents from cu_seqlens spanning a rank
    boundary, GQA in bf16, an empty middle slice, and MoBA's top-k block selection across ranks."""
    cases = [
        case(name="causal", kind="causal", lens=[5, 9, 4], HK=2,
             skipped=[[1, 2], [2], []]),
        case(name="sliding", kind="sliding", window=6, lens=[8, 8, 8], skipped=[[1, 2], [2], [0]]),
        case(name="document", kind="document", lens=[6, 6, 6], cu=_cu(7, 8, 3),
             skipped=[[1, 2], [2], [0]]),
        case(name="causal-bf16-gqa", kind="causal", lens=[6, 0, 7], H=4, HK=2,
             dtype=torch.bfloat16, skipped=[[1, 2], [0, 1, 2], [1]]),
        # MoBA: key blocks of 4 straddle the rank boundaries (block means from two ranks)
        case(name="moba", kind="moba", block=4, topk=1, lens=[7, 6, 9], H=2, HK=2),
    ]
    run_cases(3, cases)


@pytest.mark.slow
def test_w2_w4():
    """W=2: a compiled mixer with a score modification of global positions (ALiBi), document ids
    sharded like q with an empty slice, fp32 and bf16; W=4: sliding window and causal with
    unequal slices."""
    ids = torch.tensor([[0] * 5 + [1] * 11 + [-1] * 4], dtype=torch.int32)
    run_cases(2, [
        case(name="alibi", kind="alibi", lens=[9, 11], skipped=[[1], []]),
        case(name="facade-dv-mesh", kind="facade", lens=[12, 8], DV=8, skipped=[[1], []], mesh=True),
        case(name="doc-ids-empty", kind="doc_ids", ids=ids, lens=[0, 20], skipped=[[0, 1], [0]]),
        case(name="doc-bf16", kind="document", lens=[10, 10], cu=_cu(3, 17), dtype=torch.bfloat16,
             HK=2),
    ])
    run_cases(4, [
        case(name="sliding-w4", kind="sliding", window=5, lens=[4, 7, 6, 5], H=2, HK=2,
             skipped=[[1, 2, 3], [2, 3], [0, 3], [0, 1]]),
        case(name="causal-w4", kind="causal", lens=[3, 8, 0, 9], B=2,
             skipped=[[1, 2, 3], [2, 3], [0, 1, 2, 3], [2]]),
    ])


def test_group_errors():
    q = torch.randn(1, 8, 2, D)
    with pytest.raises(InputError, match=r"^group\b.*torch\.distributed"):
        L.moba(q, q, q, 16, 1, group=object())
    with pytest.raises(InputError, match=r"^group\b.*torch\.distributed"):
        L.causal_attention(q, q, q, group=object())
