"""``MixerLayer``: any declared mixer (``@mixir.mixer``) as a ``torch.nn.Module`` layer.

The declaration says everything a layer needs: each ``In`` argument is a per-token input
``[B, T, H, *dims]``, so the layer gives it an input projection ``Linear(d_model, H·∏dims)``;
each ``Param`` is a per-head parameter ``[H, *dims]``, so the layer holds an ``nn.Parameter`` of
that shape (initialised by the ``init`` hook); the output ``[B, T, H, *out dims]`` is normalised
per head and projected back with ``Linear(H·∏out dims, d_model)``; the states are the mixer's,
passed through ``initial_state`` / ``output_final_state`` unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..dsl.mixer import Mixer
from ..errors import InputError
from ..library.registry import compiled
from .common import FLA_GAIN, RMSNorm, check_positive, check_x, heads

#: Named activations an ``In`` projection may go through before the mixer (``activations=``).
ACTIVATIONS = {
    "identity": lambda t: t,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,          # a log forget gate (≤ 0)
    "silu": F.silu,
    "softplus": F.softplus,              # a positive time step
    "tanh": torch.tanh,
    "elu_plus_one": lambda t: F.elu(t) + 1.0,   # Katharopoulos et al.'s positive feature map
}


def default_param_init(name: str, p: torch.Tensor) -> None:
    """The default ``init`` hook: ``N(0, 1/n)`` with ``n`` the last dim's size (1 for a scalar per
    head): unit-scale contributions for a parameter used in a contraction."""
    n = p.shape[-1] if p.ndim > 1 else 1
    nn.init.normal_(p, std=1.0 / math.sqrt(n))


class MixerLayer(nn.Module):
    """A layer ``[B, T, d_model] → [B, T, d_model]`` around the declared ``mixer``.

    - ``dims``: the size of every named feature dim of the declaration, e.g. ``{"K": 16, "V": 16}``;
    - ``num_heads``: H, the heads the mixer runs over;
    - ``activations``: ``{In name: name in ACTIVATIONS or a callable}`` applied to that input's
      projection (a log-decay through ``"logsigmoid"``, a β through ``"sigmoid"``);
    - ``init``: the ``Param`` init hook, a callable ``init(name, tensor)`` (in-place, under
      ``no_grad``) or a dict ``{Param name: callable(tensor)}`` (the others get
      ``default_param_init``); the projections get ``xavier_uniform_`` with gain ``proj_gain``;
    - ``norm``: ``"rms"`` (RMSNorm per head over the output's feature dims, fla's ``o_norm``) or None;
    - ``output_gate``: multiply the normed output by ``silu(W_r x)`` per head;
    - ``scalars``: keyword values for the declaration's ``Scale``/``Scalar`` arguments;
    - ``strategy``: passed to the compiled mixer (None: its default).

    ``forward(x, initial_state=None, output_final_state=False, cu_seqlens=None)`` returns ``o``, or
    ``(o, final_state)`` in the compiled mixer's own state format (a tensor ``[N, H, *dims]``, a
    tuple for several states).
    """

    def __init__(self, mixer: Mixer, d_model: int, num_heads: int = 1, dims: dict | None = None,
                 activations: dict | None = None, init=None, norm: str | None = "rms",
                 output_gate: bool = False, scalars: dict | None = None, strategy: str | None = None,
                 proj_gain: float = FLA_GAIN, bias: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        if not isinstance(mixer, Mixer):
            raise InputError(f"MixerLayer: mixer must be a declaration made with @mixir.mixer, got "
                             f"{type(mixer).__name__}")
        self.mixer, self.strategy = mixer, strategy
        self.d_model = check_positive(d_model, "d_model", "MixerLayer")
        self.num_heads = check_positive(num_heads, "num_heads", "MixerLayer")
        self.sizes = self._sizes(mixer, dims or {})
        self.scalars = self._scalars(mixer, scalars or {})
        self.activations = self._activations(mixer, activations or {})
        H = num_heads
        self.proj = nn.ModuleDict()
        self.params = nn.ParameterDict()
        for spec in mixer.inputs:
            shape = tuple(self.sizes[d] for d in spec.dims)
            if spec.kind == "input":
                self.proj["in_" + spec.name] = nn.Linear(d_model, H * math.prod(shape), bias=bias)
            else:
                self.params["p_" + spec.name] = nn.Parameter(torch.empty((H,) + shape))
        out_dims = tuple(mixer.output.dims)
        missing = [d for d in out_dims if d not in self.sizes]
        if missing:
            raise InputError(f"MixerLayer: the output of {mixer.name} has dims {missing} that no input, "
                             f"parameter or state sizes; pass them in dims")
        self.out_dim = math.prod(self.sizes[d] for d in out_dims)
        if norm not in (None, "rms"):
            raise InputError(f"MixerLayer: norm must be 'rms' or None, got {norm!r}")
        self.o_norm = RMSNorm(self.out_dim, norm_eps) if norm == "rms" else None
        self.g_proj = nn.Linear(d_model, H * self.out_dim, bias=False) if output_gate else None
        self.o_proj = nn.Linear(H * self.out_dim, d_model, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=proj_gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.reset_params(init)

    # ---- construction helpers -------------------------------------------------------------------

    @staticmethod
    def _sizes(mixer, dims):
        if not isinstance(dims, dict):
            raise InputError(f"MixerLayer: dims must be a dict {{dim name: size}}, got {type(dims).__name__}")
        need = mixer.feature_dims()
        missing = [d for d in need if d not in dims]
        if missing:
            raise InputError(f"MixerLayer: dims must size every feature dim of {mixer.name} "
                             f"({list(need)}); missing {missing}")
        extra = sorted(set(dims) - set(need) - set(mixer.output.dims))
        if extra:
            raise InputError(f"MixerLayer: dims names {extra}, which {mixer.name} does not declare "
                             f"(its dims: {list(need)})")
        for d, n in dims.items():
            check_positive(n, f"dims[{d!r}]", "MixerLayer")
        return dict(dims)

    @staticmethod
    def _scalars(mixer, scalars):
        names = {a.name for a in mixer.scalars}
        if not isinstance(scalars, dict) or set(scalars) - names:
            raise InputError(f"MixerLayer: scalars must be a dict over {mixer.name}'s scalar arguments "
                             f"{sorted(names)}, got {scalars!r}")
        return {k: float(v) for k, v in scalars.items()}

    @staticmethod
    def _activations(mixer, acts):
        names = {a.name for a in mixer.inputs if a.kind == "input"}
        if not isinstance(acts, dict) or set(acts) - names:
            raise InputError(f"MixerLayer: activations must be a dict over {mixer.name}'s In arguments "
                             f"{sorted(names)}, got {acts!r}")
        out = {}
        for k, a in acts.items():
            if isinstance(a, str):
                if a not in ACTIVATIONS:
                    raise InputError(f"MixerLayer: activations[{k!r}] = {a!r} is not one of "
                                     f"{sorted(ACTIVATIONS)} (or pass a callable)")
                a = ACTIVATIONS[a]
            elif not callable(a):
                raise InputError(f"MixerLayer: activations[{k!r}] must be a name or a callable, got "
                                 f"{type(a).__name__}")
            out[k] = a
        return out

    def projection(self, name: str) -> nn.Linear:
        """The input projection of the ``In`` argument ``name`` (stored as ``proj["in_" + name]``:
        the prefix keeps names such as ``keys`` or ``values`` clear of ``ModuleDict``'s methods)."""
        return self.proj["in_" + name]

    def parameter(self, name: str) -> nn.Parameter:
        """The tensor ``[H, *dims]`` of the ``Param`` argument ``name`` (``params["p_" + name]``)."""
        return self.params["p_" + name]

    @torch.no_grad()
    def reset_params(self, init=None):
        """(Re)initialise every ``Param`` with the ``init`` hook (see the class docstring)."""
        if init is not None and not (callable(init) or isinstance(init, dict)):
            raise InputError(f"MixerLayer: init must be a callable init(name, tensor) or a dict "
                             f"{{name: callable}}, got {type(init).__name__}")
        names = [a.name for a in self.mixer.inputs if a.kind == "param"]
        if isinstance(init, dict) and set(init) - set(names):
            raise InputError(f"MixerLayer: init names {sorted(set(init) - set(names))}, not "
                             f"Param arguments of {self.mixer.name} ({names})")
        for name in names:
            p = self.parameter(name)
            if isinstance(init, dict):
                if name in init:
                    init[name](p)
                else:
                    default_param_init(name, p)
            else:
                (init or default_param_init)(name, p)

    # ---- forward --------------------------------------------------------------------------------

    def mixer_inputs(self, x):
        """The mixer's positional arrays in declaration order: projected (and activated) ``In``
        inputs ``[B, T, H, *dims]`` and the ``Param`` tensors ``[H, *dims]``."""
        Bsz, T = check_x(x, self.d_model, "MixerLayer")
        arrays = []
        for spec in self.mixer.inputs:
            if spec.kind == "param":
                arrays.append(self.parameter(spec.name))
                continue
            t = self.projection(spec.name)(x).view(Bsz, T, self.num_heads, *(self.sizes[d] for d in spec.dims))
            act = self.activations.get(spec.name)
            arrays.append(act(t) if act is not None else t)
        return tuple(arrays)

    def forward(self, x, initial_state=None, output_final_state: bool = False, cu_seqlens=None):
        arrays = self.mixer_inputs(x)
        res = compiled(self.mixer)(*arrays, initial_state=initial_state, output_final_state=output_final_state,
                                   cu_seqlens=cu_seqlens, strategy=self.strategy, **self.scalars)
        o, state = res if output_final_state else (res, None)
        Bsz, T = x.shape[:2]
        o = o.reshape(Bsz, T, self.num_heads, self.out_dim)
        if self.o_norm is not None:
            o = self.o_norm(o)
        if self.g_proj is not None:
            o = o * F.silu(heads(self.g_proj(x), self.num_heads)).to(o.dtype)
        out = self.o_proj(o.flatten(-2).to(x.dtype))
        return (out, state) if output_final_state else out
