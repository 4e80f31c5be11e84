"""The RNN tuning space: its sympy resource formulas decide fused vs alternating (does R fit on
chip?), and the compiled kernels' real resources confirm the prediction."""
import pytest
import sympy as sp
import torch

import mixir as mx
from mixir.autotune import hardware, space as spaces
from mixir.lowering.rnn import space as rnn_space
from mixir.library.rnn import RNN_MIXERS
from mixir.lowering.common import aot
from mixir.lowering.common.launch import record_launches

from test_rnn import inputs

H100 = hardware.get("H100-SXM")


def test_formulas_are_sympy_and_name_the_on_chip_weights():
    sp_ = rnn_space.rnn_space("fused", 4, 2)
    fwd, bwd = sp_.kernels
    assert fwd.name == "rnn_fwd_fused" and bwd.name == "rnn_bwd_fused"
    assert isinstance(fwd.live_fp32, sp.Expr) and spaces.PK in fwd.live_fp32.free_symbols
    # four gates of [PK, PK] in 16-bit: PK**2 * db elements' worth of registers
    assert sp.simplify(fwd.smem.subs({rnn_space.BR: 16}) - (4 * spaces.PK ** 2 + 16 * spaces.PK) * spaces.db) == 0


@pytest.mark.parametrize("gpu", ["H100-SXM", "A100-80GB", "L4"])
def test_fused_when_r_fits_else_alternating(gpu):
    g = hardware.get(gpu)
    assert rnn_space.fits_on_chip(4, 2, 32, "bf16", g)                      # LSTM, training
    assert rnn_space.fits_on_chip(4, 2, 64, "bf16", g)                      # dR outside the loop
    assert not rnn_space.fits_on_chip(4, 4, 64, "bf16", g)                  # sLSTM: 4 states
    assert not rnn_space.fits_on_chip(4, 2, 128, "bf16", g)                 # too big for registers
    assert rnn_space.fits_on_chip(4, 2, 64, "bf16", g, backward=False)     # inference only
    assert not rnn_space.fits_on_chip(4, 2, 64, "fp32", g, backward=False)  # fp32 R is twice as big
    for D in (32, 128, 256):                                                # the fallback runs
        assert rnn_space.feasible("alternating", 4, 2, rnn_space.shape_of(16, 1024, 1, D, "bf16"), g)
    assert rnn_space.choose_strategy(3, 32, torch.bfloat16, None, states=1) == "fused"
    assert rnn_space.choose_strategy(4, 256, torch.bfloat16, None) == "alternating"


def _build(name, D, dtype, config, backward):
    m = RNN_MIXERS[name].mixer
    fn = mx.compile(m, strategy="fused", config=config)
    arrays, h0 = inputs(name, B=2, T=2, H=1, D=D)
    with record_launches() as recs:
        xs = [torch.tensor(a, dtype=dtype).requires_grad_(backward) for a in arrays]
        o = fn(*xs)
        if backward:
            o.float().sum().backward()
    return aot.build_all(list(recs.values()), ["sm_90"], workers=0)


@pytest.mark.aot
@pytest.mark.interp
def test_prediction_confirmed_by_the_compiled_kernel(fresh_triton_cache):
    shape = rnn_space.shape_of(16, 1024, 1, 64, "bf16")
    cfg = rnn_space.best_config("fused", 4, 2, shape, H100, backward=False)
    pred = rnn_space.predicted("fused", 4, 2, shape, cfg, backward=False)
    assert pred["regs"] <= 255
    res = _build("lstm", 64, torch.bfloat16, cfg, backward=False)
    (fwd,) = [r for r in res if r.kernel.endswith("fwd_fused")]
    assert fwd.spills == 0 and fwd.fits, aot.format_table(res)
    assert fwd.total_shared_bytes <= pred["smem"] + 2048, (fwd.total_shared_bytes, pred)
    print(f"\npredicted {pred}; compiled: {fwd.registers} regs, {fwd.spills} B spills, "
          f"{fwd.total_shared_bytes} B shared")


@pytest.mark.aot
@pytest.mark.interp
def test_training_at_head_size_64_is_confirmed_by_the_compiled_backward(fresh_triton_cache):
    """The fused backward keeps only R_gᵀ on chip (dR is one GEMM after the loop): LSTM D = 64 bf16
    trains fused; the space's best config compiles for sm_90 without spills."""
    shape = rnn_space.shape_of(16, 1024, 1, 64, "bf16")
    cfg = rnn_space.best_config("fused", 4, 2, shape, H100, backward=True)
    assert cfg is not None
    pred = rnn_space.predicted("fused", 4, 2, shape, cfg, backward=True)
    res = _build("lstm", 64, torch.bfloat16, cfg, backward=True)
    for r in res:
        if "fused" in r.kernel:
            assert r.spills == 0 and r.fits and r.registers <= pred["regs"] + 16, aot.format_table(res)
    (bwd,) = [r for r in res if r.kernel.endswith("bwd_fused")]
    assert bwd.total_shared_bytes <= pred["smem"] + 2048, (bwd.total_shared_bytes, pred)
    print(f"\npredicted {pred}; compiled backward: {bwd.registers} regs, {bwd.spills} B spills, "
          f"{bwd.total_shared_bytes} B shared")


def test_cuda_template_fit_formula():
    """Where R fits in shared memory for the CUDA C template (fused_cuda) though not in registers
    for the Triton fused one: LSTM (4 gates) D = 128 bf16 trains fused in CUDA C on H100 and A100
    (128 KiB of R + the backward's 16 KiB da buffer), not on an RTX 4090 (99 KiB), and D = 256
    fits nowhere (512 KiB of R)."""
    from mixir.autotune import hardware
    from mixir.lowering.rnn import space as rnn_space
    h100, a100, r4090 = (hardware.get(n) for n in ("h100", "a100", "4090"))
    assert not rnn_space.fits_on_chip(4, 2, 128, "bf16", h100)
    assert rnn_space.cuda_fits_on_chip(4, 128, "bf16", h100) and rnn_space.cuda_fits_on_chip(4, 128, "bf16", a100)
    assert not rnn_space.cuda_fits_on_chip(4, 128, "bf16", r4090)
    assert rnn_space.cuda_fits_on_chip(4, 96, "bf16", r4090)
    assert not rnn_space.cuda_fits_on_chip(4, 256, "bf16", h100)
    assert not rnn_space.cuda_fits_on_chip(4, 128, "fp32", h100)      # 256 KiB of fp32 R
