"""Generated pointwise kernels (mixir.lowering.common.codegen / pointwise) and the symbolic VJP.

Every piece set is checked against the float64 torch evaluation of ``reference/evaluate.py``:
the forward values, and the gradients against torch autograd of that evaluation. Kernels run
through Triton's interpreter on CPU tensors (shapes are tiny); outputs are NaN-poisoned
(MIXIR_POISON) so an element a kernel forgets to write fails the comparison.
"""
import os

os.environ["MIXIR_POISON"] = "1"

import pytest
import torch

import mixir as mx
from mixir import In, State
from mixir.dsl import ir
from mixir.dsl.mixer import Param, Scale, trace
from mixir.dsl.vjp import vjp
from mixir.errors import MixirError
from mixir.lowering.common import codegen
from mixir.lowering.gated_linear.analysis import analyse
from mixir.lowering.common.launch import record_launches
from mixir.lowering.common.pieces import PiecesKernel
from mixir.reference.evaluate import TorchBackend, evaluate

HEAD = ir.Node("head", (), (), "head")
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXIR_CACHE_DIR", str(tmp_path / "mixir-cache"))


# ---------------------------------------------------------------------------------- mixers

@mx.mixer
def gla_ls(q: In["K"], k: In["K"], v: In["V"], gk: In["K"], scale: Scale["K"], S: State["K", "V"]):
    S = mx.exp(mx.logsigmoid(gk) / 16.0) * S + mx.outer(k, v)
    return (mx.l2norm(q, "K") * scale) @ S, S


def _mamba_step(u: In[()], delta: In[()], A: Param["N"], B: In["N"], C: In["N"], D: Param[()],
                z: In[()], delta_bias: Param[()], h: State["N"]):
    dt = mx.softplus(delta + delta_bias)
    h = mx.exp(dt * A) * h + (dt * u) * B
    return (C @ h + D * u) * mx.silu(z), h


mamba = trace(_mamba_step, "mamba_z_softplus")


@mx.mixer
def retnet(q: In["K"], k: In["K"], v: In["V"], scale: Scale["K"], S: State["K", "V"]):
    S = mx.exp(mx.log(1.0 - 2.0 ** (-5.0 - mx.head()))) * S + mx.outer(k, v)
    return (q * scale) @ S, S


@mx.mixer
def signed_gate(q: In["K"], k: In["K"], v: In["V"], a: In["V"], w: Param["V"], S: State["K", "V"]):
    gate = mx.where(a > 0.0, mx.tanh(a), a * w)
    S = S * gate + mx.outer(k, mx.maximum(v, -0.5))
    return q @ S, S


def form_of(m):
    plan = analyse(m)
    return getattr(plan, "main", plan)


def specs_of(m):
    return [(s.name, s.kind, s.dims) for s in m.inputs]


# --------------------------------------------------------------------------------- helpers

def make_arrays(specs, B, T, H, sizes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, kind, dims in specs:
        lead = (B, T, H) if kind == "input" else (H,)
        out.append(torch.randn(lead + tuple(sizes[d] for d in dims), generator=g).to(dtype))
    return out


def reference(pieces, specs, arrays, scalars, H, sizes):
    """float64 torch evaluation (evaluate.py) of the pieces; returns (values, leaves)."""
    env, leaves = {}, []
    for (name, kind, dims), a in zip(specs, arrays):
        x = a.detach().double().requires_grad_()
        leaves.append(x)
        env[ir.leaf(kind, name, dims)] = x if kind == "input" else x.reshape((1, 1) + tuple(x.shape))
    for name, value in scalars.items():
        env[ir.leaf("scalar", name)] = value
    env[HEAD] = torch.arange(H, dtype=torch.float64).reshape(1, 1, H)
    values = evaluate(list(pieces.values()), env, TorchBackend(), 3, sizes)
    return values, leaves


def check(name, pieces, specs, sizes, B=2, T=3, H=2, scalars=None, arrays=None, seed=0,
          prepare=None, rtol=RTOL, atol=ATOL):
    """Forward against evaluate.py and backward against torch autograd, both float64."""
    scalars = dict(scalars or {})
    pk = PiecesKernel(name, pieces, specs)
    arrays = arrays if arrays is not None else make_arrays(specs, B, T, H, sizes, seed)
    if prepare is not None:
        arrays = prepare(arrays)
    arrays = [a.detach().requires_grad_() for a in arrays]
    out = pk(arrays, scalars, B, T, H, sizes)
    ref, leaves = reference(pieces, specs, arrays, scalars, H, sizes)
    assert list(out) == list(pieces)
    g = torch.Generator().manual_seed(seed + 1)
    loss, loss_ref = 0.0, 0.0
    for (pname, node), r in zip(pieces.items(), ref):
        o = out[pname]
        shape = (B, T, H) + tuple(sizes[d] for d in node.dims)
        assert tuple(o.shape) == shape, (pname, o.shape, shape)
        assert o.dtype == torch.float32
        torch.testing.assert_close(o.double(), r.expand(shape), rtol=rtol, atol=atol,
                                   msg=lambda m: f"piece {pname}: {m}")
        ct = torch.randn(shape, generator=g)
        loss = loss + (o * ct).sum()
        loss_ref = loss_ref + (r * ct.double()).sum()
    if not loss_ref.requires_grad:
        return pk, out
    grads = torch.autograd.grad(loss, arrays, allow_unused=True)
    grads_ref = torch.autograd.grad(loss_ref, leaves, allow_unused=True)
    for (iname, _, _), a, gk, gr in zip(specs, arrays, grads, grads_ref):
        if gr is None:
            assert gk is None or not gk.abs().any(), iname
            continue
        assert gk is not None, f"no gradient for {iname}"
        assert gk.shape == a.shape and gk.dtype == a.dtype
        torch.testing.assert_close(gk.double(), gr, rtol=rtol, atol=atol * max(1.0, gr.abs().max().item()),
                                   msg=lambda m: f"gradient of {iname}: {m}")
    return pk, out


# ------------------------------------------------------------------------------ the kernels

def test_gla_logsigmoid_l2norm_scale_non_pow2():
    f = form_of(gla_ls)
    pieces = f.pieces()
    assert ir.render(pieces["gk"]) == "(logsigmoid(gk) / 16.0)"
    pk, out = check("gla_ls", pieces, specs_of(gla_ls), {"K": 7, "V": 5}, scalars={"scale": 0.37})
    # l2norm over the padded K = 7 (BD = 8): rows of q have norm `scale`
    norms = out["q"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.37), rtol=1e-4, atol=1e-5)
    assert set(pk.generated.passthrough) == {"k", "v"}      # inputs as they are: no kernel work
    assert set(pk.generated.const_pieces) == {"e", "d"}


def test_mamba_params_softplus_silu():
    f = form_of(mamba)
    pieces = f.pieces()
    assert ir.render(pieces["d"]) == "((D * u) * silu(z))"
    check("mamba", pieces, specs_of(mamba), {"N": 5}, B=2, T=2, H=3)


def test_retnet_head_decay():
    pieces = form_of(retnet).pieces()
    assert ir.render(pieces["g"]) == "log((1.0 - (2.0 ** (-5.0 - head))))"
    pk, out = check("retnet", pieces, specs_of(retnet), {"K": 4, "V": 4}, H=4, scalars={"scale": 0.5})
    want = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(4.0, dtype=torch.float64)))
    torch.testing.assert_close(out["g"][1, 2].double(), want, rtol=1e-6, atol=0)


def test_where_comparisons_sign_and_param():
    pieces = form_of(signed_gate).pieces()
    assert "gv_sign" in pieces
    check("signed_gate", pieces, specs_of(signed_gate), {"K": 3, "V": 6}, B=1, T=4, H=2)


def test_all_ops_reductions_and_broadcasts():
    x = ir.leaf("input", "x", ("K",))
    z = ir.leaf("input", "z", ("V",))
    u = ir.leaf("input", "u", ())
    A = ir.leaf("param", "A", ("K",))
    s = ir.leaf("scalar", "s")
    c, B_, U = ir.const, ir.binary, ir.unary
    pieces = {
        "amax": B_("mul", ir.reduce("amax", x, ("K",)), z),
        "amax_neg": ir.reduce("amax", B_("sub", c(-0.1), U("abs", x)), ("K",)),   # < 0: padding must not win
        "softmaxish": B_("div", U("exp", B_("sub", x, ir.reduce("amax", x, ("K",)))),
                         ir.reduce("sum", U("exp", B_("sub", x, ir.reduce("amax", x, ("K",)))), ("K",))),
        "bcast_sum": B_("add", B_("mul", u, ir.reduce("sum", B_("mul", u, c(2.0, ("K",))), ("K",))),
                        B_("min", A, U("exp", x))),
        "pows": B_("add", B_("pow", B_("add", U("abs", z), c(0.5)), u),
                   B_("add", B_("pow", z, c(3.0)), B_("pow", z, c(-2.0)))),
        "pow_int_tensor": B_("pow", z, ir.where(B_("gt", u, c(0.0)), c(2.0), c(3.0))),
        "pow_frac": B_("mul", B_("pow", B_("add", U("abs", x), c(1.0)), c(1.7)), B_("pow", c(0.5), u)),
        "misc": B_("add", U("sqrt", B_("add", U("abs", z), c(0.1))),
                   B_("add", U("recip", B_("add", U("abs", u), c(1.0))), U("rsqrt", B_("add", B_("mul", u, u), c(1.0))))),
        "logic": B_("mul", B_("or", B_("and", B_("lt", u, c(0.3)), B_("ge", z, c(-0.5))), B_("eq", z, z)), z),
        "selects": ir.where(B_("le", x, s), B_("max", x, A), U("tanh", B_("mul", x, s))),
        "sig": B_("mul", U("sigmoid", B_("mul", x, c(4.0))), B_("sub", U("neg", U("softplus", x)), U("logsigmoid", x))),
        "sum_u": B_("mul", U("sigmoid", u), c(1.0, ("V",))),            # a broadcast constant
        "only_scalar": B_("add", s, c(0.0, ("K",))),                    # no tensor at all
        "ne": B_("ne", x, c(0.0)),
    }
    specs = [("x", "input", ("K",)), ("u", "input", ()), ("A", "param", ("K",)), ("z", "input", ("V",))]
    check("ops", pieces, specs, {"K": 7, "V": 3}, scalars={"s": 0.25})


def test_two_feature_dims_in_one_node():
    """Nodes over two feature dims (rank-3 tiles): an outer product, a param [H, K, V], a sum over
    one dim and an amax over both."""
    x = ir.leaf("input", "x", ("K",))
    y = ir.leaf("input", "y", ("V",))
    W = ir.leaf("param", "W", ("K", "V"))
    pieces = {"p": ir.reduce("sum", ir.binary("mul", ir.binary("mul", x, y), W), ("V",)),
              "m": ir.binary("mul", ir.binary("mul", x, y), ir.const(2.0)),
              "a": ir.reduce("amax", ir.binary("add", W, y), ("K", "V"))}
    specs = [("x", "input", ("K",)), ("y", "input", ("V",)), ("W", "param", ("K", "V"))]
    check("twod", pieces, specs, {"K": 3, "V": 5})


def test_tanh_and_logsigmoid_extreme_values():
    x = ir.leaf("input", "x", ("K",))
    pieces = {"t": ir.unary("tanh", x), "ls": ir.unary("logsigmoid", x), "sp": ir.unary("softplus", x),
              "sg": ir.unary("sigmoid", x), "si": ir.unary("silu", x)}
    vals = torch.tensor([-200.0, -30.0, -5.0, -0.3, -1e-3, -1e-7, 0.0, 1e-7, 1e-3, 0.2, 0.3, 5.0, 30.0, 200.0])
    arr = vals.reshape(1, 1, 1, -1)
    # relative accuracy down to fp32's underflow (atol far below every nonzero value): an
    # unstable log1p, tanh near 0 or sigmoid in the tails would fail
    check("extreme", pieces, [("x", "input", ("K",))], {"K": vals.numel()}, B=1, T=1, H=1, arrays=[arr],
          atol=1e-30)


def test_non_contiguous_inputs():
    """Transposed, expanded (stride 0) and strided inputs and params are read through strides."""
    x = ir.leaf("input", "x", ("K",))
    y = ir.leaf("input", "y", ())
    A = ir.leaf("param", "A", ("K",))
    pieces = {"p": ir.binary("mul", ir.unary("silu", x), ir.binary("add", A, y)),
              "n": ir.binary("mul", x, ir.unary("rsqrt", ir.reduce("sum", ir.binary("mul", x, x), ("K",))))}
    specs = [("x", "input", ("K",)), ("y", "input", ()), ("A", "param", ("K",))]
    B, T, H, K = 2, 3, 2, 5

    def prepare(arrays):
        g = torch.Generator().manual_seed(7)
        xt = torch.randn(B, H, T, K, generator=g).transpose(1, 2)          # [B, T, H, K], transposed
        ye = torch.randn(1, T, H, generator=g).expand(B, T, H)            # stride 0 along B
        As = torch.randn(H, 2 * K, generator=g)[:, ::2]                    # stride 2 along K
        assert not xt.is_contiguous() and ye.stride(0) == 0 and As.stride(1) == 2
        return [xt, ye, As]

    check("strided", pieces, specs, {"K": K}, B=B, T=T, H=H, prepare=prepare)


def test_half_precision_inputs():
    x = ir.leaf("input", "x", ("K",))
    pieces = {"p": ir.unary("logsigmoid", x)}
    pk = PiecesKernel("half", pieces, [("x", "input", ("K",))])
    for dtype in (torch.float16, torch.bfloat16):
        a = torch.randn(1, 2, 2, 4).to(dtype).requires_grad_()
        out = pk([a], {}, 1, 2, 2, {"K": 4})["p"]
        assert out.dtype == torch.float32
        want = torch.nn.functional.logsigmoid(a.detach().float())
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        (ga,) = torch.autograd.grad(out.sum(), [a])
        assert ga.dtype == dtype


def test_cache_file_created_once_and_reused(tmp_path):
    x = ir.leaf("input", "x", ("K",))
    pieces = {"p": ir.unary("exp", x)}
    specs = [("x", "input", ("K",))]
    pk1 = PiecesKernel("cached", pieces, specs)
    kdir = tmp_path / "mixir-cache" / "kernels"
    assert os.path.dirname(pk1.source_path) == str(kdir)
    files = sorted(os.listdir(kdir))
    assert files == [os.path.basename(pk1.source_path)]                 # no temp file left over
    assert files[0] == pk1.generated.sha + ".py"
    st = os.stat(pk1.source_path)
    with open(pk1.source_path) as fh:
        text = fh.read()
    assert text == pk1.source
    assert "mixer 'cached'" in text and "#   p['K'] = exp(x)" in text
    pk2 = PiecesKernel("cached", pieces, specs)                          # same pieces: same file
    assert pk2.source_path == pk1.source_path and pk2.key == pk1.key
    assert os.stat(pk1.source_path).st_mtime_ns == st.st_mtime_ns      # not rewritten
    assert sorted(os.listdir(kdir)) == files
    # generation is deterministic; another process would find the same file
    assert codegen.generate("cached", pieces, specs).sha == pk1.generated.sha
    pk3 = PiecesKernel("cached", {"p": ir.unary("log", x)}, specs)      # other pieces: other file
    assert pk3.source_path != pk1.source_path
    assert len(os.listdir(kdir)) == 2
    a = torch.rand(1, 1, 1, 4) + 0.5
    torch.testing.assert_close(pk2([a], {}, 1, 1, 1, {"K": 4})["p"], a.exp())


def test_kernels_are_recorded_and_self_contained():
    import triton.language.core as core
    before = {n: getattr(core, n) for n in dir(core)}
    f = form_of(gla_ls)
    pk = PiecesKernel("gla_ls", f.pieces(), specs_of(gla_ls))
    arrays = [a.requires_grad_() for a in make_arrays(specs_of(gla_ls), 1, 2, 2, {"K": 3, "V": 2})]
    with record_launches() as recs:
        out = pk(arrays, {"scale": 1.0}, 1, 2, 2, {"K": 3, "V": 2})
        sum(o.sum() for o in out.values()).backward()
    kernels = {r.kernel for r in recs.values()}
    assert kernels == set(pk.kernels) == {pk.fwd_kernel, pk.bwd_kernel}
    # no jit function is called from a kernel: the interpreter patched nothing for good
    assert all(getattr(core, n) is v for n, v in before.items())


def test_torch_compile_fullgraph():
    f = form_of(mamba)
    specs = specs_of(mamba)
    pk = PiecesKernel("mamba", f.pieces(), specs)
    B, T, H, sizes = 1, 2, 2, {"N": 3}
    arrays = [a.requires_grad_() for a in make_arrays(specs, B, T, H, sizes)]

    def fn(*arrs):
        p = pk(list(arrs), {}, B, T, H, sizes)
        return sum((v * v).sum() for v in p.values())

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = compiled(*arrays)
    want = fn(*arrays)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, arrays)
    g0 = torch.autograd.grad(want, arrays)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


def test_opcheck():
    x = ir.leaf("input", "x", ("K",))
    A = ir.leaf("param", "A", ("K",))
    pieces = {"p": ir.binary("mul", ir.unary("sigmoid", x), A), "q": ir.reduce("sum", x, ("K",))}
    specs = [("x", "input", ("K",)), ("A", "param", ("K",))]
    pk = PiecesKernel("opcheck", pieces, specs)
    arrays = [a.requires_grad_() for a in make_arrays(specs, 1, 2, 2, {"K": 3})]
    for narrow, dtype in (([0, 0], torch.float32), ([1, 0], torch.float16)):
        args = (pk.key, arrays[0], arrays, [], [1, 2, 2, 3], narrow, dtype)
        torch.library.opcheck(torch.ops.mixir.pointwise.default, args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


def test_narrowed_pieces_are_stored_in_the_given_dtype():
    """A piece named in ``narrow`` comes back in ``dtype`` (the same values rounded once), the
    others in fp32; gradients flow through both."""
    x = ir.leaf("input", "x", ("K",))
    pieces = {"p": ir.unary("sigmoid", x), "q": ir.unary("exp", x)}
    pk = PiecesKernel("narrow", pieces, [("x", "input", ("K",))])
    a = torch.randn(1, 5, 2, 4, requires_grad=True)
    out = pk([a], {}, 1, 5, 2, {"K": 4}, narrow=("p",), dtype=torch.float16)
    assert out["p"].dtype == torch.float16 and out["q"].dtype == torch.float32
    torch.testing.assert_close(out["p"], torch.sigmoid(a.detach()).half())
    (out["p"].float().sum() + out["q"].sum()).backward()
    s = torch.sigmoid(a.detach())
    torch.testing.assert_close(a.grad, s * (1 - s) + torch.exp(a.detach()), rtol=1e-3, atol=1e-3)


def test_empty_batch_and_errors():
    x = ir.leaf("input", "x", ("K",))
    pk = PiecesKernel("empty", {"p": ir.unary("exp", x)}, [("x", "input", ("K",))])
    out = pk([torch.zeros(0, 3, 2, 4)], {}, 0, 3, 2, {"K": 4})["p"]
    assert out.shape == (0, 3, 2, 4)
    with pytest.raises(MixirError, match="not among"):
        PiecesKernel("bad", {"p": ir.unary("exp", x)}, [("y", "input", ("K",))])


# ---------------------------------------------------------------------------------- the VJP

def _vjp_case(roots, leaves, sizes, B=2, T=2, H=2, seed=0, values=None):
    g = torch.Generator().manual_seed(seed)
    env = {}
    for lf in leaves:
        lead = (B, T, H) if lf.op == "input" else (1, 1, H)
        v = values[lf] if values and lf in values else torch.randn(lead + tuple(sizes[d] for d in lf.dims),
                                                                  generator=g, dtype=torch.float64)
        env[lf] = v.requires_grad_()
    outs = evaluate(roots, env, TorchBackend(), 3, sizes)
    cts = [ir.leaf("state", f"ct{i}", r.dims) for i, r in enumerate(roots)]
    ctv = [torch.randn(o.shape[:3] + o.shape[3:], generator=g, dtype=torch.float64) for o in outs]
    loss = sum((o * c).sum() for o, c in zip(outs, ctv))
    want = torch.autograd.grad(loss, [env[lf] for lf in leaves], allow_unused=True)
    got = vjp(roots, cts, leaves)
    env.update(zip(cts, ctv))
    for lf, gw, gs in zip(leaves, want, got):
        full = env[lf].shape if lf.op != "input" else (B, T, H) + tuple(sizes[d] for d in lf.dims)
        v = evaluate(gs, env, TorchBackend(), 3, sizes)
        v = torch.broadcast_to(v, (B, T, H) + tuple(sizes[d] for d in lf.dims))
        if lf.op == "param":
            v = v.sum(dim=(0, 1), keepdim=True)
        gw = torch.zeros(full, dtype=torch.float64) if gw is None else gw
        torch.testing.assert_close(v, gw, rtol=1e-10, atol=1e-12, msg=lambda m: f"{lf.arg}: {m}")


def test_vjp_matches_torch_autograd():
    x = ir.leaf("input", "x", ("K",))
    y = ir.leaf("input", "y", ("V",))
    u = ir.leaf("input", "u", ())
    A = ir.leaf("param", "A", ("K",))
    c, B_, U = ir.const, ir.binary, ir.unary
    l2 = B_("mul", x, U("rsqrt", B_("add", ir.reduce("sum", B_("mul", x, x), ("K",)), c(1e-6))))
    roots = [
        l2,
        U("logsigmoid", B_("mul", A, x)),
        B_("mul", B_("mul", A, x), U("silu", u)),                      # broadcast u over K
        B_("add", u, c(0.0, ("V",))),                                  # root constant along V
        B_("mul", ir.reduce("amax", x, ("K",)), y),
        ir.where(B_("gt", x, c(0.0)), B_("max", x, A), U("tanh", x)),
        B_("div", u, U("softplus", B_("pow", U("abs", y), c(1.5)))),
        B_("pow", B_("add", U("abs", y), c(0.5)), u),
        B_("add", U("sqrt", B_("add", U("abs", x), c(1.0))), U("recip", B_("add", U("exp", u), c(1.0)))),
        ir.reduce("sum", B_("mul", u, c(2.0, ("K",))), ("K",)),        # a sum of a broadcast
        B_("sub", B_("min", x, A), U("abs", x)),
    ]
    _vjp_case(roots, [x, y, u, A], {"K": 4, "V": 3})


def test_vjp_ties_split_like_torch():
    x = ir.leaf("input", "x", ("K",))
    vals = torch.tensor([1.0, 3.0, 3.0, -2.0], dtype=torch.float64).expand(1, 1, 1, 4).clone()
    roots = [ir.reduce("amax", x, ("K",)), ir.binary("max", x, ir.const(3.0)), ir.unary("abs", x)]
    _vjp_case(roots, [x], {"K": 4}, B=1, T=1, H=1, values={x: vals})


def test_vjp_unused_leaf_and_cotangent_broadcast():
    x = ir.leaf("input", "x", ("K",))
    u = ir.leaf("input", "u", ())
    (gx, gu) = vjp([ir.unary("exp", x)], [ir.const(1.0)], [x, u])
    assert ir.is_const(gu, 0.0)
    assert gx == ir.unary("exp", x)
    # the gradient w.r.t. a scalar-per-row leaf sums the broadcast dim
    (gu,) = vjp([ir.binary("add", u, x)], [ir.const(1.0)], [u])
    assert gu.op == "sum" and gu.arg == ("K",)


@pytest.mark.aot
def test_generated_kernels_compile_for_gpu():
    """The same source compiles with Triton for a GPU (no GPU needed), also at GPU tile sizes."""
    import dataclasses

    from mixir.lowering.common import aot
    if aot._triton_bin("ptxas") is None and not os.environ.get("TRITON_PTXAS_PATH"):
        pytest.skip("Triton's ptxas is not available")
    f = form_of(gla_ls)
    pk = PiecesKernel("gla_ls", f.pieces(), specs_of(gla_ls))
    arrays = [a.requires_grad_() for a in make_arrays(specs_of(gla_ls), 1, 2, 2, {"K": 3, "V": 2})]
    with record_launches() as recs:
        out = pk(arrays, {"scale": 1.0}, 1, 2, 2, {"K": 3, "V": 2})
        sum(o.sum() for o in out.values()).backward()
    for rec in recs.values():
        for br, bd in ((8, 128), (1, 1)):
            res = aot.build(dataclasses.replace(rec, constexprs=(("BR", br), ("BD_K", bd))), "sm_90")
            assert res.registers > 0 and res.spills == 0, res
