"""The gated-linear core's log-decay sums: chunk-local cumsums forward, per-sequence reverse
cumsums of the decay gradients' terms backward (``kernels/chunked.chunk_gla_cumsum`` and
``chunk_gla_rev_cumsum``), with the factored log-decays u·a of ``scaled`` (mamba2's g = dt·A,
Mamba-1's gk = dt·A) formed in the forward launch and split into du, da in the backward one.
Shared by the chunked, recurrent and fused strategies (``core``)."""
import torch

from ...tiles import cdiv, pow2
from ..common.chunks import LOG_FLOOR, empty, tile
from .kernels import chunked as _ck


def local_cumsums(plan, x, cfg, xs=None):
    """Chunk-local inclusive cumsum G and reverse-exclusive cumsum R = G_last - G of x [T, H, D]
    (a factored log-decay u·a formed on load with ``xs`` = a: see below)."""
    if x is None:
        return None, None
    # xs [H]: x [T, H, D] times the head's scalar; xs [H, D]: x [T, H] (a per-token factor) times
    # the head's row - the cumsums are [T, H, D]
    mode = 0 if xs is None else 2 if xs.dim() == 2 else 1
    shape = tuple(x.shape) + ((xs.shape[1],) if mode == 2 else ())
    D = 1 if len(shape) == 2 else shape[-1]
    G = empty(*shape, device=x.device)
    R = empty(*shape, device=x.device)
    BD = tile(D, 64)
    if plan.NT > 0:
        _ck.chunk_gla_cumsum[(plan.NT, plan.H, cdiv(D, BD))](
            x, xs, G, R, plan.cu, plan.chunk_tbl, plan.H, D, USE_XS=mode,
            LOG_FLOOR=LOG_FLOOR, BT=cfg["BT"], BD=BD,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return G, R


def rev_cumsum(plan, x, init, cfg, sum_d=False, out_dtype=torch.float32, scaled=None):
    """Per-sequence reverse cumsum of x plus init [N, H(, D)] (fp32 sums, stored in ``out_dtype``):
    x [T, H(, D)], or [P, T, H, D] slices that are summed first; ``sum_d``: also sum over D
    (output [T, H]). Returns (the sums, None); with ``scaled`` = (u [T, H], a) the sum is the
    gradient of the log-decay u·a, and the result is (its u-part [T, H], its a-part fp32) - a [H]
    with ``sum_d`` (g = u·a), or a [H, D] without (gk = u·a: the [T, H, D] sums are not
    stored)."""
    x = x.contiguous()
    NP = x.shape[0] if x.dim() == 4 else 1
    D = 1 if x.dim() == 2 else x.shape[-1]
    BD = pow2(D) if sum_d else tile(D, 64)
    u, a = scaled if scaled is not None else (None, None)
    mode = 0 if a is None else 1 if sum_d else 2
    assert mode == 0 or a.shape == ((plan.H,) if mode == 1 else (plan.H, D))
    if mode == 2:       # u's gradient per D-tile, summed below
        out = empty(cdiv(D, BD), plan.T_total, plan.H, device=x.device)
    else:
        out = empty(*((x.shape[-3], x.shape[-2]) if sum_d else x.shape[-3 if x.dim() == 4 else 0:]),
                    device=x.device, dtype=out_dtype)
    da = None if a is None else empty(plan.N, *a.shape, device=x.device)
    if plan.N > 0:
        _ck.chunk_gla_rev_cumsum[(plan.N * plan.H, 1 if sum_d else cdiv(D, BD))](
            x, None if init is None else init.to(torch.float32).contiguous(), out, u, a, da,
            plan.cu, plan.T_total, plan.H, D, NP, plan.T_total * plan.H * D,
            USE_INIT=init is not None, SUM_D=sum_d, USE_XS=mode,
            BT=64, BD=BD, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if mode == 2:
        out = slices_sum(out).to(out_dtype)
    return out, None if a is None else da.sum(0)


def slices_sum(x):
    """The sum over the leading axis of per-tile partials [P, ...] (no copy when P = 1)."""
    return x[0] if x.shape[0] == 1 else x.sum(0)
