"""The generated CUDA C RNN kernels *run* on the CPU (issue 7): ``mixir.lowering.rnn.cuda_emulation``
compiles the exact source ``rnn_cuda`` emits with g++ (C++20, one ``std::thread`` per CUDA thread,
``__syncthreads`` a real ``std::barrier``) and launches the grid block by block.

* the forward of ``rnn_cuda.generate`` (what ``strategy="fused_cuda"`` builds) against the float64
  reference and the Triton fused strategy;
* the training kernels of ``rnn_cuda.generate_training`` (forward with saves + BPTT) through
  ``mixir.testing.check``: outputs, final states and every gradient (pre-activations, R, b,
  initial states) against torch autograd of the reference, and against the Triton fused backward;
* the training source compiled by nvcc for sm_80 / sm_90.

LSTM, GRU, sLSTM, Elman; head sizes 16 and 24 (32 threads, 8 idle), B = 2, H = 2, T = 5, fp32 R."""
import subprocess

import numpy as np
import pytest
import torch

import mixir as mx
from mixir.library.rnn import RNN_MIXERS
from mixir.lowering.rnn import cuda as rnn_cuda
from mixir.lowering.family import classify
from mixir.reference import run_reference
from mixir.testing import bounds_for, rel_rms_error
from mixir.testing.checker import assert_close, check
from mixir.lowering.rnn import cuda_emulation as ce
from test_rnn import inputs
from test_rnn_cuda import NVCC, nvcc_builds

pytestmark = pytest.mark.skipif(ce.available() is not None, reason=str(ce.available()))

CELLS = ["lstm", "gru", "slstm", "elman"]
B, T, H = 2, 5, 2
FP32 = bounds_for(torch.float32)


def _case(name, D, with_init, seed=1):
    """(mixer, form, fp32 arrays in declaration order, initial states tuple or None)."""
    m = RNN_MIXERS[name].mixer
    _, form = classify(m)
    arrays, h0 = inputs(name, B=B, T=T, H=H, D=D, seed=seed)
    xs = [torch.as_tensor(np.asarray(a)).float() for a in arrays]
    h0 = tuple(torch.as_tensor(np.asarray(h)).float() for h in (h0 if isinstance(h0, (tuple, list)) else (h0,)))
    return m, form, xs, (h0 if with_init else None)


def _cell_and_mats(m, form, xs):
    env = {s.name: x for s, x in zip(m.inputs, xs)}
    cell = [env[name] for name, _, _ in form.inputs]
    mats = [env[g.weight] if g.in_axis == 0 else env[g.weight].transpose(1, 2) for g in form.gates]
    return cell, mats


# ---- the harness itself ----------------------------------------------------------------------

_REVERSE = r"""
extern "C" __global__ void reverse_twice(const float* __restrict__ x, float* __restrict__ y, int n) {
  extern __shared__ unsigned char smem_raw[];
  float* buf = reinterpret_cast<float*>(smem_raw);
  const int i = threadIdx.x, base = blockIdx.x * n;
  for (int r = 0; r < 3; ++r) {              // three rounds: each needs the others' writes
    buf[i] = (r == 0 ? x[base + i] : buf[i]) + (float)r;
    __syncthreads();
    const float v = buf[n - 1 - i];
    __syncthreads();
    buf[i] = v;
    __syncthreads();
  }
  y[base + i] = buf[i] * (float)(blockIdx.y + 1);
}
"""


def test_emulator_has_block_barriers_and_grid_indices():
    """Threads exchange values through shared memory across barriers; every block gets its own
    (blockIdx.x, blockIdx.y)."""
    k = ce.build(_REVERSE, "reverse_twice")
    n, gx, gy = 48, 3, 2
    x = torch.arange(gx * n, dtype=torch.float32)
    y = torch.zeros(gx * n)
    k.launch((gx, 1), n, 4 * n, x, y, n)
    # round r adds r, then every thread takes its mirror's value (written by another thread)
    ref = x.view(gx, n).clone()
    for r in range(3):
        ref = (ref + r).flip(1)
    assert torch.equal(y.view(gx, n), ref)
    k.launch((gx, gy), n, 4 * n, x, y, n)          # last grid row wins: blockIdx.y = gy - 1
    assert torch.equal(y.view(gx, n), ref * gy)
    with pytest.raises(ce.EmulationError, match="contiguous CPU tensor"):
        k.launch((1, 1), n, 4 * n, x.view(gx, n).t(), y, n)
    with pytest.raises(ce.EmulationError, match="got torch.float64"):
        k.launch((1, 1), n, 4 * n, x.double(), y, n)
    with pytest.raises(ce.EmulationError, match="shared memory"):
        k.launch((1, 1), n, ce.SMEM_BYTES + 1, x, y, n)


# ---- the forward of ``generate`` (strategy "fused_cuda") ---------------------------------------

# (D, initial state): the fast lane runs (16, init) and (24, zero), the slow lane the other two
def _d_init():
    return [pytest.param(D, w, id=f"{D}-{i}", marks=() if (D == 16) == w else pytest.mark.slow)
            for D in (16, 24) for w, i in ((True, "init"), (False, "zero"))]


@pytest.mark.parametrize("D, with_init", _d_init())
@pytest.mark.parametrize("name", CELLS)
def test_fused_cuda_forward_matches_reference(name, D, with_init):
    m, form, xs, h0 = _case(name, D, with_init)
    cell, mats = _cell_and_mats(m, form, xs)
    out, finals = ce.rnn_forward(form, cell, mats, h0 or (None,) * len(form.states), B, T, H, D)
    o_r, f_r = run_reference(m, [x.double() for x in xs], output_final_state=True, backend="torch",
                             initial_state=None if h0 is None else tuple(h.double() for h in h0))
    f_r = f_r if isinstance(f_r, tuple) else (f_r,)
    assert rel_rms_error(out, o_r, FP32.floor) <= FP32.output
    for s, sr in zip(finals, f_r):
        assert rel_rms_error(s, sr, FP32.floor) <= FP32.state
    # the Triton fused strategy computes the same function
    o_t, f_t = mx.compile(m)(*xs, initial_state=None if h0 is None else (h0 if len(h0) > 1 else h0[0]),
                             output_final_state=True, strategy="fused")
    f_t = f_t if isinstance(f_t, tuple) else (f_t,)
    assert rel_rms_error(out, o_t, FP32.floor) <= FP32.output
    for s, st in zip(finals, f_t):
        assert rel_rms_error(s, st, FP32.floor) <= FP32.state


# ---- training: forward with saves + BPTT (``generate_training``) --------------------------------

@pytest.mark.parametrize("D, with_init", _d_init())
@pytest.mark.parametrize("name", CELLS)
def test_cuda_backward_matches_reference(name, D, with_init):
    """Outputs, final states and the gradients of every input (pre-activations, R, b) and initial
    state, against torch autograd of the float64 reference (``mixir.testing.check``)."""
    m, _, xs, h0 = _case(name, D, with_init)
    assert_close(check(m, ce.EmulatedRNNMixer(m), xs, dtype=torch.float32, initial_state=h0, poison=True))


@pytest.mark.parametrize("name", [n if n in ("lstm", "gru") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CELLS])
def test_cuda_backward_matches_triton_fused(name):
    m, _, xs, h0 = _case(name, 24, True, seed=3)
    emu = ce.EmulatedRNNMixer(m)
    comp = mx.compile(m)
    grads = []
    for f in (emu, lambda *a, **k: comp(*a, strategy="fused", **k)):
        leaves = [x.clone().requires_grad_() for x in xs]
        init = [h.clone().requires_grad_() for h in h0]
        o, fin = f(*leaves, initial_state=tuple(init) if len(init) > 1 else init[0], output_final_state=True)
        fin = fin if isinstance(fin, tuple) else (fin,)
        g = torch.Generator().manual_seed(0)
        loss = (o * torch.randn(o.shape, generator=g)).sum() + sum(
            (s * torch.randn(s.shape, generator=g)).sum() for s in fin)
        grads.append(torch.autograd.grad(loss, leaves + init))
    for spec_name, ge, gt in zip([s.name for s in m.inputs] + [f"{s.name}0" for s in m.states], *grads):
        assert rel_rms_error(ge, gt, FP32.floor) <= FP32.grad, spec_name


def test_a_wrong_backward_is_caught(monkeypatch):
    """The check can fail: flip the sign of the recurrent term of dh in the generated source."""
    real = rnn_cuda.generate_training

    def broken(form, inputs, r_type="__nv_bfloat16"):
        k = real(form, inputs, r_type)
        assert k.source.count("dn0 += dbuf") == 1
        return rnn_cuda.TrainingKernels(k.source.replace("dn0 += dbuf", "dn0 -= dbuf"), k.fwd, k.bwd,
                                        k.din, k.dpar)
    monkeypatch.setattr(rnn_cuda, "generate_training", broken)
    m, _, xs, h0 = _case("elman", 16, True)
    rep = check(m, ce.EmulatedRNNMixer(m), xs, dtype=torch.float32, initial_state=h0)
    assert not rep.ok and {q.name for q in rep.failures()} >= {"dR", "dx", "dh0"}
    assert rep["o"].ok                          # the forward is untouched


def test_training_source_is_generated_from_the_ir():
    _, form = classify(RNN_MIXERS["gru"].mixer)
    k = rnn_cuda.generate_training(form, form.inputs, "__nv_bfloat16")
    assert (k.fwd, k.bwd) == ("rnn_fwd_save_gru", "rnn_bwd_gru")
    assert k.din == ("xr", "xz", "xn") and k.dpar == ("br", "bz", "bn")
    assert k.source.count("__syncthreads") == 2 + 2 + 1 and "tanhf" in k.source
    assert rnn_cuda.training_shared_bytes(3, 64, 2) == (3 * 64 * 64 * 2 + 256 + 16, 3 * 64 * 64 * 2 + 8 * 3 * 64 + 16)
    # the forward-only kernel is unchanged by the training variant
    assert "save0" not in rnn_cuda.generate(form, form.inputs, "float")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH nor in the Triton wheel")
@pytest.mark.aot
@pytest.mark.parametrize("name,r_type,arch", nvcc_builds({("lstm", "sm_90"), ("gru", "sm_80")}))
def test_training_cuda_compiles(tmp_path, name, r_type, arch):
    _, form = classify(RNN_MIXERS[name].mixer)
    k = rnn_cuda.generate_training(form, form.inputs, r_type)
    cu = tmp_path / f"{name}_train.cu"
    cu.write_text(k.source)
    res = subprocess.run([NVCC, f"-arch={arch}", "-c", str(cu), "-o", str(tmp_path / f"{name}.o"),
                          "-Xptxas", "-v"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert k.fwd in res.stderr and k.bwd in res.stderr
    assert res.stderr.count("0 bytes spill stores") == 2, res.stderr[-3000:]   # both kernels, no spills
