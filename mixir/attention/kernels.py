"""Triton kernels of block-sparse softmax attention, generated per (mask, score_mod, data kinds).

Three kernels per program, all over the block-mask metadata (``block_mask.py``):

- ``attn_fwd``   grid (NM, B*H): online softmax over the listed full tiles (no mask code) and then
  the partial tiles (the mask predicate, generated from its IR, evaluated in-kernel); fp32
  accumulation; writes o (input dtype) and lse (fp32, natural log; -inf for an empty row, whose o
  is 0).
- ``attn_bwd_dq`` grid (NM, B*H): dQ = scale * sum_n dS_n K_n over the same tiles.
- ``attn_bwd_dkdv`` grid (NN, B*Hkv): over the *transposed* lists, and over the query heads of the
  KV head's group (GQA/MQA): dV = sum P^T dO, dK = scale * sum dS^T Q, with
  dS = P * (dP - Delta) (* score_mod'), Delta = rowsum(dO * O) computed by the caller.

Layouts: q, o, dO [B, Tq, H, D]; k, v [B, Tkv, Hkv, D] (contiguous); lse, Delta [B, H, Tq] fp32;
dQ, dK, dV written in fp32. The mask and score modification are emitted as Triton expressions from
the IR (``emit``) over ``b``, ``h`` (scalars), ``qi``, ``ki`` (index vectors shaped to broadcast
over the score tile) and the scaled raw score ``s_raw``; data tensors are passed as pointers with
their sizes and strides (indices clamped into range), so new data reuses the compiled kernel.

Generated source goes to the content-addressed kernel cache (``lowering.kernel_cache``) so
Triton can read it and the AOT builder can re-import it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading

import torch

from ..dsl import ir
from ..lowering.kernel_cache import import_source
from ..lowering.launch import Kernel, targets_gpu
from .mask import SCORE_NAME, infer_types

GEN_VERSION = "2"
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
        elif op in ("exp", "log", "sqrt", "rsqrt", "sigmoid"):
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


# ------------------------------------------------------------------------------------ templates

_HEAD = '''"""Generated by mixir.attention.kernels (version {VERSION}): mask {MASK}; score_mod {SCORE}."""
import triton
import triton.language as tl
'''

_FWD = '''

def attn_fwd(Q, K, V, O, LSE, KV_NUM, KV_IDX, FKV_NUM, FKV_IDX, meta_sb, meta_sh, NM, NN,
             DATA_ARGST_Q, T_KV, H, HK, scale,
             D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             EVEN_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kh = h // (H // HK)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    qi = offs_m[:, None]
    q_base = Q + b.to(tl.int64) * T_Q * H * D + h * D
    k_base = K + b.to(tl.int64) * T_KV * HK * D + kh * D
    v_base = V + b.to(tl.int64) * T_KV * HK * D + kh * D
    qx = tl.load(q_base + qi * (H * D) + offs_d[None, :], mask=(qi < T_Q) & (offs_d[None, :] < D),
                 other=0.0)
    if DOT_F32:
        qx = qx.to(tl.float32)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.full([BM], 0.0, tl.float32)
    acc = tl.full([BM, BD], 0.0, tl.float32)
    mo = b * meta_sb + h * meta_sh + pid_m
    n_full = tl.load(FKV_NUM + mo)
    for j in range(0, n_full):
        n = tl.load(FKV_IDX + mo * NN + j)
BODY_FULL
    n_part = tl.load(KV_NUM + mo)
    for j in range(0, n_part):
        n = tl.load(KV_IDX + mo * NN + j)
BODY_PART
    l_ok = l_i > 0.0
    l_safe = tl.where(l_ok, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(O + b.to(tl.int64) * T_Q * H * D + h * D + qi * (H * D) + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=(qi < T_Q) & (offs_d[None, :] < D))
    lse = tl.where(l_ok, m_i + tl.log(l_safe), float("-inf"))
    tl.store(LSE + bh.to(tl.int64) * T_Q + offs_m, lse, mask=offs_m < T_Q)
'''

_FWD_BODY = '''ki = n * BN + offs_n[None, :]
kc = n * BN + offs_n[:, None]
kT = tl.load(k_base + ki * (HK * D) + offs_d[:, None], mask=(ki < T_KV) & (offs_d[:, None] < D),
             other=0.0)
vx = tl.load(v_base + kc * (HK * D) + offs_d[None, :], mask=(kc < T_KV) & (offs_d[None, :] < D),
             other=0.0)
if DOT_F32:
    kT = kT.to(tl.float32)
s_raw = tl.dot(qx, kT, input_precision=PREC) * scale
@@SCORE@@
@@MASK@@
if not EVEN_N:
    s = tl.where(ki < T_KV, s, float("-inf"))
m_new = tl.maximum(m_i, tl.max(s, 1))
m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
p = tl.exp(s - m_safe[:, None])
alpha = tl.exp(m_i - m_safe)
l_i = l_i * alpha + tl.sum(p, 1)
if DOT_F32:
    acc = acc * alpha[:, None] + tl.dot(p, vx.to(tl.float32), input_precision=PREC)
else:
    acc = acc * alpha[:, None] + tl.dot(p.to(vx.dtype), vx, input_precision=PREC)
m_i = m_new
'''

_DQ = '''

def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, KV_NUM, KV_IDX, FKV_NUM, FKV_IDX, meta_sb, meta_sh,
                NM, NN, DATA_ARGST_Q, T_KV, H, HK, scale,
                D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                EVEN_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kh = h // (H // HK)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    qi = offs_m[:, None]
    row = b.to(tl.int64) * T_Q * H * D + h * D + qi * (H * D) + offs_d[None, :]
    row_ok = (qi < T_Q) & (offs_d[None, :] < D)
    k_base = K + b.to(tl.int64) * T_KV * HK * D + kh * D
    v_base = V + b.to(tl.int64) * T_KV * HK * D + kh * D
    qx = tl.load(Q + row, mask=row_ok, other=0.0)
    dox = tl.load(DO + row, mask=row_ok, other=0.0)
    if DOT_F32:
        qx = qx.to(tl.float32)
        dox = dox.to(tl.float32)
    lse = tl.load(LSE + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(DELTA + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=0.0)
    dq = tl.full([BM, BD], 0.0, tl.float32)
    mo = b * meta_sb + h * meta_sh + pid_m
    n_full = tl.load(FKV_NUM + mo)
    for j in range(0, n_full):
        n = tl.load(FKV_IDX + mo * NN + j)
BODY_FULL
    n_part = tl.load(KV_NUM + mo)
    for j in range(0, n_part):
        n = tl.load(KV_IDX + mo * NN + j)
BODY_PART
    tl.store(DQ + row, dq * scale, mask=row_ok)
'''

_DQ_BODY = '''ki = n * BN + offs_n[None, :]
kT = tl.load(k_base + ki * (HK * D) + offs_d[:, None], mask=(ki < T_KV) & (offs_d[:, None] < D),
             other=0.0)
vT = tl.load(v_base + ki * (HK * D) + offs_d[:, None], mask=(ki < T_KV) & (offs_d[:, None] < D),
             other=0.0)
if DOT_F32:
    kT = kT.to(tl.float32)
    vT = vT.to(tl.float32)
s_raw = tl.dot(qx, kT, input_precision=PREC) * scale
@@SCORE@@
@@MASK@@
if not EVEN_N:
    s = tl.where(ki < T_KV, s, float("-inf"))
p = tl.exp(s - lse[:, None])
dp = tl.dot(dox, vT, input_precision=PREC)
ds = p * (dp - delta[:, None])
@@DSCORE@@
dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PREC)
'''

_DKDV = '''

def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, Q_NUM, Q_IDX, FQ_NUM, FQ_IDX, meta_sb, meta_sh,
                  NM, NN, DATA_ARGST_Q, T_KV, H, HK, scale,
                  D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  EVEN_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HK
    kh = bhk % HK
    G = H // HK
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m0 = tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    ki = offs_n[:, None]
    krow = b.to(tl.int64) * T_KV * HK * D + kh * D + ki * (HK * D) + offs_d[None, :]
    krow_ok = (ki < T_KV) & (offs_d[None, :] < D)
    kx = tl.load(K + krow, mask=krow_ok, other=0.0)
    vx = tl.load(V + krow, mask=krow_ok, other=0.0)
    if DOT_F32:
        kx = kx.to(tl.float32)
        vx = vx.to(tl.float32)
    dk = tl.full([BN, BD], 0.0, tl.float32)
    dv = tl.full([BN, BD], 0.0, tl.float32)
    for g in range(0, G):
        h = kh * G + g
        bh = b * H + h
        q_base = Q + b.to(tl.int64) * T_Q * H * D + h * D
        do_base = DO + b.to(tl.int64) * T_Q * H * D + h * D
        mo = b * meta_sb + h * meta_sh + pid_n
        n_full = tl.load(FQ_NUM + mo)
        for j in range(0, n_full):
            m = tl.load(FQ_IDX + mo * NM + j)
BODY_FULL
        n_part = tl.load(Q_NUM + mo)
        for j in range(0, n_part):
            m = tl.load(Q_IDX + mo * NM + j)
BODY_PART
    tl.store(DK + krow, dk * scale, mask=krow_ok)
    tl.store(DV + krow, dv, mask=krow_ok)
'''

_DKDV_BODY = '''qr = m * BM + offs_m0
qi = qr[None, :]
qc = qr[:, None]
qrow_ok = (qc < T_Q) & (offs_d[None, :] < D)
qx = tl.load(q_base + qc * (H * D) + offs_d[None, :], mask=qrow_ok, other=0.0)
dox = tl.load(do_base + qc * (H * D) + offs_d[None, :], mask=qrow_ok, other=0.0)
if DOT_F32:
    qx = qx.to(tl.float32)
    dox = dox.to(tl.float32)
lse = tl.load(LSE + bh.to(tl.int64) * T_Q + qr, mask=qr < T_Q, other=float("inf"))
lse = tl.where(lse == float("-inf"), float("inf"), lse)
delta = tl.load(DELTA + bh.to(tl.int64) * T_Q + qr, mask=qr < T_Q, other=0.0)
s_raw = tl.dot(kx, tl.trans(qx), input_precision=PREC) * scale
@@SCORE@@
@@MASK@@
p = tl.exp(s - lse[None, :])
dv += tl.dot(p.to(dox.dtype), dox, input_precision=PREC)
dp = tl.dot(vx, tl.trans(dox), input_precision=PREC)
ds = p * (dp - delta[None, :])
@@DSCORE@@
dk += tl.dot(ds.to(qx.dtype), qx, input_precision=PREC)
'''


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line.strip() else line for line in text.splitlines())


def _body(template: str, mask, score_mod, partial: bool, data_index, data_kinds, indent: int,
          backward: bool) -> str:
    lines = []
    if score_mod is not None:
        out = emit(score_mod.node, data_index, data_kinds, "sm", lines)
        lines.append(f"s = s_raw * 0.0 + {out}" if out.startswith("(") else f"s = {out}")
    else:
        lines.append("s = s_raw")
    score = "\n".join(lines)
    mlines = []
    if partial and mask is not None and not mask.is_full:
        if mask.node.op == "const":  # the empty mask (no tile is ever listed)
            mlines.append("s = s + float(\"-inf\")")
        else:
            pred = emit(mask.node, data_index, data_kinds, "mk", mlines)
            mlines.append(f"s = tl.where({pred}, s, float(\"-inf\"))")
    dlines = []
    if backward and score_mod is not None:
        dn = emit(score_mod.dnode, data_index, data_kinds, "ds", dlines)
        dlines.append(f"ds = ds * tl.where(s > float(\"-inf\"), {dn}, 0.0)")
    text = (template.replace("@@DSCORE@@", "\n".join(dlines) or "pass")
            .replace("@@SCORE@@", score).replace("@@MASK@@", "\n".join(mlines) or "pass"))
    return _indent(text, indent)


def _data_args(data_specs) -> str:
    parts = []
    for j, (_, _, rank) in enumerate(data_specs):
        parts.append(f"d{j}, " + "".join(f"d{j}_n{r}, d{j}_s{r}, " for r in range(rank)))
    return "".join(parts)


def generate_source(mask, score_mod, data_specs) -> str:
    """The module text for (mask, score_mod, data_specs); data_specs = ((name, kind, rank), ...)."""
    data_index = {name: j for j, (name, _, _) in enumerate(data_specs)}
    data_kinds = {name: kind for name, kind, _ in data_specs}
    args = _data_args(data_specs)
    src = _HEAD.format(VERSION=GEN_VERSION,
                       MASK=ir.render(mask.node).replace('"', "'") if mask is not None else "none",
                       SCORE=ir.render(score_mod.node).replace('"', "'") if score_mod is not None else "none")
    for tpl, body, indent, bwd in ((_FWD, _FWD_BODY, 8, False), (_DQ, _DQ_BODY, 8, True),
                                   (_DKDV, _DKDV_BODY, 12, True)):
        full = _body(body, mask, score_mod, False, data_index, data_kinds, indent, bwd)
        part = _body(body, mask, score_mod, True, data_index, data_kinds, indent, bwd)
        src += tpl.replace("DATA_ARGS", args).replace("BODY_FULL", full).replace("BODY_PART", part)
    return src


@dataclasses.dataclass(frozen=True)
class Program:
    """The three kernels of one (mask, score_mod, data kinds)."""
    key: str
    path: str
    fwd: Kernel
    dq: Kernel
    dkdv: Kernel
    data_specs: tuple
    mask: object
    score_mod: object


_programs: dict = {}
_lock = threading.Lock()


def get_program(mask, score_mod, data_specs) -> Program:
    """The (cached) program of a mask and score modification; ``data_specs`` as in
    ``generate_source``. Same IR and data kinds -> same kernels, whatever the data values."""
    source = generate_source(mask, score_mod, tuple(data_specs))
    sha = hashlib.sha256(source.encode()).hexdigest()
    with _lock:
        prog = _programs.get(sha)
        if prog is None:
            path, module = import_source(source, sha)
            tag = f"mixir.attention.{getattr(mask, 'name', 'full')}.{sha[:12]}"
            prog = Program(sha, path, Kernel(module.attn_fwd, name=tag + ".fwd"),
                           Kernel(module.attn_bwd_dq, name=tag + ".dq"),
                           Kernel(module.attn_bwd_dkdv, name=tag + ".dkdv"),
                           tuple(data_specs), mask, score_mod)
            _programs[sha] = prog
        return prog


# ------------------------------------------------------------------------------------ launching

def data_kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "b"
    return "f" if t.is_floating_point() else "i"


def prepare_data(names, data: dict, device):
    """(specs, tensors) for the kernels: bool -> int8, integers -> int32, floats -> fp32."""
    specs, tensors = [], []
    for name in names:
        t = data[name]
        kind = data_kind(t)
        dt = {"b": torch.int8, "i": torch.int32, "f": torch.float32}[kind]
        t = t.to(device=device, dtype=dt).contiguous()
        specs.append((name, kind, t.dim()))
        tensors.append(t)
    return tuple(specs), tensors


def _data_launch_args(tensors) -> list:
    args = []
    for t in tensors:
        args.append(t)
        for r in range(t.dim()):
            args += [int(t.shape[r]), int(t.stride(r))]
    return args


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dot_mode(x: torch.Tensor):
    """(DOT_F32, PREC): fp32 inputs use fp32 'ieee' dots; 16-bit inputs use 16-bit operands on a
    GPU (tensor cores) and, off CUDA, bf16 takes fp32 operands (Triton's interpreter mishandles
    bf16 dots)."""
    if x.dtype == torch.float32:
        return True, "ieee"
    if x.device.type != "cuda" and not targets_gpu(x.device):
        return x.dtype == torch.bfloat16, "ieee"
    return False, "ieee"


def _meta_strides(shape):
    Bm, Hm, NM, NN = shape
    return (Hm * NM if Bm > 1 else 0), (NM if Hm > 1 else 0)


def _launch_opts(x, backward=False):
    """4 warps for the 16-bit forward; 8 for the backward (it holds two more fp32 tiles) and for
    fp32 operands (CUDA-core 'ieee' dots keep whole fp32 operand tiles in registers)."""
    return {"num_warps": 8 if backward or x.dtype == torch.float32 else 4, "num_stages": 2}


def _consts(q, bm, D):
    dot_f32, prec = dot_mode(q)
    return dict(D=D, BD=max(16, _pow2(D)), BM=bm.block_m, BN=bm.block_n,
                EVEN_N=bm.kv_len % bm.block_n == 0, DOT_F32=dot_f32, PREC=prec)


def forward(prog: Program, q, k, v, meta: list, bm, data_tensors, scale: float):
    """(o [B, Tq, H, D] q.dtype, lse [B, H, Tq] fp32)."""
    B, Tq, H, D = q.shape
    Tkv, HK = k.shape[1], k.shape[2]
    Bm, Hm, NM, NN = bm.shape
    sb, sh = _meta_strides(bm.shape)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Tq), device=q.device, dtype=torch.float32)
    prog.fwd[(NM, B * H)](q, k, v, o, lse, *meta[:4], sb, sh, NM, NN,
                          *_data_launch_args(data_tensors), Tq, Tkv, H, HK, float(scale),
                          **_consts(q, bm, D), **_launch_opts(q))
    return o, lse


def backward(prog: Program, q, k, v, o, lse, do, meta: list, bm, data_tensors, scale: float):
    """(dq, dk, dv) in fp32."""
    B, Tq, H, D = q.shape
    Tkv, HK = k.shape[1], k.shape[2]
    Bm, Hm, NM, NN = bm.shape
    sb, sh = _meta_strides(bm.shape)
    tsb, tsh = (Hm * NN if Bm > 1 else 0), (NN if Hm > 1 else 0)
    delta = (do.float() * o.float()).sum(-1).permute(0, 2, 1).contiguous()   # [B, H, Tq]
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.empty(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.empty(v.shape, device=q.device, dtype=torch.float32)
    dargs = _data_launch_args(data_tensors)
    consts = _consts(q, bm, D)
    prog.dq[(NM, B * H)](q, k, v, do, lse, delta, dq, *meta[:4], sb, sh, NM, NN, *dargs,
                         Tq, Tkv, H, HK, float(scale), **consts, **_launch_opts(q, True))
    prog.dkdv[(NN, B * HK)](q, k, v, do, lse, delta, dk, dv, *meta[4:], tsb, tsh, NM, NN, *dargs,
                            Tq, Tkv, H, HK, float(scale), **consts, **_launch_opts(q, True))
    return dq, dk, dv
