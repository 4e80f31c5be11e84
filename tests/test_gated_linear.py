"""Differential tests of the gated-linear family: every library mixer and user-declared mixers,
every strategy, fp32/bf16/fp16, forward and backward, against the float64 reference.

Kernels run on CPU tensors through Triton's interpreter (the same kernels as on a GPU), so shapes
are small; the nightly hypothesis profile widens them.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixir as mx
from mixir import In, Param, Scale, State
from mixir.library import MIXERS
from mixir.testing import strategies as mts
from mixir.testing.checker import assert_close, check, check_case, check_cu_seqlens
from mixir.verify import example_inputs, input_ranges

from lanes import dtype_grid, examples

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STRATEGIES = ["recurrent", "chunked"]
GATED_LINEAR = sorted(n for n, e in MIXERS.items() if e.family == "gated_linear" and not e.requires)


def _ids(d):
    return str(d).split(".")[-1]


# ---- the library ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, strategy, dtype", dtype_grid(GATED_LINEAR, STRATEGIES, DTYPES, _ids))
def test_library_mixer_matches_reference(name, strategy, dtype):
    """T = 17 crosses a sub-chunk (BC = 16); H = 2 for the per-head parameters (the user mixers
    below run B = 2; the hypothesis test longer T across whole chunks)."""
    m = MIXERS[name].mixer
    arrays, h0 = example_inputs(m, B=1, T=17, H=2, K=16, V=16, seed=1)
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0))


# the fast lane: GLA chunked, lightnet's auxiliary scan recurrent (every mixer and strategy runs
# packed in test_family_contract.py); the slow lane the rest
@pytest.mark.parametrize("name, strategy", [
    pytest.param(n, s, id=f"{n}-{s}",
                 marks=() if (n, s) in {("gla", "chunked"), ("lightnet", "recurrent")}
                 else pytest.mark.slow)
    for n in ["gla", "mamba2", "lightnet", "hgrn"] for s in STRATEGIES])
def test_library_cu_seqlens_equals_per_sequence_loop(name, strategy):
    m = MIXERS[name].mixer
    arrays, h0 = example_inputs(m, B=1, T=24, H=2, K=16, V=16, seed=2)
    cu = torch.tensor([0, 5, 5, 22, 24])   # an empty sequence inside, one across a sub-chunk
    rng = np.random.default_rng(0)
    h0 = MIXERS[name].make_initial_state(rng, 4, 2, 16, 16)
    assert_close(check_cu_seqlens(m, mx.compile(m), arrays, cu, dtype=torch.float32,
                                  strategy=strategy, initial_state=h0))


# ---- user-declared mixers (not in the library) ---------------------------------------------------

@mx.mixer
def signed_decay(q: In["K"], k: In["K"], v: In["V"], a: In[()], S: State["K", "V"]):
    """A scalar transition in [-1, 1]: negative eigenvalues, sign tracked by the runtime."""
    S = a * S + mx.outer(k, v)
    return q @ S, S


@mx.mixer
def column_gated(q: In["K"], k: In["K"], v: In["V"], f: In["V"], beta: In[()],
                 S: State["V", "K"], scale: Scale["K"]):
    """Decay along the value dim, a state declared [V, K], a gated input and a gated output."""
    S = mx.sigmoid(f) * S + mx.outer(v, mx.sigmoid(beta) * k)
    return mx.silu(beta) * ((q * scale) @ S) + 0.5 * v, S


@mx.mixer
def rowcol(q: In["D"], k: In["D"], v: In["E"], a: In["D"], b: In["E"], c: In[()], w: Param["E"],
           S: State["D", "E"]):
    """Row, column and scalar decays at once, a per-head parameter, an odd-named dim pair."""
    S = mx.exp(c) * (mx.exp(a) * S * mx.exp(b)) + mx.outer(mx.l2norm(k, "D"), v)
    return (q @ S) * w, S


USER = {"signed_decay": signed_decay, "column_gated": column_gated, "rowcol": rowcol}


@pytest.mark.parametrize("name, strategy, dtype",
                         dtype_grid(sorted(USER), STRATEGIES, DTYPES, _ids, fp32=True))
def test_user_mixer_matches_reference(name, strategy, dtype):
    m = USER[name]
    arrays, h0 = example_inputs(m, B=2, T=17, H=2, K=16, V=16, seed=3)
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0))


def test_signed_decay_really_has_negative_transitions():
    ranges = input_ranges(signed_decay)
    assert ranges == {"a": (-1.0, 1.0)}
    assert "sign tracked" in mx.compile(signed_decay).plan.transition


@settings(max_examples=examples(2))
@given(case=mts.cases(MIXERS["gla"].mixer, shape=mts.shapes(MIXERS["gla"].mixer, batch=(1, 2),
                                                            seqlen=(1, 70), heads=(1, 2), dim=(1, 32),
                                                            odd_dims=(7,)),
                      ranges={"gk": (-5.0, 0.0)}),
       strategy=st.sampled_from(STRATEGIES))
def test_gla_hypothesis(case, strategy):
    """Shapes, dtypes, extreme gates (exactly 1 and ≈ 0), cu_seqlens with empty sequences."""
    m = MIXERS["gla"].mixer
    assert_close(check_case(m, mx.compile(m), case, strategy=strategy))


@settings(max_examples=examples(2))
@given(case=mts.cases(signed_decay, shape=mts.shapes(signed_decay, batch=(1, 2), seqlen=(1, 70),
                                                     heads=(1, 2), dim=(1, 24), odd_dims=(5,)),
                      ranges={"a": (-1.0, 1.0)}),
       strategy=st.sampled_from(STRATEGIES))
def test_signed_decay_hypothesis(case, strategy):
    assert_close(check_case(signed_decay, mx.compile(signed_decay), case, strategy=strategy))


# ---- unsupported declarations get a clear error --------------------------------------------------

def test_householder_update_is_refused_with_the_subexpression():
    """The gated-linear analysis names the contraction it cannot take; the registry then routes the
    mixer to the Householder family (tests/test_householder.py)."""
    from mixir.lowering.gated_linear import analysis
    from mixir.lowering.family import classify

    @mx.mixer
    def delta(q: In["K"], k: In["K"], v: In["V"], b: In[()], S: State["K", "V"]):
        S = S - b * mx.outer(k, k @ S) + b * mx.outer(k, v)
        return q @ S, S
    with pytest.raises(mx.UnsupportedMixerError, match=r"not supported by any strategy yet: .*sum\(\(k \* S\)"):
        analysis.analyse(delta)
    assert classify(delta)[0].name == "householder"


def test_nonlinear_update_is_refused():
    @mx.mixer
    def rnn(x: In["D"], h: State["D"]):
        h = mx.tanh(h + x)
        return h, h
    with pytest.raises(mx.UnsupportedMixerError, match="nonlinear in the state"):
        mx.compile(rnn)


def test_rank_two_input_is_refused():
    @mx.mixer
    def rank2(q: In["K"], k: In["K"], v: In["V"], k2: In["K"], v2: In["V"], S: State["K", "V"]):
        S = S + mx.outer(k, v) + mx.outer(k2, v2)
        return q @ S, S
    with pytest.raises(mx.UnsupportedMixerError, match="is a sum"):
        mx.compile(rank2)


# ---- what runs around the core -----------------------------------------------------------------

def test_direct_pieces_skip_the_pieces_kernel():
    """Pieces that are call tensors go to the core as they are; q's scalar factor becomes the
    core's output scale; constants need no kernel; computed pieces still go through one."""
    from mixir.lowering.gated_linear.analysis import analyse
    from mixir.lowering.gated_linear.runtime import direct_pieces

    def direct(name):
        m = MIXERS[name].mixer
        form = analyse(m).main
        return {p: (src, None if f is None or isinstance(f, float) else f.op)
                for p, (src, f) in direct_pieces(form, [(s.name, s.kind, s.dims) for s in m.inputs]).items()}

    assert direct("simple_gla") == {"q": ("q", "scalar"), "k": ("k", None), "v": ("v", None),
                                    "g": ("g", None)}
    assert direct("gla") == {"q": ("q", "scalar"), "k": ("k", None), "v": ("v", None),
                             "gk": ("gk", None)}
    assert direct("hgrn") == {"q": (None, None), "k": (None, None), "v": ("x", None),
                              "gv": ("g", None)}
    assert "k" not in direct("lightnet") and "gk" not in direct("lightnet")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_simple_gla_runs_the_core_kernels_only(launched_kernels, dtype):
    """simple_gla's chunked fwd+bwd launches the core's kernels and nothing else of mixir's (no
    pieces kernel), and returns the output and gradients in the input dtype."""
    names = launched_kernels
    m = MIXERS["simple_gla"].mixer
    arrays, _ = example_inputs(m, B=1, T=40, H=2, K=16, V=16, seed=3)
    q, k, v, g = (torch.tensor(a, dtype=dtype if i < 3 else torch.float32).requires_grad_()
                  for i, a in enumerate(arrays))
    o = mx.compile(m)(q, k, v, g, strategy="chunked")
    assert o.dtype == dtype
    assert names == ["chunk_gla_cumsum", "chunk_gla_states", "chunk_gla_output"]
    o.float().sum().backward()
    # scalar decays: dq and dk in one launch (chunk_gla_dqk), dv through the output kernel
    assert names[3:] == ["chunk_gla_cumsum", "chunk_gla_states", "chunk_gla_states",
                         "chunk_gla_dqk", "chunk_gla_output", "chunk_gla_rev_cumsum"]
    assert q.grad.dtype == dtype and g.grad.dtype == torch.float32


def test_mamba2_runs_the_core_kernels_only(launched_kernels):
    """mamba2's per-token pieces (v' = dt·x, g = dt·A, the D·x skip) are formed by the chunked
    core (on load / in its epilogues): fwd+bwd launch no pieces kernel, and the gradients match
    the reference."""
    names = launched_kernels
    m = MIXERS["mamba2"].mixer
    arrays, h0 = example_inputs(m, B=1, T=24, H=2, K=16, V=16, seed=1)
    r = check(m, mx.compile(m, config={"BT": 16}), arrays, dtype=torch.float16, strategy="chunked",
              initial_state=h0, poison=False)
    assert r.ok, r
    assert names and not any("pieces" in n for n in names), names
    assert "chunk_gla_dqk" in names


def test_mamba_value_is_not_rounded_before_the_core(monkeypatch):
    """mamba's v = dt·u (a per-token scalar computed by the pieces kernel) reaches the core in fp32,
    so with fp16 inputs the recurrent strategy's output is as close to float64 (of the rounded
    inputs) as the whole computation in fp32 rounded to fp16 - mamba_ssm's selective_scan_ref
    convention. Rounding v to fp16 first made it 1.3x that error here."""
    from mixir.lowering.gated_linear import ops
    from mixir.reference.interpreter import run_reference
    seen = []
    orig = ops.gla_fwd

    def spy(q, k, v, *a, **kw):
        seen.append((q.dtype, v.dtype))
        return orig(q, k, v, *a, **kw)

    monkeypatch.setattr(ops, "gla_fwd", spy)
    e = MIXERS["mamba_z_softplus"]
    arrays = e.make_inputs(np.random.default_rng(1), 1, 64, 8, 16, 1)
    xs = [torch.tensor(a, dtype=torch.float16) for a in arrays]
    ref = run_reference(e.mixer, [x.double().numpy() for x in xs])
    ref = np.asarray(ref[0] if isinstance(ref, tuple) else ref)
    fn = mx.compile(e.mixer, strategy="recurrent")
    o16 = fn(*xs).double().numpy()
    o32 = fn(*[x.float() for x in xs]).half().double().numpy()
    assert seen[0] == (torch.float16, torch.float32) and seen[1] == (torch.float32, torch.float32)

    def err(o):
        return np.sqrt(((o - ref) ** 2).mean() / (ref ** 2).mean())
    assert err(o16) <= 1.05 * err(o32) and err(o32) < 5e-4, (err(o16), err(o32))


def test_vector_states_default_to_the_recurrent_strategy(launched_kernels):
    """Without a strategy, a state with a head size of 1 (Mamba-1's [N] per channel, HGRN's [D])
    runs the recurrent kernel at any length (chunked dot tiles would be padding); a matrix state
    runs chunked above RECURRENT_MAX_T."""
    names = launched_kernels
    for name, K, V, want in [("mamba", 16, 1, "recurrent_gla_fwd"), ("hgrn", 1, 16, "recurrent_gla_fwd"),
                             ("simple_gla", 16, 16, "chunk_gla_output")]:
        e = MIXERS[name]
        arrays, h0 = example_inputs(e.mixer, B=1, T=40, H=2, K=K, V=V, seed=2)
        names.clear()
        mx.compile(e.mixer)(*[torch.tensor(a, dtype=torch.float32) for a in arrays])
        assert want in names and not any(("chunk" if want.startswith("rec") else "recurrent") in n
                                          for n in names), (name, names)
