"""Every generated RNN kernel (fused and alternating, forward and backward) builds ahead of time
for sm_80 and sm_90, and the build reports its real registers, spills and shared memory."""
import pytest
import torch

import mixir as mx
from mixir.library.rnn import RNN_MIXERS
from mixir.lowering.common import aot
from mixir.lowering.common.launch import record_launches

from test_rnn import inputs

pytestmark = [pytest.mark.aot, pytest.mark.interp]

# LSTM (4 gates, 2 states) in bf16: tensor-core dots; GRU (3 gates: not a power of two) in fp32
# (the slow lane)
COVER = [("lstm", torch.bfloat16, 32), ("gru", torch.float32, 24)]


@pytest.fixture(params=[pytest.param(COVER[:1], id="lstm", marks=pytest.mark.slow),  # fast lane:
                        pytest.param(COVER, id="lstm-gru",                     # test_family_contract
                                     marks=pytest.mark.slow)])
def records(request, fresh_triton_cache):
    recs = {}
    for name, dtype, D in request.param:
        m = RNN_MIXERS[name].mixer
        fn = mx.compile(m)
        arrays, h0 = inputs(name, B=2, T=3, H=1, D=D)
        with record_launches() as r:
            for strategy in ("fused", "alternating"):
                xs = [torch.tensor(a, dtype=dtype).requires_grad_() for a in arrays]
                init = tuple(torch.tensor(h, dtype=torch.float32) for h in h0) if isinstance(h0, tuple) \
                    else torch.tensor(h0, dtype=torch.float32)
                o, _ = fn(*xs, initial_state=init, output_final_state=True, strategy=strategy)
                o.float().sum().backward()
        recs.update(r)
    return list(recs.values())


def test_every_rnn_kernel_builds_for_sm80_and_sm90(records):
    roles = {r.kernel.name.rsplit(".", 1)[-1] for r in records}
    assert roles == {"fwd_fused", "fwd_step", "bwd_fused", "bwd_step"}
    results = aot.build_all(records, ["sm_80", "sm_90"], workers=0)
    assert len(results) == 2 * len(records)
    for r in results:
        assert isinstance(r, aot.KernelResources), r
        assert 0 < r.registers <= 255, r
        assert r.fits, f"{r.kernel} on {r.arch} needs {r.total_shared_bytes} B of shared memory"
    # the fused forward keeps R resident for D = 32 without spilling
    fwd = [r for r in results if r.kernel.endswith("fwd_fused")]
    assert fwd and all(r.spills == 0 for r in fwd), aot.format_table(fwd)
    print("\n" + aot.format_table(results))
