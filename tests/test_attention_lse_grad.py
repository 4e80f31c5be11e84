"""The lse of ``mixir.attention.attention`` is differentiable (as FlexAttention's is): a loss of o
and lse gets d lse_i / d s_ij = p_ij in dq and dk; checked against float64 autograd of the
reference."""
import pytest
import torch

import mixir.attention as A
from mixir.library import attention as L
from mixir.testing.tolerances import bounds_for, rel_rms_error


def _run(mask, dtype, score_mod=None, data=None, T=24, H=2, HK=1, D=16, lse_only=False):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, T, H, D, generator=g).to(dtype)
    k = torch.randn(1, T, HK, D, generator=g).to(dtype)
    v = torch.randn(1, T, HK, D, generator=g).to(dtype)
    do = torch.randn(1, T, H, D, generator=g)
    dl = torch.randn(1, H, T, generator=g)
    bnd = bounds_for(dtype)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = A.attention(qs, ks, vs, mask=mask, score_mod=score_mod, data=data, block_size=16,
                         return_lse=True)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ro, rl = A.attention_reference(qr, kr, vr, mask, score_mod, None, data)
    fin = torch.isfinite(rl)
    loss = (torch.where(fin, lse, 0.0) * dl).sum()
    rloss = (torch.where(fin, rl, 0.0) * dl.double()).sum()
    if not lse_only:
        loss = loss + (o.float() * do).sum()
        rloss = rloss + (ro * do.double()).sum()
    got = torch.autograd.grad(loss, (qs, ks, vs), allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad(rloss, (qr, kr, vr), allow_unused=True, materialize_grads=True)
    for name, a, b in zip("qkv", got, ref):
        e = rel_rms_error(a, b, bnd.floor)
        assert e <= bnd.grad, f"d{name}: {e:.2e} > {bnd.grad:.0e}"
    return got, ref


def test_lse_grad_causal_fp32():
    _run(L.causal_mask(), torch.float32)


def test_lse_only_loss_document_gqa():
    doc = torch.tensor([[0] * 7 + [1] * 9 + [-1] * 8], dtype=torch.int32)   # padding rows: lse -inf
    got, _ = _run(L.document_mask(), torch.float32, data={"doc": doc}, lse_only=True)
    assert float(got[1].abs().max()) > 0 and float(got[2].abs().max()) == 0.0   # dv: no lse term


@A.score_mod
def _softcap(score, b, h, q, kv):
    return 5.0 * A.tanh(score / 5.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_lse_grad_score_mod_bf16(dtype):
    _run(L.sliding_window_mask(8), dtype, score_mod=_softcap)
