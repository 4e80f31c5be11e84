"""The Householder family (DeltaNet, Gated DeltaNet, DeltaProduct): analysis from the traced IR,
both strategies against the float64 reference (forward and backward, fp32/bf16/fp16, β ∈ [0, 2],
unnormalised keys, T not a multiple of the chunk, cu_seqlens, initial and final states), the
fla-layout wrappers, and state tracking with negative eigenvalues (parity, permutations)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

import mixir as mx
from mixir import In, State
from mixir.errors import InputError, UnsupportedMixerError
from mixir.library import MIXERS, delta_rule, gated_delta_product, gated_delta_rule, kda
from mixir.library.householder import delta_mixer
from mixir.dsl.ir import render as ir_render
from mixir.lowering.family import classify
from mixir.testing.checker import assert_close, check, check_cu_seqlens
from mixir.verify import example_inputs

from lanes import dtype_grid, examples

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STRATEGIES = ["recurrent", "chunked"]
HOUSEHOLDER = sorted(n for n, e in MIXERS.items() if e.family == "householder")


def _ids(d):
    return str(d).split(".")[-1]


# ---- analysis ------------------------------------------------------------------------------------

def test_library_members_are_classified_from_their_ir():
    assert HOUSEHOLDER == ["delta_rule", "gated_delta_product2", "gated_delta_product3", "gated_delta_rule", "kda"]
    for name in HOUSEHOLDER:
        fam, plan = classify(MIXERS[name].mixer)
        assert fam.name == "householder" and plan.family == "householder"
        want = int(name[-1]) if name.startswith("gated_delta_product") else 1
        assert plan.num_householder == want
        assert all((s.g is not None) == (j == 0 and name != "delta_rule") for j, s in enumerate(plan.steps))
    for name, e in MIXERS.items():            # and the gated-linear mixers stay gated-linear
        if e.family == "gated_linear":
            assert classify(e.mixer)[0].name == "gated_linear", name


@mx.mixer
def expanded_gated_delta(q: In["K"], k: In["K"], v: In["V"], b: In[()], g: In[()], S: State["K", "V"]):
    """The gate distributed over both terms, β written as a sigmoid, the write gated after."""
    beta = 2.0 * mx.sigmoid(b)
    S = mx.exp(g) * S - mx.exp(g) * beta * mx.outer(k, k @ S) + mx.outer(k, beta * v)
    return q @ S, S


@mx.mixer
def two_step_no_gate(q: In["K"], k1: In["K"], k2: In["K"], v: In["V"], S: State["V", "K"]):
    """Two unit-β reflections per token on a state declared [V, K], one write, read-out scaled."""
    S = S - 2.0 * mx.outer(S @ k1, k1)
    S = S - 2.0 * mx.outer(S @ k2, k2) + mx.outer(v, k2)
    return 0.5 * (S @ q), S


def test_user_declarations_in_other_spellings():
    p = classify(expanded_gated_delta)[1]
    assert p.num_householder == 1 and p.steps[0].g is not None
    p = classify(two_step_no_gate)[1]
    assert p.num_householder == 2 and p.k_dim == "K" and p.v_dim == "V"


# the fast lane: each spelling under one strategy; the slow lane the other two
@pytest.mark.parametrize("m, strategy", [
    pytest.param(m, s, id=f"{m.name}-{s}",
                 marks=() if (m is expanded_gated_delta) == (s == "chunked") else pytest.mark.slow)
    for m in (expanded_gated_delta, two_step_no_gate) for s in STRATEGIES])
def test_user_declarations_match_the_reference(m, strategy):
    arrays, h0 = example_inputs(m, B=1, T=19, H=2, K=16, V=16, seed=3)
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.float32, strategy=strategy,
                       initial_state=h0))


@mx.mixer
def asymmetric(q: In["K"], a: In["K"], c: In["K"], v: In["V"], S: State["K", "V"]):
    S = S - mx.outer(a, c @ S) + mx.outer(a, v)
    return q @ S, S


@mx.mixer
def diagonal_gate_after(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], S: State["K", "V"]):
    """A key-diagonal gate after the factor: Diag(α)(I − k kᵀ) S, not KDA's (I − k kᵀ) Diag(α) S."""
    S = mx.exp(gk) * (S - mx.outer(k, k @ S)) + mx.outer(k, v)
    return q @ S, S


@mx.mixer
def value_diagonal_gate(q: In["K"], k: In["K"], v: In["V"], gv: In["V"], S: State["K", "V"]):
    S = mx.exp(gv) * S
    S = S - mx.outer(k, k @ S) + mx.outer(k, v)
    return q @ S, S


@mx.mixer
def diagonal_gate_not_contracted(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], S: State["K", "V"]):
    """Diag(α) S − k (kᵀ S): the correction reads the ungated state."""
    S = mx.exp(gk) * S - mx.outer(k, k @ S) + mx.outer(k, v)
    return q @ S, S


@mx.mixer
def other_key_write(q: In["K"], k: In["K"], w: In["K"], v: In["V"], S: State["K", "V"]):
    S = S - mx.outer(k, k @ S) + mx.outer(w, v)
    return q @ S, S


@pytest.mark.parametrize("m, words", [
    (asymmetric, "same key on both sides"),
    (diagonal_gate_after, "applies after the Householder factor"),
    (value_diagonal_gate, "gates diagonal along the key dim"),
    (diagonal_gate_not_contracted, "must apply before the Householder factor"),
    (other_key_write, "does not use the Householder key"),
])
def test_unsupported_forms_get_a_clear_error(m, words):
    with pytest.raises(UnsupportedMixerError) as e:
        mx.compile(m)
    assert words in str(e.value) and "householder" in str(e.value)


# ---- the library against the reference -------------------------------------------------------------

@pytest.mark.parametrize("name, strategy, dtype", dtype_grid(HOUSEHOLDER, STRATEGIES, DTYPES, _ids))
def test_library_member_matches_reference(name, strategy, dtype):
    """T one past the chunk (BT = 16 fp32, 64 16-bit) crosses a chunk boundary without filling the
    last chunk; β ~ U[0, 2]; keys N(0, 1) (not normalised); initial and final state; gradients of
    every input and of the state. (Several heads and sequences: the cu_seqlens, hypothesis and
    wrapper tests below.)"""
    m = MIXERS[name].mixer
    T = 17 if dtype == torch.float32 else 65
    arrays, h0 = example_inputs(m, B=1, T=T, H=1, K=16, V=16, seed=1)
    if strategy not in classify(m)[1].strategies:      # KDA: recurrent only, and it says so
        with pytest.raises(InputError, match="diagonal along 'K'.*recurrent"):
            mx.compile(m)(*[torch.as_tensor(a).float() for a in arrays], strategy=strategy)
        return
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0))


# the fast lane: Gated DeltaNet chunked (the recurrent kernels with cu_seqlens:
# test_kda_cu_seqlens_and_the_wrapper; every member packed: test_family_contract.py)
@pytest.mark.parametrize("name, strategy", [
    pytest.param(n, s, id=f"{n}-{s}",
                 marks=() if (n, s) == ("gated_delta_rule", "chunked") else pytest.mark.slow)
    for n in ["gated_delta_rule", "gated_delta_product2"] for s in STRATEGIES])
def test_cu_seqlens_equals_per_sequence_loop(name, strategy):
    m = MIXERS[name].mixer
    arrays, _ = example_inputs(m, B=1, T=24, H=2, K=16, V=16, seed=2)
    h0 = MIXERS[name].make_initial_state(np.random.default_rng(0), 4, 2, 16, 16)
    cu = torch.tensor([0, 5, 5, 22, 24])      # an empty sequence inside, one across a chunk
    assert_close(check_cu_seqlens(m, mx.compile(m), arrays, cu, dtype=torch.float32,
                                  strategy=strategy, initial_state=h0))


@settings(max_examples=examples(2), deadline=None)
@given(T=st.integers(1, 40), K=st.sampled_from([12, 16, 20]), beta_hi=st.sampled_from([1.0, 2.0]),
       seed=st.integers(0, 2**16), strategy=st.sampled_from(STRATEGIES))
def test_gated_delta_rule_hypothesis(T, K, beta_hi, seed, strategy):
    """Head dims that are not powers of two, T from 1, β up to 1 or 2, large unnormalised keys."""
    m = MIXERS["gated_delta_rule"].mixer
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, T, 2, K)) * np.array([1.0, 1.5])[:, None, None, None, None]
    v = rng.standard_normal((1, T, 2, 8))
    beta = rng.uniform(0, beta_hi, (1, T, 2))
    g = -rng.exponential(0.3, (1, T, 2))
    h0 = rng.standard_normal((1, 2, K, 8))
    assert_close(check(m, mx.compile(m), [q, k, v, beta, g], dtype=torch.float32, strategy=strategy,
                       initial_state=h0))


def test_l2norm_in_kernel_variant():
    m = delta_mixer("gated_delta_rule", l2norm=True)
    assert "rsqrt" in ir_render(classify(m)[1].steps[0].k)
    arrays, h0 = example_inputs(m, B=1, T=21, H=2, K=16, V=16, seed=5)
    assert_close(check(m, mx.compile(m), arrays, dtype=torch.bfloat16, strategy="chunked", initial_state=h0))


# ---- wrappers ------------------------------------------------------------------------------------

def _delta_oracle(q, k, v, beta, g, h0, scale):
    """float64 loop of fla's gated delta rule, [B, T, H, *] layouts."""
    q, k, v, beta, g = (x.double() for x in (q, k, v, beta, g))
    B, T, H, K = q.shape
    S = h0.double().clone()
    out = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S
        kS = torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S - beta[:, t][..., None, None] * k[:, t][..., :, None] * kS[..., None, :]
        S = S + beta[:, t][..., None, None] * k[:, t][..., :, None] * v[:, t][..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1), S


def test_gated_delta_product_wrapper_is_the_delta_rule_on_t_times_nh():
    torch.manual_seed(0)
    B, T, H, K, V, n = 1, 9, 2, 16, 8, 2
    q = torch.randn(B, T, H, K)
    k = torch.nn.functional.normalize(torch.randn(B, T * n, H, K), dim=-1)
    v, beta = torch.randn(B, T * n, H, V), torch.rand(B, T * n, H) * 2
    g, h0 = -torch.rand(B, T, H), torch.randn(B, H, K, V)
    o, hT = gated_delta_product(q, k, v, g, beta, num_householder=n, initial_state=h0,
                                output_final_state=True, strategy="chunked")
    g_sub = torch.zeros(B, T * n, H)
    g_sub[:, ::n] = g                                   # the gate on each token's first sub-step
    q_sub = torch.zeros(B, T * n, H, K)
    q_sub[:, n - 1::n] = q                              # the read-out after the last
    o_ref, hT_ref = _delta_oracle(q_sub, k, v, beta, g_sub, h0, K ** -0.5)
    torch.testing.assert_close(o.double(), o_ref[:, n - 1::n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hT.double(), hT_ref, rtol=1e-4, atol=1e-4)


def test_wrappers_match_fla_conventions():
    torch.manual_seed(1)
    B, T, H, K, V = 2, 11, 2, 16, 8
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v, beta, g = torch.randn(B, T, H, V), torch.rand(B, T, H), -torch.rand(B, T, H)
    o = gated_delta_rule(q, k, v, g, beta, scale=0.3, strategy="recurrent")
    o_ref, _ = _delta_oracle(q, k, v, beta, g, torch.zeros(B, H, K, V), 0.3)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    o, hT = delta_rule(q, k, v, beta, output_final_state=True)
    o_ref, hT_ref = _delta_oracle(q, k, v, beta, torch.zeros(B, T, H), torch.zeros(B, H, K, V), K ** -0.5)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    assert hT.shape == (B, H, K, V)


@mx.mixer
def kda_one_expression(q: In["K"], k: In["K"], v: In["V"], b: In[()], g: In["K"], S: State["K", "V"]):
    """KDA in one expression: the correction contracts the key with the gated state (k ⊙ α)ᵀ S."""
    beta = mx.sigmoid(b)
    S = mx.exp(g) * S - beta * mx.outer(k, (k * mx.exp(g)) @ S) + beta * mx.outer(k, v)
    return q @ S, S


def test_kda_is_recognised_in_other_spellings_and_matches_the_reference():
    for m in (MIXERS["kda"].mixer, kda_one_expression):
        plan = classify(m)[1]
        assert plan.gate_k and plan.strategies == ("recurrent",) and plan.steps[0].g.log.dims == ("K",)
        assert "diagonal gate along K" in plan.transition
    arrays, h0 = example_inputs(kda_one_expression, B=1, T=23, H=2, K=16, V=8, seed=4)
    assert_close(check(kda_one_expression, mx.compile(kda_one_expression), arrays, dtype=torch.float32,
                       initial_state=h0))


def test_kda_cu_seqlens_and_the_wrapper():
    m = MIXERS["kda"].mixer
    arrays, _ = example_inputs(m, B=1, T=30, H=2, K=16, V=16, seed=2)
    h0 = MIXERS["kda"].make_initial_state(np.random.default_rng(0), 3, 2, 16, 16)
    assert_close(check_cu_seqlens(m, mx.compile(m), arrays, torch.tensor([0, 9, 9, 30]),
                                  dtype=torch.float32, strategy="recurrent", initial_state=h0))
    # fla's chunk_kda layout and defaults; a gate constant over K is Gated DeltaNet
    torch.manual_seed(3)
    B, T, H, K, V = 2, 13, 2, 16, 8
    q, k = torch.randn(B, T, H, K), torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    v, beta, g = torch.randn(B, T, H, V), torch.rand(B, T, H), -torch.rand(B, T, H)
    h0 = torch.randn(B, H, K, V)
    o, hT = kda(q, k, v, g[..., None].expand(B, T, H, K), beta, initial_state=h0, output_final_state=True)
    o_ref, hT_ref = _delta_oracle(q, k, v, beta, g, h0, K ** -0.5)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hT.double(), hT_ref, rtol=1e-4, atol=1e-4)
    # a per-channel gate: against a float64 loop of (I − β k kᵀ) Diag(exp g) S + β k vᵀ
    gk = -torch.rand(B, T, H, K)
    o = kda(q, k, v, gk, beta, scale=0.5)
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    outs = []
    for t in range(T):
        S = torch.exp(gk[:, t].double())[..., None] * S
        kt, bt = k[:, t].double(), beta[:, t].double()[..., None, None]
        S = S - bt * kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, S)[..., None, :]
        S = S + bt * kt[..., None] * v[:, t].double()[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", 0.5 * q[:, t].double(), S))
    torch.testing.assert_close(o.double(), torch.stack(outs, 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="g must be"):
        kda(q, k, v, g, beta)
    with pytest.raises(InputError, match="recurrent"):
        kda(q, k, v, gk, beta, strategy="chunked")


def test_bad_inputs_name_the_argument():
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(InputError, match="k must have T·num_householder = 8 rows"):
        gated_delta_product(q, q, torch.randn(1, 8, 2, 8), None, torch.rand(1, 8, 2), num_householder=2)
    with pytest.raises(InputError, match="num_householder must be ≥ 1"):
        gated_delta_product(q, q, q, None, torch.rand(1, 4, 2), num_householder=0)
    with pytest.raises(InputError, match="beta"):
        delta_rule(q, q, torch.randn(1, 4, 2, 8), torch.rand(1, 4, 3))
    big = torch.randn(1, 2, 1, 300)
    with pytest.raises(InputError, match="chunked strategy holds the key dim"):
        delta_rule(big, big, torch.randn(1, 2, 1, 8), torch.rand(1, 2, 1), strategy="chunked")


# ---- state tracking: negative eigenvalues ----------------------------------------------------------

def _parity_case(T, beta_on, seed=0):
    """One head, K = V = 16: a 1-bit flips the first basis vector (I − β e₁e₁ᵀ); S₀ = I; q = e₁."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, T)
    K = 16
    e1 = torch.zeros(K)
    e1[0] = 1.0
    q = e1.expand(1, T, 1, K).contiguous()
    k = q.clone()
    v = torch.zeros(1, T, 1, K)
    beta = torch.tensor(bits * beta_on, dtype=torch.float32).reshape(1, T, 1)
    h0 = torch.eye(K).reshape(1, 1, K, K)
    return bits, q, k, v, beta, h0


@pytest.mark.parametrize("T", [64, pytest.param(1024, marks=pytest.mark.slow)])
def test_parity_needs_negative_eigenvalues(T):
    """β = 2 (eigenvalue −1) tracks the parity of T = 1024 bits exactly (64 in the fast lane); with
    β restricted to [0, 1] no choice of β for a 1-bit does (S₀₀ stays ≥ 0, so its sign cannot
    alternate)."""
    bits, q, k, v, beta, h0 = _parity_case(T, 2.0)
    o = delta_rule(q, k, v, beta, scale=1.0, initial_state=h0, strategy="chunked")
    parity = np.cumsum(bits) % 2
    want = torch.tensor(1.0 - 2.0 * parity, dtype=torch.float32)
    assert torch.equal(o[0, :, 0, 0], want)
    for b in (0.25, 0.5, 1.0):
        _, q, k, v, beta, h0 = _parity_case(T, b)
        o = delta_rule(q, k, v, beta, scale=1.0, initial_state=h0, strategy="chunked")
        assert (o[0, :, 0, 0] >= 0).all()
        assert not torch.equal(torch.sign(o[0, :, 0, 0]), want)


def _transposition(i, j, K):
    u = torch.zeros(K)
    u[i], u[j] = 2 ** -0.5, -(2 ** -0.5)
    return u


@pytest.mark.parametrize("T", [64, pytest.param(1024, marks=pytest.mark.slow)])
def test_permutation_composition_with_two_householders(T):
    """S₃ by DeltaProduct with n_h = 2: each token is a random permutation written as two
    transpositions (reflections I − 2uuᵀ, u = (e_i − e_j)/√2; the identity as β = 0). Reading
    S_T's rows gives the composed permutation exactly over T = 1024 tokens (64 in the fast lane);
    with β ≤ 1 (no negative eigenvalue) the same inputs do not."""
    import itertools
    K, n = 16, 2
    rng = np.random.default_rng(0)
    perms = list(itertools.permutations(range(3)))
    pairs = [(0, 1), (0, 2), (1, 2)]
    ks = torch.zeros(1, T * n, 1, K)
    beta = torch.zeros(1, T * n, 1)
    composed = np.eye(3)
    for t in range(T):
        p = perms[rng.integers(len(perms))]
        P = np.eye(3)[list(p)]
        # P as ≤ 2 transpositions applied in order (P = τ₂ τ₁)
        best = None
        cand = [()] + [(x,) for x in pairs] + [(x, y) for x in pairs for y in pairs]
        for c in cand:
            M = np.eye(3)
            for (a, b) in c:
                Tm = np.eye(3)
                Tm[[a, b]] = Tm[[b, a]]
                M = Tm @ M
            if np.allclose(M, P):
                best = c
                break
        assert best is not None
        for j, (a, b) in enumerate(best):
            ks[0, t * n + j, 0] = _transposition(a, b, K)
            beta[0, t * n + j, 0] = 2.0
        composed = P @ composed
    q = torch.zeros(1, T, 1, K)
    q[..., 0] = 1.0
    v = torch.zeros(1, T * n, 1, K)
    h0 = torch.eye(K).reshape(1, 1, K, K)
    _, hT = gated_delta_product(q, ks, v, None, beta, num_householder=n, scale=1.0, initial_state=h0,
                                output_final_state=True, strategy="chunked")
    assert torch.allclose(hT[0, 0, :3, :3].double(), torch.tensor(composed), atol=1e-4)
    _, hT1 = gated_delta_product(q, ks, v, None, beta.clamp(max=1.0), num_householder=n, scale=1.0,
                                 initial_state=h0, output_final_state=True, strategy="chunked")
    assert not torch.allclose(hT1[0, 0, :3, :3].double(), torch.tensor(composed), atol=0.1)


def test_gated_delta_rule_fla_options():
    """fla 0.6's extra options: β through a sigmoid (×2 with allow_neg_eigval), grouped value heads
    (HV = 2H: value head j reads q/k head j // 2), and the V-first state layout."""
    torch.manual_seed(2)
    B, T, H, HV, K, V = 1, 9, 1, 2, 16, 8
    q, k = torch.randn(B, T, H, K), torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    v, b, g = torch.randn(B, T, HV, V), torch.randn(B, T, HV), -torch.rand(B, T, HV)
    h0 = torch.randn(B, HV, V, K)
    o, hT = gated_delta_rule(q, k, v, g, b, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True,
                             state_v_first=True, initial_state=h0, output_final_state=True,
                             strategy="chunked")
    qr, kr = q.repeat_interleave(2, 2), k.repeat_interleave(2, 2)
    o_ref, hT_ref = _delta_oracle(qr, kr, v, 2 * torch.sigmoid(b), g, h0.transpose(-1, -2), K ** -0.5)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hT.double(), hT_ref.transpose(-1, -2), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="not a multiple"):
        gated_delta_rule(q.expand(B, T, 2, K), k.expand(B, T, 2, K), torch.randn(B, T, 3, V),
                         g[..., :1].expand(B, T, 3), b[..., :1].expand(B, T, 3))


@pytest.mark.parametrize("strategy", [pytest.param("recurrent", marks=pytest.mark.slow), "chunked"])
def test_torch_compile_fullgraph_matches_eager(strategy):
    """The core is a custom op (mixir::delta_fwd / delta_bwd): a model using the mixer traces as one
    graph (fullgraph raises on a break) and matches eager, forward and gradients."""
    fn = mx.compile(MIXERS["gated_delta_product2"].mixer)
    arrays, h0 = example_inputs(MIXERS["gated_delta_product2"].mixer, B=1, T=12, H=2, K=16, V=16, seed=6)

    def loss(*xs):
        o, S = fn(*xs[:-1], initial_state=xs[-1], output_final_state=True, strategy=strategy)
        return (o * o).sum() + S.sum()

    leaves = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in list(arrays) + [h0]]
    eager = loss(*leaves)
    g_eager = torch.autograd.grad(eager, leaves)
    frames = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=frames)
    out = compiled(*leaves)
    g_comp = torch.autograd.grad(out, leaves)
    assert frames.frame_count == 1
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_kda_fla_options():
    """GVA, β activations, V-first states and fla's in-kernel gate (computed in torch here), each
    against the same call spelled out; unsupported fla options are refused by name."""
    torch.manual_seed(5)
    B, T, H, HV, K, V = 1, 9, 1, 2, 16, 8
    q, k = torch.randn(B, T, H, K), torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    v, b, graw = torch.randn(B, T, HV, V), torch.randn(B, T, HV), torch.randn(B, T, HV, K)
    A_log, dt_bias = torch.randn(HV), torch.randn(HV * K)
    h0 = torch.randn(B, HV, K, V)
    g = -torch.exp(A_log).view(HV, 1) * torch.nn.functional.softplus(graw + dt_bias.view(HV, K))
    want, want_h = kda(q.repeat_interleave(2, 2), k.repeat_interleave(2, 2), v, g, 2 * torch.sigmoid(b),
                       initial_state=h0, output_final_state=True)
    got, got_h = kda(q, k, v, graw, b, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                     use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, state_v_first=True,
                     initial_state=h0.transpose(-1, -2), output_final_state=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_h.transpose(-1, -2), want_h, rtol=1e-5, atol=1e-5)
    bounded = kda(q, k, v, graw, torch.sigmoid(b), use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                  safe_gate=True, lower_bound=-5.0)
    gb = -5.0 * torch.sigmoid(torch.exp(A_log).view(HV, 1) * (graw + dt_bias.view(HV, K)))
    torch.testing.assert_close(bounded, kda(q.repeat_interleave(2, 2), k.repeat_interleave(2, 2), v, gb,
                                            torch.sigmoid(b)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="cp_context"):
        kda(q, k, v, graw, b, cp_context=object())
    with pytest.raises(InputError, match="A_log"):
        kda(q, k, v, graw, b, use_gate_in_kernel=True)


@settings(max_examples=examples(2), deadline=None)
@given(T=st.integers(1, 30), K=st.sampled_from([12, 16, 20]), V=st.sampled_from([8, 24]),
       beta_hi=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 2**16))
def test_kda_hypothesis(T, K, V, beta_hi, seed):
    """KDA (recurrent, forward and backward) over head dims that are not powers of two, T from 1,
    β up to 2, unnormalised keys, per-channel log-gates down to about −3."""
    m = MIXERS["kda"].mixer
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, T, 2, K)) * np.array([1.0, 1.3])[:, None, None, None, None]
    v = rng.standard_normal((1, T, 2, V))
    beta = rng.uniform(0, beta_hi, (1, T, 2))
    g = -rng.exponential(0.5, (1, T, 2, K))
    h0 = rng.standard_normal((1, 2, K, V))
    assert_close(check(m, mx.compile(m), [q, k, v, beta, g], dtype=torch.float32, initial_state=h0))
