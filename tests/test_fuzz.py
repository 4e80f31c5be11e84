"""A standing fuzz suite (issue: hardening, section 7), in the fast lane.

Hypothesis over malformed declarations, call arguments and tuning-database files; each asserts
that only ``mixir`` errors come out (no raw Python / NumPy / torch / Triton exception), that a
call the validation accepts gives the reference's answer, and that the database never loses
data (an unreadable file is left byte-for-byte; a write keeps every earlier entry). Then a
kill -9 of a writer mid-stream and concurrent writers on one database file.

Example counts come from the profile (tests/conftest.py: ``ci`` 6, ``dev`` 10, ``nightly`` 200);
most examples fail validation or run T <= 2, so kernels (interpreted on CPU) rarely run. The
hostile-cache-directory cases (planted directories, other users' permissions, bytecode) live in
tests/test_security.py and are not repeated here.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch

import mixir as mx
from mixir import In, Param, Scalar, Scale, State
from mixir.autotune import db
from mixir.errors import MixirError, TuningError
from mixir.library import MIXERS
from mixir.library import attention as L
from mixir.reference.attention import attention_reference
from mixir.testing.tolerances import bounds_for, rel_rms_error

hyp = pytest.importorskip("hypothesis")
from hypothesis import event, given, note, strategies as st  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLA = MIXERS["gla"].mixer


# ---- 1. malformed declarations ------------------------------------------------------------------
BAD_DIMS = ["rows", "B", "h", "", "__row__", "1x", 3]
_dims = st.lists(st.sampled_from(["K", "V", "K"] * 3 + BAD_DIMS), max_size=2).map(tuple)
_GOOD_ANN = ["In['K']", "In['K']", "In['V']", "In[()]", "Param['K']", "Scalar[0.9]", "Scale['K']"]
_annotation = st.one_of(
    st.sampled_from(_GOOD_ANN), st.sampled_from(_GOOD_ANN),
    _dims.map(lambda d: f"In[{d!r}]"), _dims.map(lambda d: f"Param[{d!r}]"),
    _dims.map(lambda d: f"State[{d!r}]"), st.sampled_from(BAD_DIMS).map(lambda d: f"Scale[{d!r}]"),
    st.sampled_from(["Scalar['x']", "Scalar[True]", "None", "int", "'K'", "In"]))
EXPRS = ["{a} + {b}", "{a} * {b}", "{a} @ {b}", "mx.outer({a}, {b})", "mx.exp({a})", "-{a}",
         "mx.sum({a}, 'K')", "mx.where({a} > 0, {a}, {b})", "mx.rename({a}, K='E')", "0.9 * {a}",
         "{a} / 2", "mx.l2norm({a}, 'K')", "mx.sigmoid({a}) ** 2", "mx.maximum({a}, {b})",
         "mx.logsigmoid({a}) + {b}"] * 2 + [
         "np.exp({a})", "math.exp({a})", "{a}[0]", "float({a})", "{a} if {a} else {b}",
         "torch.tanh({a})", "range({a})", "{a} + 'x'", "len({a})"]
_UPDATES = ["mx.exp({g}) * S + mx.outer(k, v)", "0.9 * S + mx.outer(k, v)", "S + mx.outer(k, v)",
            "mx.sigmoid({g}) * S + {a} * mx.outer(k, v)", "S * {a} + mx.outer(k, v)",
            "mx.tanh(S) + mx.outer(k, v)", "{a}"]


@st.composite
def declarations(draw):
    """Mostly gated-linear-shaped steps (q, k, v, a state S[K, V], extra arguments) with random
    annotations, bodies and returns: many trace and reach ``compile``, many do not."""
    extra = draw(st.lists(st.sampled_from(["g", "w", "a"]), max_size=3, unique=True))
    anns = {"q": "In['K']", "k": "In['K']", "v": "In['V']", **{n: draw(_annotation) for n in extra}}
    for n in ("q", "k", "v"):
        if draw(st.integers(0, 5)) == 0:
            anns[n] = draw(_annotation)
    anns["S"] = draw(st.sampled_from(["State['K', 'V']"] * 4 + ["State['K']", "State[()]", "In['K']"]))
    params = ", ".join(f"{n}: {a}" for n, a in anns.items())
    pool = list(anns)
    lines = []
    for i in range(draw(st.integers(0, 2))):
        e = draw(st.sampled_from(EXPRS)).format(a=draw(st.sampled_from(pool)), b=draw(st.sampled_from(pool)))
        lines.append(f"    x{i} = {e}")
        pool.append(f"x{i}")
    upd = draw(st.sampled_from(_UPDATES)).format(g=draw(st.sampled_from(pool)), a=draw(st.sampled_from(pool)))
    lines.append(f"    S = {upd}")
    ret = draw(st.sampled_from(["q @ S, S", "q @ S, S", "({a}) @ S, S", "S, S", "q @ S", "q @ S, S, S",
                                "{a}, S"])).format(a=draw(st.sampled_from(pool)))
    return f"def m({params}):\n" + "\n".join(lines) + f"\n    return {ret}\n"


def _valid_arrays(m, rng):
    sizes = {d: 2 for a in m.inputs for d in a.dims}
    return [rng.standard_normal(((1, 2, 1) if a.kind == "input" else (1,)) + tuple(sizes[d] for d in a.dims))
            for a in m.inputs]


@given(declarations())
def test_fuzz_declarations_raise_only_mixir_errors(src):
    note(src)
    ns = {"In": In, "Param": Param, "State": State, "Scale": Scale, "Scalar": Scalar, "mx": mx,
          "np": np, "math": __import__("math"), "torch": torch}
    exec(src, ns)               # noqa: S102 - generated declarations
    try:
        m = mx.mixer(ns["m"])
    except MixirError:
        event("refused at declaration")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # overflow / log of negatives: values
        try:
            mx.reference(m)(*_valid_arrays(m, np.random.default_rng(0)), output_final_state=True)
        except MixirError:
            pass
    try:
        mx.compile(m)
        event("compiled")
    except MixirError:
        event("traced, not compiled")


# ---- 2. call arguments ----------------------------------------------------------------------------
_BAD_DTYPES = [torch.int32, torch.float64, torch.bool, torch.complex64, torch.float16, torch.bfloat16]
_CU = ["float", "2d", "decreasing", "short", "long", "numpy", "meta", "empty", "valid"]
_STATE = ["shape", "int", "float64", "tuple", "list", "number", "meta", "valid"]


@st.composite
def mutations(draw, n_args):
    kinds = ["dtype", "rank", "size", "type", "device", "count", "cu", "state", "kw", "strategy"]
    out = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(kinds))
        i = draw(st.integers(0, n_args - 1))
        arg = {"dtype": lambda: draw(st.sampled_from(_BAD_DTYPES)), "size": lambda: draw(st.integers(0, 3)),
               "type": lambda: draw(st.sampled_from([None, 3.0, "q", [1.0]])),
               "count": lambda: draw(st.sampled_from([-1, 1])), "cu": lambda: draw(st.sampled_from(_CU)),
               "state": lambda: draw(st.sampled_from(_STATE)),
               "kw": lambda: draw(st.sampled_from([("temperature", 2.0), ("scale", "abc"),
                                                   ("scale", torch.ones(2)), ("scale", 0.5)])),
               "strategy": lambda: draw(st.sampled_from(["magic", 3, "chunked", "recurrent"]))}
        out.append((kind, i, arg[kind]() if kind in arg else None))
    return out


def _mutate(arrays, muts, T):
    arrays, kw = list(arrays), {}
    for kind, i, arg in muts:
        if kind == "dtype":
            arrays[i] = arrays[i].to(arg) if isinstance(arrays[i], torch.Tensor) else arrays[i]
        elif kind == "rank" and isinstance(arrays[i], torch.Tensor) and arrays[i].dim():
            arrays[i] = arrays[i].sum(0)       # one rank fewer (also when empty)
        elif kind == "size" and isinstance(arrays[i], torch.Tensor) and arrays[i].dim():
            axis = arg % arrays[i].dim()
            arrays[i] = torch.cat([arrays[i], arrays[i].narrow(axis, 0, min(1, arrays[i].shape[axis]))], axis)
        elif kind == "type":
            arrays[i] = arg
        elif kind == "device" and isinstance(arrays[i], torch.Tensor):
            arrays[i] = arrays[i].to("meta")
        elif kind == "count":
            arrays = arrays[:-1] if arg < 0 else arrays + arrays[-1:]
        elif kind == "cu":
            kw["cu_seqlens"] = {"float": torch.tensor([0.0, T / 2, T]), "2d": torch.tensor([[0, T]]),
                                "decreasing": torch.tensor([0, T, 0, T]), "short": torch.tensor([0, max(T - 1, 0)]),
                                "long": torch.tensor([0, T + 1]), "numpy": np.array([0, T]),
                                "meta": torch.tensor([0, T], device="meta"), "empty": torch.tensor([0]),
                                "valid": torch.tensor([0, T // 2, T], dtype=torch.int32)}[arg]
        elif kind == "state":
            good = torch.randn(1, 2, 4, 4)
            kw["initial_state"] = {"shape": good[:, :1], "int": good.to(torch.int32),
                                   "float64": good.double(), "tuple": (good, good), "list": [good],
                                   "number": 0.0, "meta": good.to("meta"), "valid": good}[arg]
        elif kind == "kw":
            kw[arg[0]] = arg[1]
        elif kind == "strategy":
            kw["strategy"] = arg
    return arrays, kw


@pytest.mark.interp
@given(st.integers(0, 2), st.integers(0, 2), mutations(4))
def test_fuzz_call_arguments(B, T, muts):
    """A compiled mixer (gla; the shared ``check_call`` of every DSL family) under random
    malformed arguments: an ``InputError`` / ``MixirError``, or - when accepted - the reference's
    answer (float64, on the same values)."""
    note(f"B={B} T={T} mutations={muts}")
    g = torch.Generator().manual_seed(0)
    arrays = [torch.randn(B, T, 2, 4, generator=g) for _ in range(3)]
    arrays.append(torch.nn.functional.logsigmoid(torch.randn(B, T, 2, 4, generator=g)))
    arrays, kw = _mutate(arrays, muts, T)
    try:
        out = mx.compile(GLA)(*arrays, output_final_state=True, **kw)
    except MixirError:
        event("refused")
        return
    event("ran")
    o, S = out
    dtype = arrays[0].dtype
    ref_kw = {k: v for k, v in kw.items() if k != "strategy"}
    if isinstance(ref_kw.get("initial_state"), torch.Tensor):
        ref_kw["initial_state"] = ref_kw["initial_state"].double().numpy()
    ro, rS = mx.reference(GLA)(*(a.double().numpy() for a in arrays), output_final_state=True, **ref_kw)
    assert tuple(o.shape) == ro.shape and tuple(S.shape) == rS.shape and o.dtype == dtype
    b = bounds_for(dtype)
    assert rel_rms_error(o, torch.from_numpy(ro), b.floor) <= b.output
    assert rel_rms_error(S, torch.from_numpy(rS), b.floor) <= b.state


@st.composite
def attention_calls(draw):
    B, Tq, H = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 3]))
    Tk, Hkv = draw(st.sampled_from([Tq, Tq, 0, Tq + 1])), draw(st.sampled_from([1, H, 2]))
    dtypes = draw(st.lists(st.sampled_from([torch.float32] * 3 + _BAD_DTYPES), min_size=3, max_size=3))
    fn = draw(st.sampled_from(["causal", "document", "moba", "sliding", "prefix"]))
    return B, Tq, H, Tk, Hkv, dtypes, fn


@pytest.mark.interp
@given(attention_calls())
def test_fuzz_attention_calls(case):
    B, Tq, H, Tk, Hkv, dtypes, fn = case
    note(str(case))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Tq, H, 16, generator=g).to(dtypes[0])
    k, v = (torch.randn(B, Tk, Hkv, 16, generator=g).to(d) for d in dtypes[1:])
    call = {"causal": lambda: L.causal_attention(q, k, v, block_size=16),
            "document": lambda: L.document_attention(q, k, v, cu_seqlens=torch.tensor([0, Tq]), block_size=16),
            "moba": lambda: L.moba(q, k, v, 16, 1),
            "sliding": lambda: L.sliding_window_attention(q, k, v, 2, block_size=16),
            "prefix": lambda: L.prefix_lm_attention(q, k, v, 1, block_size=16)}[fn]
    try:
        o = call()
    except MixirError:
        return
    assert tuple(o.shape) == tuple(q.shape) and o.dtype == q.dtype
    if fn == "causal" and o.numel():
        ro, _ = attention_reference(q.double(), k.double(), v.double(), L.causal_mask())
        b = bounds_for(q.dtype)
        assert rel_rms_error(o, ro, b.floor) <= b.output


@pytest.mark.interp
@given(st.sampled_from(["lstm", "s4d"]), st.integers(0, 2), mutations(3))
def test_fuzz_wrapper_calls(name, T, muts):
    """The library wrappers under malformed public arguments: only mixir errors (values are
    checked by the contract tests; these calls stop at validation or run T <= 2)."""
    from mixir.library import lstm, s4d
    from mixir.library.lti import s4d_lin_init
    # (not "count": a missing positional argument is Python's TypeError, before any mixir code)
    muts = [m for m in muts if m[0] not in ("state", "strategy", "kw", "count")]
    note(f"{name} T={T} {muts}")
    if name == "lstm":
        arrays = [torch.randn(1, T, 4, 2, 4), torch.randn(4, 2, 4, 4) * 0.3, torch.randn(4, 2, 4)]
        arrays, kw = _mutate(arrays, muts, T)
        call = lambda: lstm(*arrays, **kw)          # noqa: E731
    else:
        p = s4d_lin_init(2, 4)
        arrays = [torch.randn(1, T, 2), p["A_re"], p["B"]]
        arrays, kw = _mutate(arrays, muts, T)
        rest = {k: v for k, v in p.items() if k not in ("A_re", "B")}
        call = lambda: s4d(*arrays[:1], A_re=arrays[1] if len(arrays) > 1 else None,   # noqa: E731
                           B=arrays[2] if len(arrays) > 2 else None, **rest, **kw)
    try:
        call()
    except MixirError:
        pass


# ---- 3. database files ----------------------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 2 ** 41) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.text(max_size=6), c, max_size=3), max_leaves=8)
KEY = db.make_key("fp0", "bf16", "chunked", 8, 4096, 16, 64, 64)
GOOD = {"BT": 64, "BC": 16, "BK": 64, "BKS": 64, "BV": 64, "BVS": 64, "num_warps": 4, "num_stages": 2}


@st.composite
def db_files(draw):
    kind = draw(st.sampled_from(["mutated", "mutated", "json", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "text":
        return draw(st.text(max_size=64)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    data = {"format": "mixir-tuning-db", "version": 1, "gpu": "H100-SXM",
            "entries": {KEY: {"config": dict(GOOD), "provenance": {"source": "model"}},
                        "other|key": {"config": dict(GOOD)}}}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([("format",), ("version",), ("entries",), ("entries", KEY),
                                     ("entries", KEY, "config"), ("entries", KEY, "config", "BT"),
                                     ("entries", KEY, "provenance")]))
        node = data
        for p in path[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[path[-1]] = draw(_json)
    return json.dumps(data).encode()


@given(db_files())
def test_fuzz_database_files(content):
    from mixir.autotune import hardware, select
    from mixir.lowering.gated_linear import space as gla_space
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXIR_TUNING_DB", d)
        mp.setattr(select, "_gpu_for", lambda idx: hardware.get("h100"))
        path = os.path.join(d, "H100-SXM.json")
        with open(path, "wb") as f:
            f.write(content)
        old, problem = (None, "undecodable")
        try:
            old, problem = db._examine(content.decode("utf-8"))
        except UnicodeDecodeError:
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            db.lookup("fp0", "h100", "bf16", 8, 4096, 16, K=64, V=64)      # never raises
            db.lookup("fp0", "h100", "bf16", 8, 4096, 16)
            key = db.Key("fp0", "chunked", torch.bfloat16, 8, 4096, 16, 64, 64)
            cfg = select.tuned_config(gla_space.CHUNKED, key, gla_space.core_shape(
                8, 4096, 16, 64, 64, torch.bfloat16), torch.device("cuda", 0))
            assert cfg is None or isinstance(cfg, dict)
            try:
                db.record("fp1", "h100", "bf16", 8, 4096, 16, 64, 64, "chunked", GOOD, source="model")
            except TuningError:
                assert old is None, problem                      # only an unreadable file refuses
                with open(path, "rb") as f:
                    assert f.read() == content                   # and it is left as it was
                return
        assert old is not None, "an unreadable file was overwritten"
        with open(path, encoding="utf-8") as f:
            new, why = db._examine(f.read())
        assert new is not None, why
        for k, e in old["entries"].items():                      # nothing lost
            assert new["entries"][k] == e
        assert db.make_key("fp1", "bf16", "chunked", 8, 4096, 16, 64, 64) in new["entries"]


# ---- 4. kill -9 and concurrent writers ---------------------------------------------------------
_WRITER = r"""
import sys
from mixir.autotune import db
tag, n = sys.argv[1], int(sys.argv[2])
i = 0
while n < 0 or i < n:
    db.record(f"{tag}_{i}", "h100", "bf16", 8, 4096, 16, 64, 64, "chunked",
              {"BT": 64, "num_warps": 4}, source="model")
    print(i, flush=True)
    i += 1
"""


def _writer(dbdir, tag, n):
    env = dict(os.environ, MIXIR_TUNING_DB=str(dbdir), PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", _WRITER, tag, str(n)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entries(dbdir):
    with open(os.path.join(dbdir, "H100-SXM.json"), encoding="utf-8") as f:
        data, problem = db._examine(f.read())
    assert data is not None, problem
    return data["entries"]


def _key(tag, i):
    return db.make_key(f"{tag}_{i}", "bf16", "chunked", 8, 4096, 16, 64, 64)


def test_concurrent_writers_lose_nothing(tmp_path):
    procs = [_writer(tmp_path, f"w{j}", 12) for j in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    ents = _entries(tmp_path)
    assert all(_key(f"w{j}", i) in ents for j in range(3) for i in range(12))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_kill_9_mid_write_keeps_every_confirmed_entry(tmp_path):
    confirmed = []
    for round_ in range(3):
        p = _writer(tmp_path, f"k{round_}", -1)
        seen = []
        deadline = time.time() + 120
        while len(seen) < 5 + 3 * round_ and time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            seen.append(int(line))
        os.kill(p.pid, signal.SIGKILL)                 # at whatever point of a write it is
        p.wait(timeout=60)
        p.stdout.close()
        p.stderr.close()
        assert seen, "the writer confirmed no entry"
        confirmed += [_key(f"k{round_}", i) for i in seen]
        ents = _entries(tmp_path)                      # the file is whole: the old or the new one
        assert all(k in ents for k in confirmed)
    db.record("after", "h100", "bf16", 8, 4096, 16, 64, 64, "chunked", GOOD, source="model")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]      # swept
    assert all(k in _entries(tmp_path) for k in confirmed)
