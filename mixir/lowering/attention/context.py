"""Context parallelism for block-sparse softmax attention, derived from the mask.

Rank r of a group of W holds the r-th contiguous slice of the sequence of q (``Tq_r`` tokens, from
global position ``qs_r``) and of k, v (``Tkv_r`` tokens, from ``ks_r``); slices may be unequal or
empty. Softmax attention over all keys is the log-sum-exp merge of attention over disjoint key
sets, so rank r computes, for every rank j whose keys its queries can see,

    (o_rj, lse_rj) = attention(q_r, k_j, v_j)   under the mask at global positions,

and merges them: ``lse_r = log sum_j exp(lse_rj)``, ``o_r = sum_j exp(lse_rj - lse_r) o_rj``.

*Global positions.* The mask (and score modification) is rewritten once per declaration with
``q -> q + cp_q0[0]``, ``kv -> kv + cp_kv0[0]`` (``shifted``): the offsets are data (int tensors
of one element), so every pair (r, j) runs the same compiled kernels; data tensors of the mask
(document ids, ...) are indexed by global positions and are passed whole on every rank.

*Which ranks are skipped.* Rank r builds the block-mask metadata of its queries against each
rank's key range (the shifted mask, the global lengths all-gathered first); a key range with no
visited tile (``kv_num + full_kv_num == 0`` everywhere) is not needed: causal masks need ranks
<= r, a sliding window the ranks it reaches, document masks the ranks sharing a document. The W x W
"needs" matrix is all-gathered (W ints per rank) and each rank sends its packed [k | v] only to
the ranks that need it (``exchange``: point-to-point, differentiable — the backward returns each
received tensor's gradient to its owner, which sums them). Nothing is sent to a rank that would
skip it; a full mask degenerates to an all-gather.

Backward: autograd through the merge (lse is differentiable, ``ops.py``), the per-pair kernels
and the exchange; the gradients of each rank's q, k, v slices are the slices of the
single-process gradients. Every rank of the group must call forward and backward (collectives).
"""
from __future__ import annotations

import torch

from ...dsl import ir
from ...dsl.mask import FULL, Mask, MaskNode, ScoreMod
from ...errors import InputError, UnsupportedMixerError
from .block_mask import as_declaration, create_block_mask
from .exchange import all_gather_ints, exchange, resolve_group
from .ops import attention, check_qkv, choose_tiles

Q0, KV0 = "cp_q0", "cp_kv0"
_SHIFTED: dict = {}

#: the exchange of this process's last context-parallel call (``last_exchange``)
_LAST: dict = {}


def _shift_node(node: ir.Node) -> ir.Node:
    q, kv = ir.leaf("input", "q"), ir.leaf("input", "kv")
    zero = ir.const(0.0)
    memo = {q: ir.binary("add", q, MaskNode("load", (), (zero,), Q0)),
            kv: ir.binary("add", kv, MaskNode("load", (), (zero,), KV0))}
    for n in ir.toposort(node):
        if n in memo:
            continue
        src = tuple(memo[s] for s in n.src)
        if not n.src or src == n.src:
            memo[n] = n
        elif isinstance(n, MaskNode):          # the index ops of the mask DSL
            memo[n] = MaskNode(n.op, n.dims, src, n.arg)
        else:
            memo[n] = ir.rebuild(n, src)
    return memo[node]


def shifted(decl):
    """The mask or score modification ``decl`` at global positions: its ``q`` and ``kv`` offset by
    the data ``cp_q0[0]`` and ``cp_kv0[0]`` (cached per declaration; an index it does not use is
    not shifted)."""
    if decl is None:
        return None
    got = _SHIFTED.get(decl.key)
    if got is not None:
        return got
    for reserved in (Q0, KV0):
        if reserved in decl.data_names:
            raise InputError(f"{decl.name}: the data name {reserved!r} is reserved for context "
                             f"parallelism; rename the argument")
    node = _shift_node(decl.node)
    used = {n.arg for n in ir.toposort(node) if n.op == "load"}
    names = tuple(decl.data_names) + tuple(n for n in (Q0, KV0) if n in used)
    if isinstance(decl, Mask):
        got = decl if decl.is_full else Mask(node, names, decl.name)
    elif isinstance(decl, ScoreMod):
        got = ScoreMod(node, names, decl.name)
    else:
        raise InputError(f"expected a Mask or ScoreMod, got {decl!r}")
    _SHIFTED[decl.key] = got
    return got


def last_exchange() -> dict:
    """What this process's last context-parallel attention call exchanged (forward; the backward
    sends the same volumes the other way): ``rank``, ``world``, ``needed`` (ranks whose keys this
    rank's queries read, itself included when its slice is), ``skipped`` (the others),
    ``sent_to``, ``bytes_sent``, ``bytes_received``."""
    return dict(_LAST)


def _merge(parts, dtype):
    """Log-sum-exp merge of partial results ``[(o [B,T,H,D], lse [B,H,T]), ...]`` (fp32), safe
    for rows that are empty in some or all parts (o = 0, lse = -inf, finite gradients)."""
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([lse for _, lse in parts])                       # [P, B, H, T]
    m = lses.detach().amax(0)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(lses - m)
    s = e.sum(0)
    ok = s > 0
    s_safe = torch.where(ok, s, torch.ones_like(s))
    lse = torch.where(ok, m + torch.log(s_safe), torch.full_like(s, float("-inf")))
    w = (e / s_safe).permute(0, 1, 3, 2)[..., None]                     # [P, B, T, H, 1]
    o = sum(w[i] * o_i.float() for i, (o_i, _) in enumerate(parts))
    return o.to(dtype), lse


def _check_peers(table, W):
    names = ("B", "H", "Hkv", "D", "Dv", "dtype")
    for c, name in enumerate(names, start=2):
        col = table[:, c]
        if not bool((col == col[0]).all()):
            raise InputError(f"group=: every rank must pass q, k, v with the same {name}; got "
                             f"{[int(x) for x in col]} on ranks 0..{W - 1}")


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def context_parallel_attention(q, k, v, *, group, mask: Mask | None = None,
                               score_mod: ScoreMod | None = None, scale: float | None = None,
                               data=None, block_size=None, config: dict | None = None,
                               return_lse: bool = False):
    """``ops.attention`` over a sequence sharded across ``group`` (see the module docstring):
    q [B, Tq_r, H, D], k, v [B, Tkv_r, Hkv, D] are this rank's slices; ``data`` tensors are global
    (indexed by global positions), identical on every rank. Returns this rank's o (and lse)."""
    dtype = check_qkv(q, k, v)
    if k.shape[0] != q.shape[0]:             # batch-1 k / v broadcast over q's batch
        k, v = k.expand(q.shape[0], *k.shape[1:]), v.expand(q.shape[0], *v.shape[1:])
    if block_size is not None and not isinstance(block_size, (int, tuple, list)):
        raise InputError(f"block_size must be an int or (block_m, block_n), got {block_size!r}")
    group, r, W = resolve_group(group)
    B, Tq, H, D = q.shape
    Tkv, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    table = all_gather_ints([Tq, Tkv, B, H, Hkv, D, Dv, _DTYPES.index(dtype)], group, W)
    _check_peers(table, W)
    q_start = [int(x) for x in torch.cumsum(table[:, 0], 0) - table[:, 0]]
    kv_start = [int(x) for x in torch.cumsum(table[:, 1], 0) - table[:, 1]]
    kv_len = [int(x) for x in table[:, 1]]
    TQ, TKV = int(table[:, 0].sum()), int(table[:, 1].sum())
    the_mask, data = as_declaration(FULL if mask is None else mask, data, "mask")
    score_mod, data = as_declaration(score_mod, data, "score_mod")
    if not isinstance(the_mask, Mask):
        raise InputError(f"mask must be a mixir.attention Mask (use @mixir.dsl.mask), got {the_mask!r}")
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise InputError(f"score_mod must be a @mixir.attention.score_mod, got {score_mod!r}")
    smask, smod = shifted(the_mask), shifted(score_mod)
    block = None
    if block_size is not None:
        block = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    cfg = choose_tiles(q, v, the_mask.key, max(TQ, TKV, 1), config, block)
    missing = [n for n in the_mask.data_names if n not in data]
    if missing:
        raise InputError(f"mask {the_mask.name} needs data {missing} (pass data={{name: tensor}})")

    def offsets(j):
        return {Q0: torch.tensor([q_start[r]], dtype=torch.int32, device=q.device),
                KV0: torch.tensor([kv_start[j]], dtype=torch.int32, device=q.device)}

    masks, need = {}, [0] * W
    for j in range(W):
        if Tq == 0 or kv_len[j] == 0:
            continue
        mdata = {n: data[n] for n in the_mask.data_names}
        mdata.update({n: t for n, t in offsets(j).items() if n in smask.data_names})
        bm = create_block_mask(smask, B, H, Tq, kv_len[j], block_size=(cfg["BM"], cfg["BN"]),
                               data=mdata, device=q.device)
        if int(bm.kv_num.sum()) + int(bm.full_kv_num.sum()) > 0:
            masks[j], need[j] = bm, 1
    needs = all_gather_ints(need, group, W)                             # needs[a, j]: a reads j
    dsts = [a for a in range(W) if a != r and int(needs[a, r])]
    srcs = [j for j in range(W) if j != r and need[j]]
    kv = torch.cat([k.to(dtype), v.to(dtype)], -1)
    shapes = [(B, kv_len[j], Hkv, D + Dv) for j in srcs]
    anchor, bufs = exchange(kv, group, dsts, srcs, shapes)
    got = dict(zip(srcs, bufs))
    got[r] = kv
    parts = []
    for j in sorted(masks):
        kj, vj = got[j].split([D, Dv], -1)
        pdata = dict(data)
        pdata.update(offsets(j))
        parts.append(attention(q, kj, vj, masks[j], score_mod=smod, scale=scale, data=pdata,
                               config=cfg, return_lse=True))
    if parts:
        o, lse = _merge(parts, q.dtype)
    else:                                   # nothing to attend to: o = 0, lse = -inf
        o = torch.where(torch.zeros((), dtype=torch.bool, device=q.device), q[..., :1],
                        q.new_zeros((B, Tq, H, Dv)))
        lse = torch.full((B, H, Tq), float("-inf"), dtype=torch.float32, device=q.device)
    o, lse = o + anchor.to(o.dtype), lse + anchor.float()
    esize = kv.element_size() * B * Hkv * (D + Dv)
    _LAST.clear()
    _LAST.update(rank=r, world=W, needed=sorted(masks), skipped=[j for j in range(W) if j not in masks],
                 sent_to=dsts, bytes_sent=esize * kv_len[r] * len(dsts),
                 bytes_received=sum(esize * kv_len[j] for j in srcs))
    return (o, lse) if return_lse else o


def global_length(T: int, group) -> int:
    """The global sequence length: the sum of every rank's ``T``."""
    group, _, W = resolve_group(group)
    return int(all_gather_ints([T], group, W).sum())


def gather_tokens(x: torch.Tensor, group) -> torch.Tensor:
    """The global [B, T] tensor of a per-token [B, T_r] one sharded like q (document ids):
    all-gathered, no gradient."""
    group, _, W = resolve_group(group)
    if x.dim() != 2:
        raise InputError(f"expected a per-token [B, T] tensor, got shape {tuple(x.shape)}")
    lens = [int(n) for n in all_gather_ints([x.shape[1]], group, W)[:, 0]]
    pad = torch.zeros((x.shape[0], max(lens) - x.shape[1]), dtype=x.dtype, device=x.device)
    xp = torch.cat([x.detach(), pad], 1).contiguous()
    out = [torch.empty_like(xp) for _ in range(W)]
    torch.distributed.all_gather(out, xp, group=group)
    return torch.cat([o[:, :n] for o, n in zip(out, lens)], 1)


def refuse(what: str, why: str):
    """``UnsupportedMixerError`` for a call that cannot take ``group=``."""
    raise UnsupportedMixerError(f"{what}: group= (context parallelism) is not supported: {why}")
