"""Block-sparse attention as torch custom ops with autograd, and the public ``attention`` call.

``mixir::attention_fwd`` / ``mixir::attention_bwd`` wrap the Triton kernels of ``kernels.py``
(fake functions for shapes, so ``torch.compile`` sees one opaque op). The mask and score
modification travel as the key of their generated program; the block-mask metadata and the data
tensors travel as tensor lists. Gradients flow to q, k, v from o and from lse (not to data tensors):
d lse_i / d s_ij = p_ij, so the lse cotangent enters the backward as ``Delta_i - dlse_i``.
"""
from __future__ import annotations

import collections

import torch

from ...dsl.mask import FULL, Mask, ScoreMod
from ...errors import InputError
from ..common.call import check_tensors
from . import kernels
from .block_mask import BlockMask, as_declaration, create_block_mask
from .tiles import choose

_Geo = collections.namedtuple("_Geo", "shape block_m block_n kv_len")


def _geo(meta, block_m, block_n, kv_len):
    return _Geo(tuple(meta[1].shape), block_m, block_n, kv_len)


# The mask and score modification travel as the string key of their program (``kernels.program_key``);
# the kernels are generated, imported and launched inside the op, never under tracing.
@torch.library.custom_op("mixir::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: list[torch.Tensor],
                  data: list[torch.Tensor], program: str, block_m: int, block_n: int,
                  scale: float, num_warps: int, num_stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    prog = kernels.program(program)
    return kernels.forward(prog, q, k, v, meta, _geo(meta, block_m, block_n, k.shape[1]), data, scale,
                           num_warps, num_stages)


@attention_fwd.register_fake
def _(q, k, v, meta, data, program, block_m, block_n, scale, num_warps, num_stages):
    B, T, H, _ = q.shape
    return q.new_empty((B, T, H, v.shape[3])), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("mixir::attention_bwd", mutates_args=())
def attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, do: torch.Tensor, dlse: torch.Tensor, meta: list[torch.Tensor],
                  data: list[torch.Tensor], program: str, block_m: int, block_n: int,
                  scale: float, num_warps: int, num_stages: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prog = kernels.program(program)
    return kernels.backward(prog, q, k, v, o, lse, do, dlse, meta,
                            _geo(meta, block_m, block_n, k.shape[1]), data, scale, num_warps,
                            num_stages)


@attention_bwd.register_fake
def _(q, k, v, o, lse, do, dlse, meta, data, program, block_m, block_n, scale, num_warps, num_stages):
    f = torch.float32
    return q.new_empty(q.shape, dtype=f), k.new_empty(k.shape, dtype=f), v.new_empty(v.shape, dtype=f)


def _setup(ctx, inputs, output):
    q, k, v, meta, data, program, block_m, block_n, scale, num_warps, num_stages = inputs
    o, lse = output
    ctx.n_meta = len(meta)
    ctx.save_for_backward(q, k, v, o, lse, *meta, *data)
    ctx.program, ctx.block_m, ctx.block_n, ctx.scale = program, block_m, block_n, scale
    ctx.num_warps, ctx.num_stages = num_warps, num_stages


def _backward(ctx, do, dlse):
    q, k, v, o, lse, *rest = ctx.saved_tensors
    meta, data = rest[:ctx.n_meta], rest[ctx.n_meta:]
    dlse = torch.zeros_like(lse) if dlse is None else dlse.float().contiguous()
    dq, dk, dv = torch.ops.mixir.attention_bwd(q, k, v, o, lse, do.contiguous(), dlse, list(meta),
                                               list(data), ctx.program, ctx.block_m, ctx.block_n,
                                               ctx.scale, ctx.num_warps, ctx.num_stages)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), [None] * len(meta), [None] * len(data),
            None, None, None, None, None, None)


attention_fwd.register_autograd(_backward, setup_context=_setup)

def choose_tiles(q, v, mask_key: str, T: int, config, block) -> dict:
    """``tiles.choose`` for the larger of the q/k and v head dims (a ``[B, Tq, H, max(D, Dv)]``
    view stands for q)."""
    D, Dv = q.shape[3], v.shape[3]
    if Dv > D:
        q = q[..., :1].expand(*q.shape[:3], Dv)
    return choose(q, mask_key, T, config=config, block=block)


def check_qkv(q, k, v):
    """The shared rules (``common.call.check_tensors``: q, k, v per-token, dtypes, device), then
    the layout: q [B, Tq, H, D], k [B, Tkv, Hkv, D], v [B, Tkv, Hkv, Dv] with H a multiple of
    Hkv; k and v may have batch 1 (broadcast over q's B). Returns the call's dtype (q's; k or v
    may be float32 and are then read in it, as the mixers do)."""
    _, dtype = check_tensors("attention", [("q", q, True), ("k", k, True), ("v", v, True)])
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise InputError(f"attention: argument {name!r} must be a 4-D tensor [B, T, H, D], got "
                             f"shape {tuple(t.shape)}")
    B, _Tq, H, D = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise InputError(f"attention: k [B, Tkv, Hkv, D] and v [B, Tkv, Hkv, Dv] must agree in B, Tkv "
                         f"and Hkv, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] not in (B, 1) or k.shape[3] != D:
        raise InputError(f"attention: k [B, Tkv, Hkv, D] must match q's D={D} and have q's B={B} "
                         f"or 1 (broadcast), got {tuple(k.shape)}")
    if H < 1 or k.shape[2] < 1 or D < 1 or v.shape[3] < 1:
        raise InputError(f"attention: H, Hkv and D must be >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H % k.shape[2]:
        raise InputError(f"attention: the number of query heads {H} must be a multiple of the KV heads "
                         f"{k.shape[2]}" + _transposed(q, k))
    return dtype


def _transposed(q, k) -> str:
    """A hint when q, k look laid out [B, H, T, D]: read as such their head counts divide, as
    given they do not (self-attention laid out [B, H, T, D] with equal T runs undetected unless
    the mask needs Tq == Tkv: ``library.attention.same_length``)."""
    Tq, H, Tk, Hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    if Hkv and H % Hkv and Tk and Tq % Tk == 0 and Tq != H:
        return (f"; read as [B, H, T, D] q would have {Tq} heads and k {Tk}, which divide: are q, k, v "
                f"laid out [B, H, T, D]? mixir takes [B, T, H, D] like fla / flash-attn (x.transpose(1, 2))")
    return ""


def _empty(q, B, Tq, H, Dv, return_lse):
    """T = 0 (either side) or B = 0: no kernel; o [B, Tq, H, Dv] = 0 (a row with no key attends
    to nothing), lse = -inf, o still connected to q for autograd (zero gradient)."""
    zero = torch.zeros((), dtype=torch.bool, device=q.device)
    o = torch.where(zero, q[..., :1], q.new_zeros((B, Tq, H, Dv)))
    lse = torch.full((B, H, Tq), float("-inf"), dtype=torch.float32, device=q.device)
    return (o, lse) if return_lse else o


def attention(q, k, v, block_mask: BlockMask | None = None, *, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, scale: float | None = None, data=None,
              block_size=None, config: dict | None = None, return_lse: bool = False):
    """Softmax attention under a block-sparse mask.

    q [B, Tq, H, D], k [B, Tkv, Hkv, D], v [B, Tkv, Hkv, Dv] (``H % Hkv == 0``: GQA/MQA; k and v
    may have batch 1, broadcast over q's batch: expanded, their gradients summed), one of fp32,
    fp16, bf16; returns o [B, Tq, H, Dv] (q's dtype) and, with ``return_lse``, lse [B, H, Tq] (fp32,
    natural log, -inf for a row with nothing to attend to; such a row has o = 0).
    ``block_mask``: prebuilt metadata (``create_block_mask``); else it is built here from ``mask``
    (None: full attention) and ``data``, with tiles from ``block_size`` or ``config`` or the
    tuner (``tiles.choose``). ``score_mod``: an optional ``@score_mod``; its data arguments come
    from ``data`` too. ``scale`` defaults to D ** -0.5. ``config``: any of ``BM``, ``BN``,
    ``num_warps``, ``num_stages`` (see ``mixir.lowering.attention.tiles``). ``mask`` and
    ``score_mod`` may also be plain functions of the indices, traced FlexAttention-style with the
    tensors they capture as data (``block_mask.as_declaration``); a 0-dim data tensor is read as
    ``x[0]``."""
    dtype = check_qkv(q, k, v)
    B, Tq, H, D = q.shape
    Tkv = k.shape[1]
    k, v = k.to(dtype), v.to(dtype)          # float32 k / v with 16-bit q: read in q's dtype
    if k.shape[0] != B:                      # batch-1 k / v broadcast (autograd sums the grads)
        k, v = k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])
    Dv = v.shape[3]
    if B == 0 or Tq == 0 or Tkv == 0:
        return _empty(q, B, Tq, H, Dv, return_lse)
    mask, data = as_declaration(mask, data, "mask")
    score_mod, data = as_declaration(score_mod, data, "score_mod")
    if block_mask is not None and mask is not None and mask is not block_mask.mask:
        raise InputError("pass either block_mask or mask, not both")
    if block_mask is not None:
        block = (block_mask.block_m, block_mask.block_n)
    elif block_size is not None:
        block = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    else:
        block = None
    the_mask = block_mask.mask if block_mask is not None else (mask if mask is not None else FULL)
    if not isinstance(the_mask, Mask):
        raise InputError(f"mask must be a mixir.attention Mask (use @mixir.dsl.mask), got {the_mask!r}")
    cfg = choose_tiles(q, v, the_mask.key, max(Tq, Tkv), config, block)
    if block_mask is None:
        block_mask = create_block_mask(the_mask, B, H, Tq, Tkv, block_size=(cfg["BM"], cfg["BN"]),
                                       data={n: data[n] for n in the_mask.data_names if n in data},
                                       device=q.device)
    bm = block_mask
    Bm, Hm, _NM, _NN = bm.shape
    if (bm.q_len, bm.kv_len) != (Tq, Tkv) or Bm not in (1, B) or Hm not in (1, H):
        raise InputError(f"block mask {bm} does not fit q {tuple(q.shape)}, k {tuple(k.shape)}")
    if bm.kv_idx.device != q.device:
        bm = bm.to(q.device)
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise InputError(f"score_mod must be a @mixir.attention.score_mod, got {score_mod!r}")
    all_data = dict(bm.data)
    all_data.update(data)
    names = list(bm.mask.data_names)
    if score_mod is not None:
        names += [n for n in score_mod.data_names if n not in names]
    missing = [n for n in names if n not in all_data]
    if missing:
        raise InputError(f"missing data {missing} (pass data={{name: tensor}})")
    specs, tensors = kernels.prepare_data(names, all_data, q.device)
    key = kernels.program_key(bm.mask, score_mod, specs)
    scale = D ** -0.5 if scale is None else float(scale)
    o, lse = torch.ops.mixir.attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(),
                                           [t.contiguous() for t in bm.tensors()], tensors,
                                           key, bm.block_m, bm.block_n, scale,
                                           int(cfg["num_warps"]), int(cfg["num_stages"]))
    return (o, lse) if return_lse else o
