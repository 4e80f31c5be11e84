"""Every kernel a library mixer launches (generated pieces kernels and core templates, forward
and backward, both strategies) builds ahead of time for sm_80 and sm_90, and the build reports its
real registers, spills and shared memory."""
import pytest

from mixir.library import MIXERS
from mixir.lowering.common import aot
from mixir.verify import record_kernels

pytestmark = [pytest.mark.aot, pytest.mark.interp]

# one mixer per distinct kernel specialisation: scalar decay, key decay, value decay + unit key,
# unit value (vector state) + output map, auxiliary state + signs. Both run in the slow lane (GLA's
# in fp32, then all five in fp32 and bf16); the fast lane builds GLA in bf16 for sm_90 in
# test_family_contract.py.
COVER = ["simple_gla", "gla", "hgrn", "mamba_z_softplus", "lightnet"]


def _records(cover, dtypes):
    recs = {}
    for name in cover:
        for dtype in dtypes:
            recs.update(record_kernels(MIXERS[name].mixer, dtype=dtype, T=20))
    return list(recs.values())


@pytest.mark.parametrize("cover, dtypes", [
    pytest.param(["gla"], ["float32"], id="gla-fp32", marks=pytest.mark.slow),
    pytest.param(COVER, ["float32", "bfloat16"], id="all", marks=pytest.mark.slow)])
def test_every_launched_kernel_builds_for_sm80_and_sm90(cover, dtypes):
    records = _records(cover, dtypes)
    names = {r.kernel.name for r in records}
    assert any("recurrent_gla_fwd" in n for n in names) and any("chunk_gla_output" in n for n in names)
    assert any(n.startswith("mixir_pieces") or "pieces" in n or "_fwd" in n for n in names)
    results = aot.build_all(records, ["sm_80", "sm_90"], workers=0)
    assert len(results) == 2 * len(records)
    for r in results:
        assert isinstance(r, aot.KernelResources), r
        assert 0 < r.registers <= 255, r
        assert r.fits, f"{r.kernel} on {r.arch} needs {r.total_shared_bytes} B of shared memory"
    # spills are reported, not hidden: the default fp32 configs of the forward kernels spill nothing
    fwd = [r for r in results if r.kernel.endswith(("recurrent_gla_fwd", "chunk_gla_cumsum"))]
    assert fwd and all(r.spills == 0 for r in fwd), aot.format_table(fwd)
    print("\n" + aot.format_table(results))
