"""Pieces the chunked delta core applies on load (mixir/lowering/householder/direct.py): which
declarations skip the pieces kernel, that their chunked fwd+bwd launches the core's kernels only,
and that the core's q_scale / v_beta give the gradients of the raw q, v and β."""
import pytest
import torch

import mixir as mx
from mixir.library import MIXERS
from mixir.library.householder import delta_mixer
from mixir.lowering.common import launch
from mixir.lowering.householder import core as dc
from mixir.lowering.householder.analysis import analyse
from mixir.lowering.householder.direct import direct_plan
from mixir.verify import example_inputs

CORE = ["delta_chunk_prep", "delta_chunk_states", "delta_chunk_output"]


def _direct(m):
    return direct_plan(analyse(m), [(s.name, s.kind, s.dims) for s in m.inputs])


def test_simple_pieces_are_recognised_from_the_algebra():
    d = _direct(MIXERS["gated_delta_rule"].mixer)
    assert (d.q, d.q_factor.op, d.q_scale({"scale": 0.25})) == ("q", "scalar", 0.25)
    assert [(s.k, s.beta, s.v, s.v_beta, s.g) for s in d.steps] == [("k", "beta", "v", True, "g")]
    d = _direct(MIXERS["gated_delta_product2"].mixer)
    assert [(s.k, s.v, s.v_beta, s.g) for s in d.steps] == [("k0", "v0", True, "g"), ("k1", "v1", True, None)]
    assert _direct(MIXERS["delta_rule"].mixer).steps[0].g is None
    # computed pieces keep the pieces kernel: l2-normalised keys, an activated β, a key-diagonal gate
    assert _direct(delta_mixer("delta_rule", l2norm=True)) is None
    assert _direct(delta_mixer("gated_delta_rule", beta_act="sigmoid")) is None
    assert _direct(MIXERS["kda"].mixer) is None


def test_chunked_delta_rule_launches_the_core_kernels_only(monkeypatch):
    """Launches are recorded, not run (the numbers are not looked at: the differential tests in
    test_householder.py check them)."""
    names = []

    def counting(self, grid):
        names.append(self.name.rsplit(".", 1)[-1])
        return lambda *args, **kwargs: None

    monkeypatch.setattr(launch.Kernel, "__getitem__", counting)
    m = MIXERS["delta_rule"].mixer
    arrays, _ = example_inputs(m, B=1, T=20, H=1, K=16, V=16, seed=1)
    xs = [torch.tensor(a, dtype=torch.float16).requires_grad_() for a in arrays]
    o = mx.compile(m)(*xs, strategy="chunked")
    assert names == CORE and o.dtype == torch.float16
    o.float().sum().backward()
    assert names[3:] == CORE[:2] + ["delta_chunk_dstates", "delta_chunk_grads"]
    assert all(x.grad.dtype == torch.float16 for x in xs)


@pytest.mark.slow      # the interpreter runs both cores twice (~4 s)
@pytest.mark.parametrize("strategy", ["chunked", "recurrent"])
def test_scale_and_beta_on_load_give_the_raw_inputs_gradients(strategy):
    """The core with q_scale and v_beta equals the core on q·scale and β·v, chained by autograd."""
    torch.manual_seed(0)
    T, K, V, c = 19, 16, 16, 0.3
    q, k = torch.randn(1, T, 1, K), torch.nn.functional.normalize(torch.randn(1, T, 1, K), dim=-1)
    v, beta, g = torch.randn(1, T, 1, V), torch.rand(1, T, 1) * 2, -torch.rand(1, T, 1) * 0.2
    do = torch.randn(1, T, 1, V)
    o, _ = dc.delta_forward(q, k, v, beta, g, None, None, strategy, q_scale=c, v_beta=True)
    grads = dc.delta_backward(q, k, v, beta, g, None, None, do, None, strategy, q_scale=c, v_beta=True)
    xs = [x.clone().requires_grad_() for x in (q, v, beta)]
    qs, vs = xs[0] * c, xs[1] * xs[2][..., None]
    o_ref, _ = dc.delta_forward(qs.detach(), k, vs.detach(), xs[2].detach(), g, None, None, strategy)
    dq, dk, dv, db, dg, _ = dc.delta_backward(qs.detach(), k, vs.detach(), xs[2].detach(), g, None,
                                              None, do, None, strategy)
    ref = torch.autograd.grad([qs, vs, xs[2]], xs, [dq, dv, db])
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip((grads[0], grads[2], grads[3]), ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], dk, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[4], dg, rtol=1e-4, atol=1e-4)
