"""The LTI family's parameter trees evaluated per head in torch: the parameter-only IR of a
declaration (the transition, input and read-out coefficients) as tensors ``[H, *dims]``, built
into a flat program once per compiled mixer (``flatten_param_trees``) and run per call.

The ops mean what the reference's evaluator says (``reference.evaluate.OPS``, on its torch
backend); this module only lays values out per head (``[H|1, *dims]``, aligned by name) and
expands a reduction's broadcast dims to their sizes before it sums."""
from __future__ import annotations

import torch

from ...dsl import ir
from ...reference.evaluate import OPS, PREDICATES, TorchBackend

_TORCH = TorchBackend()


def _align(x, dims, target):
    """``x`` [H|1, *dims] → [H|1, *target] (transposed, size-1 where broadcast)."""
    order = [d for d in target if d in dims]
    if order != list(dims):
        x = x.permute(0, *[1 + dims.index(d) for d in order])
    shape = list(x.shape[:1])
    it = iter(x.shape[1:])
    for d in target:
        shape.append(next(it) if d in dims else 1)
    return x.reshape(shape)


def flatten_param_trees(roots):
    """The parameter-only IR trees as a flat program, built once per compiled mixer (walking and
    hashing IR nodes per call would cost seconds under ``torch.compile`` tracing): a tuple of
    steps ``(op, arg, dims, src_indices, src_dims)`` in topological order, and the index of each
    root. Leaves (``param``, ``scalar``) keep their name in ``arg``."""
    index: dict = {}
    steps = []
    for root in roots:
        for n in ir.toposort(root):
            if n in index:
                continue
            index[n] = len(steps)
            steps.append((n.op, n.arg, tuple(n.dims), tuple(index[x] for x in n.src),
                          tuple(tuple(x.dims) for x in n.src)))
    return tuple(steps), tuple(index[r] for r in roots)


def run_param_program(program, env: dict, H: int, sizes: dict, dtype, device):
    """Evaluate a ``flatten_param_trees`` program per head: each root is ``[H, *root.dims]``
    (expanded). ``env`` maps (op, name) of the leaves (``("param", "A_re")``, ``("scalar", "s")``)
    to tensors ``[H, *dims]`` or floats."""
    steps, outs = program
    vals: list = []
    for op, arg, dims, src, src_dims in steps:
        vals.append(_eval_step(op, arg, dims, [vals[i] for i in src], src_dims, env, H, sizes, dtype,
                               device))
    return [vals[i].expand((H,) + tuple(sizes[d] for d in steps[i][2])) for i in outs]


def eval_param_trees(roots, env: dict, H: int, sizes: dict, dtype, device):
    """Evaluate parameter-only IR trees per head: each result is ``[H, *root.dims]`` (expanded).
    ``env`` maps leaf nodes (params, scalars) to tensors ``[H, *dims]`` or floats."""
    named = {(n.op, n.arg): v for n, v in env.items()}
    return run_param_program(flatten_param_trees(roots), named, H, sizes, dtype, device)


def _eval_step(op, arg, dims, src, src_dims, env, H, sizes, dtype, device):
    if op == "const":
        return torch.full((1,) + tuple(sizes[d] for d in dims), arg, dtype=dtype, device=device)
    if op == "head":
        return torch.arange(H, dtype=dtype, device=device)
    if op == "delta":
        a, b = (sizes[d] for d in dims)
        return torch.eye(a, b, dtype=dtype, device=device)[None]
    if op in ("param", "scalar"):
        v = env[(op, arg)]
        if not isinstance(v, torch.Tensor):
            return torch.full((1,) * (1 + len(dims)), float(v), dtype=dtype, device=device)
        return v.to(dtype)
    if op == "input" or op == "state":
        raise AssertionError(f"a parameter tree reads {op} {arg!r}")
    if op in ("sum", "amax"):
        x, xd = src[0], src_dims[0]
        full = x.expand((x.shape[0],) + tuple(sizes[d] for d in xd))
        return OPS[op](_TORCH, full, tuple(1 + xd.index(d) for d in arg))
    r = OPS[op](_TORCH, *(_align(x, d, dims) for x, d in zip(src, src_dims)))
    return r.to(dtype) if op in PREDICATES else r
