"""Block-sparse softmax attention: DSL, metadata, kernels (Triton interpreter) against the dense
float64 reference, forward and backward."""
import math

import pytest
import torch

import mixir.attention as A
from mixir.lowering.attention import kernels
from mixir.library import attention as L
from mixir.lowering.attention.block_mask import EMPTY, FULL_TILE, PARTIAL, classify_tiles
from mixir.errors import DeclarationError, InputError
from mixir.testing.tolerances import bounds_for, rel_rms_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(B, T, H, HK, D, dtype, seed=0, Tk=None):
    g = torch.Generator().manual_seed(seed)
    Tk = T if Tk is None else Tk
    q = torch.randn(B, T, H, D, generator=g).to(dtype)
    k = torch.randn(B, Tk, HK, D, generator=g).to(dtype)
    v = torch.randn(B, Tk, HK, D, generator=g).to(dtype)
    do = torch.randn(B, T, H, D, generator=g).to(dtype)
    return q, k, v, do


def _doc_ids(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = []
    for _ in range(B):
        cuts = sorted(torch.randint(1, T, (3,), generator=g).tolist())
        ids.append(torch.bucketize(torch.arange(T), torch.tensor(cuts), right=True))
    return torch.stack(ids).to(torch.int32)


def _check(q, k, v, do, mask=None, data=None, score_mod=None, block=32, scale=None, grads=True):
    """Run the kernels and the float64 reference; assert the dtype's bounds."""
    bnd = bounds_for(q.dtype)
    data = dict(data or {})
    bm = A.create_block_mask(mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1],
                             block_size=block, data={n: data[n] for n in (mask.data_names if mask else ())})
    qs, ks, vs = (t.clone().requires_grad_(grads) for t in (q, k, v))
    o, lse = A.attention(qs, ks, vs, bm, score_mod=score_mod, scale=scale, data=data, return_lse=True)
    assert o.dtype == q.dtype and lse.dtype == torch.float32
    qr, kr, vr = (t.detach().double().requires_grad_(grads) for t in (q, k, v))
    ro, rl = A.attention_reference(qr, kr, vr, mask, score_mod, scale, data)
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    err = rel_rms_error(o, ro, bnd.floor)
    assert err <= bnd.output, f"o: {err:.2e} > {bnd.output:.0e}"
    fin = torch.isfinite(rl)
    assert torch.equal(torch.isfinite(lse), fin), "lse: -inf exactly on the empty rows"
    if fin.any():
        e = rel_rms_error(lse[fin], rl[fin], bnd.floor)
        assert e <= bnd.output, f"lse: {e:.2e}"
    if grads:
        g = torch.autograd.grad(o, (qs, ks, vs), do)
        rg = torch.autograd.grad(ro, (qr, kr, vr), do.double())
        for name, a, b in zip("qkv", g, rg):
            assert a.dtype == q.dtype
            e = rel_rms_error(a, b, bnd.floor)
            assert e <= bnd.grad, f"d{name}: {e:.2e} > {bnd.grad:.0e}"
    return bm, o, lse


# --------------------------------------------------------------------------- built-in masks

B, T, H, HK, D = 2, 40, 2, 1, 24      # T not a multiple of the tile, D not a power of two, GQA


def _case(name, B=B, T=T, H=H):
    """(mask, data) of a built-in, at the test shape."""
    if name == "full":
        return None, {}
    if name == "causal":
        return L.causal_mask(), {}
    if name == "sliding_window":
        return L.sliding_window_mask(24), {}
    if name == "document":
        return L.document_mask(), {"doc": _doc_ids(B, T)}
    if name == "prefix_lm":
        return L.prefix_lm_mask(), {"prefix": torch.tensor([37, 5][:B], dtype=torch.int32)}
    if name == "dilated":
        return L.dilated_mask(3), {}
    if name == "global_local":
        return L.global_local_mask(5, 16), {}
    if name == "moba":
        q, k, _, _ = _inputs(B, T, H, HK, D, torch.float32, seed=7)
        return L.moba_mask(32), {"sel": L.moba_selection(q, k, 32, 1)}
    raise KeyError(name)


BUILTINS = ["full", "causal", "sliding_window", "document", "prefix_lm", "dilated", "global_local", "moba"]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_fp32(name):
    m, data = _case(name)
    _check(*_inputs(B, T, H, HK, D, torch.float32), mask=m, data=data)


# the fast lane runs each mask in one 16-bit dtype (both dtypes between them), the slow lane both
@pytest.mark.parametrize("name, dtype", [
    pytest.param(n, d, id=f"{n}-{i}", marks=() if (n, i) in {("causal", "bf16"), ("document", "fp16"),
                                                             ("moba", "bf16")} else pytest.mark.slow)
    for n in ["causal", "document", "moba"]
    for d, i in [(torch.bfloat16, "bf16"), (torch.float16, "fp16")]])
def test_builtin_16bit(name, dtype):
    m, data = _case(name)
    _check(*_inputs(B, T, H, HK, D, dtype, seed=3), mask=m, data=data)


@pytest.mark.parametrize("name", BUILTINS)
def test_metadata_matches_bruteforce(name):
    m, data = _case(name)
    bm = A.create_block_mask(m, B, H, T, T, block_size=(32, 16), data=data)
    dense = A.dense_mask(m, B, H, T, T, data)
    NM, NN = math.ceil(T / 32), math.ceil(T / 16)
    expect = torch.empty((B, H, NM, NN), dtype=torch.int8)
    for i in range(NM):
        for j in range(NN):
            tile = dense[:, :, i * 32:(i + 1) * 32, j * 16:(j + 1) * 16]
            expect[:, :, i, j] = torch.where(
                tile.flatten(2).all(-1), FULL_TILE,
                torch.where(tile.flatten(2).any(-1), PARTIAL, EMPTY)).to(torch.int8)
    got = bm.tile_classes().expand(B, H, NM, NN)
    assert torch.equal(got, expect)
    # index lists ascending; transposed lists describe the same tiles
    for num, idx in ((bm.kv_num, bm.kv_idx), (bm.full_kv_num, bm.full_kv_idx),
                     (bm.q_num, bm.q_idx), (bm.full_q_num, bm.full_q_idx)):
        for pos in torch.cartesian_prod(*(torch.arange(s) for s in num.shape)).reshape(-1, 3):
            row = idx[tuple(pos)][:num[tuple(pos)]]
            assert torch.equal(row, row.sort().values)
    cls = bm.tile_classes()
    assert torch.equal((cls == PARTIAL).sum(-2).int(), bm.q_num)
    assert torch.equal((cls == FULL_TILE).sum(-2).int(), bm.full_q_num)
    # visited tiles = the mask's density rounded up to tiles
    visited = int((bm.kv_num + bm.full_kv_num).expand(B, H, NM).sum())
    assert visited == int((expect != EMPTY).sum())
    assert math.isclose(bm.visited_fraction(), float((expect != EMPTY).double().mean()))


def test_broadcast_dims_of_metadata():
    bm = A.create_block_mask(L.causal_mask(), 3, 4, 70, 70, block_size=16)
    assert bm.shape == (1, 1, 5, 5)
    m, data = _case("document", B=3, T=70)
    assert A.create_block_mask(m, 3, 4, 70, 70, block_size=16, data=data).shape == (3, 1, 5, 5)
    m, data = _case("moba", B=2, T=100)
    assert A.create_block_mask(m, 2, 2, 100, 100, block_size=16, data=data).shape == (2, 2, 7, 7)


def test_sliding_window_density():
    bm = A.create_block_mask(L.sliding_window_mask(16), 1, 1, 128, 128, block_size=16)
    # the diagonal tiles are partial, the one below each diagonal tile partial (window 16), rest empty
    assert int(bm.full_kv_num.sum()) == 0 and int(bm.kv_num.sum()) == 8 + 7
    causal = A.create_block_mask(L.causal_mask(), 1, 1, 128, 128, block_size=16)
    assert int(causal.full_kv_num.sum()) == 28 and int(causal.kv_num.sum()) == 8


# --------------------------------------------------------------------------- edge cases

def test_empty_rows():
    """Padding tokens (doc id -1) and a mask with no allowed entry: o = 0, lse = -inf, no NaN."""
    q, k, v, do = _inputs(1, 70, 2, 2, 16, torch.float32)
    doc = torch.tensor([[0] * 30 + [1] * 25 + [-1] * 15], dtype=torch.int32)
    _, o, lse = _check(q, k, v, do, mask=L.document_mask(), data={"doc": doc}, block=16)
    assert (o[:, 55:] == 0).all() and torch.isneginf(lse[:, :, 55:]).all()

    @A.mask
    def nothing(b, h, q, kv):
        return kv < 0
    bm, o, lse = _check(q, k, v, do, mask=nothing, block=16)
    assert bm.visited_fraction() == 0.0 and (o == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("HK_", [1, 2], ids=["mqa", "gqa"])
def test_gqa(HK_):
    q, k, v, do = _inputs(1, 40, 4, HK_, 16, torch.float32, seed=5)

    @A.mask
    def head_window(b, h, q, kv):       # a head-dependent mask: heads of a group differ
        return (kv <= q) & (q - kv < 8 + 8 * h)
    _check(q, k, v, do, mask=head_window, block=16)


def test_cross_lengths_and_scale():
    q, k, v, do = _inputs(2, 33, 2, 2, 8, torch.float32, Tk=50)
    _check(q, k, v, do, mask=L.sliding_window_mask(20, causal=False), block=16, scale=0.3)


# --------------------------------------------------------------------------- score mods

def test_score_mods():
    q, k, v, do = _inputs(1, 48, 2, 1, 16, torch.float32, seed=2)
    slopes = torch.tensor([0.5, 0.125])

    @A.score_mod
    def alibi(score, b, h, q, kv, slopes):
        return score + slopes[h] * (kv - q)

    @A.score_mod
    def softcap(score, b, h, q, kv):
        return 2.0 * A.tanh(score / 2.0)

    rel = torch.linspace(-1, 1, 2 * 48 - 1)

    @A.score_mod
    def relative(score, b, h, q, kv, rel):
        return score * A.sigmoid(score) + rel[q - kv + 47]

    _check(q, k, v, do, mask=L.causal_mask(), score_mod=alibi, data={"slopes": slopes}, block=16)
    _check(q, k, v, do, mask=L.causal_mask(), score_mod=softcap, block=16)
    _check(q, k, v, do, mask=None, score_mod=relative, data={"rel": rel}, block=16)


@pytest.mark.slow      # ~1 s of new interpreted kernels; the fast lane: tests/test_evaluate.py
def test_sin_cos_score_mod_and_mask():
    """``A.sin`` / ``A.cos`` in a score mod (a rotary-like bias of the distance, a periodic score)
    and in a mask, forward and backward against the float64 reference."""
    q, k, v, do = _inputs(1, 32, 2, 1, 16, torch.float32, seed=5)

    @A.score_mod
    def periodic(score, b, h, q, kv):
        return score * A.cos(0.3 * (q - kv)) + 0.5 * A.sin(score)

    @A.mask
    def wavy(b, h, q, kv):
        return (kv <= q) & (A.sin(0.7 * kv) > -0.5)

    _check(q, k, v, do, mask=wavy, score_mod=periodic, block=16)


# --------------------------------------------------------------------------- data, DSL, library

def test_new_data_rebuilds_metadata_not_kernels():
    q, k, v, _ = _inputs(1, 64, 2, 2, 16, torch.float32)
    m = L.document_mask()
    keys = set()
    for seed in (1, 2):
        doc = _doc_ids(1, 64, seed)
        specs, _ = kernels.prepare_data(m.data_names, {"doc": doc}, q.device)
        keys.add(kernels.get_program(m, None, specs).key)
        o = L.document_attention(q, k, v, doc, block_size=16)
        ro, _ = A.attention_reference(q.double(), k.double(), v.double(), m, data={"doc": doc})
        assert rel_rms_error(o, ro, 1e-2) < 1e-4
    assert len(keys) == 1


def test_cu_seqlens_matches_doc_ids():
    q, k, v, _ = _inputs(1, 64, 2, 1, 16, torch.float32)
    cu = torch.tensor([0, 10, 10, 41, 60])              # an empty sequence; rows past the last
    ids = L.doc_ids_from_cu_seqlens(cu, 64)             # padded doc_ids (-1 past the last)
    assert ids[0, 9] == 0 and ids[0, 10] == 2 and ids[0, 41] == 3 and (ids[0, 60:] == -1).all()
    o = L.document_attention(q, k, v, ids, block_size=16)
    ro, _ = A.attention_reference(q.double(), k.double(), v.double(), L.document_mask(), data={"doc": ids})
    assert rel_rms_error(o, ro, 1e-2) < 1e-4 and (o[:, 60:] == 0).all()
    # cu_seqlens follow the rule of every family (docs/dsl.md, "Inputs"): they end at T
    with pytest.raises(InputError, match="end at T = 64"):
        L.document_attention(q, k, v, cu_seqlens=cu, block_size=16)
    cu = torch.tensor([0, 10, 10, 41, 64])
    o = L.document_attention(q, k, v, cu_seqlens=cu, block_size=16)
    ro, _ = A.attention_reference(q.double(), k.double(), v.double(), L.document_mask(),
                                  data={"doc": L.doc_ids_from_cu_seqlens(cu, 64)})
    assert rel_rms_error(o, ro, 1e-2) < 1e-4


def test_library_calls():
    q, k, v, _ = _inputs(1, 40, 2, 1, 16, torch.float32)
    ref = lambda m, **d: A.attention_reference(q.double(), k.double(), v.double(), m, data=d)[0]  # noqa: E731
    for o, r in ((L.causal_attention(q, k, v, block_size=16), ref(L.causal_mask())),
                 (L.sliding_window_attention(q, k, v, 8, block_size=16), ref(L.sliding_window_mask(8))),
                 (L.prefix_lm_attention(q, k, v, 12, block_size=16),
                  ref(L.prefix_lm_mask(), prefix=torch.tensor([12]))),
                 (L.dilated_attention(q, k, v, 4, block_size=16), ref(L.dilated_mask(4))),
                 (L.global_local_attention(q, k, v, 3, 6, block_size=16), ref(L.global_local_mask(3, 6)))):
        assert rel_rms_error(o, r, 1e-2) < 1e-4


def test_moba_selection():
    q, k, v, _ = _inputs(1, 100, 2, 1, 16, torch.float32, seed=4)
    sel = L.moba_selection(q, k, 16, 2)
    own = torch.arange(100) // 16
    assert sel[0, :, torch.arange(100), own].all()
    assert (sel.sum(-1) <= 3).all() and (sel.sum(-1)[0, :, 48:] == 3).all()
    blk = torch.arange(7)
    assert not (sel & (blk[None, None, None, :] > own[None, None, :, None])).any()
    o = L.moba(q, k, v, 16, 2)
    ro, _ = A.attention_reference(q.double(), k.double(), v.double(), L.moba_mask(16), data={"sel": sel})
    assert rel_rms_error(o, ro, 1e-2) < 1e-4


def test_dsl():
    m = L.sliding_window_mask(24)
    assert "kv <= q" in repr(m) and m.depends_on("q") and not m.depends_on_head()
    assert L.sliding_window_mask(24) is m and L.sliding_window_mask(25).fingerprint != m.fingerprint
    with pytest.raises(DeclarationError, match="truth value"):
        @A.mask
        def bad(b, h, q, kv):
            return kv if kv <= q else q
    with pytest.raises(DeclarationError, match="boolean"):
        @A.mask
        def not_bool(b, h, q, kv):
            return q - kv
    both = L.causal_mask() & L.document_mask(causal=False)
    assert both.data_names == ("doc",)

    @A.mask
    def mixed(b, h, q, kv):               # floor division/modulo with negatives: Python semantics
        return ((q - kv) // 3 == -1) | (~((kv - q) % 4 == 1) & (q < 5))
    q, k, v, do = _inputs(1, 20, 1, 1, 16, torch.float32)
    _check(q, k, v, do, mask=mixed, block=16)


def test_input_errors():
    q, k, v, _ = _inputs(1, 20, 3, 2, 16, torch.float32)
    with pytest.raises(InputError, match="multiple"):
        A.attention(q, k, v)
    q, k, v, _ = _inputs(1, 20, 2, 1, 16, torch.float32)
    with pytest.raises(InputError, match="data"):
        A.attention(q, k, v, mask=L.document_mask())
    with pytest.raises(InputError, match="does not fit"):
        A.attention(q, k, v, A.create_block_mask(None, 1, 2, 21, 21, block_size=16))
    with pytest.raises(InputError, match="powers of two"):
        A.create_block_mask(None, 1, 1, 20, 20, block_size=24)
    classes = classify_tiles(None, 1, 1, 20, 20, 16, 16)
    assert (classes == FULL_TILE).all()
