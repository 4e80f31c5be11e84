"""xLSTM's mLSTM through the gated-linear family: the stabiliser m is a max-plus auxiliary scan,
the normaliser n a gated-linear vector scan that depends on m, the matrix memory C the main state,
and the output reads C, n and m (``C q / max(|nᵀq|, exp(-m))``).

Differential tests against the float64 reference (which runs the declaration token by token, its
gradient through ``max`` is autograd's subgradient, as is the scan kernel's backward): both
strategies, fp32/bf16, initial states, cu_seqlens, gradients; plus the max-plus scan itself and
the analysis' refusals. Kernels run in Triton's interpreter on CPU tensors; shapes are tiny."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Scale, State
from mixir.dsl import ir
from mixir.errors import UnsupportedMixerError
from mixir.library.rnn import RNN_MIXERS, mlstm, mlstm_mixer
from mixir.lowering.gated_linear.analysis import GatedLinearForm, MaxPlusForm, analyse
from mixir.lowering.family import classify
from mixir.lowering.gated_linear.maxplus import maxplus_scan
from mixir.testing.checker import assert_close, check, check_cu_seqlens

ENTRY = RNN_MIXERS["mlstm"]


def _inputs(B, T, H, K, V, seed, N=None):
    rng = np.random.default_rng(seed)
    return ENTRY.make_inputs(rng, B, T, H, K, V), ENTRY.make_initial_state(rng, N or B, H, K, V)


def test_mlstm_compiles_through_gated_linear():
    fam, plan = classify(mlstm_mixer)
    assert fam.name == "gated_linear" and ENTRY.requires == ()
    assert plan.main.state.name == "C" and isinstance(plan.main, GatedLinearForm)
    (im, m), (i_n, n) = plan.aux                       # m first: n's decay reads m__prev, m__new
    assert (m.state.name, n.state.name) == ("m", "n") and (im, i_n) == (2, 1)
    assert isinstance(m, MaxPlusForm) and isinstance(n, GatedLinearForm)
    assert ir.render(m.a) == "logsigmoid(f)" and ir.render(m.b) == "i"
    # the decays of C and n: exp(log σ(f) + m_{t-1} - m_t), no sign to track
    for form in (plan.main, n):
        assert form.g is not None and form.g.sign is None and "m__new" in ir.render(form.g.log)
    assert "n__new" in ir.render(plan.main.out_scale)     # the output reads n and m
    assert plan.transition == "scalar; auxiliary scans: m (max-plus), n"
    assert "max-plus stabiliser" in plan.describe()


# the fast lane: chunked fp32 and recurrent bf16 (every strategy in fp32, one chunk:
# test_family_contract.py); the slow lane the other two
@pytest.mark.parametrize("strategy, dtype", [
    pytest.param(s, d, id=f"{s}-{i}",
                 marks=() if (s == "chunked") == (i == "fp32") else pytest.mark.slow)
    for i, d in [("fp32", torch.float32), ("bf16", torch.bfloat16)] for s in ["recurrent", "chunked"]])
def test_mlstm_matches_reference(strategy, dtype):
    arrays, h0 = _inputs(B=1, T=21, H=2, K=8, V=16, seed=1)
    fn = mx.compile(mlstm_mixer, config={"BT": 16})     # two chunks
    assert_close(check(mlstm_mixer, fn, arrays, dtype=dtype, strategy=strategy, initial_state=h0))


def test_mlstm_forward_has_no_token_sized_torch_ops():
    """Chunked: the output scale e is applied in the core's store (no fp32 output, no torch
    mul / cast over [T, V]) and n's values before each token are never formed (nothing reads
    them): the torch ops between the kernels touch per-token scalars (m's scan) and states only.
    The main state's launch takes e; n, a vector state, runs its own default (recurrent)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    B, T, H, K = 1, 40, 2, 16
    arrays, _ = _inputs(B=B, T=T, H=H, K=K, V=K, seed=4)
    xs = [torch.as_tensor(a, dtype=torch.bfloat16) for a in arrays]
    fn = mx.compile(mlstm_mixer)
    assert "n__prev" not in fn.reads and {"n__new", "m__new", "m__prev"} <= fn.reads
    ops = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            # views (reshapes, broadcasts) move no data
            ops.append((str(func), [o.numel() for o in outs if isinstance(o, torch.Tensor)
                                    and not func.is_view], args))
            return out

    with Record():
        o = fn(*xs, strategy="chunked")
    assert o.dtype == torch.bfloat16
    big = [(name, n) for name, n, _ in ops if not name.startswith("mixir.") and max(n, default=0) > B * T * H]
    assert not big, big
    cores = [args for name, _, args in ops if name.startswith("mixir.gla_fwd")]
    assert len(cores) == 2 and cores[-1][-1] is not None       # the main launch takes o_scale


def test_mlstm_single_token_zero_state():
    arrays, _ = _inputs(B=3, T=1, H=1, K=16, V=16, seed=2)
    assert_close(check(mlstm_mixer, mx.compile(mlstm_mixer), arrays, dtype=torch.float32,
                       strategy="recurrent"))


@pytest.mark.parametrize("strategy", [pytest.param("recurrent", marks=pytest.mark.slow), "chunked"])
def test_mlstm_cu_seqlens(strategy):
    arrays, h0 = _inputs(B=1, T=23, H=1, K=8, V=8, seed=3, N=4)
    cu = torch.tensor([0, 5, 5, 17, 23])                 # an empty sequence inside
    fn = mx.compile(mlstm_mixer, config={"BT": 16})
    assert_close(check_cu_seqlens(mlstm_mixer, fn, arrays, cu, dtype=torch.float32,
                                  strategy=strategy, initial_state=h0))
    assert_close(check(mlstm_mixer, fn, arrays, dtype=torch.float32, strategy=strategy,
                       initial_state=h0, cu_seqlens=cu))


def test_mlstm_wrapper_and_strong_input_gates():
    """The fla-layout wrapper; input gates far above the forget path (the stabiliser jumps, so the
    decays exp(log f + m_prev - m) of C and n are tiny) still match the reference."""
    torch.manual_seed(0)
    B, T, H, K = 1, 12, 2, 8
    q, k, v = (torch.randn(B, T, H, K) for _ in range(3))
    i = 8.0 * torch.randn(B, T, H)
    f = torch.randn(B, T, H)
    o, (C, n, m) = mlstm(q, k, v, i, f, output_final_state=True, strategy="chunked")
    assert o.shape == (B, T, H, K) and C.shape == (B, H, K, K) and n.shape == (B, H, K) and m.shape == (B, H)
    ref_o, (_, _, ref_m) = mx.reference(mlstm_mixer)(q.double(), k.double(), v.double(), i.double(),
                                                     f.double(), output_final_state=True)
    torch.testing.assert_close(o.double(), torch.as_tensor(ref_o), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.double(), torch.as_tensor(ref_m), rtol=1e-5, atol=1e-5)


@mx.mixer
def mlstm_per_key_forget(q: In["K"], k: In["K"], v: In["V"], i: In[()], f: In["K"], scale: Scale["K"],
                         C: State["K", "V"], m: State["K"]):
    """A vector stabiliser: per-key forget gates, a scalar input gate broadcast over K."""
    logf = mx.logsigmoid(f)
    m_new = mx.maximum(logf + m, i)
    C = mx.exp(logf + m - m_new) * C + mx.outer(mx.exp(i - m_new) * k, v)
    return (q * scale) @ C, C, m_new


def test_vector_stabiliser_per_key_decay():
    plan = analyse(mlstm_per_key_forget)
    ((_, m),) = plan.aux
    assert isinstance(m, MaxPlusForm) and m.state.dims == ("K",) and m.b.dims == ()
    assert plan.main.gk is not None and plan.main.g is None           # a per-key decay of C
    rng = np.random.default_rng(4)
    B, T, H, K, V = 2, 9, 1, 8, 8
    arrays = [rng.standard_normal(s) for s in ((B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H),
                                               (B, T, H, K))]
    h0 = (rng.standard_normal((B, H, K, V)), rng.standard_normal((B, H, K)))
    assert_close(check(mlstm_per_key_forget, mx.compile(mlstm_per_key_forget), arrays,
                       dtype=torch.float32, strategy="chunked", initial_state=h0))


# ---- the max-plus scan --------------------------------------------------------------------------

def _loop(a, b, m0, lens):
    """m_t = max(m_{t-1} + a_t, b_t), sequence by sequence (a, b packed along dim 1 when lens)."""
    out, finals, t0 = torch.empty_like(a), [], 0
    rows = [(r, 0, a.shape[1]) for r in range(a.shape[0])] if lens is None else \
        [(0, sum(lens[:n]), ln) for n, ln in enumerate(lens)]
    for n, (r, t0, ln) in enumerate(rows):
        m = m0[n]
        for t in range(t0, t0 + ln):
            m = torch.maximum(m + a[r, t], b[r, t])
            out[r, t] = m
        finals.append(m)
    return out, torch.stack(finals)


@pytest.mark.parametrize("packed, long", [(False, False), (True, False), (True, True)])
def test_maxplus_scan_equals_the_loop_with_its_subgradient(packed, long, monkeypatch):
    """The scan kernel (blocks of 64 tokens) against the token loop: values, finals and the
    gradients of a, b and m0; ``long``: sequences over several blocks, one ending on a block's
    last token, an empty one between them. Float buffers NaN-poisoned (an unwritten element
    fails), the int8 branch flags left as allocated."""
    monkeypatch.setenv("MIXIR_POISON", "1")
    g = torch.Generator().manual_seed(5)
    lens = ([64, 0, 130, 7] if long else [3, 0, 6, 1]) if packed else None
    B, T, H = (1, sum(lens), 2) if packed else (3, 7, 2)
    N = len(lens) if packed else B
    a = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64))
    b = 2.0 * torch.randn(B, T, H, generator=g, dtype=torch.float64)
    m0 = torch.randn(N, H, generator=g, dtype=torch.float64)
    cu = torch.tensor(np.cumsum([0] + lens)) if packed else None
    xs = [x.clone().requires_grad_() for x in (a, b, m0)]
    ys = [x.clone().requires_grad_() for x in (a, b, m0)]
    m, fin = maxplus_scan(*xs, cu)
    m_ref, fin_ref = _loop(*ys, lens)
    torch.testing.assert_close(m, m_ref)
    torch.testing.assert_close(fin, fin_ref)
    w, wf = torch.randn(m.shape, generator=g, dtype=torch.float64), torch.randn(fin.shape, generator=g,
                                                                                 dtype=torch.float64)
    g1 = torch.autograd.grad((m * w).sum() + (fin * wf).sum(), xs)
    g2 = torch.autograd.grad((m_ref * w).sum() + (fin_ref * wf).sum(), ys)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y)


def test_maxplus_ops_pass_opcheck():
    """The scan's custom ops (one Triton launch forward, one backward) have consistent schemas,
    fake functions, autograd registration and AOT-autograd tracing (torch.library.opcheck's
    default checks), packed with an empty sequence and a vector stabiliser (D = 3)."""
    from mixir.lowering.gated_linear import maxplus as mp
    g = torch.Generator().manual_seed(7)
    a = torch.nn.functional.logsigmoid(torch.randn(1, 9, 2, 3, generator=g)).requires_grad_()
    b = torch.randn(1, 9, 2, 3, generator=g).requires_grad_()
    m0 = torch.randn(3, 2, 3, generator=g).requires_grad_()
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    torch.library.opcheck(mp.maxplus_fwd, (a, b, m0, cu))
    m, fin, c = mp.maxplus_fwd(a, b, m0, cu)
    torch.testing.assert_close(fin[1], m0[1].detach())               # the empty sequence
    torch.library.opcheck(mp.maxplus_bwd, (c, torch.randn_like(m), torch.randn_like(fin), m0.detach(),
                                           cu))


# ---- refusals -----------------------------------------------------------------------------------

def test_refusals_name_the_reason():
    @mx.mixer
    def scaled_stabiliser(q: In["K"], k: In["K"], v: In["V"], i: In[()], C: State["K", "V"], m: State[()]):
        m_new = mx.maximum(0.5 * m, i)                  # slope 1/2: not a max-plus recurrence
        C = mx.exp(m - m_new) * C + mx.outer(k, v)
        return q @ C, C, m_new
    with pytest.raises(UnsupportedMixerError, match="nonlinear in the state"):
        analyse(scaled_stabiliser)

    @mx.mixer
    def reads_main(q: In["K"], k: In["K"], v: In["V"], C: State["K", "V"], z: State["K"]):
        C = C + mx.outer(k, v)
        z = z + mx.sum(C, "V")                          # an auxiliary state fed by the main one
        return q @ C, C, z
    with pytest.raises(UnsupportedMixerError, match="depends on the main state"):
        analyse(reads_main)

    @mx.mixer
    def cycle(q: In["K"], k: In["K"], v: In["V"], C: State["K", "V"], a: State[()], b: State[()]):
        a2 = mx.exp(-b * b) * a + 1.0
        b2 = mx.exp(-a * a) * b + 1.0
        C = mx.exp(-a2 - b2) * C + mx.outer(k, v)
        return q @ C, C, a2, b2
    with pytest.raises(UnsupportedMixerError, match="cycle"):
        analyse(cycle)
