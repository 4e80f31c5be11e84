"""Tests of the canonical gated-linear-attention core (mixir.lowering.gated_linear.core).

Kernels run through Triton's interpreter on CPU tensors, so shapes are tiny. Every output and
intermediate buffer is NaN-poisoned (MIXIR_POISON) so an element a kernel forgets to write fails
the comparison against the float64 reference below.
"""
import pytest
import torch
import triton.language as tl

from mixir.lowering.common import chunks
from mixir.lowering.gated_linear import precision as gla_precision
from mixir.lowering.gated_linear.core import default_config, gla_backward, gla_forward

from gla_cases import GRAD_NAMES, TOL, check_case, make_inputs, naive_gla, reference, rel_err

#: the strategies that take every decay combination; "fused" (scalar decays only) runs in
#: test_decay_combinations' scalar cases here and in tests/test_gla_fused.py
STRATEGIES = ("recurrent", "chunked")

@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("MIXIR_POISON", "1")


DECAYS = {"none": (), "g": ("g",), "gk": ("gk",), "gv": ("gv",), "g+gk": ("g", "gk"),
          "gk+gv": ("gk", "gv"), "g+gk+gv": ("g", "gk", "gv")}


# ----------------------------------------------------------------------------------------- cases

#: a case the fast lane runs through the chunked kernels only, the recurrent kernel's run in the slow
#: lane (the recurrent kernel in the fast lane: test_decay_combinations, test_single_token,
#: test_half_precision, test_strategies_agree_without_final_state and the library mixers' tests)
CHUNKED_FAST = [pytest.param("recurrent", marks=pytest.mark.slow), "chunked"]


# every combination through the chunked kernels' decay branches; the recurrent kernel's (one flag
# per decay) with none and all three in the fast lane, the other combinations in the slow lane
@pytest.mark.parametrize("strategy, decays", [
    pytest.param(s, d, id=f"{d}-{s}",
                 marks=() if s == "chunked" or d in ("none", "g+gk+gv") else pytest.mark.slow)
    for d in DECAYS for s in STRATEGIES] + [
    pytest.param("fused", d, id=f"{d}-fused", marks=pytest.mark.slow)
    for d in DECAYS if d in ("none", "g")])
def test_decay_combinations(strategy, decays):
    # T = 70: two chunks of the default BT = 64, the second one partial (6 rows)
    inp, do, dhT = make_inputs(1, 70, 1, 16, 16, DECAYS[decays], seed=1)
    check_case(inp, do, dhT, strategy)


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
def test_small_chunks_no_h0_no_dhT(strategy):
    # BT = 32, BC = 16: several chunks, partial last chunk and sub-chunk; no h0, no dhT
    inp, do, dhT = make_inputs(1, 75, 2, 16, 16, ("g", "gk", "gv"), h0=False, seed=2)
    cfg = {"BT": 32, "BC": 16} if strategy == "chunked" else None
    check_case(inp, do, dhT, strategy, config=cfg, with_dhT=False)


def test_single_subchunk_chunks():
    # BT == BC: no off-diagonal sub-chunk blocks at all
    inp, do, dhT = make_inputs(1, 40, 1, 16, 16, ("g", "gk", "gv"), seed=3)
    check_case(inp, do, dhT, "chunked", config={"BT": 16, "BC": 16})


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_token(strategy):
    inp, do, dhT = make_inputs(2, 1, 1, 16, 16, ("g", "gk", "gv"), seed=4)
    check_case(inp, do, dhT, strategy)


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
@pytest.mark.parametrize("K,V,decays", [(1, 7, ("g", "gk", "gv")),      # vector states
                                         (20, 36, ("gk", "gv")),        # not powers of two
                                         (100, 7, ("g", "gk"))])        # several K tiles (BK = 64)
def test_head_sizes(strategy, K, V, decays):
    T = 37 if K == 100 else 50
    inp, do, dhT = make_inputs(1, T, 1, K, V, decays, seed=5)
    cfg = {"BT": 32} if strategy == "chunked" else None
    check_case(inp, do, dhT, strategy, config=cfg)


@pytest.mark.parametrize("decays", [("g", "gk", "gv"), ("g",)])
def test_recurrent_value_tiles(decays):
    """The recurrent kernel over three V-tiles: dq and dk are summed from per-tile partials, the
    decay gradients' terms come from every tile's epilogue (K side) or its own columns (V side)."""
    inp, do, dhT = make_inputs(1, 23, 2, 20, 40, decays, seed=31)
    check_case(inp, do, dhT, "recurrent", config={"BV": 16})


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
def test_varlen_with_empty_sequences(strategy):
    offsets = [0, 5, 5, 40, 77, 77]      # empty sequences inside and at the end
    cu = torch.tensor(offsets, dtype=torch.int32)
    inp, do, dhT = make_inputs(1, 77, 1, 16, 16, ("g", "gk", "gv"), N=len(offsets) - 1, seed=6)
    cfg = {"BT": 32} if strategy == "chunked" else None
    errs = check_case(inp, do, dhT, strategy, cu_seqlens=cu, config=cfg)
    assert errs["dh0"] <= TOL[torch.float32]
    # an empty sequence passes its state through unchanged: hT = h0, dh0 = dhT
    _, hT = gla_forward(**inp, cu_seqlens=cu.long(), strategy=strategy, config=cfg)
    torch.testing.assert_close(hT[1], inp["h0"][1], rtol=0, atol=0)
    torch.testing.assert_close(hT[4], inp["h0"][4], rtol=0, atol=0)
    dh0 = gla_backward(*(inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")), cu, do, dhT,
                       strategy=strategy, config=cfg)[-1]
    torch.testing.assert_close(dh0[1], dhT[1], rtol=0, atol=0)


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
def test_varlen_without_h0(strategy):
    cu = torch.tensor([0, 0, 33, 40], dtype=torch.int64)
    inp, do, dhT = make_inputs(1, 40, 1, 16, 16, ("g", "gv"), h0=False, N=3, seed=7)
    check_case(inp, do, dhT, strategy, cu_seqlens=cu)
    _, hT = gla_forward(**inp, cu_seqlens=cu, strategy=strategy)
    assert torch.all(hT[0] == 0)


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
def test_extreme_decays(strategy):
    # log-decays of exactly 0 (gate 1) and -1e4 (gate 0) mixed with ordinary ones
    inp, do, dhT = make_inputs(1, 70, 2, 16, 16, ("g", "gk", "gv"), seed=8, scale=0.1)
    gen = torch.Generator().manual_seed(9)
    for name in ("g", "gk", "gv"):
        x = inp[name]
        pick = torch.rand(x.shape, generator=gen)
        x[pick < 0.15] = 0.0
        x[pick > 0.97] = -1e4
    inp["gk"][0, 10:30, 0] = 0.0          # a long stretch of gate 1 on head 0
    inp["g"][0, 50, 1] = -1e4             # a full reset of head 1
    # every output and gradient within 2e-4 of float64 (a NaN or inf fails: "not <=")
    check_case(inp, do, dhT, strategy, tol=2e-4)


def test_all_gates_closed():
    # every gate exactly 0 (log-decay -1e4): o_t = (q_t . k_t) v_t, hT = k_T v_T^T. The exact decay
    # gradients are 0 (d exp(g) / dg = exp(g) = 0); the identity-based ones are sums of terms that
    # cancel exactly, so only compare them with an absolute bound.
    inp, do, dhT = make_inputs(1, 40, 1, 16, 16, ("g", "gk"), seed=10)
    inp["g"].fill_(-1e4)
    inp["gk"].fill_(-1e4)
    _, _, ref = reference(inp, do, dhT)
    for strategy in STRATEGIES:
        check_case(inp, do, dhT, strategy, backward=False)
        grads = gla_backward(*(inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")), None, do,
                             dhT, strategy=strategy)
        for name, a, b in zip(GRAD_NAMES, grads, ref):
            if name in ("dg", "dgk"):
                assert (a - b).abs().max() <= 1e-4, name
            elif b is not None:
                assert rel_err(a, b) <= TOL[torch.float32], name


@pytest.mark.parametrize("T", [512, pytest.param(4096, marks=pytest.mark.slow)])
def test_long_sequence(T):
    # T = 4096 (512 in the fast lane) in one sequence with slow decays (long memory); chunked
    # forward vs float64
    inp, do, dhT = make_inputs(1, T, 1, 16, 16, ("g", "gk"), seed=11, scale=0.02)
    o_ref, hT_ref = naive_gla(**inp)
    o, hT = gla_forward(**inp, strategy="chunked")
    assert rel_err(o, o_ref) <= TOL[torch.float32] and rel_err(hT, hT_ref) <= TOL[torch.float32]


@pytest.mark.parametrize("T", [256, pytest.param(2048, marks=pytest.mark.slow)])
def test_long_sequence_backward_scalar_decay(T):
    # T = 2048 (256 in the fast lane), scalar decay: chunked backward (incl. dg's T-long reverse
    # sum) vs float64
    inp, do, dhT = make_inputs(1, T, 1, 16, 16, ("g",), seed=12, scale=0.01)
    args = [inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")] + [None, do, dhT]
    ck = gla_backward(*args, strategy="chunked")
    ref = reference(inp, do, dhT)[2]
    for name, a, b in zip(GRAD_NAMES, ck, ref):
        if b is not None:
            assert rel_err(a, b) <= TOL[torch.float32], name


# the fast lane: bf16 recurrent and fp16 chunked (and fp16 chunked with fp16 dot operands below)
FAST_HALF = {("recurrent", torch.bfloat16), ("chunked", torch.float16)}


@pytest.mark.parametrize("strategy, dtype", [
    pytest.param(s, d, id=f"{s}-{i}", marks=() if (s, d) in FAST_HALF else pytest.mark.slow)
    for i, d in [("dtype0", torch.float16), ("dtype1", torch.bfloat16)] for s in STRATEGIES])
def test_half_precision(strategy, dtype):
    inp, do, dhT = make_inputs(1, 70, 1, 16, 32, ("g", "gk", "gv"), dtype=dtype, seed=13)
    check_case(inp, do.to(dtype), dhT, strategy)


def test_fp16_dot_operands_in_backward():
    # bwd_dot_fp32 = 0: the backward's tl.dot operands are rounded to fp16 too (fla-like); the
    # interpreter runs fp16 dots faithfully (bf16 ones it cannot, see gla_precision.dot_mode)
    inp, do, dhT = make_inputs(1, 70, 1, 16, 32, ("g", "gk", "gv"), dtype=torch.float16, seed=13)
    assert gla_precision.dot_mode(inp["q"], {"bwd_dot_fp32": 0}, backward=True) == (False, "ieee")
    check_case(inp, do.half(), dhT, "chunked", config={"bwd_dot_fp32": 0})


@pytest.mark.parametrize("strategy", CHUNKED_FAST)
def test_non_contiguous_inputs(strategy):
    B, T, H, K, V = 1, 40, 2, 16, 16
    inp, do, dhT = make_inputs(B, T, H, K, V, ("g", "gk"), seed=14)
    inp["q"] = inp["q"].transpose(1, 2).contiguous().transpose(1, 2)        # [B, T, H, K] view
    inp["k"] = inp["k"][:, :, :1].expand(B, T, H, K)                        # stride 0 over H
    inp["gk"] = inp["gk"][:, :, :, :1].expand(B, T, H, K)                   # stride 0 over K
    inp["h0"] = inp["h0"].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not inp["q"].is_contiguous()
    check_case(inp, do.transpose(0, 1).contiguous().transpose(0, 1), dhT, strategy)


def test_strategies_agree_without_final_state():
    inp, _, _ = make_inputs(2, 45, 1, 16, 16, ("gk", "gv"), seed=15)
    o1, h1 = gla_forward(**inp, strategy="recurrent", output_final_state=False)
    o2, h2 = gla_forward(**inp, strategy="chunked", output_final_state=False)
    assert h1 is None and h2 is None
    assert rel_err(o1, o2) <= TOL[torch.float32]


def test_poison_catches_unwritten_rows(monkeypatch):
    # the poisoning that makes the comparisons above catch forgotten rows is really on
    assert torch.isnan(chunks.empty(3, device="cpu")).all()
    monkeypatch.setenv("MIXIR_POISON", "0")
    assert not chunks.poison()


def test_default_config():
    for K, V in [(1, 1), (7, 100), (64, 64), (128, 256)]:
        c = default_config("chunked", K, V, torch.bfloat16)
        assert c["BT"] % c["BC"] == 0 and c["BK"] >= 16 and c["BV"] >= 16
        r = default_config("recurrent", K, V, torch.float32)
        assert r["BK"] >= K and r["BV"] >= 16
        for cfg in (c, r):
            assert {"num_warps", "num_stages"} <= set(cfg)
    with pytest.raises(ValueError):
        default_config("nope", 16, 16, torch.float32)


def test_kernels_enumerable():
    from mixir.lowering.common.launch import Kernel
    from mixir.lowering.gated_linear.kernels import chunked as gla_chunked, recurrent as gla_recurrent
    for mod in (gla_chunked, gla_recurrent):
        assert mod.KERNELS and all(isinstance(k, Kernel) for k in mod.KERNELS)


@pytest.mark.slow   # many AOT builds; tests/test_family_contract.py builds one declaration per family in the fast lane
@pytest.mark.aot
def test_kernels_compile_for_cuda():
    """Compile the launched kernel variants ahead of time for sm_90 (no GPU needed) so that
    compiled-mode-only errors show up on CPU machines too; skipped where this Triton cannot."""
    import triton
    from mixir.lowering.common.launch import record_launches
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        target = GPUTarget("cuda", 90, 32)
        probe = triton.jit(_probe_kernel)
        triton.compile(ASTSource(fn=probe, signature={"X": "*fp32"}, constexprs={}), target=target)
    except Exception as e:  # no CUDA backend / ptxas here
        pytest.skip(f"cannot compile for CUDA here: {e!r}"[:200])
    with record_launches() as records:
        # fp16 keeps 16-bit tl.dot operands (the GPU path); fp32 with only g takes the plain-dot
        # branches of the diagonal blocks
        for dtype, decays in [(torch.float16, ("g", "gk", "gv")), (torch.float32, ("g",))]:
            inp, do, dhT = make_inputs(1, 3, 1, 16, 16, decays, dtype=dtype)
            for strategy in STRATEGIES:
                cfg = {"bwd_dot_fp32": 0} if strategy == "chunked" else None
                gla_forward(**inp, strategy=strategy, config=cfg)
                gla_backward(*(inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")), None, do,
                             dhT, strategy=strategy, config=cfg)
    assert records
    variants = []
    for rec in records.values():
        constexprs = dict(rec.constexprs)
        variants.append((rec, constexprs))
        if constexprs.get("DOT_F32") is False:     # what dot_fp32 / bwd_dot_fp32 run on a GPU
            variants.append((rec, dict(constexprs, DOT_F32=True, PREC="tf32x3")))
    for rec, constexprs in variants:
        src = ASTSource(fn=rec.kernel.jit, signature=dict(rec.signature), constexprs=constexprs)
        compiled = triton.compile(src, target=target,
                                  options={"num_warps": rec.num_warps, "num_stages": rec.num_stages})
        assert compiled.asm.get("cubin"), rec.kernel.name


def _probe_kernel(X):
    tl.store(X, 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_against_reference(strategy, dtype):
    # compiled kernels (16-bit tl.dot operands for bf16/fp16), packed sequences incl. an empty one
    offsets = [0, 100, 100, 229, 300]
    cu = torch.tensor(offsets, dtype=torch.int32)
    inp, do, dhT = make_inputs(1, 300, 2, 64, 48, ("g", "gk", "gv"), dtype=dtype,
                               N=len(offsets) - 1, seed=16, scale=0.2)
    o_ref, hT_ref, grads_ref = reference(inp, do.to(dtype), dhT, cu)
    dev = {n: None if x is None else x.cuda() for n, x in inp.items()}
    o, hT = gla_forward(**dev, cu_seqlens=cu.cuda(), strategy=strategy)
    grads = gla_backward(*(dev[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")), cu.cuda(),
                         do.to(dtype).cuda(), dhT.cuda(), strategy=strategy)
    errs = {"o": rel_err(o.cpu(), o_ref), "hT": rel_err(hT.cpu(), hT_ref)}
    errs.update({n: rel_err(a.cpu(), b) for n, a, b in zip(GRAD_NAMES, grads, grads_ref)})
    assert all(e <= TOL[dtype] for e in errs.values()), errs


# ------------------------------------------------------------------ output scale and output dtypes

@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("decays", [("g",), ("gk",), ("g", "gk", "gv")])
def test_output_scale_is_a_scaled_query(strategy, decays):
    """gla_forward(scale=s) is the core at s * q - forward, every gradient (with a final-state
    adjoint, whose part must not be scaled) and the decay gradients from the kernels' epilogues."""
    s = 0.37
    inp, do, dhT = make_inputs(1, 45, 2, 16, 16, decays, seed=21)
    scaled = dict(inp, q=inp["q"] * s)
    o_ref, hT_ref, ref = reference(scaled, do, dhT)
    o, hT = gla_forward(**inp, strategy=strategy, config={"BT": 16} if strategy == "chunked" else None,
                        scale=s)
    assert rel_err(o, o_ref) <= TOL[torch.float32] and rel_err(hT, hT_ref) <= TOL[torch.float32]
    grads = gla_backward(*(inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")), None, do, dhT,
                         strategy=strategy, config={"BT": 16} if strategy == "chunked" else None,
                         scale=s)
    for name, a, b in zip(GRAD_NAMES, grads, ref):
        if b is None:
            assert a is None, name
            continue
        if name == "dq":          # the gradient w.r.t. the unscaled q
            b = b * s
        assert rel_err(a, b) <= TOL[torch.float32], name


def test_zero_output_scale():
    inp, do, dhT = make_inputs(1, 20, 1, 16, 16, ("g",), seed=22)
    o, _ = gla_forward(**inp, strategy="chunked", scale=0.0)
    assert (o == 0).all()
    dq, dk, dv, dg, _, _, dh0 = gla_backward(*(inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")),
                                             None, do, dhT, strategy="chunked", scale=0.0)
    _, _, ref = reference(dict(inp, q=inp["q"] * 0.0), do, dhT)
    assert (dq == 0).all()
    for name, a, b in (("dk", dk, ref[1]), ("dv", dv, ref[2]), ("dg", dg, ref[3]), ("dh0", dh0, ref[6])):
        assert rel_err(a, b) <= TOL[torch.float32], name


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_outputs_in_the_input_dtype(strategy):
    """out_dtype / grad_dtype: the output and dq, dk, dv are written in the 16-bit input dtype -
    the same values as the fp32 outputs rounded once (the decay gradients are formed before the
    rounding and match the fp32-output run exactly)."""
    inp, do, dhT = make_inputs(1, 40, 2, 16, 16, ("g", "gk"), dtype=torch.float16, seed=23)
    args = [inp[n] for n in ("q", "k", "v", "g", "gk", "gv", "h0")] + [None, do, dhT]
    o32, _ = gla_forward(**inp, strategy=strategy)
    o16, _ = gla_forward(**inp, strategy=strategy, out_dtype=torch.float16)
    assert o16.dtype == torch.float16
    torch.testing.assert_close(o16, o32.half(), rtol=0, atol=0)
    g32 = gla_backward(*args, strategy=strategy)
    g16 = gla_backward(*args, strategy=strategy, grad_dtype=torch.float16)
    for name, a, b in zip(GRAD_NAMES, g16, g32):
        if b is None:
            continue
        if name in ("dq", "dk", "dv"):
            assert a.dtype == torch.float16, name
            torch.testing.assert_close(a, b.half(), rtol=0, atol=0, msg=name)
        else:
            assert a.dtype == torch.float32, name
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_chunk_states_take_the_dtype_of_the_dots_that_read_them():
    q = torch.zeros(1, 4, 1, 16, dtype=torch.float16)
    assert gla_precision.state_dtype(q, (False, "ieee")) == torch.float16
    assert gla_precision.state_dtype(q, (True, "ieee")) == torch.float32
    assert gla_precision.state_dtype(q.float(), (True, "ieee")) == torch.float32


def test_chunk_tables_are_cached_per_packing():
    q = torch.zeros(2, 70, 1, 16)
    a, b = chunks.ChunkPlan(q, None, 32), chunks.ChunkPlan(q, None, 32)
    assert a.chunk_tbl is b.chunk_tbl and a.NT == 6 and a.N == 2
    cu = torch.tensor([0, 5, 5, 70])
    c = chunks.ChunkPlan(q[:1], cu, 32)
    assert c.N == 3 and c.NT == 4 and c.chunk_tbl.tolist() == [[0, 0], [2, 0], [2, 1], [2, 2]]
    assert chunks.ChunkPlan(q[:1], cu.clone(), 32).chunk_tbl is c.chunk_tbl
