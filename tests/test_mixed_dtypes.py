"""fla's mixed precision in the library wrappers (``lowering.common.call.widen_mixed``): fp32 q/k with
16-bit v (and 16-bit or fp32 gates/β) run in fp32 and return v's dtype; 16-bit q/k/v with fp32
gates/β run natively; a key of another dtype than q and fp16 beside bf16 are refused."""
import pytest
import torch

import mixir.compat.fla as F
from mixir.errors import InputError
from mixir.library import gated_delta_rule, gla, hgrn

pytestmark = pytest.mark.interp


def _qkv(B=1, T=5, H=2, K=4, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, n, generator=g) for n in (K, K, V))
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g))
    return q, k, v, gk


def test_fp32_qk_with_bf16_v_runs_in_fp32_and_returns_bf16():
    """The result is the fp32 computation on v's values, rounded once to v's dtype; the final state
    is fp32; v's gradient comes back in bf16."""
    q, k, v, gk = _qkv()
    vb = v.bfloat16().requires_grad_()
    o, hT = gla(q, k, vb, gk, output_final_state=True, strategy="recurrent")
    want, want_hT = gla(q, k, vb.detach().float(), gk, output_final_state=True, strategy="recurrent")
    assert o.dtype == torch.bfloat16 and hT.dtype == torch.float32
    assert torch.equal(o, want.bfloat16()) and torch.equal(hT, want_hT)
    o.float().sum().backward()
    assert vb.grad.dtype == torch.bfloat16 and torch.isfinite(vb.grad.float()).all()


def test_gated_delta_rule_fp32_qk_fp16_v_and_beta():
    """fla's own test case (tests/ops/test_gdn.py, fused_recurrent): q, k, g fp32; v, β fp16."""
    q, k, v, _ = _qkv(seed=1)
    k = torch.nn.functional.normalize(k, dim=-1)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 5, 2))
    beta = torch.rand(1, 5, 2).sigmoid()
    o = gated_delta_rule(q, k, v.half(), g, beta.half(), strategy="recurrent")
    want = gated_delta_rule(q, k, v.half().float(), g, beta.half().float(), strategy="recurrent")
    assert o.dtype == torch.float16 and torch.equal(o, want.half())
    # the fla drop-in: the same result, (o, None)
    o2, none = F.fused_recurrent_gated_delta_rule(q, k, v.half(), g=g, beta=beta.half())
    assert none is None and torch.equal(o2, o)


def test_value_takes_the_result_dtype_and_fla_fused_recurrent_takes_q():
    """hgrn: the scanned input x is the value (fp32 x with a bf16 gate: fp32 out). fla's
    ``fused_recurrent_gla`` returns q's dtype (its op casts ``o.to(q.dtype)``)."""
    x = torch.randn(1, 4, 6)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 4, 6)).bfloat16()
    o = hgrn(x, g)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, hgrn(x, g.float()), rtol=0, atol=0)
    q, k, v, gk = _qkv(seed=2)
    o, _ = F.fused_recurrent_gla(q, k, v.bfloat16(), gk)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, gla(q, k, v.bfloat16().float(), gk, strategy="recurrent"),
                               rtol=0, atol=0)


def test_what_fla_refuses_stays_refused():
    q, k, v, gk = _qkv()
    with pytest.raises(InputError, match="argument 'k' has dtype torch.bfloat16, but earlier per-token "
                                         "inputs have torch.float32"):
        gla(q, k.bfloat16(), v.bfloat16(), gk)
    with pytest.raises(InputError, match="argument 'gk' has dtype torch.bfloat16, but 'v' has "
                                         "torch.float16: the 16-bit inputs of a call share one dtype"):
        gla(q, k, v.half(), gk.bfloat16())
    with pytest.raises(InputError, match="argument 'v' must be float32, float16 or bfloat16, got torch.float64"):
        gla(q, k, v.double(), gk)
