"""Pieces that are a call tensor times one per-token or per-head scalar: formed by the core.

``runtime.direct_pieces`` covers pieces that *are* call tensors. A declaration like mamba2's
(``h = exp(dt·A) h + outer(B, dt·x)``, ``y = C h + D·x``) has three more per-token maps that a
generated pieces kernel would otherwise materialise (rounding v' = dt·x to 16 bits before the fp32
core, and its backward turning the core's gradients back into the inputs'):

* v' = u · x with u a per-token scalar input ``[B, T, H]`` and x a call tensor of the value
  layout: the core takes x and ``v_scale`` = u and multiplies on load (fp32 on chip); its backward
  writes dx = u·dv' and du = Σ_V x·dv' (the dv launch's epilogue).
* g = u · a and gk = u · a, a log-decay that is a per-token scalar u (a call tensor, or any
  expression the pieces kernel computes: a few bytes per token) times a per-head parameter a,
  ``[H]`` for g, ``[H, K]`` for gk (mamba2's and Mamba-1's dt·A): the core takes u and
  ``g_scale`` / ``gk_scale`` = a; the chunked strategy forms the product in its cumsum launch
  (the recurrent one: gk per step) and its reverse cumsum returns du = Σ a·dg and da = Σ_T u·dg
  instead of dg (no [B, T, H(, K)] fp32 log-decay or its gradient in HBM); strategies that do
  not form it take the product from ``decay`` and chain with ``decay_grads``.
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
    and a scalar (see the module docstring): "v" (tensor x, per-token u), "d" (tensor x,
    per-head c); log-decays are ``factored_decays``'. ``specs``: (name, kind, dims) of the call's tensors;
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


def factored_decays(form, specs, direct: dict) -> dict:
    """``{piece: (u node, u's call tensor or None, parameter name)}`` for the log-decays g, gk that
    are a per-token scalar u times a per-head parameter a over the piece's feature dims (see the
    module docstring); u's call tensor is its name when u is one (else the pieces kernel computes
    u). ``specs``: (name, kind, dims) of the call's tensors."""
    kinds = {name: (kind, tuple(dims)) for name, kind, dims in specs}
    out = {}
    for piece, dims in (("g", ()), ("gk", (form.k_dim,) if form.k_dim else None)):
        node = form.pieces().get(piece)
        if node is None or dims is None or piece in direct or node.op != "mul":
            continue
        a, b = node.src
        for u, p in ((a, b), (b, a)):
            if (p.op == "param" and kinds.get(p.arg) == ("param", dims)
                    and tuple(p.dims) == dims and tuple(u.dims) == ()):
                src = u.arg if u.op == "input" and kinds.get(u.arg) == ("input", ()) else None
                out[piece] = (u, src, p.arg)
                break
    return out


def decay(u, a):
    """The log-decay u·a in fp32: u [B, T, H] per token, a [H] (g) or [H, K] (gk) per head."""
    u = u.float()
    return u * a.float() if a.dim() == 1 else u[..., None] * a.float()


def decay_grads(dg, u, a):
    """(du [B, T, H], da like a) of ``decay`` given dg (fp32)."""
    dg, u, a = dg.float(), u.float(), a.float()
    if a.dim() == 1:
        return dg * a, (dg * u).sum((0, 1))
    return (dg * a).sum(-1), (dg * u[..., None]).sum((0, 1))
