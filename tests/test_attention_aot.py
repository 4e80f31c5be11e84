"""Every attention kernel the library launches builds ahead of time for sm_80 and sm_90."""

import pytest
import torch

import mixir.attention as A
from mixir.attention import library as L
from mixir.lowering import aot
from mixir.lowering.launch import record_launches


@pytest.fixture(scope="module", autouse=True)
def _fresh_cache(fresh_triton_cache):
    """Every run of this module exercises the real compile path."""
    return fresh_triton_cache


@A.score_mod
def alibi_softcap(score, b, h, q, kv, slopes):
    return 20.0 * A.tanh((score + slopes[h] * (kv - q)) / 20.0)


@A.mask
def composite(b, h, q, kv, doc, sel):
    """Data lookups (1-D and 4-D), modulo and floor division, not, and/or in one predicate."""
    return (((doc[b, q] == doc[b, kv]) & ~((q - kv) % 3 == 1)) | sel[b, h, q, kv // 64]) & (kv <= q)


def _calls():
    doc = torch.tensor([[0] * 50 + [1] * 80], dtype=torch.int32)
    sel = torch.rand(1, 2, 130, 3) > 0.5
    data = {"doc": doc, "sel": sel, "slopes": torch.tensor([0.5, 0.25])}
    return {
        "causal": lambda q, k, v: L.causal_attention(q, k, v, block_size=64),
        "composite": lambda q, k, v: A.attention(q, k, v, mask=composite, score_mod=alibi_softcap,
                                                 data=data, block_size=64),
        "document": lambda q, k, v: L.document_attention(q, k, v, cu_seqlens=torch.tensor([0, 50, 130]),
                                                         block_size=64),
        "sliding_window": lambda q, k, v: L.sliding_window_attention(q, k, v, 64, block_size=64),
        "prefix_lm": lambda q, k, v: L.prefix_lm_attention(q, k, v, 40, block_size=64),
        "dilated": lambda q, k, v: L.dilated_attention(q, k, v, 3, block_size=64),
        "global_local": lambda q, k, v: L.global_local_attention(q, k, v, 4, 64, block_size=64),
        "moba": lambda q, k, v: L.moba(q, k, v, 64, 1),
    }


def _record(plan):
    """Run forward and backward of the named programs with GPU launch parameters (recording makes
    the launches choose what a GPU would run): [(call name, dtype), ...]."""
    torch.manual_seed(0)
    B, T, H, HK, D = 1, 130, 2, 1, 64
    calls = _calls()
    with record_launches() as records:
        for name, dtype in plan:
            q, k = torch.randn(B, T, H, D, dtype=dtype), torch.randn(B, T, HK, D, dtype=dtype)
            v = torch.randn(B, T, HK, D, dtype=dtype)
            q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
            calls[name](q, k, v).float().sum().backward()
    return records


def _build(records):
    names = {r.kernel.name.rsplit(".", 1)[-1] for r in records.values()}
    assert names == {"fwd", "dq", "dkdv"}
    results = aot.build_all(records, ["sm_80", "sm_90"], errors="collect")
    assert len(results) == 2 * len(records)
    failed = [r for r in results if not isinstance(r, aot.KernelResources)]
    assert not failed, aot.format_table(results)
    print(aot.format_table(results))
    for r in results:
        assert r.fits, aot.format_table(results)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_every_kernel_template_builds_for_sm80_and_sm90():
    """The three templates with the 16-bit (tensor-core) and fp32 operand paths, a plain predicate
    and one using every expression feature (data, %, //, ~, a score modification)."""
    _build(_record([("causal", torch.bfloat16), ("composite", torch.bfloat16),
                    ("composite", torch.float32)]))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_every_library_kernel_builds_for_sm80_and_sm90():
    plan = [(n, dt) for n in _calls() for dt in (torch.bfloat16, torch.float16, torch.float32)]
    _build(_record(plan))
