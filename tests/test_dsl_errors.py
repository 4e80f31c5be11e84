"""The DSL's declaration errors (issue: hardening, section 6; docs/dsl.md).

- dim names that would collide with generated or implicit names fail at declaration, with the
  reason (they used to pass and fail deep inside code generation);
- NumPy / math / torch functions, ``float``, ``range``, indexing and a step calling itself raise a
  ``DeclarationError`` saying what to write instead, never a bare ``TypeError``;
- a constant factor of the state (``0.9 * S``) is a scalar decay, as ``Scalar[0.9]`` is.
"""
import math

import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Param, Scalar, Scale, State
from mixir.errors import DeclarationError, MixirError


def _declare(src: str, **extra):
    ns = {"In": In, "Param": Param, "State": State, "Scale": Scale, "Scalar": Scalar, "mx": mx,
          "np": np, "math": math, "torch": torch, **extra}
    exec(src, ns)               # noqa: S102 - test declarations
    return mx.mixer(ns["m"])


def _gla_like(dim: str, body: str = "q @ S") -> str:
    return (f"def m(q: In[{dim!r}], k: In[{dim!r}], v: In['V'], S: State[{dim!r}, 'V']):\n"
            f"    S = S + mx.outer(k, v)\n    return {body}, S\n")


@pytest.mark.parametrize("dim, why", [
    ("rows", "reserved"), ("__row__", "underscore"), ("_k", "underscore"), ("", "not an ASCII Python identifier"),
    ("B", "implicit batch"), ("T", "implicit time"), ("H", "implicit head"), ("h", "reserved"),
    ("b", "reserved"), ("t", "reserved"), ("1K", "identifier"), ("K V", "identifier"),
    ("class", "keyword"), ("Kß", "ASCII"),
])
def test_bad_dim_names_fail_at_declaration(dim, why):
    with pytest.raises(DeclarationError, match=why):
        _declare(_gla_like(dim))


def test_bad_dim_names_in_scale_state_and_rename():
    with pytest.raises(DeclarationError, match="reserved"):
        _declare("def m(q: In['K'], s: Scale['T'], S: State['K']):\n    return q * S, S\n")
    with pytest.raises(DeclarationError, match="underscore"):
        _declare("def m(q: In['K'], S: State['__row__']):\n    return q, S\n")
    with pytest.raises(DeclarationError, match=r"mixir.rename.*reserved"):
        _declare("def m(q: In['K'], S: State['K']):\n    return mx.rename(q, K='rows'), S\n")
    with pytest.raises(DeclarationError, match=r"takes dim names \(strings\)"):
        _declare("def m(q: In[('K', 3)], S: State['K']):\n    return q, S\n")
    # rename's operand is positional-only: a dim may be called x
    m = _declare("def m(q: In['x'], S: State['x']):\n    S = S + q\n    return mx.rename(S, x='y'), S\n")
    assert m.output.dims == ("y",)


@pytest.mark.parametrize("expr, advice", [
    ("np.exp(q)", r"numpy.exp cannot run on a traced mixir value: use mixir.exp"),
    ("np.maximum(q, 0.0)", r"use mixir.maximum"),
    ("np.arctan(q)", r"mixir has no such op"),
    ("np.ones(3) * q", r"NumPy array"),
    ("math.exp(q)", r"math module .* use mixir's elementwise ops"),
    ("torch.sigmoid(q)", r"torch.sigmoid cannot run on a traced mixir value: use mixir.sigmoid"),
    ("torch.ones(1) * q", r"must be a traced mixir value or a real number, got Tensor"),
    ("float(q)", r"not a Python number"),
    ("int(q)", r"not a Python number"),
    ("range(q)", r"cannot size a range"),
    ("[1, 2][q]", r"cannot size a range\(\), index a sequence"),
    ("q[0]", r"named dims \('K',\), not positions.*mixir.sum"),
    ("list(q)", r"cannot be iterated"),
    ("len(q)", r"no len"),
    ("q()", r"not callable"),
    ("q + 'a'", r"must be a traced mixir value or a real number"),
    ("undefined_name", r"raised NameError while being traced"),
])
def test_python_outside_the_dsl_is_a_declaration_error(expr, advice):
    src = f"def m(q: In['K'], S: State['K']):\n    x = {expr}\n    return q * S, S\n"
    with pytest.raises(DeclarationError, match=advice) as e:
        _declare(src)
    assert isinstance(e.value, MixirError) and "mixer m" in str(e.value)


def test_a_step_calling_itself():
    def m(q: In["K"], S: State["K"]):
        return m(q, S)
    with pytest.raises(DeclarationError, match="the step function calls itself"):
        mx.mixer(m)


def test_numpy_scalars_are_numbers():
    m = _declare("def m(q: In['K'], S: State['K']):\n    S = np.float64(0.5) * S + q * np.float32(2)\n"
                 "    return S, S\n")
    x = np.random.default_rng(0).standard_normal((1, 3, 1, 2))
    np.testing.assert_allclose(mx.reference(m)(x)[0, -1, 0], 2 * (0.25 * x[0, 0, 0] + 0.5 * x[0, 1, 0] + x[0, 2, 0]))


_CONST = ("def m(q: In['K'], k: In['K'], v: In['V'], S: State['K', 'V']):\n"
          "    S = {decay} + mx.outer(k, v)\n    return q @ S, S\n")


@pytest.mark.parametrize("decay", ["0.9 * S", "S * 0.9", "S / 2", "(1 - 0.1) * S", "S - 0.1 * S"])
def test_constant_decay_is_a_scalar_decay(decay):
    """``0.9 * S`` was refused ("varies along both state dims"): its transition is the scalar 0.9."""
    from mixir.lowering.family import classify
    fam, plan = classify(_declare(_CONST.format(decay=decay)))
    assert fam.name == "gated_linear" and plan.transition == "scalar", plan.transition


@pytest.mark.interp
def test_constant_decay_matches_scalar_and_reference():
    m = _declare(_CONST.format(decay="0.9 * S"))
    ms = _declare("def m(q: In['K'], k: In['K'], v: In['V'], a: Scalar[0.9], S: State['K', 'V']):\n"
                  "    S = a * S + mx.outer(k, v)\n    return q @ S, S\n")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 5, 1, 4, generator=g) for _ in range(3)]
    ref = mx.reference(m)(*(x.double().numpy() for x in xs))
    for strategy in ("recurrent", "chunked"):
        o = mx.compile(m)(*xs, strategy=strategy)
        np.testing.assert_allclose(o.double().numpy(), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(o, mx.compile(ms)(*xs, strategy=strategy))
