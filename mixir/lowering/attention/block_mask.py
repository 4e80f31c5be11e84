"""Block-mask metadata (FlexAttention style), built tile-row by tile-row without a T x T tensor.

The score matrix of one (batch, head) is cut into tiles of ``block_m`` query rows by ``block_n``
key columns (``NM = ceil(Tq / block_m)`` tile rows, ``NN = ceil(Tkv / block_n)`` tile columns).
Each tile is *empty* (no allowed entry: skipped), *full* (every in-range entry allowed: visited
without evaluating the mask) or *partial* (visited, the mask evaluated in the kernel). Entries past
``Tq`` / ``Tkv`` in the last tile row / column do not count (the kernels bound-check them apart).

Per query tile row (the forward and the dQ pass):

    kv_num[b, h, m]            int32  number of partial key tiles
    kv_idx[b, h, m, :kv_num]   int32  their tile-column indices, ascending
    full_kv_num / full_kv_idx         the same for the full tiles

and transposed, per key tile column (the dK/dV pass): ``q_num [b, h, n]``, ``q_idx [b, h, n, :]``,
``full_q_num``, ``full_q_idx`` (tile-row indices). Index rows are padded to ``NN`` (``NM``); entries
past the count are unspecified. The leading dims are ``B`` and ``H`` where the mask depends on
``b`` / ``h``, else 1 (broadcast: the kernels read them with stride 0).

Building: for each query tile row the predicate is evaluated in torch on a ``[Bm, Hm, block_m,
NN*block_n]`` grid (one tile row: O(T * block_m) memory), and each tile is classified with
``any``/``all`` reductions; O(T^2) elementwise work in total. Data (document ids, a top-k choice)
enters only here: new data means new metadata, never a new kernel.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ...dsl.mask import FULL, Mask, ScoreMod
from ...errors import InputError
from ...reference.attention import evaluate_mask

EMPTY, PARTIAL, FULL_TILE = 0, 1, 2

__all__ = ["EMPTY", "FULL_TILE", "PARTIAL", "BlockMask", "classify_tiles", "create_block_mask"]


@dataclasses.dataclass(frozen=True)
class BlockMask:
    kv_num: torch.Tensor
    kv_idx: torch.Tensor
    full_kv_num: torch.Tensor
    full_kv_idx: torch.Tensor
    q_num: torch.Tensor
    q_idx: torch.Tensor
    full_q_num: torch.Tensor
    full_q_idx: torch.Tensor
    block_m: int
    block_n: int
    q_len: int
    kv_len: int
    mask: Mask
    data: dict

    @property
    def shape(self):
        """(Bm, Hm, NM, NN)."""
        return tuple(self.kv_idx.shape)

    def tensors(self) -> list:
        """The eight metadata tensors in the order the kernels take them."""
        return [self.kv_num, self.kv_idx, self.full_kv_num, self.full_kv_idx,
                self.q_num, self.q_idx, self.full_q_num, self.full_q_idx]

    def tile_classes(self) -> torch.Tensor:
        """``[Bm, Hm, NM, NN]`` int8: 0 empty, 1 partial, 2 full (rebuilt from the index lists)."""
        Bm, Hm, NM, NN = self.shape
        out = torch.zeros((Bm, Hm, NM, NN), dtype=torch.int8)
        for num, idx, val in ((self.kv_num, self.kv_idx, PARTIAL),
                              (self.full_kv_num, self.full_kv_idx, FULL_TILE)):
            num, idx = num.cpu().long(), idx.cpu().long()
            take = torch.arange(NN)[None, None, None, :] < num[..., None]
            rows = torch.zeros((Bm, Hm, NM, NN), dtype=torch.int8)
            rows.scatter_reduce_(-1, torch.where(take, idx, 0), take.to(torch.int8) * val, "amax")
            out = torch.maximum(out, rows)
        return out

    def visited_fraction(self) -> float:
        """Fraction of the tiles the forward visits (partial + full) over all tiles."""
        Bm, Hm, NM, NN = self.shape
        return float((self.kv_num + self.full_kv_num).sum()) / (Bm * Hm * NM * NN)

    def to(self, device) -> BlockMask:
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        data = {k: v.to(device) for k, v in self.data.items()}
        return dataclasses.replace(self, **moved, data=data)

    def __repr__(self):
        Bm, Hm, NM, NN = self.shape
        return (f"BlockMask({self.mask.name}, Tq={self.q_len}, Tkv={self.kv_len}, "
                f"blocks={self.block_m}x{self.block_n}, tiles={Bm}x{Hm}x{NM}x{NN}, "
                f"visited={self.visited_fraction():.3f})")


def classify_tiles(mask: Mask, B: int, H: int, q_len: int, kv_len: int, block_m: int,
                   block_n: int, data=None, device="cpu") -> torch.Tensor:
    """``[Bm, Hm, NM, NN]`` int8 tile classes (0 empty, 1 partial, 2 full), tile row by tile row."""
    mask = FULL if mask is None else mask
    data = dict(data or {})
    Bm = B if mask.depends_on_batch() else 1
    Hm = H if mask.depends_on_head() else 1
    NM, NN = math.ceil(q_len / block_m), math.ceil(kv_len / block_n)
    out = torch.empty((Bm, Hm, NM, NN), dtype=torch.int8, device=device)
    if mask.is_full:
        out.fill_(FULL_TILE)
        return out
    kv = torch.arange(NN * block_n, device=device)
    kv_ok = (kv < kv_len)[None, None, None, :]
    bidx = torch.arange(Bm, device=device)[:, None, None, None]
    hidx = torch.arange(Hm, device=device)[None, :, None, None]
    for m in range(NM):
        q = torch.arange(m * block_m, (m + 1) * block_m, device=device)
        ok = (q < q_len)[None, None, :, None] & kv_ok
        env = {"b": bidx, "h": hidx, "q": q[None, None, :, None], "kv": kv[None, None, None, :]}
        r = evaluate_mask(mask.node, env, data)
        r = (r if r.dtype == torch.bool else r != 0).to(device).expand(Bm, Hm, block_m, NN * block_n)
        r = r.reshape(Bm, Hm, block_m, NN, block_n)
        okr = ok.expand(Bm, Hm, block_m, NN * block_n).reshape(Bm, Hm, block_m, NN, block_n)
        anyv = (r & okr).any(-1).any(2)
        allv = (r | ~okr).all(-1).all(2)
        out[:, :, m] = torch.where(allv, FULL_TILE, torch.where(anyv, PARTIAL, EMPTY)).to(torch.int8)
    return out


def _lists(sel: torch.Tensor):
    """(count [..., R] int32, indices [..., R, C] int32: the selected columns first, ascending)."""
    num = sel.sum(-1).to(torch.int32)
    idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def from_tile_classes(classes: torch.Tensor, block_m, block_n, q_len, kv_len, mask, data) -> BlockMask:
    part, full = classes == PARTIAL, classes == FULL_TILE
    kv_num, kv_idx = _lists(part)
    fkv_num, fkv_idx = _lists(full)
    q_num, q_idx = _lists(part.transpose(-1, -2))
    fq_num, fq_idx = _lists(full.transpose(-1, -2))
    return BlockMask(kv_num, kv_idx, fkv_num, fkv_idx, q_num, q_idx, fq_num, fq_idx,
                     int(block_m), int(block_n), int(q_len), int(kv_len), mask, dict(data or {}))


def as_data(data) -> dict:
    """The data tensors by name, a 0-dim tensor read as a one-element vector (``s[0]`` in the
    mask or score modification)."""
    return {n: (t.reshape(1) if isinstance(t, torch.Tensor) and t.dim() == 0 else t)
            for n, t in dict(data or {}).items()}


def as_declaration(fn, data, kind: str):
    """``(Mask or ScoreMod, data)``: a declaration as given, or a plain Python function traced
    FlexAttention-style (``mixir.dsl.torch_trace``: torch ops on the indices; tensors it
    captures become data, added to ``data``). ``kind``: "mask" or "score_mod"."""
    want = Mask if kind == "mask" else ScoreMod
    data = as_data(data)
    if fn is None or isinstance(fn, want):
        return fn, data
    if isinstance(fn, (Mask, ScoreMod)) or not callable(fn):
        raise InputError(f"{kind} must be a mixir.attention {want.__name__} (@mixir.attention."
                         f"{kind}) or a plain function of the indices, got {fn!r}")
    from ...dsl.torch_trace import trace_mask, trace_score_mod
    decl, captured = (trace_mask if kind == "mask" else trace_score_mod)(fn)
    data.update(captured)
    return decl, data


def create_block_mask(mask, B: int, H: int, q_len: int, kv_len: int | None = None, *,
                      block_size=None, data=None, device=None) -> BlockMask:
    """Build the ``BlockMask`` of ``mask`` (a ``Mask`` or None for full attention) for ``B``
    batch elements, ``H`` query heads and the given lengths. ``block_size``: an int or
    ``(block_m, block_n)`` (powers of two >= 16; default 64 on CUDA, 32 elsewhere).
    ``data``: the mask's data tensors by name (0-dim ones are read as ``x[0]``). A plain function
    ``mask(b, h, q, kv)`` is traced with its captured tensors (``as_declaration``)."""
    mask, data = as_declaration(FULL if mask is None else mask, data, "mask")
    kv_len = q_len if kv_len is None else kv_len
    missing = [d for d in mask.data_names if d not in data]
    if missing:
        raise InputError(f"mask {mask.name} needs data {missing} (pass data={{name: tensor}})")
    if device is None:
        device = next((t.device for t in data.values()), torch.device("cpu"))
    device = torch.device(device)
    if block_size is None:
        block_size = 64 if device.type == "cuda" else 32
    bm, bn = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    for x in (bm, bn):
        if x < 16 or x & (x - 1):
            raise InputError(f"block sizes must be powers of two >= 16, got {(bm, bn)}")
    if min(B, H, q_len, kv_len) < 1:
        raise InputError(f"B, H, q_len, kv_len must be >= 1, got {(B, H, q_len, kv_len)}")
    data = {k: v.to(device) for k, v in data.items()}
    classes = classify_tiles(mask, B, H, q_len, kv_len, bm, bn, data, device)
    return from_tile_classes(classes, bm, bn, q_len, kv_len, mask, data)
