"""The nonlinear RNN family's kernels as torch custom ops (``mixir::rnn_fwd`` / ``mixir::rnn_bwd``).

One call of a ``CompiledRNN`` (either strategy) is one ``mixir::rnn_fwd``; its backward is one
``mixir::rnn_bwd``. The generated kernels are found from a string ``key`` (``REGISTRY``, filled
when a ``CompiledRNN`` is built), so the ops are opaque to ``torch.compile``: dynamo records one
node per call (no per-step unrolling of the alternating loop, no graph break), fake functions
give the output shapes, and ``register_autograd`` wires the backward. Everything that reads tensor
values (the sequence rows of ``cu_seqlens`` and their longest length) happens inside the ops.

Output layout of ``rnn_fwd`` (a flat list): ``out`` [B, T, H, D] (the call's dtype), the S final
states fp32 [N, H, D], then the tensors the backward reads (``run.run_forward``):
``fused``: S states + G gate pre-activations fp32 [B, T, H, D] ([1, 1, 1, 1] without a
backward); ``alternating``: S states fp32 [T, N, H, D] ([0, N, H, D] without a backward).
``rnn_bwd`` returns the gradients: one per cell input (an input's in its dtype, a parameter's
fp32; an empty tensor where the cell input has none), one per recurrent weight, one per initial
state (fp32).
"""
from __future__ import annotations

from typing import Optional

import torch

REGISTRY: dict = {}


def register(compiled) -> str:
    """Register a ``CompiledRNN`` and return its key (same kernels and config → same key)."""
    cfg = ";".join(f"{k}={v}" for k, v in sorted(compiled.config.items()))
    key = f"{compiled.mixer.name}:{compiled.generated.sha}:{cfg}"
    REGISTRY.setdefault(key, compiled)
    return key


def get_compiled(key: str):
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"mixir::rnn: no CompiledRNN registered under {key!r} in this process "
                       "(build the compiled mixer first)") from None


def _counts(c, strategy):
    f = c.plan
    S, G = len(f.states), len(f.gates)
    return S, (S + G if strategy == "fused" else S)


def _saved_shape(strategy, shape, save):
    B, T, H, D, N = shape
    if strategy == "fused":
        return (B, T, H, D) if save else (1, 1, 1, 1)
    return (T if save else 0, N, H, D)


def _fresh(t, inputs):
    """``t`` contiguous and sharing no storage with ``inputs`` (custom ops may not return an
    alias of an input)."""
    t = t.contiguous()
    ptr = t.untyped_storage().data_ptr()
    if any(x is not None and x.numel() and x.untyped_storage().data_ptr() == ptr for x in inputs):
        t = t.clone()
    return t


# ----------------------------------------------------------------------------------------------
# forward

@torch.library.custom_op("mixir::rnn_fwd", mutates_args=())
def rnn_fwd(key: str, strategy: str, cell: list[torch.Tensor], weights: list[torch.Tensor],
            inits: list[torch.Tensor], cu_seqlens: Optional[torch.Tensor], scalars: list[float],
            shape: list[int], dtype: torch.dtype, save: bool) -> list[torch.Tensor]:
    """One forward of ``REGISTRY[key]`` with ``strategy`` (``fused`` / ``alternating``);
    ``shape`` = [B, T, H, D, N]; ``save``: keep what the backward needs."""
    from .run import make_run, run_forward
    c = get_compiled(key)
    device = weights[0].device if weights else cell[0].device
    run = make_run(c, strategy, shape, dtype, device, cu_seqlens, scalars, save)
    out, finals, saved = run_forward(run, cell, weights, inits)
    return [out, *finals, *saved]


@rnn_fwd.register_fake
def _(key, strategy, cell, weights, inits, cu_seqlens, scalars, shape, dtype, save):
    c = get_compiled(key)
    S, n_saved = _counts(c, strategy)
    B, T, H, D, N = shape
    like = weights[0] if weights else cell[0]
    sshape = _saved_shape(strategy, shape, save)
    return ([like.new_empty((B, T, H, D), dtype=dtype)]
            + [like.new_empty((N, H, D), dtype=torch.float32) for _ in range(S)]
            + [like.new_empty(sshape, dtype=torch.float32) for _ in range(n_saved)])


# ----------------------------------------------------------------------------------------------
# backward

@torch.library.custom_op("mixir::rnn_bwd", mutates_args=())
def rnn_bwd(key: str, strategy: str, cell: list[torch.Tensor], weights: list[torch.Tensor],
            inits: list[torch.Tensor], cu_seqlens: Optional[torch.Tensor], scalars: list[float],
            shape: list[int], dtype: torch.dtype, saved: list[torch.Tensor],
            dout: Optional[torch.Tensor], dfinals: list[Optional[torch.Tensor]]
            ) -> list[torch.Tensor]:
    """The gradients of ``rnn_fwd``'s inputs (dtypes: the module docstring) given the
    cotangents of ``out`` and the final states (``None``: zero)."""
    from .run import make_run, run_backward
    c = get_compiled(key)
    device = weights[0].device if weights else cell[0].device
    run = make_run(c, strategy, shape, dtype, device, cu_seqlens, scalars, True)
    grads = run_backward(run, cell, weights, inits, saved, dout, dfinals)
    ins = [*cell, *weights, *inits, *saved, dout, *dfinals]
    empty = (weights[0] if weights else cell[0]).new_empty((0,), dtype=torch.float32)
    return [empty.clone() if gr is None else _fresh(gr, ins) for gr in grads]


def _grad_kinds(c):
    """Per cell input: whether ``run_backward`` returns a gradient for it."""
    g = c.generated
    din = {name for name, _, _ in g.grads["din"]}
    dpar = {name for name, _, _ in g.grads["dpar"]}
    return [(name in din) if kind == "input" else (name in dpar)
            for name, kind, *_ in g.cell_inputs]


@rnn_bwd.register_fake
def _(key, strategy, cell, weights, inits, cu_seqlens, scalars, shape, dtype, saved, dout, dfinals):
    c = get_compiled(key)
    like = weights[0] if weights else cell[0]
    kinds = [spec[1] for spec in c.generated.cell_inputs]
    out = [x.new_empty(x.shape, dtype=x.dtype if kind == "input" else torch.float32) if has
           else like.new_empty((0,), dtype=torch.float32)
           for x, has, kind in zip(cell, _grad_kinds(c), kinds)]
    out += [w.new_empty(w.shape, dtype=torch.float32) for w in weights]
    out += [s.new_empty(s.shape, dtype=torch.float32) for s in inits]
    return out


# ----------------------------------------------------------------------------------------------
# autograd

def _setup(ctx, inputs, output):
    key, strategy, cell, weights, inits, cu_seqlens, scalars, shape, dtype, save = inputs
    c = get_compiled(key)
    S, _ = _counts(c, strategy)
    ctx.key, ctx.strategy, ctx.scalars, ctx.shape, ctx.dtype = key, strategy, list(scalars), \
        list(shape), dtype
    ctx.n = (len(cell), len(weights), len(inits), S)
    ctx.has_cu = cu_seqlens is not None
    ctx.save_for_backward(*cell, *weights, *inits, *output[1 + S:],
                          *([cu_seqlens] if cu_seqlens is not None else []))


def _backward(ctx, grads):
    n_cell, n_w, n_init, S = ctx.n
    saved = list(ctx.saved_tensors)
    cu_seqlens = saved.pop() if ctx.has_cu else None
    cell, weights = saved[:n_cell], saved[n_cell:n_cell + n_w]
    inits, hist = saved[n_cell + n_w:n_cell + n_w + n_init], saved[n_cell + n_w + n_init:]
    dout, dfinals = grads[0], list(grads[1:1 + S])
    gs = torch.ops.mixir.rnn_bwd(ctx.key, ctx.strategy, cell, weights, inits, cu_seqlens,
                                 ctx.scalars, ctx.shape, ctx.dtype, hist, dout, dfinals)
    kinds = _grad_kinds(get_compiled(ctx.key))
    d_cell = [gr.to(x.dtype) if has else None for gr, x, has in zip(gs[:n_cell], cell, kinds)]
    d_w = [gr.to(x.dtype) for gr, x in zip(gs[n_cell:n_cell + n_w], weights)]
    d_init = list(gs[n_cell + n_w:])
    # a list of numbers gets None; an empty list is a list (torch's pytree), so it gets []
    nones = tuple(None if x else [] for x in (ctx.scalars, ctx.shape))
    return (None, None, d_cell, d_w, d_init, None, nones[0], nones[1], None, None)


rnn_fwd.register_autograd(_backward, setup_context=_setup)
