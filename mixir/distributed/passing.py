"""The generic half of context parallelism: where this rank's slice lies in the global sequence
(``Layout``), what each sequence does on it, one all-gather of the ranks' (transition, state)
pairs, and the prefix combine. A family supplies the rest (``lowering/<family>/distributed.py``):
the transition of its slice, how a transition applies to a state, the outputs for a true initial
state.

Each sequence n (a batch row, or a sequence of the global ``cu_seqlens``) has, on rank r, a
*role*:

- ``ABSENT``: no token of n on this rank: the pair is (identity, 0), the state passes through;
- ``STARTS``: n's first token is on this rank: the rank runs n from its ``initial_state`` itself,
  so the pair is (0, final state): nothing before this rank leaks into n;
- ``CONTINUES``: n started on an earlier rank (only the first local sequence can): the rank runs
  its tokens from a zero state; the pair is (M, c) = (the slice's transition, that final state),
  and the outputs are then corrected (or rerun) for the true initial state ``S_in``.

With pairs ``(M_r, c_r)`` gathered from every rank, ``S_in(r) = fold(M_{r-1}(... M_0(S_0) + c_0 ...)
+ c_{r-1})`` and the global final state is the fold over all ranks, on every rank. Each pair is of
fixed size (states and transitions per sequence and head): communication O(W·N·H·K·V) per rank,
independent of the sequence length.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from .collectives import all_gather, all_gather_ints, tie
from .group import Group, resolve_group

ABSENT, STARTS, CONTINUES = 0, 1, 2


@dataclasses.dataclass
class Layout:
    """This rank's slice: ``g`` (the group), ``lengths`` (every rank's slice length), ``offset``
    (global index of the slice's first token), ``T`` (its length), ``cu_local`` (the global
    ``cu_seqlens`` clipped to the slice, or None), ``roles`` (``[N]`` long: ABSENT, STARTS or
    CONTINUES per sequence), ``seg`` (the number of leading local tokens that belong to the
    continuing sequence(s), 0 if none), ``cont`` (the index of the continuing sequence with
    ``cu_seqlens``; None without - then every row continues, or none does), ``grad`` (whether
    any rank's call needs gradients: then every rank records the all-gather for autograd, so
    that every rank takes part in its backward)."""
    g: Group
    lengths: list
    offset: int
    T: int
    N: int
    cu_local: torch.Tensor | None
    roles: torch.Tensor
    seg: int
    cont: int | None
    grad: bool = False
    last: torch.Tensor | None = None     # the previous exchange's gathered buffer (see ``exchange``)

    @property
    def continuing(self) -> bool:
        return self.seg > 0

    def continuing_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of a per-sequence tensor ``[N, ...]`` that continue here (``[B, ...]`` without
        ``cu_seqlens``, ``[1, ...]`` with)."""
        return x if self.cont is None else x[self.cont:self.cont + 1]

    def local_initial(self, state):
        """The initial state this rank runs its slice from: the user's for sequences that start
        here, zero elsewhere (``None`` stays ``None``; a tuple per part)."""
        if state is None:
            return None
        if isinstance(state, (tuple, list)):
            return type(state)(self.local_initial(s) for s in state)
        keep = (self.roles == STARTS).reshape((-1,) + (1,) * (state.dim() - 1))
        return torch.where(keep, state, torch.zeros_like(state))

    def role_is(self, role, like):
        """``[N, 1, ...]`` bool mask of the sequences of ``role``, broadcasting against ``like``."""
        return (self.roles == role).reshape((-1,) + (1,) * (like.dim() - 1))

    def per_role(self, cont_value, zero, identity):
        """A per-sequence ``[N, ...]`` tensor: ``cont_value`` (rows as ``continuing_rows``) where
        the sequence continues, ``zero`` where it starts here, ``identity`` where it is absent."""
        out = torch.where((self.roles == STARTS).reshape((-1,) + (1,) * (zero.dim() - 1)), zero, identity)
        if not self.continuing:
            return out
        if self.cont is None:
            return cont_value.to(out.dtype).expand_as(out)
        rows = torch.arange(self.N, device=out.device).reshape((-1,) + (1,) * (zero.dim() - 1))
        return torch.where(rows == self.cont, cont_value.to(out.dtype).expand_as(out), out)


def needs_grad(*tensors) -> bool:
    """Whether autograd records a call on these tensors (tuples of tensors and None allowed)."""
    flat = []
    for t in tensors:
        flat += list(t) if isinstance(t, (tuple, list)) else [t]
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in flat)


def layout(g: Group, T: int, B: int, cu_seqlens, device, grad: bool = False) -> Layout:
    """Gather the slice lengths and gradient flags (2 W integers) and place this rank's slice in
    the global sequence. ``cu_seqlens`` (global offsets, B = 1) must end at the sum of the slice
    lengths."""
    rows = all_gather_ints((T, grad), g, device)
    lengths = [r[0] for r in rows]
    grad = any(r[1] for r in rows)
    offset, total = sum(lengths[:g.rank]), sum(lengths)
    if cu_seqlens is None:
        roles = STARTS if (offset == 0 and T > 0) else (CONTINUES if T > 0 else ABSENT)
        return Layout(g, lengths, offset, T, B, None, torch.full((B,), roles, device=device),
                      T if roles == CONTINUES else 0, None, grad)
    if B != 1:
        raise InputError(f"cu_seqlens: packed sequences need batch size 1, got {B}")
    cu = cu_seqlens.long()
    last = int(cu[-1])
    if last != total:
        raise InputError(f"cu_seqlens: the global offsets end at {last}, but the ranks' slices hold "
                         f"{total} tokens together ({lengths}); cu_seqlens is the global packed "
                         "batch's, the per-token inputs each rank's slice of it")
    N = cu.shape[0] - 1
    cu_local = (cu - offset).clamp(0, T)
    present = cu_local[1:] > cu_local[:-1]
    starts = present & (cu[:-1] >= offset)
    cont_mask = present & (cu[:-1] < offset)
    roles = torch.where(starts, STARTS, torch.where(cont_mask, CONTINUES, ABSENT))
    idx = torch.nonzero(cont_mask).reshape(-1).tolist()
    cont = idx[0] if idx else None
    seg = int(cu_local[cont + 1]) if cont is not None else 0
    return Layout(g, lengths, offset, T, N, cu_local.to(cu_seqlens.dtype), roles, seg, cont, grad)


def exchange(lay: Layout, parts: list):
    """One all-gather of this rank's pair (``parts``: tensors of the same shapes on every rank,
    packed into one fp32 buffer, float64 when a part is). Returns (``[[part of rank r] for r in range(W)]``, the gathered
    buffer - the anchor for ``tie``)."""
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
    flat = torch.cat([p.to(dtype).reshape(-1) for p in parts])
    if lay.grad and not flat.requires_grad:      # take part in the backward's collective
        flat = flat.detach().requires_grad_(True)
    if lay.last is not None:
        # several exchanges in one call (a plan with auxiliary states): make each one's backward
        # run before the previous one's on every rank, whatever each rank's graph looks like, so
        # that the ranks issue the backward collectives in the same order
        flat = tie(flat, lay.last)
    gathered = all_gather(flat, lay.g)
    lay.last = gathered
    out = []
    for r in range(lay.g.world):
        pieces, at = [], 0
        for p in parts:
            pieces.append(gathered[r, at:at + p.numel()].reshape(p.shape))
            at += p.numel()
        out.append(pieces)
    return out, gathered


def prefix_combine(pairs: list, rank: int, S0, apply, step=None):
    """``(S_in(rank), S_final)`` from every rank's ``(transition, state)`` (``pairs[r]``:
    ``(M_r, c_r)``) and the initial state ``S0``: ``S ← apply(M_r, S) + c_r`` over the ranks in
    order (or ``S ← step(M_r, c_r, S)``: another semiring, e.g. max-plus ``max(S + F, c)``);
    ``S_in`` is the state before ``rank``'s slice."""
    S, S_in = S0, None
    for r, (M, c) in enumerate(pairs):
        if r == rank:
            S_in = S
        S = step(M, c, S) if step is not None else apply(M, S) + c
    return S_in, S


def tied(out, anchor):
    """``collectives.tie`` over a tensor or a tuple of them (the first one carries the tie)."""
    if isinstance(out, (tuple, list)):
        return type(out)([tie(out[0], anchor)] + list(out[1:]))
    return tie(out, anchor)


def split_call(passing, fn, arrays, *, group, **call):
    """``fn(*arrays, group=group, **call)``: this rank's slice of a sequence split across
    ``group``, run by a family's ``state_passing(plan)`` object (``passing.run(fn, arrays, g=...,
    initial_state=, output_final_state=, cu_seqlens=, strategy=, scalars=)``)."""
    return passing.run(fn, arrays, g=resolve_group(group), **call)
