"""The error measure and the per-dtype bounds: written down once, used by every check.

The measure is fla's: a relative RMS error with an absolute floor on the denominator,

    rel_rms_error(actual, expected, floor) = rms(actual - expected) / max(rms(expected), floor)

computed in float64. The expected values come from the float64 reference run on the inputs
*already rounded to the test dtype*, so the error measures what the kernel adds (low-precision
intermediates, fp32 accumulation, the final rounding of its outputs), not the rounding of the
inputs. ``docs/verification.md`` explains how the numbers below were chosen.

The floor is an absolute scale below which a tensor counts as zero. The strategies draw inputs of
unit scale, so outputs, states and gradients are O(1)..O(10); a tensor whose expected value is
exactly zero (e.g. the gradient of a gate at T = 1 with no initial state) may still be computed by
a kernel as a difference of O(1) terms, and the floor keeps that cancellation from reading as an
infinite relative error. A check on inputs of another scale should pass its own ``floor``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["Bounds", "BOUNDS", "bounds_for", "rel_rms_error", "rms"]


def _as_f64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def rms(x) -> float:
    """Root mean square, in float64 (0.0 for an empty tensor)."""
    t = _as_f64(x)
    if t.numel() == 0:
        return 0.0
    return float(t.pow(2).mean().sqrt())


def rel_rms_error(actual, expected, floor: float) -> float:
    """``rms(actual - expected) / max(rms(expected), floor)``, in float64.

    Returns ``nan`` if either side holds a NaN or an infinity (so ``error <= bound`` is False: a
    NaN or inf anywhere fails), and ``inf`` if the shapes differ. Empty tensors compare equal (0.0).
    """
    a, e = _as_f64(actual), _as_f64(expected)
    if tuple(a.shape) != tuple(e.shape):
        return math.inf
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(e).all())):
        return math.nan
    if a.numel() == 0:
        return 0.0
    num = float((a - e).pow(2).mean().sqrt())
    den = max(float(e.pow(2).mean().sqrt()), float(floor))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Largest acceptable ``rel_rms_error`` for one dtype, per kind of quantity."""
    output: float     # the per-token output o
    state: float      # the final state(s), always returned in fp32
    grad: float       # gradients w.r.t. every tensor input and the initial state(s)
    floor: float      # absolute floor of the denominator (inputs are of unit scale)

    def __getitem__(self, kind: str) -> float:
        if kind not in ("output", "state", "grad"):
            raise KeyError(f"no bound for quantity kind {kind!r} (output, state, grad)")
        return getattr(self, kind)


#: The bounds, per dtype of the inputs (and of the output and input gradients).
#:
#: fp32: kernels compute and accumulate in fp32 (ieee dots, no tf32 where fp32 is compared).
#:   Measured errors of a chunked GLA are ~1e-6 on ordinary inputs and up to ~7e-5 with log-decays
#:   of -1e3 mixed in (a chunk-local cumsum of magnitude M carries an absolute error ~M * 2**-24 in
#:   the exponent). Bounds: 1e-4 forward, 3e-4 gradients (one more reverse pass of rounding).
#: bf16: the output itself is rounded to bf16 (unit roundoff 2**-8; ~2.3e-3 relative RMS), and
#:   kernels round one or two dot operands per stage to bf16 (fla casts the state and the
#:   intra-chunk attention matrix to the input dtype before tensor-core dots). 1e-2 forward,
#:   2e-2 gradients (rounded twice: the upstream gradient and the stored result).
#: fp16: the same stages with unit roundoff 2**-11 (~3e-4 relative RMS per rounding): 2e-3
#:   forward, 5e-3 gradients.
#: The final state is fp32 in every case but is built from low-precision operands, so it shares
#:   the forward bound of its dtype.
BOUNDS: dict = {
    torch.float32: Bounds(output=1e-4, state=1e-4, grad=3e-4, floor=1e-2),
    torch.bfloat16: Bounds(output=1e-2, state=1e-2, grad=2e-2, floor=1e-1),
    torch.float16: Bounds(output=2e-3, state=2e-3, grad=5e-3, floor=1e-1),
}


def bounds_for(dtype) -> Bounds:
    """The ``Bounds`` of ``dtype`` (a ``torch.dtype`` or its name: "float32", "bf16", ...)."""
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        if dtype.replace("torch.", "") not in names:
            raise KeyError(f"no bounds for dtype {dtype!r}")
        dtype = names[dtype.replace("torch.", "")]
    try:
        return BOUNDS[dtype]
    except KeyError:
        raise KeyError(f"no bounds for dtype {dtype}; known: {sorted(map(str, BOUNDS))}") from None
