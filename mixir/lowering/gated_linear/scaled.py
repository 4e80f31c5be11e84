"""Pieces that are a call tensor times one per-token or per-head scalar: formed by the core.

``runtime.direct_pieces`` covers pieces that *are* call tensors. A declaration like mamba2's
(``h = exp(dt·A) h + outer(B, dt·x)``, ``y = C h + D·x``) has three more per-token maps that a
generated pieces kernel would otherwise materialise (rounding v' = dt·x to 16 bits before the fp32
core, and its backward turning the core's gradients back into the inputs'):

* v' = u · x with u a per-token scalar input ``[B, T, H]`` and x a call tensor of the value
  layout: the core takes x and ``v_scale`` = u and multiplies on load (fp32 on chip); its backward
  writes dx = u·dv' and du = Σ_V x·dv' (the dv launch's epilogue).
* g = u · a with u a per-token scalar input and a a per-head scalar parameter ``[H]``: the core
  takes u and ``g_scale`` = a; the chunked strategy forms the product in its cumsum launch and
  its reverse-cumsum launch turns dg into du = a·dg and da = Σ u·dg (the recurrent and fused
  strategies form both in torch: ``decay``, ``decay_grads``).
* gk = u · a with u any per-token scalar expression (the pieces kernel computes it, a few bytes per
  token) and a a per-head parameter over the key dim ``[H, K]`` (Mamba-1's gk = dt·A): the core
  takes u and ``gk_scale`` = a; the chunked strategy forms the product in its cumsum launch, the
  recurrent one per step, and their reverse cumsum of dgk returns du = Σ_K a·dgk and
  da = Σ_T u·dgk instead of dgk (no [B, T, H, K] fp32 log-decay or its gradient in HBM).
* d (the output bias) = c · x with c a per-head scalar parameter and x the call tensor the core
  reads as v (as it is, or scaled as above): the core takes ``v_bias`` = c, its output epilogue
  adds c_h·x and its dv launch adds c·do to dx and sums x·do for dc (no torch ops over [T, V]).

Recognised from the form's pieces, never by name, and only where the core applies them exactly:
v' and d without value-side decays or transition signs (which rescale v), d with a constant
output scale (the core writes the biased output itself).
"""
from __future__ import annotations

from ...dsl import ir

_SIGNS = ("g_sign", "gk_sign", "gv_sign")


def scaled_pieces(form, specs, direct: dict) -> dict:
    """``{piece: (tensor name, scalar name)}`` for the pieces the core forms from a call tensor
    and a scalar (see the module docstring): "v" (tensor x, per-token u), "g" (per-token u,
    per-head a), "d" (tensor x, per-head c). ``specs``: (name, kind, dims) of the call's tensors;
    ``direct``: ``runtime.direct_pieces`` of the form (those are not repeated here)."""
    kinds = {name: (kind, tuple(dims)) for name, kind, dims in specs}
    pieces = form.pieces()
    plain = not any(n in pieces for n in _SIGNS) and "gv" not in pieces
    out = {}
    vdims = (form.v_dim,) if form.v_dim else None
    if plain and vdims and "v" in pieces and "v" not in direct:
        pair = _pair(pieces["v"], kinds, (("input", vdims), ("input", ())))
        if pair:
            out["v"] = pair
    if "g" in pieces and "g" not in direct:
        pair = _pair(pieces["g"], kinds, (("input", ()), ("param", ())))
        if pair:
            out["g"] = pair
    if plain and vdims and "d" in pieces and ir.is_const(form.out_scale) \
            and not ir.is_const(form.out_bias, 0.0):
        pair = _pair(pieces["d"], kinds, (("input", vdims), ("param", ())))
        v_src = out["v"][0] if "v" in out else direct.get("v", (None, None))[0]
        if pair and pair[0] == v_src:
            out["d"] = pair
    return out


def _pair(node: ir.Node, kinds: dict, want) -> tuple | None:
    """(name of the first, name of the second) when ``node`` is the product of two call tensors of
    the (kind, dims) in ``want`` (in either order), else None."""
    if node.op != "mul":
        return None
    a, b = node.src
    for x, y in ((a, b), (b, a)):
        if all(n.op in ("input", "param") and kinds.get(n.arg) == w and tuple(n.dims) == w[1]
               for n, w in ((x, want[0]), (y, want[1]))):
            return x.arg, y.arg
    return None


# ---- the core's side: the strategies that do not scale on load ---------------------------------

def materialise(v, bias, v_scale, v_bias):
    """(v', bias') in torch: v' = v_scale * v (rounded to v's dtype, as a pieces kernel would)
    and bias' = v_bias_h * v (fp32) when ``v_bias`` is given, else ``bias``."""
    if v_bias is not None:
        bias = v.float() * v_bias.float()[:, None]
    if v_scale is not None:
        v = (v.float() * v_scale.float()[..., None]).to(v.dtype)
    return v, bias


def chain(grads, v, do, v_scale, v_bias, grad_dtype):
    """The core's gradients at v' (``materialise``), fp32, turned into v's, with those of
    ``v_scale`` u (Σ_V v dv') and ``v_bias`` c (Σ v do) appended (None where absent)."""
    dq, dk, dv1, *rest = grads
    dv = dv1.float() if v_scale is None else v_scale.float()[..., None] * dv1.float()
    du = None if v_scale is None else (v.float() * dv1.float()).sum(-1)
    dc = None
    if v_bias is not None:
        dv = dv + v_bias.float()[:, None] * do.float()
        dc = (v.float() * do.float()).sum((0, 1, 3))
    return (dq.to(grad_dtype), dk.to(grad_dtype), dv.to(grad_dtype), *rest, du, dc)


def decay(u, a):
    """The scalar log-decay g = u·a (u [B, T, H] per token, a [H] per head), fp32, in torch."""
    return u.float() * a.float()


def decay_grads(dg, u, a):
    """(du [B, T, H], da [H]) of ``decay`` given dg (fp32)."""
    return dg.float() * a.float(), (dg.float() * u.float()).sum((0, 1))


def factored_decays(form, specs, direct: dict) -> dict:
    """``{"gk": (u node, parameter name)}`` when the key-side log-decay is a per-token scalar
    expression u times a per-head parameter a over the key dim (see the module docstring), else
    ``{}``. ``specs``: (name, kind, dims) of the call's tensors."""
    node = form.pieces().get("gk")
    if node is None or "gk" in direct or node.op != "mul" or not form.k_dim:
        return {}
    kinds = {name: (kind, tuple(dims)) for name, kind, dims in specs}
    a, b = node.src
    for u, p in ((a, b), (b, a)):
        if (p.op == "param" and kinds.get(p.arg) == ("param", (form.k_dim,))
                and tuple(p.dims) == (form.k_dim,) and tuple(u.dims) == ()):
            return {"gk": (u, p.arg)}
    return {}


def key_decay(u, a):
    """The key-side log-decay gk = u·a (u [B, T, H] per token, a [H, K] per head), fp32."""
    return u.float()[..., None] * a.float()


def key_decay_grads(dgk, u, a):
    """(du [B, T, H], da [H, K]) of ``key_decay`` given dgk (fp32)."""
    return (dgk.float() * a.float()).sum(-1), (dgk.float() * u.float()[..., None]).sum((0, 1))
