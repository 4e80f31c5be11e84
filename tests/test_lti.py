"""The LTI family (S4D, S4, LSSL, LMU): analysis and routing, and both strategies against the
float64 reference (outputs, final states, gradients). The kernels and the ahead-of-time build:
tests/test_lti_kernels.py; the library wrappers and bad input: tests/test_lti_wrappers.py.
"""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Param, State
from mixir.errors import UnsupportedMixerError
from mixir.library import MIXERS, lti
from mixir.lowering.family import classify
from mixir.testing import assert_close, check, check_cu_seqlens

from lanes import dtype_grid
from lti_cases import ENTRIES, lti_inputs as _inputs


# ---- analysis and routing ------------------------------------------------------------------------

@mx.mixer
def ema(u: In[()], a: Param["N"], b: Param["N"], c: Param["N"], x: State["N"]):
    """A real diagonal LTI system: x_t = sigmoid(a) x_{t-1} + b u_t, y_t = c·x_t."""
    x = mx.sigmoid(a) * x + b * u
    return mx.sum(c * x, "N"), x


@mx.mixer
def gated_ema(u: In[()], f: In[()], a: Param["N"], x: State["N"]):
    """Input-dependent decay: not LTI."""
    x = mx.sigmoid(f) * a * x + u
    return mx.sum(x, "N"), x


@mx.mixer
def squared(u: In[()], a: Param["N"], x: State["N"]):
    x = a * x * x + u
    return mx.sum(x, "N"), x


def test_library_lti_mixers_route_to_lti_and_others_do_not():
    for name, e in ENTRIES.items():
        fam, plan = classify(e.mixer)
        assert fam.name == "lti" and plan.family == "lti", name
        assert plan.strategies == ("conv", "recurrent")
    assert classify(lti.s4d_mixer)[1].rank == 0 and classify(lti.s4_mixer)[1].rank == 1
    assert "Cauchy" in classify(lti.s4_mixer)[1].transition
    for name, e in MIXERS.items():
        assert (classify(e.mixer)[0].name == "lti") == (e.family == "lti"), name
    from mixir.library import RNN_MIXERS
    for name, m in RNN_MIXERS.items():
        m = getattr(m, "mixer", m)
        with pytest.raises(UnsupportedMixerError):
            from mixir.lowering.lti.analysis import analyse
            analyse(m)


def test_analysis_refuses_with_reasons():
    from mixir.lowering.lti.analysis import analyse
    with pytest.raises(UnsupportedMixerError, match="exactly one per-token input"):
        analyse(gated_ema)
    with pytest.raises(UnsupportedMixerError, match="product of two state-dependent"):
        analyse(squared)
    plan = analyse(ema)
    assert plan.x_im is None and plan.rank == 0 and "real modes" in plan.transition


@mx.mixer
def two_reads(u: In[()], a: Param["N"], p: Param["N"], q: Param["N"], w: Param[()], x: State["N"]):
    """A rank-one transition written as two functionals with proportional columns:
    x ← a x − p (Σ q x) − (w p) (Σ x) + u: one term, U = p, F = −Σ (q + w) x."""
    x = 0.5 * mx.sigmoid(a) * x - 0.1 * p * mx.sum(q * x, "N") - 0.1 * (w * p) * mx.sum(x, "N") + u
    return mx.sum(x, "N"), x


@mx.mixer
def two_directions(u: In[()], a: Param["N"], p: Param["N"], q: Param["N"], x: State["N"]):
    """A genuinely rank-two transition: x ← a x − p (Σ q x) − q (Σ p x) + u."""
    x = 0.5 * mx.sigmoid(a) * x - 0.1 * p * mx.sum(q * x, "N") - 0.1 * q * mx.sum(p * x, "N") + u
    return mx.sum(x, "N"), x


def test_rank_counts_independent_columns_only():
    """Functionals whose update columns are real multiples of each other share one term (S4's
    Woodbury solve reads four functionals, all along d·P: rank 1); independent columns do not."""
    from mixir.lowering.lti.analysis import analyse
    assert analyse(lti.s4_mixer).rank == 1
    assert analyse(two_reads).rank == 1
    assert len(analyse(two_reads).lowrank[0].parts) == 2
    assert analyse(two_directions).rank == 2


def test_describe_names_shared_subterms_once():
    """``mixir show s4``: the parameter trees repeat d = 1/(2/Δ − Λ) dozens of times; each shared
    subterm is printed once as %k (it was 30 000+ characters of nested parentheses)."""
    from mixir.dsl import ir
    a = ir.binary("add", ir.leaf("param", "x"), ir.leaf("param", "y"))
    big = ir.binary("mul", ir.unary("exp", a), ir.unary("exp", a))
    lines = ir.render_shared({"r": ir.binary("add", big, big)}, min_len=5)
    assert lines == ["%1 = exp((x + y))", "%2 = (%1 * %1)", "r = (%2 + %2)"]
    text = classify(lti.s4_mixer)[1].describe()
    assert "%1 = " in text and len(text) < 4000 and "U0_re = " in text


# the fast lane: two_reads recurrent and two_directions conv; the slow lane the other two
@pytest.mark.parametrize("mixer, strategy", [
    pytest.param(m, s, id=f"{s}-{m.name}",
                 marks=() if (m is two_reads) == (s == "recurrent") else pytest.mark.slow)
    for m in (two_reads, two_directions) for s in ("conv", "recurrent")])
def test_merged_low_rank_terms_match_reference(mixer, strategy):
    rng = np.random.default_rng(3)
    B, T, H, N = 2, 20, 2, 6
    arrays = [rng.standard_normal((B, T, H)), rng.standard_normal((H, N)),
              0.5 * rng.standard_normal((H, N)), 0.5 * rng.standard_normal((H, N))]
    if mixer is two_reads:
        arrays.append(rng.standard_normal(H))
    h0 = rng.standard_normal((B, H, N))
    assert_close(check(mixer, mx.compile(mixer), arrays, dtype=torch.float32, strategy=strategy,
                       initial_state=h0))


# ---- both strategies against the reference -------------------------------------------------------

@pytest.mark.parametrize("name, strategy, dtype", dtype_grid(
    sorted(ENTRIES), ["conv", "recurrent"], [torch.float32, torch.bfloat16],
    {torch.float32: "fp32", torch.bfloat16: "bf16"}.get))
def test_library_mixer_matches_reference(name, strategy, dtype):
    m = ENTRIES[name].mixer
    arrays, h0 = _inputs(name, B=1)        # batches: test_merged_low_rank_terms_match_reference
    assert_close(check(m, mx.compile(m), arrays, dtype=dtype, strategy=strategy, initial_state=h0))


def test_parameter_trees_are_one_generated_launch_each_way(launched_kernels):
    """fp32: the parameter trees (discretisation, read-out weights) run as one generated kernel
    forward and one backward, not as a torch op per node; their gradients reach every parameter
    (the values and gradients against the reference: test_library_mixer_matches_reference)."""
    m = ENTRIES["s4d"].mixer
    arrays, _ = _inputs("s4d", B=1)
    xs = [torch.tensor(a, dtype=torch.float32).requires_grad_() for a in arrays]
    y = mx.compile(m)(*xs, strategy="conv")
    y.sum().backward()
    # the generated pair ("fwd", "bwd"), the Vandermonde kernel and its backward reduction
    assert launched_kernels == ["fwd", "lti_vandermonde_fwd", "lti_vandermonde_red", "bwd"]
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in xs)


@pytest.mark.parametrize("strategy", ["conv", "recurrent"])
def test_real_mode_user_mixer(strategy):
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((2, 21, 3)), rng.standard_normal((3, 5)),
              rng.standard_normal((3, 5)), rng.standard_normal((3, 5))]
    h0 = rng.standard_normal((2, 3, 5))
    for t in (1, 21):
        a = [arrays[0][:, :t]] + arrays[1:]
        assert_close(check(ema, mx.compile(ema), a, dtype=torch.float32, strategy=strategy,
                           initial_state=h0))


@pytest.mark.parametrize("name", ["s4d", pytest.param("s4", marks=pytest.mark.slow)])
def test_cu_seqlens(name):
    m = ENTRIES[name].mixer
    arrays, _ = _inputs(name, B=1, T=30, seed=2)
    rng = np.random.default_rng(3)
    h0 = ENTRIES[name].make_initial_state(rng, N=4, H=2, K=8, V=8)
    cu = torch.tensor([0, 7, 7, 22, 30])
    fn = mx.compile(m)
    if name == "s4d":   # (s4: one packed check only; the per-sequence loop is slow in the interpreter)
        assert_close(check_cu_seqlens(m, fn, arrays, cu, dtype=torch.float32, strategy="conv",
                                      initial_state=h0))
    assert_close(check(m, fn, arrays, dtype=torch.float32, strategy="conv", initial_state=h0, cu_seqlens=cu))
