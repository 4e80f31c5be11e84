"""The launcher: interpreted on CPU tensors (nested jit calls included), and a real compile in
the same process afterwards still works (the interpreter's patches of triton.language are undone)."""
import pytest
import torch
import triton
import triton.language as tl

from mixir.lowering.common import aot
from mixir.lowering.common.launch import kernel, record_launches


@triton.jit
def _twice(a):
    return a * 2


@kernel
def _nested(x, o, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(x + offs)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    tl.store(o + offs, _twice(a) + acc + tl.sum(a, axis=0) + tl.max(a, axis=0))


@pytest.mark.aot
def test_nested_jit_calls_run_in_the_interpreter_and_aot_still_compiles():
    x = torch.randn(16)
    o = torch.full((16,), float("nan"))
    with record_launches() as records:
        _nested[(1,)](x, o, BLOCK=16)
    torch.testing.assert_close(o, 2 * x + x.sum() + x.max())
    assert tl.core.tensor.__repr__ is not None
    (rec,) = records.values()
    res = aot.build(rec, "sm_90")
    assert res.registers > 0 and res.spills == 0
