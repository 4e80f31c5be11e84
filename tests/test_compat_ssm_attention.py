"""mixir.compat.mamba_ssm and mixir.compat.flex_attention: values (forward and gradients) against
float64 definitions — mamba_ssm's ``selective_scan_ref`` and the SSD recurrence, FlexAttention's
dense semantics with the user's own mask/score functions evaluated by torch — and the refusals.
(The signatures are checked in test_compat.py.)"""
import pytest
import torch
from torch.nn.functional import silu, softplus

import mixir.compat.flex_attention as FA
import mixir.compat.mamba_ssm as M
from mixir.errors import DeclarationError, InputError

pytestmark = pytest.mark.interp


def close(a, b, tol=2e-4):
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item()
    assert err <= tol * (1 + b.abs().max().item()), err


def grads_match(out, leaves, ref_fn, tol=1e-3):
    """Backward of ``out`` against autograd of the float64 ``ref_fn(*leaves64)``."""
    do = torch.randn_like(out)
    (out * do).sum().backward()
    dl = [t.detach().double().requires_grad_() for t in leaves]
    (ref_fn(*dl) * do.double()).sum().backward()
    for a, b in zip(leaves, dl):
        close(a.grad, b.grad, tol)


# ---- Mamba-1: selective_scan_fn ----------------------------------------------------------------


def scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref (real A), float64; returns (out, last_state)."""
    u, delta, A = u.double(), delta.double(), A.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[..., None]
    if delta_softplus:
        delta = softplus(delta)
    b, dim, L = u.shape

    def at(X, i):
        X = X.double()
        if X.dim() == 2:
            return X[None]
        if X.dim() == 3:
            return X[:, None, :, i]
        return X.repeat_interleave(dim // X.shape[1], 1)[..., i]
    x, ys = torch.zeros(b, dim, A.shape[1], dtype=torch.float64), []
    for i in range(L):
        x = torch.exp(delta[:, :, i, None] * A) * x + delta[:, :, i, None] * at(B, i) * u[:, :, i, None]
        ys.append((x * at(C, i)).sum(-1))
    out = torch.stack(ys, 2)
    if D is not None:
        out = out + u * D.double()[:, None]
    if z is not None:
        out = out * silu(z.double())
    return out, x


Bz, Dch, L, N = 1, 4, 20, 8


def test_selective_scan_fn_full_and_gradient():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    leaves = [r(Bz, Dch, L), r(Bz, Dch, L), -torch.exp(0.5 * r(Dch, N)), r(Bz, 2, N, L), r(Bz, 2, N, L),
              r(Dch), r(Bz, Dch, L), 0.5 * r(Dch)]
    leaves = [t.requires_grad_() for t in leaves]
    u, delta, A, B, C, D, z, bias = leaves
    out, last = M.selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    ro, rl = scan_ref(u, delta, A, B, C, D, z, bias, True)
    assert out.shape == (Bz, Dch, L) and last.shape == (Bz, Dch, N)
    close(out, ro), close(last, rl)
    grads_match(out, leaves, lambda *a: scan_ref(*a[:7], delta_bias=a[7], delta_softplus=True)[0])


def test_selective_scan_fn_time_invariant_b_c():
    g = torch.Generator().manual_seed(2)
    u, B, C = torch.randn(Bz, Dch, L, generator=g), torch.randn(Dch, N, generator=g), torch.randn(Dch, N, generator=g)
    delta = torch.rand(Bz, Dch, L, generator=g) * 0.4 + 0.05
    A = -torch.exp(torch.randn(Dch, N, generator=g))
    close(M.selective_scan_fn(u, delta, A, B, C), scan_ref(u, delta, A, B, C)[0])


# ---- Mamba-2: mamba_chunk_scan_combined --------------------------------------------------------


def ssd_ref(x, dt, A, B, C, D=None, z=None, h0=None):
    """The SSD recurrence with processed steps ``dt``, float64: S ``[b, h, p, n]`` (mamba layout)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, T, h, p = x.shape
    Bh, Ch = (t.repeat_interleave(h // t.shape[2], 2) for t in (B, C))
    S = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(T):
        S = torch.exp(dt[:, t] * A)[..., None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((S * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + x * (D.double() if D.dim() == 2 else D.double()[:, None])
    if z is not None:
        y = y * silu(z.double())
    return y, S


b, T, h, p, n = 1, 20, 2, 8, 8


def _ssd_inputs(seed, b=b):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(b, T, h, p), dt=r(b, T, h), A=-torch.exp(0.5 * r(h)), B=r(b, T, 1, n), C=r(b, T, 1, n))


def test_mamba_chunk_scan_combined_options_and_gradient():
    a = _ssd_inputs(3)
    D, z, dt_bias, h0 = torch.randn(h, p), torch.randn(b, T, h, p), torch.randn(h), torch.randn(b, h, p, n)
    leaves = [t.clone().requires_grad_() for t in (a["x"], a["dt"], a["A"], a["B"], a["C"])]
    out, fin = M.mamba_chunk_scan_combined(*leaves, 64, D=D, z=z, dt_bias=dt_bias, initial_states=h0,
                                           dt_softplus=True, dt_limit=(0.05, 0.6), return_final_states=True)

    def reference(x, dt, A, B, C):
        step = softplus(dt + dt_bias.double()).clamp(0.05, 0.6)
        return ssd_ref(x, step, A, B, C, D, z, h0)
    ro, rS = reference(*leaves)
    close(out, ro), close(fin, rS)
    assert fin.shape == (b, h, p, n)
    grads_match(out, leaves, lambda *t: reference(*t)[0])
    # the default dt_limit clamps a negative step to 0 (mamba_ssm's kernel does)
    out = M.mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 64)
    close(out, ssd_ref(a["x"], a["dt"].clamp(min=0), a["A"], a["B"], a["C"])[0])


def test_mamba_chunk_scan_combined_seq_idx_and_varlen_states():
    a = _ssd_inputs(4, b=2)
    a["dt"] = a["dt"].abs() * 0.3
    h0 = torch.randn(2, h, p, n)
    seq_idx = torch.tensor([[0] * 7 + [1] * 13, [2] * 19 + [3]])     # row 1 ends with a 1-token sequence
    out, fin = M.mamba_chunk_scan_combined(**a, chunk_size=64, initial_states=h0, seq_idx=seq_idx,
                                           return_final_states=True)
    for row, cuts, init in ((0, (0, 7, T), h0[:1]), (1, (0, 19, T), None)):   # row 1 starts at id 2:
        for s, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):           # no initial state
            sl = {k: v[row:row + 1, lo:hi] for k, v in a.items() if k != "A"}
            ro, rS = ssd_ref(sl["x"], sl["dt"], a["A"], sl["B"], sl["C"], h0=init if s == 0 else None)
            close(out[row:row + 1, lo:hi], ro)
        close(fin[row:row + 1], rS)
    one = {k: (v[:1] if k != "A" else v) for k, v in a.items()}
    cu = torch.tensor([0, 7, T])
    out, fin, var = M.mamba_chunk_scan_combined(**one, chunk_size=64, seq_idx=seq_idx[:1], cu_seqlens=cu,
                                                return_final_states=True, return_varlen_states=True)
    for s, (lo, hi) in enumerate(((0, 7), (7, T))):
        sl = {k: v[:, lo:hi] for k, v in one.items() if k != "A"}
        close(var[s:s + 1], ssd_ref(sl["x"], sl["dt"], a["A"], sl["B"], sl["C"])[1])
    close(fin, var[1:])


def test_mamba_errors():
    a = _ssd_inputs(5)
    u = torch.randn(Bz, Dch, L)
    with pytest.raises(InputError, match="complex A"):
        M.selective_scan_fn(u, u, torch.randn(Dch, N, dtype=torch.complex64), torch.randn(Bz, N, L),
                            torch.randn(Bz, N, L))
    with pytest.raises(InputError, match="non-decreasing"):
        M.mamba_chunk_scan_combined(**a, chunk_size=64, seq_idx=torch.tensor([[1] * 10 + [0] * 10]))
    with pytest.raises(InputError, match="cu_seqlens must be provided"):
        M.mamba_chunk_scan_combined(**a, chunk_size=64, return_varlen_states=True)
    with pytest.raises(InputError, match="seq_idx"):
        M.mamba_chunk_scan_combined(**a, chunk_size=64, cu_seqlens=torch.tensor([0, 5, T]),
                                    return_varlen_states=True)
    with pytest.raises(InputError, match="boundaries of cu_seqlens"):
        M.mamba_chunk_scan_combined(**a, chunk_size=64, cu_seqlens=torch.tensor([0, 5, T]),
                                    seq_idx=torch.tensor([[0] * 6 + [1] * 14]), return_varlen_states=True)
    with pytest.raises(InputError, match="D must be"):
        M.mamba_chunk_scan_combined(**a, chunk_size=64, D=torch.randn(3))


# ---- FlexAttention -----------------------------------------------------------------------------

Bf, Hq, Tf, E = 1, 2, 40, 16


def dense_ref(q, k, v, mask_mod=None, score_mod=None, scale=None):
    """FlexAttention's semantics, float64, with the user's functions evaluated by torch on
    broadcast index tensors. Returns (out, lse)."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    bi, hi, qi, ki = (torch.arange(s.shape[i]).reshape([-1 if j == i else 1 for j in range(4)]) for i in range(4))
    if score_mod is not None:
        s = score_mod(s, bi, hi, qi, ki)
    if mask_mod is not None:
        s = s.masked_fill(~mask_mod(bi, hi, qi, ki).expand_as(s), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.where(torch.isinf(lse)[..., None], 0.0, torch.exp(s - lse[..., None]))
    return p @ v, lse


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(6)
    return [torch.randn(Bf, Hq, Tf, E, generator=g), torch.randn(Bf, 1, Tf, E, generator=g),
            torch.randn(Bf, 1, Tf, E, generator=g)]


def test_flex_attention_captured_mask_score_mod_gqa_gradient(qkv):
    from torch.nn.attention.flex_attention import and_masks
    doc = torch.tensor([0] * 15 + [1] * 25)
    slopes = torch.tensor([0.5, 0.25])

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def same_doc(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)
    mask_mod = and_masks(causal, same_doc)
    bm = FA.create_block_mask(mask_mod, None, None, Tf, Tf, device="cpu", BLOCK_SIZE=16)
    assert bm.shape == (1, 1, Tf, Tf) and bm.BLOCK_SIZE == (16, 16) and 0 < bm.sparsity() < 100
    leaves = [t.clone().requires_grad_() for t in qkv]
    out, lse = FA.flex_attention(*leaves, score_mod=alibi, block_mask=bm, enable_gqa=True, return_lse=True)
    ro, rl = dense_ref(*qkv, mask_mod, alibi)
    assert out.shape == (Bf, Hq, Tf, E) and lse.shape == (Bf, Hq, Tf)
    close(out, ro), close(lse, rl)
    grads_match(out, leaves, lambda *t: dense_ref(*t, mask_mod, alibi)[0])


def test_flex_attention_torch_style_score_mods_and_aux(qkv):
    from torch.nn.attention.flex_attention import AuxRequest
    from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask
    q, k, v = qkv[0], qkv[1].expand(-1, Hq, -1, -1), qkv[2].expand(-1, Hq, -1, -1)

    def softcap_causal(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx >= kv_idx, 20.0 * torch.tanh(score / 20.0), -float("inf"))
    out, aux = FA.flex_attention(q, k, v, score_mod=softcap_causal, scale=0.3, return_aux=AuxRequest(lse=True))
    ro, rl = dense_ref(q, k, v, None, softcap_causal, scale=0.3)
    close(out, ro), close(aux.lse, rl)
    assert aux.max_scores is None

    def window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < 8
    torch_bm = torch_create_block_mask(window, 1, 1, Tf, Tf, device="cpu", BLOCK_SIZE=16)
    close(FA.flex_attention(q, k, v, block_mask=torch_bm), dense_ref(q, k, v, window)[0])


def test_flex_attention_refusals(qkv):
    from torch.nn.attention.flex_attention import AuxRequest
    q, k, v = qkv
    with pytest.raises(DeclarationError, match="cumsum"):
        FA.flex_attention(q, q, q, score_mod=lambda s, b, h, qi, ki: s.cumsum(0))

    def branchy(b, h, q_idx, kv_idx):
        if q_idx > kv_idx:
            return True
        return False
    with pytest.raises(DeclarationError, match="Python `if`"):
        FA.create_block_mask(branchy, 1, 1, Tf, Tf, device="cpu")
    bias = torch.zeros(Tf, requires_grad=True)
    with pytest.raises(DeclarationError, match="requires grad"):
        FA.flex_attention(q, q, q, score_mod=lambda s, b, h, qi, ki: s + bias[ki])
    with pytest.raises(InputError, match="enable_gqa"):
        FA.flex_attention(q, k, v)
    with pytest.raises(InputError, match="max_scores"):
        FA.flex_attention(q, q, q, return_aux=AuxRequest(max_scores=True))
    bm = FA.create_block_mask(lambda b, h, qi, ki: qi >= ki, 1, 1, Tf // 2, Tf // 2, device="cpu")
    with pytest.raises(InputError, match="block_mask was created"):
        FA.flex_attention(q, q, q, block_mask=bm)


def test_tracer_reproduces_torch_semantics():
    """Each torch-style function, traced, evaluates (mixir's IR evaluator) to what torch computes
    running it on index tensors; no kernel runs."""
    from torch.nn.attention.flex_attention import noop_mask, or_masks

    from mixir.dsl.torch_trace import trace_mask, trace_score_mod
    from mixir.reference.attention import evaluate_mask
    table = torch.rand(4, 4) > 0.5
    bias = torch.randn(2, 24)
    masks = [lambda b, h, q, kv: (q - kv).abs() < 5,
             lambda b, h, q, kv: torch.remainder(q - kv, 3) == 0,
             lambda b, h, q, kv: torch.logical_or(q // 8 == kv // 8, kv == 0),
             lambda b, h, q, kv: ~(kv > q) & (h == 1),
             lambda b, h, q, kv: torch.logical_not(torch.logical_and(q < 10, kv >= 5)),
             lambda b, h, q, kv: torch.where(q > 20, kv < q, kv <= 3),
             lambda b, h, q, kv: table[q % 4, kv % 4],
             lambda b, h, q, kv: torch.clamp(q - kv, min=0, max=4).to(torch.float32) == 4.0,
             noop_mask, or_masks(lambda b, h, q, kv: q == kv, lambda b, h, q, kv: kv < 2)]
    scores = [lambda s, b, h, q, kv: s * torch.sigmoid(s) + torch.exp(-torch.abs(q - kv).float() / 4),
              lambda s, b, h, q, kv: torch.maximum(s, torch.tensor(-1.0)) + bias[h, kv],
              lambda s, b, h, q, kv: torch.nn.functional.softplus(s) - torch.sqrt(q.float() + 1),
              lambda s, b, h, q, kv: 2 ** (s / 3) - 1 / (1 + kv)]
    idx = dict(b=torch.zeros(1, 1, 1, 1, dtype=torch.long), h=torch.arange(2).view(1, 2, 1, 1),
               q=torch.arange(24).view(1, 1, 24, 1), kv=torch.arange(24).view(1, 1, 1, 24))
    s = torch.randn(1, 2, 24, 24, dtype=torch.float64)
    for fn in masks:
        m, data = trace_mask(fn)
        want = fn(*idx.values())
        got = evaluate_mask(m.node, idx, data)
        assert torch.equal(torch.as_tensor(got).bool().expand(1, 2, 24, 24),
                           torch.as_tensor(want).bool().expand(1, 2, 24, 24))
    for fn in scores:
        mod, data = trace_score_mod(fn)
        close(evaluate_mask(mod.node, dict(idx, score=s), data), fn(s, *idx.values()), 1e-6)
