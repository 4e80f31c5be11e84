"""The float64 reference of the canonical gated-linear core and the differential-case helpers of
its tests (tests/test_gla_core.py, tests/test_gla_core_inputs.py): a token-by-token recurrence,
seeded inputs, and one check of every output and gradient of ``gla_forward`` / ``gla_backward`` against it."""
import torch

from mixir.lowering.gated_linear.core import gla_backward, gla_forward

# relative RMS error bounds: rms(out - ref) / max(rms(ref), 1e-6)
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}

GRAD_NAMES = ("dq", "dk", "dv", "dg", "dgk", "dgv", "dh0")


# ------------------------------------------------------------------------------ float64 reference

def naive_gla(q, k, v, g=None, gk=None, gv=None, h0=None, cu_seqlens=None):
    """Token-by-token float64 recurrence. Returns (o [B, T, H, V], hT [N, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    f = lambda x: None if x is None else x.double()
    q, k, v, g, gk, gv, h0 = map(f, (q, k, v, g, gk, gv, h0))
    if cu_seqlens is None:
        segs = [(b, b, 0, T) for b in range(B)]
    else:
        offs = [int(x) for x in cu_seqlens]
        segs = [(0, n, offs[n], offs[n + 1]) for n in range(len(offs) - 1)]
    rows = [[None] * T for _ in range(B)]
    finals = []
    for b, n, bos, eos in segs:
        S = torch.zeros(H, K, V, dtype=torch.float64) if h0 is None else h0[n]
        for t in range(bos, eos):
            e = torch.zeros(H, K, V, dtype=torch.float64)
            if g is not None:
                e = e + g[b, t][:, None, None]
            if gk is not None:
                e = e + gk[b, t][:, :, None]
            if gv is not None:
                e = e + gv[b, t][:, None, :]
            S = torch.exp(e) * S + k[b, t][:, :, None] * v[b, t][:, None, :]
            rows[b][t] = torch.einsum("hkv,hk->hv", S, q[b, t])
        finals.append(S)
    o = torch.stack([torch.stack(r) for r in rows])
    return o, torch.stack(finals)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-6)).item()


def make_inputs(B, T, H, K, V, decays, dtype=torch.float32, h0=True, N=None, seed=0, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    q, k, v = r(B, T, H, K).to(dtype), r(B, T, H, K).to(dtype), r(B, T, H, V).to(dtype)
    u = lambda *s: -scale * torch.rand(*s, generator=gen)
    g = u(B, T, H) if "g" in decays else None
    gk = u(B, T, H, K) if "gk" in decays else None
    gv = u(B, T, H, V) if "gv" in decays else None
    N = B if N is None else N
    h = r(N, H, K, V) if h0 else None
    do = r(B, T, H, V)
    dhT = r(N, H, K, V)
    return dict(q=q, k=k, v=v, g=g, gk=gk, gv=gv, h0=h), do, dhT


def reference(inp, do, dhT, cu_seqlens=None, with_dhT=True):
    leaves = {n: (None if x is None else x.detach().double().requires_grad_()) for n, x in inp.items()}
    o, hT = naive_gla(**leaves, cu_seqlens=cu_seqlens)
    loss = (o * do.double()).sum()
    if with_dhT:
        loss = loss + (hT * dhT.double()).sum()
    loss.backward()
    grads = tuple(None if leaves[n] is None else leaves[n].grad
                  for n in ("q", "k", "v", "g", "gk", "gv", "h0"))
    return o.detach(), hT.detach(), grads


def check_case(inp, do, dhT, strategy, cu_seqlens=None, config=None, tol=None, with_dhT=True,
               backward=True):
    dtype = inp["q"].dtype
    tol = TOL[dtype] if tol is None else tol
    o_ref, hT_ref, grads_ref = reference(inp, do, dhT, cu_seqlens, with_dhT)
    o, hT = gla_forward(**inp, cu_seqlens=cu_seqlens, strategy=strategy, config=config)
    assert o.dtype == torch.float32 and o.shape == o_ref.shape
    assert hT.dtype == torch.float32 and hT.shape == hT_ref.shape
    errs = {"o": rel_err(o, o_ref), "hT": rel_err(hT, hT_ref)}
    if backward:
        grads = gla_backward(inp["q"], inp["k"], inp["v"], inp["g"], inp["gk"], inp["gv"],
                             inp["h0"], cu_seqlens, do, dhT if with_dhT else None,
                             strategy=strategy, config=config)
        for name, a, b, x in zip(GRAD_NAMES, grads, grads_ref,
                                 (inp["q"], inp["k"], inp["v"], inp["g"], inp["gk"], inp["gv"], inp["h0"])):
            if b is None:
                assert a is None, name
                continue
            assert a.dtype == torch.float32 and a.shape == x.shape, name
            errs[name] = rel_err(a, b)
    bad = {n: e for n, e in errs.items() if not e <= tol}        # "not <=" also catches NaN
    assert not bad, f"{strategy} {dtype}: errors {bad} exceed {tol} (all: {errs})"
    return errs
