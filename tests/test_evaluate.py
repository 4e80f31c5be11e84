"""One evaluator of the IR and one forward-mode derivative.

``reference/evaluate.OPS`` is the meaning of every op; the reference's ``evaluate`` (values
``lead + dims``), the LTI parameter trees (per head, ``lowering/lti/params.py``) and the attention
masks (over index tensors, ``reference/attention.evaluate_mask``) only lay values out and
dispatch through it: patching one entry changes all three, and on the same operands the three
agree (float64). ``dsl/grad.tangent`` is the one forward mode: a score modification's ``dnode``
is checked against torch autograd of the evaluated score mod, for every op masks have.
"""
import numpy as np
import pytest
import torch

import mixir.attention as A
from mixir.dsl import ir
from mixir.dsl.grad import NotPointwise, tangent
from mixir.dsl.mask import SCORE_NAME, Expr
from mixir.errors import DeclarationError
from mixir.lowering.lti.params import eval_param_trees
from mixir.reference.attention import evaluate_mask
from mixir.reference.evaluate import OPS, NumpyBackend, evaluate

H, N = 2, 3
X = ir.leaf("param", "x", ("N",))
Y = ir.leaf("param", "y", ())
C = ir.leaf("param", "c", ("N",))


def _trees():
    """One tree per op of the IR over the parameters x [N], y [] (y broadcast over N)."""
    out = {op: ir.Node(op, ("N",), (X,)) for op in ir.UNARY}
    out.update({op: ir.Node(op, ("N",), (X, Y)) for op in ir.BINARY + ir.COMPARE})
    out["where"] = ir.Node("where", ("N",), (C, X, Y))
    out["sum"] = ir.Node("sum", (), (X,), ("N",))
    out["amax"] = ir.Node("amax", (), (X,), ("N",))
    return out


def _params(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 2.0, (H, N))
    y = rng.uniform(0.2, 2.0, (H,))
    c = (rng.uniform(size=(H, N)) > 0.5).astype(np.float64)
    x[0, 0] = y[0]          # a tie for the comparisons, max and min
    return x, y, c


def _three_ways(trees):
    """(reference NumPy, LTI per head torch, mask torch) values of each tree, as [H, N] / [H]."""
    x, y, c = _params()
    env = {X: x, Y: y, C: c}
    ref = [np.broadcast_to(v, (H,) + (N,) * len(t.dims))
           for v, t in zip(evaluate(list(trees), env, NumpyBackend(), 1, {"N": N}), trees)]
    tenv = {k: torch.tensor(v) for k, v in env.items()}
    lti = eval_param_trees(list(trees), tenv, H, {"N": N}, torch.float64, "cpu")
    # masks: x, y, c are index-free inputs; heads and N along two broadcast axes
    menv = {"x": torch.tensor(x), "y": torch.tensor(y)[:, None], "c": torch.tensor(c) != 0}
    sub = {X: ir.leaf("input", "x"), Y: ir.leaf("input", "y"), C: ir.leaf("input", "c")}
    mask = []
    for t in trees:
        if t.op in ("sum", "amax"):
            mask.append(None)                      # masks have no reductions
            continue
        v = evaluate_mask(ir.substitute(t, sub), menv, {})
        mask.append(v.to(torch.float64).expand(H, N))
    return ref, lti, mask


def test_reference_lti_and_masks_agree_on_every_op():
    trees = _trees()
    ref, lti, mask = _three_ways(list(trees.values()))
    for op, r, lv, mv in zip(trees, ref, lti, mask):
        np.testing.assert_allclose(lv.numpy(), r, rtol=1e-12, atol=1e-14, err_msg=op)
        if mv is not None:
            np.testing.assert_allclose(mv.numpy(), r, rtol=1e-12, atol=1e-14, err_msg=op)


@pytest.mark.parametrize("op", ["tanh", "max", "lt", "where"])
def test_every_layout_dispatches_through_the_one_table(monkeypatch, op):
    """Patching ``OPS[op]`` changes the reference, the LTI parameters and the masks alike."""
    tree = _trees()[op]
    before = _three_ways([tree])
    monkeypatch.setitem(OPS, op, lambda xp, *a: a[-1] * 0 + 7.0)
    after = _three_ways([tree])
    for way, (b, a) in enumerate(zip(before, after)):
        assert np.all(np.asarray(a[0]) == 7.0), (op, way)
        assert not np.all(np.asarray(b[0]) == 7.0), (op, way)


def test_mask_types():
    """Integer arithmetic stays int64, float ops give float64, predicates bool; loads clamp."""
    q = torch.arange(6)[:, None]
    kv = torch.arange(6)[None, :]
    env = {"b": 0, "h": 1, "q": q, "kv": kv}
    i = Expr(ir.leaf("input", "q"))
    j = Expr(ir.leaf("input", "kv"))
    assert evaluate_mask(((i - j) // 4 + i % 3).node, env, {}).dtype == torch.int64
    assert evaluate_mask((i / 2).node, env, {}).dtype == torch.float64
    assert evaluate_mask(((i < j) & ~(i == 2)).node, env, {}).dtype == torch.bool
    doc = A.Data("doc")
    got = evaluate_mask(doc[i + 10].node, env, {"doc": torch.tensor([5, 6, 7])})
    assert got.tolist() == [[7]] * 6
    assert evaluate_mask(A.sin(i).node, env, {}).dtype == torch.float64      # of an integer index
    assert torch.equal(evaluate_mask(A.cos(i - j).node, env, {}), torch.cos((q - kv).double()))
    with pytest.raises(DeclarationError, match="not supported in attention masks"):
        evaluate_mask(ir.Node("sum", (), (i.node,), ("N",)), env, {})


# ------------------------------------------------------------------------- forward-mode derivative

def _score_mods():
    rel = A.Data("rel")
    return {
        "alibi": lambda s, q, kv: s + rel[kv] * (kv - q),
        "softcap": lambda s, q, kv: 16.0 * A.tanh(s / 16.0),
        "sin_cos": lambda s, q, kv: A.sin(s) * A.cos(0.3 * (q - kv)) + A.cos(s / 2.0) + A.sin(q),
        "silu_exp": lambda s, q, kv: s * A.sigmoid(s) + A.exp(-abs(s)) + A.log(1.0 + s * s),
        "sqrt_div": lambda s, q, kv: A.sqrt(s * s + 1.0) / (s - 10.0),
        "max_min_where": lambda s, q, kv: A.maximum(s, 0.1) - A.minimum(s, -0.1)
        + A.where(s > 0, s, 2.0 * s),
        "pow": lambda s, q, kv: (s * s + 1.0) ** 1.5 + (kv + 2) ** s + (s * s + 1.0) ** (s / 4.0),
        "mod_floordiv": lambda s, q, kv: s % 0.75 + s // 0.25 + (q - kv) % 3 * s,
        "unary_ir": lambda s, q, kv: Expr(ir.unary("rsqrt", (s * s + 1.0).node))
        + Expr(ir.unary("softplus", s.node)) + Expr(ir.unary("logsigmoid", s.node))
        + Expr(ir.unary("recip", (s + 20.0).node)),
    }


@pytest.mark.parametrize("name", list(_score_mods()))
def test_score_mod_derivative_matches_autograd(name):
    fn = _score_mods()[name]
    sm = A.score_mod(lambda score, b, h, q, kv, rel: fn(score, q, kv))
    g = torch.Generator().manual_seed(0)
    score = (3 * torch.randn(2, 7, 7, generator=g, dtype=torch.float64)).requires_grad_()
    env = {SCORE_NAME: score, "b": 0, "h": torch.arange(2)[:, None, None],
           "q": torch.arange(7)[None, :, None], "kv": torch.arange(7)[None, None, :]}
    data = {"rel": torch.linspace(-1, 1, 7, dtype=torch.float64)}
    (want,) = torch.autograd.grad(evaluate_mask(sm.node, env, data).sum(), score)
    got = evaluate_mask(sm.dnode, env, data).to(torch.float64).expand_as(score)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_tangent_is_pointwise_only():
    """``tangent`` differentiates through a variable exponent; a sum over ``wrt``'s dims raises."""
    S = ir.leaf("state", "S", ("K",))
    a = ir.leaf("input", "a", ("K",))
    n = ir.binary("pow", a, S)
    assert tangent(n, S) == ir.binary("mul", n, ir.unary("log", a))
    with pytest.raises(NotPointwise):
        tangent(ir.reduce("sum", ir.binary("mul", S, a), ("K",)), S)
