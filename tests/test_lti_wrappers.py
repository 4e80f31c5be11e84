"""The LTI library wrappers (LSSL, LMU, S4D, S4): against their dense recurrences, S4-LegS
against S4D-LegS, the initialisers, and bad input naming the argument."""
import numpy as np
import pytest
import torch

import mixir as mx
from mixir.errors import InputError
from mixir.library import lti
from mixir.lowering.lti.system import kernel_powers

from lti_cases import lti_inputs as _inputs, rel_rms_error


# ---- LSSL / LMU against their dense recurrences; S4-LegS vs S4D-LegS ----------------------------

def _dense(discretise, A, Bm, C, D, dt, u):
    """y of x_t = Ā x_{t−1} + B̄ u_t, y_t = C x_t + D u_t (float64), (Ā, B̄) = discretise(A_h, Δ_h, B_h)."""
    Bsz, T, H = u.shape
    N = A.shape[-1]
    ys = []
    for h in range(H):
        Ab, Bb = discretise(torch.as_tensor(A[h] if A.ndim == 3 else A), dt[h], Bm[h], torch.eye(N, dtype=torch.float64))
        x = torch.zeros(Bsz, N, dtype=torch.float64)
        yh = []
        for t in range(T):
            x = x @ Ab.T + Bb * u[:, t, h, None]
            yh.append(x @ C[h] + D[h] * u[:, t, h])
        ys.append(torch.stack(yh, 1))
    return torch.stack(ys, -1)


def _bilinear(Ah, dt, B, eye):
    """(I − Δ/2 A)⁻¹(I + Δ/2 A), (I − Δ/2 A)⁻¹ Δ B."""
    inv = torch.linalg.inv(eye - dt / 2 * Ah)
    return inv @ (eye + dt / 2 * Ah), inv @ (dt * B)


def _zoh(Ah, dt, B, eye):
    """e^{ΔA}, A⁻¹(e^{ΔA} − I) B."""
    Ab = torch.linalg.matrix_exp(dt * Ah)
    return Ab, torch.linalg.solve(Ah, (Ab - eye) @ B)


@pytest.mark.parametrize("N", [5, 8])
def test_lssl_and_lmu_zero_order_hold(N):
    """``discretization="zoh"`` (LMU's default, as in its paper; an option of lssl) runs the modes
    through the ZOH mixer and equals the dense e^{ΔA} recurrence."""
    rng = np.random.default_rng(N + 1)
    H, B, T = 2, 2, 30
    u = torch.tensor(rng.standard_normal((B, T, H)))
    C, Bm = (torch.tensor(rng.standard_normal((H, N))) for _ in range(2))
    D = torch.tensor(rng.standard_normal(H))
    theta = torch.tensor([7.0, 20.0], dtype=torch.float64)
    A, Bl = lti.lmu_matrices(N)
    A_h = np.stack([A / float(t) for t in theta])
    B_h = torch.stack([torch.tensor(Bl) / t for t in theta])
    for strategy in ("conv", "recurrent"):
        y = lti.lmu(u, theta, C, D, strategy=strategy)
        assert rel_rms_error(y, _dense(_zoh, A_h, B_h, C, D, torch.ones(H, dtype=torch.float64), u), 1e-12) < 1e-9
    dt = torch.tensor([0.05, 0.3], dtype=torch.float64)
    y = lti.lssl(u, dt, Bm, C, D, discretization="zoh")
    assert rel_rms_error(y, _dense(_zoh, lti.hippo_legs(N)[0], Bm, C, D, dt, u), 1e-12) < 1e-9
    with pytest.raises(InputError, match="discretization"):
        lti.lmu(u, theta, C, D, discretization="euler")


@pytest.mark.parametrize("N", [5, 8])
def test_lssl_and_lmu_equal_dense_recurrences(N):
    rng = np.random.default_rng(N)
    H, B, T = 2, 2, 30
    u = torch.tensor(rng.standard_normal((B, T, H)))
    C, Bm = (torch.tensor(rng.standard_normal((H, N))) for _ in range(2))
    D = torch.tensor(rng.standard_normal(H))
    dt = torch.tensor([0.05, 0.3], dtype=torch.float64)
    A, _ = lti.hippo_legs(N)
    for strategy in ("conv", "recurrent"):
        y = lti.lssl(u, dt, Bm, C, D, strategy=strategy)
        assert rel_rms_error(y, _dense(_bilinear, A, Bm, C, D, dt, u), 1e-12) < 1e-9
    theta = torch.tensor([7.0, 20.0], dtype=torch.float64)
    A, Bl = lti.lmu_matrices(N)
    A_h = np.stack([A / float(t) for t in theta])
    B_h = torch.stack([torch.tensor(Bl) / t for t in theta])
    y = lti.lmu(u, theta, C, D, strategy="conv", discretization="bilinear")
    assert rel_rms_error(y, _dense(_bilinear, A_h, B_h, C, D, torch.ones(H, dtype=torch.float64), u),
                         1e-12) < 1e-9
    # gradients reach the trainable step and read-out through the wrapper
    dt_ = dt.clone().requires_grad_()
    C_ = C.clone().requires_grad_()
    lti.lssl(u, dt_, Bm, C_, D).sum().backward()
    assert dt_.grad is not None and torch.isfinite(dt_.grad).all() and C_.grad.abs().sum() > 0


def test_s4_legs_basis_approaches_s4d_legs_as_n_grows():
    """S4D paper (Gu et al. 2022, Sec. 3): the diagonal restriction of the DPLR HiPPO-LegS system,
    (Λ, B̃/2), reproduces the S4-LegS basis functions as N → ∞. Measured per real coordinate n of
    the state (C̃ = row n of V): the relative kernel error of coordinate 0 falls with N."""
    s4 = mx.compile(lti.s4_mixer)
    s4d = mx.compile(lti.s4d_bilinear_mixer)
    errs = []
    for N in (16, 64):
        lam, P, Bt, V = lti.hippo_legs_dplr(N)
        t = lambda x: torch.tensor(np.asarray(x))[None]            # noqa: E731
        C = V[0, :]
        prm = {"log_dt": torch.tensor([np.log(1e-3)]), "L_re": t(lam.real), "L_im": t(lam.imag),
               "P_re": t(P.real), "P_im": t(P.imag), "B_re": t(Bt.real), "B_im": t(Bt.imag),
               "C_re": t(C.real), "C_im": t(C.imag), "D": torch.zeros(1, dtype=torch.float64)}
        full = s4.system(prm, 1, {"N": N}, {}, torch.float64, "cpu")
        diag_prm = {k: v for k, v in prm.items() if not k.startswith("P")}
        diag_prm["B_re"], diag_prm["B_im"] = prm["B_re"] / 2, prm["B_im"] / 2
        diag = s4d.system(diag_prm, 1, {"N": N}, {}, torch.float64, "cpu")
        k_full = kernel_powers(full, full.beta, 1024)
        errs.append(rel_rms_error(kernel_powers(diag, diag.beta, 1024), k_full, 1e-12))
    assert errs[1] < 0.75 * errs[0], errs


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    p = lti.s4d_lin_init(2, 4)
    u = torch.randn(1, 10, 2)
    y = lti.s4d(u, **p)
    assert y.shape == (1, 10, 2)
    with pytest.raises(InputError, match="A_re"):
        lti.s4d(u, **{**p, "A_re": -p["A_re"]})
    with pytest.raises(InputError, match="'B'|B must"):
        lti.s4d(u, **{**p, "B": p["B"][:, :3]})
    with pytest.raises(InputError, match="u must"):
        lti.s4d(u[0], **p)
    with pytest.raises(InputError, match="dt"):
        lti.lssl(u, torch.tensor([0.1, 0.0]), torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2))
    with pytest.raises(InputError, match="theta"):
        lti.lmu(u, -1.0, torch.randn(2, 4), torch.zeros(2))
    # the declared mixer itself: an unstable transition names the parameters λ depends on
    fn = mx.compile(lti.s4d_mixer)
    arrays, _ = _inputs("s4d", B=1, T=5, N=4)
    arrays = [torch.tensor(a, dtype=torch.float32) for a in arrays]
    arrays[2] = arrays[2].abs()
    with pytest.raises(InputError, match="unstable.*A_re"):
        fn(*arrays)
    with pytest.raises(InputError, match="N"):
        fn(*(arrays[:3] + [arrays[3][:, :3]] + arrays[4:]))


def test_wrappers_and_initialisers():
    u = torch.randn(2, 24, 3)
    for init in (lti.s4d_lin_init, lti.s4d_inv_init):
        p = init(3, 8)
        y, hT = lti.s4d(u, **p, output_final_state=True)
        y2 = lti.s4d(u, **p, strategy="recurrent")
        assert hT.shape == (2, 3, 8) and hT.is_complex()
        assert rel_rms_error(y, y2, 1e-2) < 1e-4
        # continuing from the final state equals one call on the concatenation
        ya, ha = lti.s4d(u[:, :15], **p, output_final_state=True)
        yb = lti.s4d(u[:, 15:], **p, initial_state=ha)
        assert rel_rms_error(torch.cat([ya, yb], 1), y, 1e-2) < 1e-4
    p = lti.s4_legs_init(3, 4, dt_min=0.01, dt_max=0.1)
    y = lti.s4(u, **p)
    assert rel_rms_error(y, lti.s4(u, **p, strategy="recurrent"), 1e-2) < 1e-4
