"""mixir.compat: the drop-ins' signatures against their peers' real ones, and the fla drop-ins'
values (forward and gradients) against float64 loops written from fla's definitions.

Signatures: fla 0.6.0's are recorded below and, when fla is importable (e.g. ``pip install
--no-deps --target /tmp/peers fla-core``), also read from its installed source (the ``def`` lines,
parsed — importing ``fla.ops`` takes ~20 s); mamba_ssm (CUDA extensions, not installable here) is
recorded from its 2.3.2.post1 release; torch's FlexAttention is inspected live. The mamba_ssm and
FlexAttention values are in test_compat_ssm_attention.py.
"""
import ast
import importlib.util
import inspect
import os
import sys

import pytest
import torch

import mixir.compat.fla as F
import mixir.compat.flex_attention as FA
import mixir.compat.mamba_ssm as M
from mixir.errors import InputError

pytestmark = pytest.mark.interp

# ---- signatures --------------------------------------------------------------------------------

#: fla 0.6.0 (fla-core 0.6.0, fla/ops/*/{chunk,fused_recurrent}.py), annotations left out
FLA_060 = {
    "chunk_linear_attn": "(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True, cu_seqlens=None)",
    "fused_recurrent_linear_attn": "(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False, normalize=False, cu_seqlens=None)",
    "chunk_retention": "(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kwargs)",
    "fused_recurrent_retention": "(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, **kwargs)",
    "chunk_simple_gla": "(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs)",
    "fused_recurrent_simple_gla": "(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, **kwargs)",
    "chunk_gla": "(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None)",
    "fused_recurrent_gla": "(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, **kwargs)",
    "fused_recurrent_hgrn": "(x, g, initial_state=None, output_final_state=False, cu_seqlens=None)",
    "chunk_lightnet": "(q, k, v, scale=None, initial_state=None, output_final_state=False, state_v_first=False, cu_seqlens=None)",
    "fused_recurrent_lightnet": "(q, k, v, scale=None, initial_state=None, output_final_state=False, state_v_first=False, cu_seqlens=None)",
    "chunk_delta_rule": "(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs)",
    "fused_recurrent_delta_rule": "(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None)",
    "chunk_gated_delta_rule": "(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, chunk_indices=None, cp_context=None, **kwargs)",
    "fused_recurrent_gated_delta_rule": "(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, **kwargs)",
    "chunk_gated_delta_product": "(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, cp_context=None)",
    "chunk_kda": "(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, safe_gate=False, lower_bound=None, disable_recompute=False, return_intermediate_states=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, cp_context=None, use_graph=False, max_num_seqs=None, **kwargs)",
    "fused_recurrent_kda": "(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, lower_bound=None, state_v_first=False, cu_seqlens=None, **kwargs)",
}
#: mamba_ssm 2.3.2.post1 (mamba_ssm/ops/selective_scan_interface.py, ops/triton/ssd_combined.py)
MAMBA_2_3_2 = {
    "selective_scan_fn": "(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False)",
    "mamba_chunk_scan_combined": "(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, inf), return_final_states=False, return_varlen_states=False)",
}


def plain(fn_or_sig) -> str:
    """A signature without annotations (names, kinds, defaults)."""
    sig = fn_or_sig if isinstance(fn_or_sig, inspect.Signature) else inspect.signature(fn_or_sig)
    return str(sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


def test_versions_recorded():
    assert (F.FLA_VERSION, M.MAMBA_SSM_VERSION, FA.TORCH_VERSION) == ("0.6.0", "2.3.2.post1", "2.13.0")
    assert sorted(F.__all__[1:]) == sorted(FLA_060)


@pytest.mark.parametrize("name", sorted(FLA_060))
def test_fla_signature_matches_recorded(name):
    assert plain(getattr(F, name)) == FLA_060[name]


def _fla_dir():
    extra = [p for p in ("/tmp/peers",) if os.path.isdir(os.path.join(p, "fla"))]
    sys.path[:0] = extra
    try:
        spec = importlib.util.find_spec("fla")      # finds the package without running it
    finally:
        del sys.path[:len(extra)]
    return None if spec is None or not spec.submodule_search_locations else list(spec.submodule_search_locations)[0]


def _source_signature(path, name) -> str:
    tree = ast.parse(open(path).read())
    f = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    a, P = f.args, inspect.Parameter
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    params = [P(x.arg, P.POSITIONAL_OR_KEYWORD, default=P.empty if d is None else ast.literal_eval(d))
              for x, d in zip(pos, defaults)]
    params += [P(x.arg, P.KEYWORD_ONLY, default=P.empty if d is None else ast.literal_eval(d))
               for x, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    return str(inspect.Signature(params))


def test_fla_signatures_match_installed_fla():
    root = _fla_dir()
    if root is None:
        pytest.skip("fla (fla-core) is not installed; the recorded 0.6.0 signatures were checked")
    version = open(os.path.join(root, "__init__.py")).read()
    if '__version__ = "0.6.0"' not in version:
        pytest.skip("the installed fla is not 0.6.0")
    for name in FLA_060:
        op = name.split("_", 2)[-1] if name.startswith("fused_recurrent_") else name.split("_", 1)[1]
        kind = "chunk" if name.startswith("chunk_") else "fused_recurrent"
        path = os.path.join(root, "ops", op, f"{kind}.py")
        assert _source_signature(path, name) == plain(getattr(F, name)), name


@pytest.mark.parametrize("name", sorted(MAMBA_2_3_2))
def test_mamba_ssm_signature_matches_recorded(name):
    assert plain(getattr(M, name)) == MAMBA_2_3_2[name]


def test_flex_attention_signatures_match_torch():
    from torch.nn.attention import flex_attention as real
    assert plain(FA.flex_attention) == plain(real.flex_attention)
    assert plain(FA.create_block_mask) == plain(real.create_block_mask)


# ---- float64 definitions -----------------------------------------------------------------------


def d(x):
    return None if x is None else x.double()


def ref(q, k, v, *, g=None, gk=None, gv=None, beta=None, delta=False, scale=None, h0=None,
        reverse=False, l2=False, normalize=False, z0=None):
    """fla's recurrences token by token (fused_recurrent kernels' order: gates, then the delta
    correction v − Sᵀk, then β, then the write k vᵀ; o = (scale·q)ᵀ S)."""
    q, k, v = d(q), d(k), d(v)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    if l2:
        q, k = (x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if h0 is None else d(h0).clone()
    z = torch.zeros(B, H, K, dtype=torch.float64) if z0 is None else d(z0).reshape(B, H, K).clone()
    o = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        if g is not None:
            S = S * torch.exp(d(g)[:, t])[..., None, None]
        if gk is not None:
            S = S * torch.exp(d(gk)[:, t])[..., :, None]
        if gv is not None:
            S = S * torch.exp(d(gv)[:, t])[..., None, :]
        vt = v[:, t]
        if delta:
            vt = vt - torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        if beta is not None:
            vt = vt * d(beta)[:, t][..., None]
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], vt)
        z = z + k[:, t]
        o[t] = torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale)
        if normalize:
            o[t] = o[t] / ((q[:, t] * scale * z).sum(-1, keepdim=True) + 1e-10)
    return torch.stack(o, 1), S, z


def close(a, b, tol=2e-4):
    assert a is not None and b is not None
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item()
    assert err <= tol * (1 + b.abs().max().item()), err


B, T, H, K, V = 1, 20, 2, 16, 16


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ls = torch.nn.functional.logsigmoid
    return dict(q=r(B, T, H, K), k=0.5 * r(B, T, H, K), v=r(B, T, H, V), g=ls(r(B, T, H) + 2),
                gk=ls(r(B, T, H, K) + 2), gv=ls(r(B, T, H, V) + 2), beta=torch.rand(B, T, H, generator=g),
                h0=0.3 * r(B, H, K, V), pos_q=torch.rand(B, T, H, K, generator=g) + 0.1,
                pos_k=torch.rand(B, T, H, K, generator=g) + 0.1)


# ---- values ------------------------------------------------------------------------------------


def test_linear_attn_normalize_forward_state_and_gradient(x):
    q, k, v = (x[n].clone().requires_grad_() for n in ("pos_q", "pos_k", "v"))
    z0 = torch.rand(B, 1, H, K) + 0.5
    o, (S, z) = F.chunk_linear_attn(q, k, v, initial_state=(x["h0"], z0), output_final_state=True)
    ro, rS, rz = ref(q, k, v, normalize=True, h0=x["h0"], z0=z0)
    close(o, ro), close(S, rS), close(z, rz.unsqueeze(1))
    assert z.shape == (B, 1, H, K)
    do = torch.randn_like(o)
    (o * do).sum().backward()
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    (ref(qd, kd, vd, normalize=True, h0=x["h0"], z0=z0)[0] * do.double()).sum().backward()
    for a, b in ((q, qd), (k, kd), (v, vd)):
        close(a.grad, b.grad, 1e-3)
    o2, (S2, z2) = F.fused_recurrent_linear_attn(x["pos_q"], x["pos_k"], x["v"], normalize=True)
    close(o2, ref(x["pos_q"], x["pos_k"], x["v"], normalize=True)[0])
    assert S2 is None and z2.shape == (B, 1, H, K)        # fla: z_T always, S_T on request


def test_linear_attn_reverse_and_plain(x):
    o, S = F.fused_recurrent_linear_attn(x["q"], x["k"], x["v"], reverse=True, output_final_state=True)
    ro, rS, _ = ref(x["q"], x["k"], x["v"], reverse=True)
    close(o, ro), close(S, rS)
    o, S = F.chunk_linear_attn(x["q"], x["k"], x["v"], normalize=False)
    close(o, ref(x["q"], x["k"], x["v"])[0])
    assert S is None


def test_retention_decay_and_state_v_first(x):
    gam = torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64)))
    g = gam.expand(B, T, H)
    o, _ = F.chunk_retention(x["q"], x["k"], x["v"])
    close(o, ref(x["q"], x["k"], x["v"], g=g)[0])
    with pytest.warns(DeprecationWarning):
        o, S = F.fused_recurrent_retention(x["q"], x["k"], x["v"], initial_state=x["h0"].transpose(-1, -2),
                                           output_final_state=True, transpose_state_layout=True)
    ro, rS, _ = ref(x["q"], x["k"], x["v"], g=g, h0=x["h0"])
    close(o, ro), close(S, rS.transpose(-1, -2))


def test_simple_gla_g_and_g_gamma_reverse_varlen(x):
    gamma = torch.tensor([-0.05, -0.2])
    o, _ = F.chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"], g_gamma=gamma)
    close(o, ref(x["q"], x["k"], x["v"], g=x["g"] + gamma)[0])
    cu = torch.tensor([0, 7, T])
    o, S = F.fused_recurrent_simple_gla(x["q"], x["k"], x["v"], x["g"], reverse=True, cu_seqlens=cu,
                                        output_final_state=True)
    for i, (a, b) in enumerate(((0, 7), (7, T))):
        sl = {n: x[n][:, a:b] for n in ("q", "k", "v", "g")}
        ro, rS, _ = ref(sl["q"], sl["k"], sl["v"], g=sl["g"], reverse=True)
        close(o[:, a:b], ro), close(S[i:i + 1], rS)


def test_gla_chunk_and_value_gate(x):
    o, S = F.chunk_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=x["h0"], output_final_state=True)
    ro, rS, _ = ref(x["q"], x["k"], x["v"], gk=x["gk"], h0=x["h0"])
    close(o, ro), close(S, rS)
    o, _ = F.fused_recurrent_gla(x["q"], x["k"], x["v"], gk=x["gk"], gv=x["gv"])
    close(o, ref(x["q"], x["k"], x["v"], gk=x["gk"], gv=x["gv"])[0])


def test_hgrn_and_lightnet(x):
    xs, g = x["q"][:, :, 0], x["gk"][:, :, 0]
    h0 = torch.randn(B, K)
    o, hT = F.fused_recurrent_hgrn(xs, g, initial_state=h0, output_final_state=True)
    h, ro = h0.double(), []
    for t in range(T):
        h = torch.exp(g[:, t].double()) * h + xs[:, t].double()
        ro.append(h)
    close(o, torch.stack(ro, 1)), close(hT, h)
    o, (S, z) = F.chunk_lightnet(x["q"], x["k"], x["v"])
    import mixir.library as lib
    lo, (lS, lz) = lib.lightnet(x["q"], x["k"], x["v"], output_final_state=True, strategy="chunked")
    close(o, lo), close(z, lz)
    assert S is None and z.shape == (B, 1, H, K)          # fla: the log-normaliser always


def test_delta_rule_beta_is_fla_beta(x):
    kn = torch.nn.functional.normalize(x["k"], dim=-1)
    o, S = F.chunk_delta_rule(x["q"], kn, x["v"], x["beta"], initial_state=x["h0"], output_final_state=True)
    ro, rS, _ = ref(x["q"], kn, x["v"], beta=x["beta"], delta=True, h0=x["h0"])
    close(o, ro), close(S, rS)
    o, _ = F.fused_recurrent_delta_rule(x["q"], kn, x["v"])          # beta=None: β = 1
    close(o, ref(x["q"], kn, x["v"], delta=True)[0])


def test_gated_delta_rule_gva_l2norm_gradient(x):
    q, k = x["q"][:, :, :1], x["k"][:, :, :1]                         # H = 1 query/key head, HV = 2
    leaves = [t.clone().requires_grad_() for t in (q, k, x["v"], x["g"], x["beta"])]
    o, _ = F.chunk_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True)
    rep = lambda t: t.repeat_interleave(2, dim=2)  # noqa: E731
    ro = ref(rep(q), rep(k), x["v"], g=x["g"], beta=x["beta"], delta=True, l2=True)[0]
    close(o, ro)
    do = torch.randn_like(o)
    (o * do).sum().backward()
    dl = [t.detach().double().requires_grad_() for t in leaves]
    (ref(rep(dl[0]), rep(dl[1]), dl[2], g=dl[3], beta=dl[4], delta=True, l2=True)[0] * do.double()).sum().backward()
    for a, b in zip(leaves, dl):
        close(a.grad, b.grad, 1e-3)


def test_fused_gated_delta_rule_key_gate_and_kda(x):
    kn = torch.nn.functional.normalize(x["k"], dim=-1)
    o, _ = F.fused_recurrent_gated_delta_rule(x["q"], kn, x["v"], g=x["g"], gk=x["gk"], beta=x["beta"])
    close(o, ref(x["q"], kn, x["v"], g=x["g"], gk=x["gk"], beta=x["beta"], delta=True)[0])
    o, S = F.chunk_kda(x["q"], kn, x["v"], x["gk"], x["beta"], output_final_state=True)
    ro, rS, _ = ref(x["q"], kn, x["v"], gk=x["gk"], beta=x["beta"], delta=True)
    close(o, ro), close(S, rS)
    A_log, dt_bias = torch.randn(H), torch.randn(H * K)
    o, _ = F.fused_recurrent_kda(x["q"], kn, x["v"], x["gk"], x["beta"], A_log=A_log, dt_bias=dt_bias,
                                 use_gate_in_kernel=True)
    gate = -A_log.exp()[:, None] * torch.nn.functional.softplus(x["gk"] + dt_bias.view(H, K))
    close(o, ref(x["q"], kn, x["v"], gk=gate, beta=x["beta"], delta=True)[0])


def test_gated_delta_product(x):
    n = 2
    kk = torch.nn.functional.normalize(torch.randn(B, T * n, H, K), dim=-1)
    vv, bb = torch.randn(B, T * n, H, V), torch.rand(B, T * n, H)
    o, _ = F.chunk_gated_delta_product(x["q"], kk, vv, x["g"], bb, n)
    q, S, ro = x["q"].double(), torch.zeros(B, H, K, V, dtype=torch.float64), []
    for t in range(T):
        for j in range(n):
            r = t * n + j
            if j == 0:
                S = S * torch.exp(x["g"][:, t].double())[..., None, None]
            vt = (vv[:, r].double() - torch.einsum("bhkv,bhk->bhv", S, kk[:, r].double())) * bb[:, r].double()[..., None]
            S = S + torch.einsum("bhk,bhv->bhkv", kk[:, r].double(), vt)
        ro.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * K ** -0.5))
    close(o, torch.stack(ro, 1))


# ---- errors ------------------------------------------------------------------------------------


def test_fla_errors(x):
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    with pytest.raises(DeprecationWarning, match="head_first"):
        F.chunk_simple_gla(q, k, v, g, head_first=True)
    with pytest.raises(DeprecationWarning, match="head_first"):
        F.fused_recurrent_gla(q, k, v, head_first=False)
    with pytest.raises(TypeError):
        F.chunk_gla(q, k, v, x["gk"], head_first=False)          # no **kwargs in fla either
    q2 = torch.cat([q, q])
    with pytest.raises(InputError, match="batch size is expected to be 1"):
        F.chunk_retention(q2, q2, torch.cat([v, v]), cu_seqlens=torch.tensor([0, 5, T]))
    with pytest.raises(InputError, match="number of initial states"):
        F.chunk_delta_rule(q, k, v, beta, initial_state=x["h0"].repeat(3, 1, 1, 1),
                           cu_seqlens=torch.tensor([0, 5, T]))
    with pytest.raises(ValueError, match="gv"):
        F.fused_recurrent_gated_delta_rule(q, k, v, g=g, gv=x["gv"], beta=beta)
    with pytest.raises(InputError, match="allow_neg_eigval"):
        F.chunk_gated_delta_rule(q, k, v, g, beta, allow_neg_eigval=True)
    with pytest.raises(InputError, match="return_intermediate_states"):
        F.chunk_kda(q, k, v, x["gk"], beta, return_intermediate_states=True)
    with pytest.raises(InputError, match="cp_context"):
        F.chunk_kda(q, k, v, x["gk"], beta, cp_context=object())
    with pytest.raises(InputError, match="one β per head"):
        F.fused_recurrent_delta_rule(q, k, v, beta=torch.rand(B, T, H, V))
    with pytest.raises(InputError, match="normalize"):
        F.chunk_linear_attn(q, k, v, normalize=False, initial_state=(x["h0"], None))
    with pytest.raises(InputError, match="z_0"):
        F.chunk_linear_attn(q, k, v, initial_state=(x["h0"], torch.zeros(B, H, K)))
    with pytest.raises(InputError, match="lower_bound"):
        F.chunk_kda(q, k, v, x["gk"], beta, use_gate_in_kernel=True, safe_gate=True, lower_bound=-7.0)
