"""Tests of the recurrent delta-rule core (mixir.lowering.householder.kernels.recurrent).

Kernels run through Triton's interpreter on CPU tensors, so shapes are tiny. Every output and
intermediate buffer is NaN-poisoned (MIXIR_POISON): an element a kernel forgets to write fails the
comparison. The oracle is an independent float64 loop written with the explicit transition matrix
alpha_t (I - beta_t k_t k_t^T); its gradients come from torch.autograd. Errors are relative RMS
errors (mixir.testing.tolerances) against the oracle run on the same (rounded) inputs.
"""
import pytest
import torch

from mixir.lowering.householder.kernels import recurrent as dr
from mixir.lowering.householder.kernels.recurrent import (default_config, delta_recurrent_backward,
                                                          delta_recurrent_forward)
from mixir.testing.tolerances import BOUNDS, rel_rms_error

GRADS = ("q", "k", "v", "beta", "g", "h0")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("MIXIR_POISON", "1")


# ------------------------------------------------------------------------------ float64 oracle

def oracle(q, k, v, beta, g, h0, offsets):
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, in float64.
    Returns (o [1, T, H, V], hT [N, H, K, V])."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    eye = torch.eye(K, dtype=torch.float64)
    rows, finals = [None] * T, []
    for n in range(len(offsets) - 1):
        S = torch.zeros(H, K, V, dtype=torch.float64) if h0 is None else h0[n]
        for t in range(offsets[n], offsets[n + 1]):
            kt = k[0, t]                                              # [H, K]
            P = eye - beta[0, t][:, None, None] * kt[:, :, None] * kt[:, None, :]
            alpha = torch.ones(H, dtype=torch.float64) if g is None else torch.exp(g[0, t])
            S = alpha[:, None, None] * torch.matmul(P, S) + kt[:, :, None] * v[0, t][:, None, :]
            rows[t] = torch.einsum("hkv,hk->hv", S, q[0, t])
        finals.append(S)
    o = torch.stack(rows)[None] if T else torch.zeros(1, 0, H, V, dtype=torch.float64)
    return o, torch.stack(finals)


def make_inputs(offsets, H, K, V, *, dtype=torch.float32, use_g=True, use_h0=True, seed=0,
                beta_range=(0.0, 2.0), g_range=(-1.0, 0.0)):
    """Unnormalised keys (norms spread over ~[0.4, 1.3]), beta uniform in beta_range, log-decay g
    uniform in g_range. q, k, v (and do) are rounded to ``dtype``; beta, g, h0, dhT stay fp32."""
    gen = torch.Generator().manual_seed(seed)
    T, N = offsets[-1], len(offsets) - 1
    r = lambda *s: torch.randn(*s, generator=gen)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=gen)
    k = r(1, T, H, K)
    k = k / k.norm(dim=-1, keepdim=True) * u(0.4, 1.3, 1, T, H, 1)
    inp = dict(q=r(1, T, H, K).to(dtype), k=k.to(dtype), v=r(1, T, H, V).to(dtype),
               beta=u(*beta_range, 1, T, H), g=u(*g_range, 1, T, H) if use_g else None,
               h0=r(N, H, K, V) if use_h0 else None)
    return inp, r(1, T, H, V).to(dtype), r(N, H, K, V)


def reference(inp, offsets, do, dhT):
    leaves = {n: None if x is None else x.detach().double().requires_grad_()
              for n, x in inp.items()}
    o, hT = oracle(**leaves, offsets=offsets)
    loss = (o * do.double()).sum()
    if dhT is not None:
        loss = loss + (hT * dhT.double()).sum()
    loss.backward()
    grads = {n: None if x is None else x.grad for n, x in leaves.items()}
    return o.detach(), hT.detach(), grads


def check(inp, offsets, do, dhT, *, config=None, cu_dtype=torch.int32):
    """Forward and backward against the oracle; returns the errors."""
    bounds = BOUNDS[inp["q"].dtype]
    cu = torch.tensor(offsets, dtype=cu_dtype)
    o_ref, hT_ref, g_ref = reference(inp, offsets, do, dhT)
    o, hT, saved = delta_recurrent_forward(*inp.values(), cu, config)
    assert o.dtype == torch.float32 and hT.dtype == torch.float32
    errs = {"o": (rel_rms_error(o, o_ref, bounds.floor), bounds.output),
            "hT": (rel_rms_error(hT, hT_ref, bounds.floor), bounds.state)}
    grads = delta_recurrent_backward(*inp.values(), cu, do, dhT, saved, config)
    for name, got in zip(GRADS, grads):
        want = g_ref[name]
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == torch.float32 and got.shape == inp[name].shape, name
        errs["d" + name] = (rel_rms_error(got, want, bounds.floor), bounds.grad)
    bad = {n: e for n, (e, b) in errs.items() if not e <= b}      # "not <=" also catches NaN
    assert not bad, f"errors above bounds: {bad}; all: {errs}"
    # without saved checkpoints the backward recomputes them: the very same numbers
    again = delta_recurrent_backward(*inp.values(), cu, do, dhT, None, config)
    for name, a, b in zip(GRADS, grads, again):
        assert (a is None and b is None) or torch.equal(a, b), name
    return {n: e for n, (e, _) in errs.items()}


# ----------------------------------------------------------------------------------------- cases

def test_varlen_gate_h0_several_v_tiles_fp32():
    # K, V not powers of two; two V-tiles (BV = 16 < V = 20: K-side grads are partial sums);
    # C = 4 with sequence lengths 5 and 18 (not multiples of C); an empty sequence in the middle
    inp, do, dhT = make_inputs([0, 5, 5, 23], 2, 12, 20, seed=1)
    check(inp, [0, 5, 5, 23], do, dhT, config={"BV": 16, "bwd_BV": 16, "checkpoint_every": 4})


def test_no_gate_no_h0_no_dhT_default_config():
    # one sequence of 37 tokens with the default C = 16 (a partial last segment), int64 cu_seqlens
    inp, do, _ = make_inputs([0, 37], 1, 16, 32, use_g=False, use_h0=False, seed=2)
    check(inp, [0, 37], do, None, cu_dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_half_precision_inputs(dtype):
    # q, k, v and do in 16 bits (beta, g, h0, dhT fp32); the kernels load and compute in fp32
    inp, do, dhT = make_inputs([0, 17, 30], 1, 32, 16, dtype=dtype, seed=3)
    check(inp, [0, 17, 30], do, dhT, config={"checkpoint_every": 8})


def test_single_token():
    inp, do, dhT = make_inputs([0, 1], 2, 12, 20, seed=4)
    check(inp, [0, 1], do, dhT)


def test_batch_of_equal_sequences_gate_without_h0():
    # a batch of B = 3 sequences of 13 tokens, passed packed; checkpoint every token (C = 1)
    offsets = list(range(0, 3 * 13 + 1, 13))
    inp, do, dhT = make_inputs(offsets, 1, 8, 8, use_h0=False, seed=5)
    check(inp, offsets, do, dhT, config={"checkpoint_every": 1})


def test_extreme_gates_and_betas():
    # any real beta and g: beta in [-0.5, 2.5], g in [-4, 0.5] (gates above 1), plus exact
    # reflections (beta = 2, unit keys), beta = 0 and closed gates (g = -1e4: alpha = 0)
    offsets = [0, 30]
    inp, do, dhT = make_inputs(offsets, 2, 12, 12, seed=6, beta_range=(-0.5, 2.5),
                               g_range=(-4.0, 0.5))
    k = inp["k"]
    k[0, 3:9] = k[0, 3:9] / k[0, 3:9].norm(dim=-1, keepdim=True)
    inp["beta"][0, 3:9] = 2.0
    inp["beta"][0, 12:14] = 0.0
    inp["g"][0, 20, 0] = -1e4
    inp["g"][0, 25, 1] = -1e4
    check(inp, offsets, do, dhT, config={"checkpoint_every": 8})


def test_empty_sequences_pass_state_through():
    # empty sequences first, in the middle and last: hT = h0 and dh0 = dhT for them, exactly
    offsets = [0, 0, 6, 6, 11, 11]
    inp, do, dhT = make_inputs(offsets, 1, 12, 20, seed=7)
    check(inp, offsets, do, dhT, config={"checkpoint_every": 4})
    cu = torch.tensor(offsets)
    _, hT, saved = delta_recurrent_forward(*inp.values(), cu)
    dh0 = delta_recurrent_backward(*inp.values(), cu, do, dhT, saved)[-1]
    for n in (0, 2, 4):
        assert torch.equal(hT[n], inp["h0"][n]) and torch.equal(dh0[n], dhT[n])
    # without h0 an empty sequence ends in the zero state
    inp["h0"] = None
    _, hT, _ = delta_recurrent_forward(*inp.values(), cu)
    assert torch.equal(hT[2], torch.zeros_like(hT[2]))


def test_inference_mode_outputs():
    # output_final_state=False and save_for_backward=False: no final state, no checkpoints;
    # the output is the same as the training forward's
    offsets = [0, 9, 20]
    inp, do, dhT = make_inputs(offsets, 1, 16, 16, seed=8)
    cu = torch.tensor(offsets)
    o1, hT, saved = delta_recurrent_forward(*inp.values(), cu, None, False, save_for_backward=False)
    assert hT is None and saved is None
    o2, _, saved2 = delta_recurrent_forward(*inp.values(), cu)
    assert torch.equal(o1, o2) and isinstance(saved2, dr.RecurrentSaved)
    assert saved2.interval == default_config(16, 16, torch.float32)["checkpoint_every"]


def test_bad_inputs_are_named():
    inp, do, dhT = make_inputs([0, 4], 1, 8, 8, seed=9)
    args = list(inp.values())
    with pytest.raises(ValueError, match="cu_seqlens"):
        delta_recurrent_forward(*args, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="beta"):
        delta_recurrent_forward(*args[:3], args[3][:, :2], *args[4:], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="h0"):
        delta_recurrent_forward(*args[:5], args[5][:, :, :4], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="checkpoint_every"):
        delta_recurrent_forward(*args, torch.tensor([0, 4]), {"checkpoint_every": 0})


def test_default_config():
    for K, V in [(1, 1), (12, 20), (64, 64), (128, 128), (256, 64)]:
        for dtype in (torch.float32, torch.bfloat16):
            c = default_config(K, V, dtype)
            assert c["BK"] >= max(K, 16) and c["BK"] & (c["BK"] - 1) == 0
            assert 16 <= c["BV"] and 16 <= c["bwd_BV"] <= c["BV"]
            assert c["checkpoint_every"] >= 1 and {"num_warps", "num_stages"} <= set(c)
    assert len(dr.KERNELS) == 2


# ----------------------------------------------------------------------------------- AOT build

def _cuda_compiler_available():
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        def probe(X):
            tl.store(X, 1.0)
        triton.compile(ASTSource(fn=triton.jit(probe), signature={"X": "*fp32"}, constexprs={}),
                       target=GPUTarget("cuda", 90, 32))
        return True
    except Exception:  # noqa: BLE001 - no CUDA backend / ptxas here
        return False


@pytest.mark.slow   # many AOT builds; tests/test_family_contract.py builds one declaration per family in the fast lane
@pytest.mark.aot
def test_default_configs_build_for_sm80_sm90_without_spills(fresh_triton_cache):
    """K = V = 64 and 128, fp32 and bf16 inputs, the heaviest variant (gate, h0, dhT, checkpoints):
    forward and backward compile for sm_80 and sm_90 with no register spills (measured with this
    Triton's ptxas: forward 80..128 registers, backward 96..166)."""
    if not _cuda_compiler_available():
        pytest.skip("cannot compile for CUDA here")
    from mixir.lowering.common import aot
    from mixir.lowering.common.launch import record_launches
    with record_launches() as recs:
        for D in (64, 128):
            for dtype in (torch.float32, torch.bfloat16):
                inp, do, dhT = make_inputs([0, 2], 1, D, D, dtype=dtype)
                cu = torch.tensor([0, 2], dtype=torch.int32)
                _, _, saved = delta_recurrent_forward(*inp.values(), cu)
                delta_recurrent_backward(*inp.values(), cu, do, dhT, saved)
        # the lightest variants compile too: inference forward; backward without gate, h0, dhT
        # and without saved checkpoints (it re-runs the forward to make them)
        inp, do, _ = make_inputs([0, 2], 1, 64, 64, use_g=False, use_h0=False)
        delta_recurrent_forward(*inp.values(), cu, None, False, save_for_backward=False)
        delta_recurrent_backward(*inp.values(), cu, do, None, None)
    assert len(recs) == 11
    results = aot.build_all(recs, ["sm_80", "sm_90"], workers=2)
    table = aot.format_table(results)
    print("\n" + table)
    assert len(results) == 22
    for r in results:
        assert isinstance(r, aot.KernelResources), r
        assert r.fits and 0 < r.registers <= 255, table
        assert r.spills == 0, table


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_against_oracle(dtype):
    # compiled kernels (real barriers around the scratch slab), several V-tiles and segments,
    # packed sequences with an empty one
    offsets = [0, 100, 100, 229, 300]
    inp, do, dhT = make_inputs(offsets, 2, 64, 48, dtype=dtype, seed=10)
    o_ref, hT_ref, g_ref = reference(inp, offsets, do, dhT)
    dev = {n: None if x is None else x.cuda() for n, x in inp.items()}
    cu = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    o, hT, saved = delta_recurrent_forward(*dev.values(), cu)
    grads = delta_recurrent_backward(*dev.values(), cu, do.cuda(), dhT.cuda(), saved)
    b = BOUNDS[dtype]
    errs = {"o": rel_rms_error(o, o_ref, b.floor), "hT": rel_rms_error(hT, hT_ref, b.floor)}
    errs.update({"d" + n: rel_rms_error(a, g_ref[n], b.floor) for n, a in zip(GRADS, grads)})
    assert errs["o"] <= b.output and errs["hT"] <= b.state, errs
    assert all(errs["d" + n] <= b.grad for n in GRADS), errs
