"""The testing toolkit tests itself: a correct fake kernel passes, deliberately wrong ones fail.

The fake "compiled" mixers are the reference run by torch in float32 on the rounded inputs (so a
correct one behaves like an honest fp32-accumulating kernel), then broken in one way each.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixir as mx
import mixir.testing as mt
from mixir import In, State
from mixir.reference import run_reference
from mixir.testing import Shape


@mx.mixer
def gla(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], S: State["K", "V"]):
    S = mx.exp(gk) * S + mx.outer(k, v)
    return q @ S, S


GATES = {"gk": (-5.0, 0.0)}
TINY = mt.shapes(gla, batch=(1, 2), seqlen=(1, 9), heads=(1, 2), dim=(2, 4), special_seqlens=(1, 7),
                 odd_dims=(3,))


def fake(mixer=gla, *, pre=None, post=None, fp32_state=True):
    """A stand-in for ``mixir.compile(mixer)``: the reference in float32. ``pre`` rewrites the
    float32 inputs, ``post(o, final)`` rewrites the results."""
    def compiled(*xs, initial_state=None, output_final_state=False, cu_seqlens=None, strategy=None,
                 **scalars):
        dt = xs[0].dtype
        x32 = [x.float() for x in xs]
        if pre is not None:
            x32 = pre(x32)
        o, fin = run_reference(mixer, x32, initial_state=initial_state, output_final_state=True,
                               cu_seqlens=cu_seqlens, backend="torch", **scalars)
        o = o.to(dt)
        sdt = torch.float32 if fp32_state else dt
        fin = tuple(f.to(sdt) for f in fin) if isinstance(fin, tuple) else fin.to(sdt)
        if post is not None:
            o, fin = post(o, fin)
        return (o, fin) if output_final_state else o
    compiled.strategies = ("reference",)
    return compiled


def case(dtype=torch.float32, *, T=11, B=1, cu=None, h0=True, extreme=False, seed=0):
    return mt.make_case(gla, Shape(B, T, 2, {"K": 4, "V": 3}), dtype=dtype, seed=seed,
                        ranges=GATES, extreme=extreme, initial_state=h0, cu_seqlens=cu)


# ---------------------------------------------------------------------------- tolerances

def test_rel_rms_error():
    e = torch.randn(100, dtype=torch.float64)
    assert mt.rel_rms_error(e, e, 1e-3) == 0.0
    assert mt.rel_rms_error(e * 1.01, e, 1e-3) == pytest.approx(0.01, rel=1e-9)
    z = torch.zeros(10)
    assert mt.rel_rms_error(z + 1e-6, z, 1e-2) == pytest.approx(1e-4)       # the floor
    bad = e.clone()
    bad[3] = math.nan
    assert math.isnan(mt.rel_rms_error(bad, e, 1e-3))
    assert not mt.rel_rms_error(bad, e, 1e-3) <= 1.0
    bad[3] = math.inf
    assert math.isnan(mt.rel_rms_error(bad, e, 1e-3))
    assert mt.rel_rms_error(e[:5], e, 1e-3) == math.inf
    assert mt.rel_rms_error(np.zeros((0, 3)), np.zeros((0, 3)), 1.0) == 0.0


def test_bounds_are_ordered():
    f32, bf16, f16 = (mt.BOUNDS[d] for d in (torch.float32, torch.bfloat16, torch.float16))
    for b in (f32, bf16, f16):
        assert b.grad >= b.output and b.state <= b.grad and b.floor > 0
    assert f32.output < f16.output < bf16.output
    assert mt.bounds_for("bf16") is bf16 and mt.bounds_for(torch.float16) is f16
    with pytest.raises(KeyError):
        mt.bounds_for(torch.int32)


# ---------------------------------------------------------------------------- a correct fake passes

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["batched", "varlen"])
def test_correct_fake_passes(dtype, layout):
    c = case(dtype, B=2, extreme=True) if layout == "batched" else case(dtype, cu=[0, 4, 4, 11], extreme=True)
    report = mt.assert_close(mt.check_case(gla, fake(), c))
    assert {q.name for q in report.quantities} == {"o", "S", "dq", "dk", "dv", "dgk", "dS0"}
    assert "dgk" in report.table() and report.ok
    if layout == "varlen":
        mt.assert_close(mt.check_cu_seqlens(gla, fake(), c.arrays, c.cu_seqlens, dtype=dtype,
                                            initial_state=c.initial_state))


def test_without_final_state_or_grads():
    c = case(h0=False)
    r = mt.check(gla, fake(), c.arrays, dtype=torch.float32, output_final_state=False, grads=False)
    assert r.ok and [q.name for q in r.quantities] == ["o"]


@settings(max_examples=8)
@given(c=mt.cases(gla, shape=TINY, ranges=GATES))
def test_hypothesis_cases_pass_on_correct_fake(c):
    mt.assert_close(mt.check_case(gla, fake(), c))


# ---------------------------------------------------------------------------- wrong fakes fail

def test_scaled_output_fails():
    for dtype in (torch.float32, torch.float16):
        r = mt.check_case(gla, fake(post=lambda o, s: (o * 1.01, s)), case(dtype))
        assert not r.ok and [q.name for q in r.failures()][0] == "o"
        with pytest.raises(AssertionError, match=r"o \(output\): error \S+ > bound"):
            mt.assert_close(r)


def test_wrong_final_state_fails():
    r = mt.check_case(gla, fake(post=lambda o, s: (o, s * 1.001)), case())
    assert not r.ok and "S" in {q.name for q in r.failures()}
    assert r["o"].ok


def test_unwritten_row_is_caught_by_poisoned_allocation():
    def post(o, s):
        buf = torch.empty(o.shape, dtype=o.dtype)          # a fresh output buffer ...
        buf[:, :-1] = o[:, :-1]                            # ... whose last token is never written
        return buf, s
    originals = (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty)
    r = mt.check_case(gla, fake(post=post), case(), grads=False)
    assert not r.ok and math.isnan(r["o"].error) and "nan" in r["o"].note
    assert (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty) == originals
    assert "new_empty" not in torch.Tensor.__dict__


def test_nan_anywhere_fails():
    def post(o, s):
        o = o.clone()
        o[0, 3, 1, 2] = math.nan
        return o, s
    r = mt.check_case(gla, fake(post=post), case(torch.bfloat16))
    with pytest.raises(AssertionError, match="non-finite: 1 nan"):
        mt.assert_close(r)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.05


def test_wrong_gradient_fails_and_names_the_input():
    wrong = fake(pre=lambda xs: [xs[0], _ScaleGrad.apply(xs[1]), xs[2], xs[3]])
    r = mt.check_case(gla, wrong, case())
    assert [q.name for q in r.failures()] == ["dk"]
    with pytest.raises(AssertionError, match=r"dk \(grad\)"):
        mt.assert_close(r)


def test_non_differentiable_output_is_a_problem():
    r = mt.check_case(gla, fake(post=lambda o, s: (o.detach(), s.detach())), case())
    assert not r.ok and any("not differentiable" in p for p in r.problems)


def test_contract_dtype_problems():
    r = mt.check_case(gla, fake(fp32_state=False), case(torch.bfloat16))
    assert any("expected float32" in p for p in r.problems)
    r = mt.check_case(gla, fake(post=lambda o, s: (o.float(), s)), case(torch.bfloat16))
    assert any("expected the input dtype" in p for p in r.problems)


def test_ignoring_cu_seqlens_fails():
    def ignore(f):
        def compiled(*xs, initial_state=None, output_final_state=False, cu_seqlens=None, **kw):
            if cu_seqlens is None:
                return f(*xs, initial_state=initial_state, output_final_state=output_final_state, **kw)
            h = None if initial_state is None else initial_state[:1]
            o, s = f(*xs, initial_state=h, output_final_state=True, **kw)   # one long sequence
            s = s.expand(len(cu_seqlens) - 1, *s.shape[1:])
            return (o, s) if output_final_state else o
        return compiled
    c = case(cu=[0, 4, 4, 11])
    assert not mt.check_case(gla, ignore(fake()), c).ok
    r = mt.check_cu_seqlens(gla, ignore(fake()), c.arrays, c.cu_seqlens, dtype=torch.float32,
                            initial_state=c.initial_state)
    assert not r.ok and {"o", "S"} <= {q.name for q in r.failures()}


def test_hypothesis_finds_a_gate_of_one_bug_and_prints_a_repro():
    """A kernel mishandling a log-decay of exactly 0 passes ordinary inputs, and is found only
    because ``extreme`` mixes the edge values in; the failure carries the reproducing call."""
    buggy = fake(pre=lambda xs: xs[:3] + [torch.where(xs[3] == 0, -0.05, xs[3])])
    assert mt.check_case(gla, buggy, case(extreme=False)).ok

    @settings(max_examples=60, derandomize=True, database=None, print_blob=False)
    @given(c=mt.cases(gla, shape=TINY, dtype=st.just(torch.float32), ranges=GATES, varlen=False))
    def inner(c):
        mt.assert_close(mt.check_case(gla, buggy, c, grads=False))

    with pytest.raises(AssertionError) as info:
        inner()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "mixir.testing.make_case(gla" in notes
    repro = notes[notes.index("mixir.testing.make_case(gla"):].splitlines()[0]
    again = eval(repro, {"mixir": mx, "gla": gla, "Shape": Shape, "torch": torch})
    assert not mt.check_case(gla, buggy, again, grads=False).ok


# ---------------------------------------------------------------------------- strategies

@settings(max_examples=40)
@given(data=st.data())
def test_cu_seqlens_strategy(data):
    T = data.draw(st.integers(1, 70))
    cu = data.draw(mt.cu_seqlens(T))
    offs = cu.tolist()
    assert offs[0] == 0 and offs[-1] == T and offs == sorted(offs) and cu.dtype == torch.int32


def test_cu_seqlens_strategy_draws_empty_sequences():
    seen = set()

    @settings(max_examples=60, derandomize=True, database=None)
    @given(cu=mt.cu_seqlens(20))
    def collect(cu):
        offs = cu.tolist()
        if any(a == b for a, b in zip(offs, offs[1:])):
            seen.add("empty")
            if offs[1] != 0 and offs[-2] != offs[-1]:
                seen.add("inner")
    collect()
    assert seen == {"empty", "inner"}


@settings(max_examples=30)
@given(shape=mt.shapes(gla, seqlen=(1, 70), dim=(16, 128)))
def test_shapes_strategy(shape):
    assert 1 <= shape.B <= 2 and 1 <= shape.T <= 70 and 1 <= shape.H <= 3
    assert set(shape.sizes) == {"K", "V"}
    assert all(16 <= n <= 128 or n in (7, 33) for n in shape.sizes.values())


def test_make_inputs_is_reproducible_and_respects_ranges():
    shape = Shape(2, 9, 2, {"K": 5, "V": 3})
    a = mt.make_inputs(gla, shape, 7, ranges=GATES, extreme=True)
    b = mt.make_inputs(gla, shape, 7, ranges=GATES, extreme=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.shape for x in a] == [(2, 9, 2, 5), (2, 9, 2, 5), (2, 9, 2, 3), (2, 9, 2, 5)]
    values = set()
    for seed in range(40):
        g = mt.make_inputs(gla, shape, seed, ranges=GATES, extreme=True)[3]
        assert (g <= 0).all()
        values |= {v for v in (0.0, -5.0, mt.DEEP_LOG_DECAY) if (g == v).any()}
        ref = mx.reference(gla)(*mt.make_inputs(gla, shape, seed, ranges=GATES, extreme=True))
        assert np.isfinite(ref).all()
    assert values == {0.0, -5.0, mt.DEEP_LOG_DECAY}
    with pytest.raises(ValueError, match="no tensor argument"):
        mt.make_inputs(gla, shape, 0, ranges={"g": (-1, 0)})
    unit = mt.make_inputs(gla, shape, 0, ranges={"k": "unit"})[1]
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0)


@settings(max_examples=5)
@given(data=st.data())
def test_mixer_inputs_strategy(data):
    shape = data.draw(TINY)
    xs = data.draw(mt.mixer_inputs(gla, shape, torch.bfloat16, ranges=GATES))
    assert [tuple(x.shape) for x in xs] == [shape.of(s) for s in gla.inputs]
    assert all(x.dtype == torch.bfloat16 for x in xs) and (xs[3] <= 0).all()


@mx.mixer
def normed(q: In["K"], k: In["K"], v: In["V"], a: mx.Param["K"], S: State["K", "V"], n: State["K"],
           eps: mx.Scalar[0.5]):
    S = mx.exp(a) * S + mx.outer(k, v)
    n = mx.exp(a) * n + k
    return (q @ S) / (mx.abs(q @ n) + eps), S, n


def test_params_scalars_and_several_states():
    c = mt.make_case(normed, Shape(1, 9, 2, {"K": 3, "V": 4}), dtype=torch.float16, seed=5,
                     ranges={"a": (-3.0, 0.0)}, extreme=True, initial_state=True, cu_seqlens=[0, 0, 6, 9])
    assert isinstance(c.initial_state, tuple) and [tuple(s.shape) for s in c.initial_state] == [
        (3, 2, 3, 4), (3, 2, 3)]
    f = fake(normed)
    r = mt.assert_close(mt.check_case(normed, f, c, scalars={"eps": 0.25}))
    assert {"o", "S", "n", "da", "dS0", "dn0"} <= {q.name for q in r.quantities}
    mt.assert_close(mt.check_cu_seqlens(normed, f, c.arrays, c.cu_seqlens, dtype=torch.float16,
                                        initial_state=c.initial_state, scalars={"eps": 0.25}))
    wrong = fake(normed, post=lambda o, s: (o, (s[0], s[1] * 0.99)))
    r = mt.check_case(normed, wrong, c)
    assert not r.ok and r["o"].ok and r["S"].ok and not r["n"].ok
