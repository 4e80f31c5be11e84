"""State-space layers: a Mamba-2 mixer (mamba_ssm's ``Mamba2`` / fla's ``Mamba2``) and the S4D
layer of Gu et al. 2022, mixing through mixir's ``mamba2`` and ``s4d`` library mixers.

``x [B, T, d_model]`` → ``[B, T, d_model]``; ``output_final_state=True`` adds the state dict
(``{"recurrent": h, "conv": cache}`` for Mamba2, ``{"recurrent": x_T}`` (complex) for S4D), which
``initial_state`` accepts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..library import mamba2, s4d
from ..library.lti import s4d_inv_init, s4d_lin_init, s4d_mixer
from ..library.ssm import mamba2_mixer
from .common import (
    GatedRMSNorm,
    ShortConvolution,
    a_log_init,
    check_divides,
    check_positive,
    check_x,
    dt_bias_init,
    heads,
    split_state,
)


class Mamba2(nn.Module):
    """The Mamba-2 mixer (Dao & Gu 2024, *Transformers are SSMs*, arXiv:2405.21060).

    ``in_proj`` gives ``z`` (d_inner), ``xBC`` (d_inner + 2·ngroups·d_state) and ``dt`` (nheads);
    ``xBC`` goes through a depthwise causal conv (``d_conv``, silu); per head
    ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t x_tᵀ``, ``y_t = C_tᵀ h_t + D x_t`` with
    ``Δ = softplus(dt + dt_bias)``, ``A = −exp(A_log)``; then ``rmsnorm(y · silu(z))`` per group
    (``norm_before_gate=False``) and ``out_proj``. Init: ``A ~ U[A_init_range]``, ``D = 1``,
    ``dt_bias = softplus⁻¹(dt)``, ``dt ~ exp(U[log dt_min, log dt_max])`` floored at
    ``dt_init_floor``; linear layers keep torch's default init (as mamba_ssm).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, headdim: int = 16,
                 ngroups: int = 1, A_init_range=(1.0, 16.0), dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True,
                 norm_eps: float = 1e-5, strategy: str | None = None):
        super().__init__()
        name = "Mamba2"
        self.d_model = check_positive(d_model, "d_model", name)
        self.d_state = check_positive(d_state, "d_state", name)
        self.ngroups = check_positive(ngroups, "ngroups", name)
        self.d_inner = check_positive(expand * d_model, "expand·d_model", name)
        self.headdim = check_positive(headdim, "headdim", name)
        self.nheads = check_divides(self.d_inner, headdim, "d_inner (expand·d_model)", name, "headdim")
        check_divides(self.nheads, ngroups, "nheads (d_inner/headdim)", name, "ngroups")
        self.strategy = strategy
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=bias)
        self.conv1d = ShortConvolution(conv_dim, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(a_log_init(self.nheads, *A_init_range))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner // ngroups, norm_eps, norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    @property
    def mixer(self):
        """The declaration the layer runs (``mixir.library.ssm.mamba2_mixer``)."""
        return mamba2_mixer

    def mixer_inputs(self, x, conv_cache=None, output_final_state=False):
        """``((x, dt, A, B, C, D), z, conv_cache)``: the mixer's arrays in declaration order
        (B, C repeated to ``[B, T, nheads, d_state]``), the gate and the new conv cache."""
        check_x(x, self.d_model, "Mamba2")
        zxbcdt = self.in_proj(x)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads], -1)
        xBC, conv = self.conv1d(xBC, conv_cache, output_final_state)
        xs, Bm, Cm = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        rep = self.nheads // self.ngroups
        Bm = heads(Bm, self.ngroups).repeat_interleave(rep, dim=2)
        Cm = heads(Cm, self.ngroups).repeat_interleave(rep, dim=2)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        arrays = (heads(xs, self.nheads), dt, A, Bm, Cm, self.D.float())
        return arrays, z, conv

    def forward(self, x, initial_state=None, output_final_state: bool = False):
        st = split_state(initial_state, "Mamba2", ("recurrent", "conv"))
        (xs, dt, A, Bm, Cm, D), z, conv = self.mixer_inputs(x, st["conv"], output_final_state)
        res = mamba2(xs, dt, A, Bm, Cm, D, initial_state=st["recurrent"],
                     output_final_state=output_final_state, strategy=self.strategy)
        y, h = res if output_final_state else (res, None)
        y = self.norm(heads(y.flatten(-2), self.ngroups), heads(z, self.ngroups)).flatten(-2)
        out = self.out_proj(y)
        return (out, {"recurrent": h, "conv": conv}) if output_final_state else out


class S4D(nn.Module):
    """The S4D layer (Gu, Gupta, Goel & Ré 2022, *On the Parameterization and Initialization of
    Diagonal State Space Models*, arXiv:2206.11893), its standalone ``S4D`` module.

    Each of the ``d_model`` channels is a diagonal complex SSM with ``d_state`` modes, discretised
    by zero-order hold: ``x_t = exp(ΔA) x_{t−1} + (exp(ΔA) − 1)/A · B u_t``,
    ``y_t = 2 Re(C x_t) + D u_t``; then GELU, dropout, and a position-wise ``Linear(d, 2d)`` + GLU.
    ``A = −exp(log_A_real) + i A_imag`` keeps ``Re A < 0``; ``B = 1`` is fixed (absorbed in C, as
    in the paper). Init ``"lin"``: ``A_n = −½ + iπn`` (S4D-Lin), ``"inv"``: S4D-Inv; ``C ~ CN(0,1)``,
    ``D ~ N(0,1)``, ``log Δ ~ U[log dt_min, log dt_max]`` (mixir's ``s4d_lin_init``/``s4d_inv_init``).
    """

    def __init__(self, d_model: int, d_state: int = 32, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dropout: float = 0.0, seed: int | None = None,
                 strategy: str | None = None):
        super().__init__()
        name = "S4D"
        self.d_model = check_positive(d_model, "d_model", name)
        self.d_state = check_positive(d_state, "d_state", name)
        inits = {"lin": s4d_lin_init, "inv": s4d_inv_init}
        if init not in inits:
            raise InputError(f"{name}: init must be 'lin' or 'inv', got {init!r}")
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) if seed is None else seed
        p = inits[init](d_model, d_state, seed=seed, dt_min=dt_min, dt_max=dt_max)
        self.strategy = strategy
        self.log_dt = nn.Parameter(p["log_dt"].float())
        self.log_A_real = nn.Parameter(torch.log(-p["A_re"].float()))
        self.A_imag = nn.Parameter(p["A_im"].float())
        self.C_re = nn.Parameter(p["C"].real.float().clone())
        self.C_im = nn.Parameter(p["C"].imag.float().clone())
        self.D = nn.Parameter(p["D"].float())
        self.register_buffer("B", torch.ones(d_model, d_state), persistent=False)
        for t in (self.log_dt, self.log_A_real, self.A_imag):
            t._no_weight_decay = True
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model)

    @property
    def mixer(self):
        """The declaration the layer runs (``mixir.library.lti.s4d_mixer``)."""
        return s4d_mixer

    def kernel_args(self):
        """The ``s4d`` wrapper's parameters: ``(log_dt, A_re, A_im, B, C, D)``."""
        C = torch.complex(self.C_re, self.C_im)
        return self.log_dt, -torch.exp(self.log_A_real), self.A_imag, self.B, C, self.D

    def forward(self, x, initial_state=None, output_final_state: bool = False):
        check_x(x, self.d_model, "S4D")
        st = split_state(initial_state, "S4D", ("recurrent",))
        res = s4d(x.float(), *self.kernel_args(), initial_state=st["recurrent"],
                  output_final_state=output_final_state, strategy=self.strategy)
        y, h = res if output_final_state else (res, None)
        y = self.dropout(F.gelu(y.to(x.dtype)))
        out = F.glu(self.output_linear(y), dim=-1)
        return (out, {"recurrent": h}) if output_final_state else out

