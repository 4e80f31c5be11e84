"""FlexAttention friction of issue 15 §6, each against a float64 reference: k/v with batch 1
broadcast over q's batch, k and v with different head dims, sin/cos/exp2 in score mods, 0-dim
data tensors, tensors captured in closures of plain mask/score functions."""
import pytest
import torch

import mixir.attention as A
from mixir.compat import flex_attention as FA
from mixir.errors import DeclarationError
from mixir.library import attention as L
from mixir.lowering.attention import kernels
from mixir.testing.tolerances import bounds_for, rel_rms_error

B_, T, H, HK, D = 2, 24, 2, 1, 16


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _compare(run, ref, leaves, dtype=torch.float32):
    """``run(*leaves) -> (o, lse)`` against ``ref(*leaves64)``: outputs and the gradients of a loss
    of o and lse."""
    bnd = bounds_for(dtype)
    xs = [t.detach().to(dtype).requires_grad_() for t in leaves]
    rs = [t.detach().double().requires_grad_() for t in leaves]
    o, lse = run(*xs)
    ro, rl = ref(*rs)
    do, dl = _rand(*ro.shape, seed=7), _rand(*rl.shape, seed=8)
    assert rel_rms_error(o, ro, bnd.floor) <= bnd.output
    assert rel_rms_error(lse, rl, bnd.floor) <= bnd.output
    g = torch.autograd.grad((o.double() * do).sum() + (lse.double() * dl).sum(), xs)
    rg = torch.autograd.grad((ro * do.double()).sum() + (rl * dl.double()).sum(), rs)
    for name, a, b in zip("qkv", g, rg):
        assert a.shape == b.shape
        e = rel_rms_error(a, b, bnd.floor)
        assert e <= bnd.grad, f"d{name}: {e:.2e}"


def test_kv_batch_broadcast_and_value_head_dim():
    """k, v [1, T, Hkv, *] broadcast over q's B = 2 (their gradients summed over the batch), and
    v with head dim 8 or 24 != D = 16 (o [B, T, H, Dv])."""
    for Dv in (8, 24):
        q, k, v = _rand(B_, T, H, D, seed=1), _rand(1, T, HK, D, seed=2), _rand(1, T, HK, Dv, seed=3)
        m = L.sliding_window_mask(9)
        _compare(lambda q, k, v, m=m: A.attention(q, k, v, mask=m, block_size=16, return_lse=True),
                 lambda q, k, v, m=m: A.attention_reference(q, k, v, m), (q, k, v))


def _dense(q, k, v, score_fn):
    """FlexAttention semantics in float64 ([B, H, T, D]), no mask."""
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    idx = [torch.arange(s.shape[i]).reshape([-1 if j == i else 1 for j in range(4)]) for i in range(4)]
    s = score_fn(s, *idx)
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse[..., None]) @ v, lse


def test_flex_sin_cos_exp2_zero_dim_and_broadcast():
    """A rotary-like score mod with sin / cos / exp2 of the indices and a captured 0-dim
    temperature, through the FlexAttention drop-in with batch-1 key/value and Ev != E; a new
    temperature value reuses the compiled kernels (it is data, not a constant)."""
    temp = torch.tensor(0.75)

    def score(s, b, h, qi, ki):
        return s * temp + 0.5 * torch.cos((qi - ki) * 0.3) + torch.sin(s) * torch.exp2(-h.float())
    q, k, v = _rand(B_, H, T, D, seed=4), _rand(1, H, T, D, seed=5), _rand(1, H, T, 8, seed=6)
    _compare(lambda q, k, v: FA.flex_attention(q, k, v, score_mod=score, return_lse=True),
             lambda q, k, v: _dense(q, k, v, score), (q, k, v))
    n = len(kernels._programs)
    temp.fill_(1.5)
    _compare(lambda q, k, v: FA.flex_attention(q, k, v, score_mod=score, return_lse=True),
             lambda q, k, v: _dense(q, k, v, score), (q, k, v))
    assert len(kernels._programs) == n
    # sin / cos in a mask_mod too: the block mask visits a block iff one of its rows passes
    bm = FA.create_block_mask(lambda b, h, qi, ki: torch.sin(qi.float() * 0.3) > 0, 1, 1, T, T,
                              device="cpu", BLOCK_SIZE=16)
    rows = torch.sin(torch.arange(T) * 0.3) > 0
    want = torch.stack([rows[i:i + 16].any() for i in range(0, T, 16)]).int()
    assert torch.equal(bm.to_dense()[0, 0], want[:, None].expand(-1, bm.to_dense().shape[-1]))
    w = torch.tensor(2.0, requires_grad=True)
    with pytest.raises(DeclarationError, match="requires grad"):
        FA.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, ki: s * w)


def test_zero_dim_data_and_captured_closures():
    """mixir's own call: a 0-dim data tensor read as ``x[0]``, and plain mask / score functions
    closing over tensors (traced, the captured tensors become data)."""
    doc = torch.tensor([[0] * 10 + [1] * 14, [0] * 3 + [1] * 21], dtype=torch.int32)
    slopes = torch.tensor([0.5, 0.25])

    @A.score_mod
    def scaled(score, b, h, q, kv, c):
        return score * c[0]
    q, k, v = _rand(B_, T, H, D, seed=1), _rand(B_, T, HK, D, seed=2), _rand(B_, T, HK, D, seed=3)
    c = torch.tensor(0.5)
    m = L.document_mask()
    _compare(lambda q, k, v: A.attention(q, k, v, mask=m, score_mod=scaled, block_size=16,
                                         data={"doc": doc, "c": c}, return_lse=True),
             lambda q, k, v: A.attention_reference(q, k, v, m, scaled, None,
                                                   {"doc": doc, "c": c.reshape(1)}), (q, k, v))

    def same_doc(b, h, qi, ki):
        return (doc[b, qi] == doc[b, ki]) & (ki <= qi)

    def alibi(s, b, h, qi, ki):
        return s + slopes[h] * (ki - qi)

    @A.score_mod
    def alibi_dsl(score, b, h, q, kv, slopes):
        return score + slopes[h] * (kv - q)
    _compare(lambda q, k, v: A.attention(q, k, v, mask=same_doc, score_mod=alibi, block_size=16,
                                         return_lse=True),
             lambda q, k, v: A.attention_reference(q, k, v, m, alibi_dsl, None,
                                                   {"doc": doc, "slopes": slopes}), (q, k, v))
