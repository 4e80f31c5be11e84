"""Shared helpers of the LTI family's tests (tests/test_lti.py, test_lti_kernels.py,
test_lti_wrappers.py): the library's LTI entries, their sampled inputs, and a relative RMS error
that keeps the imaginary part of complex tensors."""
import numpy as np
import torch

from mixir.library import lti
from mixir.testing.tolerances import rel_rms_error as _rel_rms_error


def rel_rms_error(a, b, floor):
    """rel_rms_error on (re, im) pairs for complex tensors (it would drop the imaginary part)."""
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.to(torch.complex128)), torch.view_as_real(b.to(torch.complex128))
    return _rel_rms_error(a, b, floor)


ENTRIES = lti.LTI_ENTRIES


def lti_inputs(name, B=2, T=33, H=2, N=8, seed=0):
    """The sampled arrays and initial state of the library entry ``name``."""
    e = ENTRIES[name]
    rng = np.random.default_rng(seed)
    arrays = e.make_inputs(rng, B=B, T=T, H=H, K=N, V=N)
    h0 = e.make_initial_state(rng, N=B, H=H, K=N, V=N)
    return arrays, h0
