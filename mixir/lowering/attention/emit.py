"""Mask predicates and score modifications as Triton expressions, emitted from their IR.

``emit`` writes one line per IR node over ``b``, ``h`` (scalars), ``qi``, ``ki`` (index vectors
shaped to broadcast over the score tile), the scaled raw score ``s_raw`` and the data tensors
(loaded with clamped indices), and returns the name holding the root's value. Used by
``kernels.py`` to splice masks and score mods into the attention templates.
"""
from __future__ import annotations

from ...dsl import ir
from ...dsl.mask import SCORE_NAME, infer_types

_NAMES = {"b": "b", "h": "h", "q": "qi", "kv": "ki", SCORE_NAME: "s_raw"}


def _lit(v: float, typ: str) -> str:
    if typ == "i":
        return repr(int(v))
    if v != v:
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(float(v))


def emit(root: ir.Node, data_index: dict, data_kinds: dict, prefix: str, lines: list) -> str:
    """Append Triton statements computing ``root`` to ``lines``; return the name (or literal) of
    the result. ``data_index`` maps data names to their argument number."""
    types = infer_types(root, data_kinds)
    names = {}
    k = 0

    def fresh():
        nonlocal k
        k += 1
        return f"{prefix}{k}"

    def lit(n):
        return n.op == "const"

    def as_num(n):  # bool -> int32 for arithmetic
        return f"{names[n]}.to(tl.int32)" if types[n] == "b" else names[n]

    def as_flt(n):
        if lit(n):
            return _lit(n.arg, "f")
        return f"{names[n]}.to(tl.float32)" if types[n] != "f" else names[n]

    def as_bool(n):
        if types[n] == "b":
            return names[n]
        return f"({names[n]} != 0)"

    for n in ir.toposort(root):
        op = n.op
        if op == "const":
            names[n] = _lit(n.arg, types[n])
            continue
        if op == "input":
            names[n] = _NAMES[n.arg]
            continue
        s = n.src
        if op in ("add", "sub", "mul"):
            sym = {"add": "+", "sub": "-", "mul": "*"}[op]
            e = f"{as_num(s[0])} {sym} {as_num(s[1])}"
        elif op == "div":
            e = f"{as_flt(s[0])} / {as_flt(s[1])}"
        elif op in ("max", "min"):
            a, b = as_num(s[0]), as_num(s[1])
            if lit(s[0]):
                a, b = b, a
            e = f"tl.{'maximum' if op == 'max' else 'minimum'}({a}, {b})"
        elif op == "mod" or op == "floordiv":
            a, b = as_num(s[0]), as_num(s[1])
            r = fresh()
            if types[s[0]] == "f" or types[s[1]] == "f":
                a, b = as_flt(s[0]), as_flt(s[1])
                lines.append(f"{r} = tl.floor({a} / {b})")
                if op == "mod":
                    e = f"{a} - {b} * {r}"
                else:
                    names[n] = r
                    continue
            else:
                lines.append(f"{r} = {a} % {b}")
                if lit(s[1]):
                    neg = n.src[1].arg < 0
                    fix = f"{r} > 0" if neg else f"{r} < 0"
                else:
                    fix = f"({r} != 0) & (({r} < 0) != ({b} < 0))"
                r2 = fresh()
                lines.append(f"{r2} = tl.where({fix}, {r} + {b}, {r})")
                e = r2 if op == "mod" else f"({a} - {r2}) // {b}"
        elif op == "pow":
            e = f"tl.exp({as_flt(s[1])} * tl.log({as_flt(s[0])}))"
        elif op in ("lt", "le", "gt", "ge", "eq", "ne"):
            sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[op]
            a, b = as_num(s[0]), as_num(s[1])
            if lit(s[0]) and not lit(s[1]):  # literal on the right
                flip = {"lt": ">", "le": ">=", "gt": "<", "ge": "<=", "eq": "==", "ne": "!="}[op]
                e = f"{b} {flip} {a}"
            else:
                e = f"{a} {sym} {b}"
        elif op in ("and", "or"):
            e = f"{as_bool(s[0])} {'&' if op == 'and' else '|'} {as_bool(s[1])}"
        elif op == "not":
            e = f"{as_num(s[0])} == 0"
        elif op == "where":
            e = f"tl.where({as_bool(s[0])}, {as_num(s[1])}, {as_num(s[2])})"
        elif op == "neg":
            e = f"-{as_num(s[0])}"
        elif op == "abs":
            e = f"tl.abs({as_num(s[0])})"
        elif op in ("exp", "log", "sqrt", "rsqrt", "sigmoid", "sin", "cos"):
            e = f"tl.{op}({as_flt(s[0])})"
        elif op == "tanh":
            e = f"2.0 * tl.sigmoid(2.0 * {as_flt(s[0])}) - 1.0"
        elif op == "recip":
            e = f"1.0 / {as_flt(s[0])}"
        elif op == "softplus":
            x = as_flt(s[0])
            e = f"tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x})))"
        elif op == "logsigmoid":
            x = as_flt(s[0])
            e = f"tl.minimum({x}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({x})))"
        elif op == "silu":
            x = as_flt(s[0])
            e = f"{x} * tl.sigmoid({x})"
        elif op == "load":
            j = data_index[n.arg]
            terms = []
            for r, ix in enumerate(s):
                i = as_num(ix)
                clamp = (f"tl.minimum({i}, d{j}_n{r} - 1)" if lit(ix) else
                         f"tl.minimum(tl.maximum({i}, 0), d{j}_n{r} - 1)")
                terms.append(f"{clamp} * d{j}_s{r}")
            e = f"tl.load(d{j} + {' + '.join(terms)})"
            if data_kinds[n.arg] == "b":
                e = f"({e} != 0)"
        else:
            raise NotImplementedError(f"attention kernels: no Triton code for op {op!r}")
        r = fresh()
        lines.append(f"{r} = {e}")
        names[n] = r
    out = names[root]
    if lit(root):  # a constant predicate / score: make it a value of the right kind
        out = f"({out})"
    return out
