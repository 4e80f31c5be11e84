"""Building blocks shared by the ``mixir.nn`` layers: norms, the short causal convolution, the
initialisers of the papers, input checks and head reshapes.

Everything here is plain torch (no kernels): the token mixing itself runs in mixir's compiled
mixers, called by the layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

#: fla's gain for ``xavier_uniform_`` on every projection of its layers (``2 ** -2.5``).
FLA_GAIN = 2 ** -2.5


def check_x(x, d_model: int, layer: str) -> tuple[int, int]:
    """``InputError`` unless ``x`` is a floating ``[B, T, d_model]`` tensor; returns ``(B, T)``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{layer}: x must be a torch.Tensor [B, T, d_model], got {type(x).__name__}")
    if x.ndim != 3 or int(x.shape[-1]) != d_model:
        raise InputError(f"{layer}: x must be [B, T, d_model] with d_model = {d_model}, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{layer}: x must be floating point, got {x.dtype}")
    return int(x.shape[0]), int(x.shape[1])


def check_positive(value, name: str, layer: str) -> int:
    """``InputError`` unless ``value`` is a positive int (bools refused); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{layer}: {name} must be a positive int, got {value!r}")
    return value


def check_divides(total: int, parts: int, what: str, layer: str, parts_name: str = "num_heads") -> int:
    """``total // parts``, or ``InputError`` naming ``what`` and ``parts_name`` when ``parts`` does
    not divide it."""
    if total % parts:
        raise InputError(f"{layer}: {what} = {total} is not divisible by {parts_name} = {parts}")
    return total // parts


def heads(t: torch.Tensor, H: int) -> torch.Tensor:
    """``[B, T, H·D]`` → ``[B, T, H, D]`` (a view)."""
    return t.unflatten(-1, (H, -1))


def xavier_(module: nn.Module, gain: float = FLA_GAIN) -> None:
    """fla's layer initialisation: ``xavier_uniform_(weight, gain)`` and zero bias on every
    ``nn.Linear`` inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` (``y > 0``): ``y + log(−expm1(−y))``."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 generator=None) -> torch.Tensor:
    """Mamba's time-step bias: ``dt ~ exp(U[log dt_min, log dt_max])`` clamped at ``dt_init_floor``,
    returned as ``softplus⁻¹(dt)`` so that ``softplus(0 + dt_bias) = dt`` (Gu & Dao 2023, Mamba-2,
    Gated DeltaNet)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=dt_init_floor)).float()


def a_log_init(n: int, low: float = 1.0, high: float = 16.0, generator=None) -> torch.Tensor:
    """Mamba-2 / Gated DeltaNet: ``A_log = log(U[low, high])`` (the decay rate is ``−exp(A_log)``)."""
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator).log().float()


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dim (computed in fp32)."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a swish output gate over the last dim (per head when the input is
    ``[..., H, D]`` and ``dim = D``).

    - ``norm_before_gate=True`` (fla's ``FusedRMSNormGated``): ``rmsnorm(x) · w · silu(g)``;
    - ``norm_before_gate=False`` (Mamba-2's ``RMSNormGated``): ``rmsnorm(x · silu(g)) · w``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True):
        super().__init__()
        self.eps, self.norm_before_gate = eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        y, gate = x.float(), F.silu(g.float())
        if not self.norm_before_gate:
            y = y * gate
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        if self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)


class ShortConvolution(nn.Module):
    """A depthwise causal convolution over time (fla's ``ShortConvolution``, Mamba's ``conv1d``):
    ``y_t = act(Σ_{j<W} w_j ⊙ x_{t−W+1+j} + b)`` on ``[B, T, D]``.

    ``forward(x, cache=None, output_final_state=False)``: ``cache`` ``[B, D, W−1]`` holds the last
    ``W − 1`` inputs of the previous segment (zeros when None); with ``output_final_state`` the
    new cache is returned too, so that a sequence cut in pieces gives the same outputs.
    """

    def __init__(self, dim: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu"):
        super().__init__()
        if activation not in (None, "silu"):
            raise InputError(f"ShortConvolution: activation must be None or 'silu', got {activation!r}")
        self.dim, self.kernel_size, self.activation = dim, kernel_size, activation
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        bound = 1.0 / math.sqrt(kernel_size)       # torch's Conv1d default for depthwise weights
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None, output_final_state: bool = False):
        W = self.kernel_size
        xt = x.transpose(1, 2)                                         # [B, D, T]
        if cache is None:
            cache = xt.new_zeros(xt.shape[0], self.dim, W - 1)
        elif tuple(cache.shape) != (xt.shape[0], self.dim, W - 1):
            raise InputError(f"ShortConvolution: the conv cache must be [B, D, W-1] = "
                             f"{(xt.shape[0], self.dim, W - 1)}, got {tuple(cache.shape)}")
        full = torch.cat([cache.to(xt.dtype), xt], dim=-1)
        y = F.conv1d(full, self.weight.to(xt.dtype), None if self.bias is None else self.bias.to(xt.dtype),
                     groups=self.dim).transpose(1, 2)
        if self.activation == "silu":
            y = F.silu(y)
        if output_final_state:
            return y, full[..., full.shape[-1] - (W - 1):]
        return y, None


def layer_output(o, recurrent, conv, output_final_state: bool):
    """``o``, or ``(o, state)`` with the state dict ``{"recurrent": ..., "conv": ...}`` (``conv``
    only when the layer has a short convolution) that ``split_state`` reads back."""
    if not output_final_state:
        return o
    state = {"recurrent": recurrent}
    if conv is not None:
        state["conv"] = conv
    return o, state


def split_state(initial_state, layer: str, keys: tuple) -> dict:
    """The layer state dict (``{"recurrent": ..., "conv": ...}``) with absent keys as None;
    ``InputError`` for anything else."""
    if initial_state is None:
        return dict.fromkeys(keys)
    if not isinstance(initial_state, dict) or set(initial_state) - set(keys):
        raise InputError(f"{layer}: initial_state must be None or a dict with keys {list(keys)} (the "
                         f"state a previous call returned), got "
                         + (f"keys {sorted(initial_state)}" if isinstance(initial_state, dict)
                            else type(initial_state).__name__))
    return {k: initial_state.get(k) for k in keys}
