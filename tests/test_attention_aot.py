"""Every attention kernel the library launches builds ahead of time for sm_80 and sm_90, and the
default configs (``tiles.choose``: the attention tuning space's best on the reference GPU, which
is what a recording and an untuned GPU run) spill nothing, for every dtype."""

import pytest
import torch

import mixir.attention as A
from mixir.library import attention as L
from mixir.lowering.common import aot
from mixir.lowering.common.launch import record_launches

pytestmark = [pytest.mark.aot, pytest.mark.interp]


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


def _calls(block=None):
    """The library programs; ``block`` None: the default tiles (the tuner's), else that tile."""
    doc = torch.tensor([[0] * 50 + [1] * 80], dtype=torch.int32)
    sel = torch.rand(1, 2, 130, 3) > 0.5
    data = {"doc": doc, "sel": sel, "slopes": torch.tensor([0.5, 0.25])}
    return {
        "causal": lambda q, k, v: L.causal_attention(q, k, v, block_size=block),
        "composite": lambda q, k, v: A.attention(q, k, v, mask=composite, score_mod=alibi_softcap,
                                                 data=data, block_size=block),
        "document": lambda q, k, v: L.document_attention(q, k, v, cu_seqlens=torch.tensor([0, 50, 130]),
                                                         block_size=block),
        "sliding_window": lambda q, k, v: L.sliding_window_attention(q, k, v, 64, block_size=block),
        "prefix_lm": lambda q, k, v: L.prefix_lm_attention(q, k, v, 40, block_size=block),
        "dilated": lambda q, k, v: L.dilated_attention(q, k, v, 3, block_size=block),
        "global_local": lambda q, k, v: L.global_local_attention(q, k, v, 4, 64, block_size=block),
        "moba": lambda q, k, v: L.moba(q, k, v, 64, 1),
    }


def _record(plan, block=None):
    """Run forward and backward of the named programs with GPU launch parameters (recording makes
    the launches choose what a GPU would run): [(call name, dtype), ...]."""
    torch.manual_seed(0)
    B, T, H, HK, D = 1, 130, 2, 1, 64
    calls = _calls(block)
    with record_launches() as records:
        for name, dtype in plan:
            q, k = torch.randn(B, T, H, D, dtype=dtype), torch.randn(B, T, HK, D, dtype=dtype)
            v = torch.randn(B, T, HK, D, dtype=dtype)
            q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
            calls[name](q, k, v).float().sum().backward()
    return records


def _build(records, no_spills=True):
    names = {r.kernel.name.rsplit(".", 1)[-1] for r in records.values()}
    assert names == {"fwd", "dq", "dkdv"}
    results = aot.build_all(records, ["sm_80", "sm_90"], errors="collect")
    assert len(results) == 2 * len(records)
    failed = [r for r in results if not isinstance(r, aot.KernelResources)]
    assert not failed, aot.format_table(results)
    print(aot.format_table(results))
    for r in results:
        assert r.fits, aot.format_table(results)
        if no_spills:
            assert r.spills == 0, f"{r.kernel} spills on {r.arch}:\n{aot.format_table(results)}"
    return results


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("plan", [
    pytest.param([("composite", torch.bfloat16), ("causal", torch.float16),
                  ("composite", torch.float32)], id="composite-bf16-fp32-causal-fp16",
                 marks=pytest.mark.slow),   # tests/test_family_contract.py builds one in the fast lane
    pytest.param([("causal", torch.bfloat16)], id="causal-bf16", marks=pytest.mark.slow)])
def test_default_configs_build_without_spills_for_every_dtype(plan):
    """The three templates with the 16-bit (tensor-core) and fp32 operand paths, a plain predicate
    and one using every expression feature (data, %, //, ~, a score modification), each at the
    default config of its dtype (D = 64): they build for sm_80 and sm_90 and spill nothing. (The
    plain predicate in bf16 in the slow lane; for sm_90 the fast lane has it in
    test_family_contract.py.)"""
    from mixir.lowering.attention import space as attention_space
    records = _record(plan)
    for r in records.values():    # the launches are the tuner's default configs
        dt = {"*bf16": "bf16", "*fp16": "fp16", "*fp32": "fp32"}[dict(r.signature)["Q"]]
        cfg = attention_space.default_config(None, dt, 64, B=1, T=130, H=2)
        consts = dict(r.constexprs)
        assert (consts["BM"], consts["BN"], r.num_warps, r.num_stages) == (
            cfg["BM"], cfg["BN"], cfg["num_warps"], cfg["num_stages"])
    _build(records)


#: fp32 (not a dtype the issue asks for; FMA dots with operands in registers): at the tuner's
#: fp32 pick for this shape (16 x 16 tiles, 8 warps) ptxas spills 16 B per thread in one kernel;
#: every other fp32 config swept spills more, in more kernels (docs/attention.md, "fp32").
KNOWN_FP32_SPILLS = {("prefix_lm", "dkdv", "sm_90"): 16}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_every_library_kernel_builds_for_sm80_and_sm90():
    """Every library mask's three kernels build for sm_80 and sm_90: no spills with 16-bit inputs,
    and with fp32 inputs exactly the known ones (a new or larger fp32 spill fails)."""
    _build(_record([(n, dt) for n in _calls() for dt in (torch.bfloat16, torch.float16)]))
    results = _build(_record([(n, torch.float32) for n in _calls()]), no_spills=False)
    spills = {(r.kernel.split(".")[2], r.kernel.rsplit(".", 1)[-1], r.arch): r.spills
              for r in results if r.spills}
    assert spills == KNOWN_FP32_SPILLS, aot.format_table(results)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_64x64_fp32_spills_and_the_space_excludes_it():
    """Why the fp32 default changed: 64 x 64 tiles with fp32 operands spill (measured), and the
    space's register formula makes every such config infeasible."""
    from mixir.lowering.attention import space as asp
    from mixir.autotune import hardware, space as spaces
    results = _build(_record([("causal", torch.float32)], block=64), no_spills=False)
    assert any(r.spills for r in results)
    shape = asp.shape(8, 4096, 16, 64, "fp32")
    for w in (8, 16):
        for s in (1, 2):
            bad = spaces.violated(asp.ATTENTION, shape, hardware.get("h100"),
                                  {"BM": 64, "BN": 64, "num_warps": w, "num_stages": s})
            assert any(c.name == "registers_per_thread" for c in bad)
