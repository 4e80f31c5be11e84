"""The reference: execute a declared mixer literally, one token at a time, in float64.

This is the definition of what a mixer computes; compiled strategies are tested against it.
``run_reference`` also runs on torch float64 tensors (autograd through the same loop), which is
how gradients are checked.
"""
from __future__ import annotations

import numpy as np

from ..dsl import ir
from ..dsl.signature import bind, segments
from .evaluate import NumpyBackend, TorchBackend, align, evaluate


def _stack(xp, items, axis):
    if xp.name == "numpy":
        return np.stack(items, axis=axis)
    return xp.torch.stack(items, dim=axis)


def _zeros(xp, shape, like):
    if xp.name == "numpy":
        return np.zeros(shape, dtype=np.float64)
    return xp.torch.zeros(shape, dtype=like.dtype, device=like.device)


def _full(xp, arr, shape):
    if tuple(arr.shape) == shape:
        return arr
    return np.broadcast_to(arr, shape).copy() if xp.name == "numpy" else arr.expand(*shape).clone()


def run_reference(mixer, arrays, *, initial_state=None, output_final_state=False, cu_seqlens=None,
                  backend="numpy", **scalars):
    xp = NumpyBackend() if backend == "numpy" else TorchBackend()
    arrays = [xp.asarray(a) for a in arrays]
    b = bind(mixer, arrays, cu_seqlens=cu_seqlens, initial_state=initial_state, scalars=scalars)
    init = initial_state
    if init is not None and not isinstance(init, (tuple, list)):
        init = (init,)
    state_leaves = [ir.leaf("state", s.name, s.dims) for s in mixer.states]
    env_static = {}
    for spec, a in zip(mixer.inputs, arrays):
        if spec.kind == "param":
            env_static[ir.leaf("param", spec.name, spec.dims)] = a
    for spec in mixer.scalars:
        env_static[ir.leaf("scalar", spec.name)] = b.scalars[spec.name]
    like = arrays[0]
    heads = xp.asarray(np.arange(b.H, dtype=np.float64))
    if xp.name == "torch":
        heads = heads.to(like.device)
    env_static[ir.Node("head", (), (), "head")] = heads
    roots = [mixer.output] + list(mixer.updates)
    out_steps = {}
    finals = []
    for n, (bi, start, end) in enumerate(segments(b, cu_seqlens)):
        states = []
        for i, s in enumerate(mixer.states):
            shape = (b.H,) + tuple(b.sizes[d] for d in s.dims)
            given = None if init is None else init[i]
            states.append(xp.asarray(given[n]) if given is not None else _zeros(xp, shape, like))
        for t in range(start, end):
            env = dict(env_static)
            for spec, a in zip(mixer.inputs, arrays):
                if spec.kind == "input":
                    env[ir.leaf("input", spec.name, spec.dims)] = a[bi, t]
            for leaf_node, val in zip(state_leaves, states):
                env[leaf_node] = val
            vals = evaluate(roots, env, xp, 1, b.sizes)
            out_steps[(bi, t)] = vals[0]
            states = [_full(xp, align(xp, v, r.dims, s.dims, 1), (b.H,) + tuple(b.sizes[d] for d in s.dims))
                      for v, r, s in zip(vals[1:], mixer.updates, mixer.states)]
        finals.append(states)
    out_dims = mixer.output.dims
    out_shape = (b.H,) + tuple(b.sizes[d] for d in out_dims)
    rows = []
    for bi in range(b.B):
        rows.append(_stack(xp, [out_steps[(bi, t)] if (bi, t) in out_steps else _zeros(xp, out_shape, like)
                                for t in range(b.T)], 0) if b.T else _zeros(xp, (0,) + out_shape, like))
    # B = 0 (or N = 0): nothing to stack; empty results of the right shapes, as the compiled mixers
    o = _stack(xp, rows, 0) if rows else _zeros(xp, (0, b.T) + out_shape, like)
    if not output_final_state:
        return o
    final = tuple(_stack(xp, [f[i] for f in finals], 0) if finals else
                  _zeros(xp, (0, b.H) + tuple(b.sizes[d] for d in s.dims), like)
                  for i, s in enumerate(mixer.states))
    return o, (final[0] if len(final) == 1 else final)


def reference(mixer):
    """The reference callable of ``mixer``: same signature as ``mixir.compile(mixer)``, on NumPy
    arrays, computing in float64."""
    def ref(*arrays, initial_state=None, output_final_state=False, cu_seqlens=None, **scalars):
        return run_reference(mixer, arrays, initial_state=initial_state,
                             output_final_state=output_final_state, cu_seqlens=cu_seqlens, **scalars)
    ref.__name__ = f"reference_{mixer.name}"
    ref.mixer = mixer
    return ref
