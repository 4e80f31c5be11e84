"""The family contract (``mixir/lowering/family.py``), checked for every registered family.

Parametrized over ``families()`` read at collection time with the toy family of ``tests/toy_family``
registered, so a new family is checked here without editing this file. For every family and every
built-in declaration of it (the library mixers of ``mixir.library.MIXERS`` whose entry names the
family; the attention masks of ``mixir.library.attention.MASKS``; the toy's own library entry):

- the contract's shape: the declaration routes to its family (``classify``, ``family_of``), the
  plan and the compiled callable carry what the contract says (``strategies``, ``transition``,
  ``describe``, ``source_files``, ``input_ranges``, ``key_dims``, ``tunable_strategies``);
- reference agreement: every strategy, fp32, output, final states and gradients through the
  differential checker (``mixir.testing.checker.check``; masks: ``attention_reference``) at tiny
  shapes (B = 1, two packed sequences of 3 and 17 tokens with initial states, H = 1, K = V = 8;
  masks: T = 40 in 16-token tiles, GQA);
- bad inputs: too few / too many tensors, a wrong dtype, mismatched shapes (head, length, feature
  dim, initial state) raise ``mixir.InputError`` naming the argument, before any kernel launch;
- tuning: a family with tunable strategies gives a non-empty tuning space
  (``tuning_targets``, each target with feasible configs on an H100);
- AOT (``-m aot``): one declaration per family builds for sm_90 without register spills.

The toy family proves that registering a family takes one ``register`` call and no edit outside
its package (``test_toy_*``).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import re

import numpy as np
import pytest
import torch

import mixir
from mixir.attention import attention_reference
from mixir.errors import InputError, UnsupportedMixerError
from mixir.library import MIXERS
from mixir.library.attention import MASKS, example_data
from mixir.lowering.common.launch import record_launches
from mixir.lowering.family import Family, classify, families, family_of, get, register, unregister
from mixir.testing.checker import assert_close, check, ieee_fp32, poisoned_allocations
from mixir.testing.tolerances import bounds_for, rel_rms_error

from toy_family import library as toy_library
from toy_family.family import FAMILY as TOY

HERE = os.path.dirname(os.path.abspath(__file__))
MIXIR_DIR = os.path.join(os.path.dirname(HERE), "mixir")

# tiny shapes that still cross a sequence boundary, carry initial states and span two chunks of
# the chunked kernels (a 17-token sequence: two Householder chunks of 16)
H, K, V = 1, 8, 8
CU = (0, 3, 20)
T = CU[-1]
# masks: 40 tokens in 16-token tiles (three tile rows, the last partial), two query heads per
# key/value head, head dim 16 (the smallest tl.dot extent)
MASK_B, MASK_T, MASK_H, MASK_HKV, MASK_D, MASK_TILE = 1, 40, 2, 1, 16, 16
FP32 = torch.float32


# ---------------------------------------------------------------------------------------- the toy

@contextlib.contextmanager
def toy_registered():
    """The toy family registered (the one ``register`` call) with its library entry in
    ``MIXERS``; both removed on exit."""
    register(TOY)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, entry in toy_library.ENTRIES.items():
                mp.setitem(MIXERS, name, entry)
            yield TOY
    finally:
        unregister(TOY.name)


@pytest.fixture(scope="module", autouse=True)
def _toy():
    with toy_registered():
        yield TOY


# ------------------------------------------------------------------------------- the declarations

@dataclasses.dataclass(frozen=True)
class Decl:
    """One built-in declaration: ``family`` is the family the library says it belongs to."""
    name: str
    family: str
    mask_args: tuple | None = None        # a mask: the factory arguments of MASKS

    @property
    def is_mask(self) -> bool:
        return self.mask_args is not None

    @property
    def declaration(self):
        if self.is_mask:
            return MASKS[self.name][0](*self.mask_args)
        return MIXERS[self.name].mixer


def _declarations() -> list:
    """Every built-in declaration: the library mixers (family from their entry) and the library
    masks (family: the one ``classify`` picks among those that lower masks)."""
    out = [Decl(name, entry.family) for name, entry in sorted(MIXERS.items())]
    for name, (factory, args) in sorted(MASKS.items()):
        fam, _ = classify(factory(*args))
        out.append(Decl(name, fam.name, tuple(args)))
    return out


def _collect():
    """(family names, declarations, [(declaration, strategy)]) with the toy registered."""
    with toy_registered():
        names = [f.name for f in families()]
        decls = _declarations()
        runs = []
        for d in decls:
            fam, plan = classify(d.declaration)
            runs += [(d, s) for s in fam.strategies(plan)]
    return names, decls, runs


FAMILY_NAMES, DECLS, RUNS = _collect()


def _of(family: str) -> list:
    return [d for d in DECLS if d.family == family]


def _id(x):
    if isinstance(x, Decl):
        return f"{x.family}:{x.name}"
    return str(x)


# -------------------------------------------------------------------------------------- inputs

def _mixer_inputs(d: Decl, seed=0):
    """Arrays in declaration order for two packed sequences, their initial states, cu_seqlens."""
    entry = MIXERS[d.name]
    rng = np.random.default_rng(seed)
    arrays = entry.make_inputs(rng, 1, T, H, K, V)
    h0 = entry.make_initial_state(rng, len(CU) - 1, H, K, V)
    return list(arrays), h0, torch.tensor(CU, dtype=torch.int32)


def _mask_inputs(d: Decl, seed=0, dtype=FP32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(MASK_B, MASK_T, MASK_H, MASK_D, generator=g, dtype=dtype)
    k = torch.randn(MASK_B, MASK_T, MASK_HKV, MASK_D, generator=g, dtype=dtype)
    v = torch.randn(MASK_B, MASK_T, MASK_HKV, MASK_D, generator=g, dtype=dtype)
    data = example_data(d.name, MASK_B, MASK_H, MASK_T, d.mask_args, seed=seed)
    return [q, k, v], data


# --------------------------------------------------------------------------- 0. the registry

def test_the_toy_family_is_in_the_parametrization():
    """The suite reads ``families()`` after registering the toy: it checks it like the others."""
    assert TOY.name in FAMILY_NAMES
    assert [d.name for d in _of(TOY.name)] == sorted(toy_library.ENTRIES)
    assert any(d.family == TOY.name for d, _ in RUNS)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_is_registered_and_well_formed(family):
    fam = get(family)
    assert isinstance(fam, Family) and fam.name == family
    assert isinstance(fam.priority, int) and isinstance(fam.declaration, type)
    assert fam in families()
    order = [(f.priority, f.name) for f in families()]
    assert order == sorted(order), "families() is in classification order"
    assert _of(family), f"the {family} family has no built-in declaration for this suite to check"


# --------------------------------------------------------------------------- 1-3. plan and compile

@pytest.mark.parametrize("decl", DECLS, ids=_id)
def test_declaration_routes_to_its_family_and_compiles(decl):
    fam, plan = classify(decl.declaration)
    assert fam.name == decl.family, f"{decl.name} is put in {fam.name}, the library says {decl.family}"
    assert family_of(plan) is fam and plan.family == fam.name
    strategies = fam.strategies(plan)
    assert isinstance(strategies, tuple) and strategies and all(isinstance(s, str) for s in strategies)
    assert isinstance(plan.transition, str) and plan.transition
    assert isinstance(fam.describe(decl.declaration, plan), str) and fam.describe(decl.declaration, plan)
    assert set(fam.tunable_strategies(plan)) <= set(strategies)
    compiled = fam.compile(decl.declaration, plan)
    assert tuple(compiled.strategies) == strategies
    assert compiled.plan == plan
    files = compiled.source_files()
    assert files and all(os.path.isfile(f) for f in files), files
    via_mixir = mixir.compile(decl.declaration)          # the public entry point takes the same road
    assert type(via_mixir) is type(compiled) and tuple(via_mixir.strategies) == strategies
    with pytest.raises(InputError, match="strategy"):
        fam.compile(decl.declaration, plan, strategy="no_such_strategy")
    if decl.is_mask:
        return
    m = decl.declaration
    names = {a.name for a in m.inputs}
    ranges = fam.input_ranges(m, plan)
    assert set(ranges) <= names, f"input_ranges names {set(ranges) - names}, not inputs of {m.name}"
    assert all(lo < hi for lo, hi in ranges.values()), ranges
    assert set(fam.key_dims(m, plan)) <= set(m.feature_dims())


# ------------------------------------------------------------------------ reference agreement

def _check_mask(d: Decl, strategy):
    """``check`` for a mask: o and the gradients of a fixed projection against the float64 dense
    reference, with the error measure and fp32 bounds of ``mixir.testing.tolerances``."""
    fam, plan = classify(d.declaration)
    fn = fam.compile(d.declaration, plan, strategy=strategy)
    (q, k, v), data = _mask_inputs(d)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    with ieee_fp32(), poisoned_allocations():
        o = fn(*xs, data=data, block_size=MASK_TILE)
    W = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with ieee_fp32(), poisoned_allocations():
        g = torch.autograd.grad((o.double() * W).sum(), xs)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    o_r, _ = attention_reference(*xr, mask=d.declaration, data=data)
    g_r = torch.autograd.grad((o_r * W).sum(), xr)
    b = bounds_for(FP32)
    assert o.dtype == FP32 and tuple(o.shape) == tuple(o_r.shape)
    errors = {"o": (rel_rms_error(o, o_r, b.floor), b.output)}
    errors |= {f"d{n}": (rel_rms_error(a, e, b.floor), b.grad) for n, a, e in zip("qkv", g, g_r)}
    bad = {n: e for n, e in errors.items() if not e[0] <= e[1]}
    assert not bad, f"{d.name} ({strategy}): error > bound: {bad}"


@pytest.mark.parametrize("decl,strategy", RUNS, ids=_id)
def test_matches_the_reference(decl, strategy):
    """fp32, forward and gradients (inputs and initial states), every strategy."""
    if decl.is_mask:
        return _check_mask(decl, strategy)
    fam, plan = classify(decl.declaration)
    compiled = fam.compile(decl.declaration, plan)
    arrays, h0, cu = _mixer_inputs(decl)
    assert_close(check(decl.declaration, compiled, arrays, dtype=FP32, strategy=strategy,
                       initial_state=h0, cu_seqlens=cu))


# ------------------------------------------------------------------------------- bad inputs

@dataclasses.dataclass(frozen=True)
class Arg:
    name: str
    per_token: bool          # [B, T, H, *dims] (else a per-head parameter [H, *dims])
    dims: tuple


def _args(d: Decl) -> list:
    if d.is_mask:                                     # fn(q, k, v): [B, T, H, D] each
        return [Arg(n, True, ("D",)) for n in "qkv"]
    return [Arg(a.name, a.kind == "input", a.dims) for a in d.declaration.inputs]


def _resize(t, axis, n=1):
    """``t`` with ``n`` more entries along ``axis`` (a negative ``n``: fewer)."""
    if n < 0:
        return t.narrow(axis, 0, t.shape[axis] + n).contiguous()
    return torch.cat([t, t.narrow(axis, 0, n)], axis)


def _bad_calls(d: Decl, tensors, h0):
    """[(what, tensors, initial state, the argument the error must name (None: any))]."""
    args = _args(d)
    last, a_last = len(args) - 1, args[-1]
    out = [("one tensor too few", tensors[:-1], h0, a_last.name),
           ("one tensor too many", tensors + [tensors[-1]], h0, None),
           ("an int32 tensor", tensors[:-1] + [tensors[-1].to(torch.int32)], h0, a_last.name)]

    def swap(i, t):
        return tensors[:i] + [t] + tensors[i + 1:]
    head = 2 if a_last.per_token else 0
    out.append(("one more head", swap(last, _resize(tensors[last], head)), h0, a_last.name))
    per_token = [i for i, a in enumerate(args) if a.per_token]
    if len(per_token) > 1:
        i = per_token[-1]
        out.append(("one token fewer", swap(i, _resize(tensors[i], 1, -1)), h0, args[i].name))
    fixed = set()
    for i, a in enumerate(args):
        shared = [j for j, dim in enumerate(a.dims) if dim in fixed]
        if shared:
            axis = (3 if a.per_token else 1) + shared[0]
            out.append((f"{a.dims[shared[0]]} of {a.name} mismatched", swap(i, _resize(tensors[i], axis)),
                        h0, a.name))
            break
        fixed |= set(a.dims)
    if h0 is not None:
        states = h0 if isinstance(h0, tuple) else (h0,)
        bad = (_resize(states[0], 0),) + tuple(states[1:])
        out.append(("initial state of the wrong N", tensors, bad if isinstance(h0, tuple) else bad[0],
                    d.declaration.states[0].name))
    return out


def _names(message: str, name: str) -> bool:
    return f"'{name}'" in message or re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None


@pytest.mark.parametrize("decl", DECLS, ids=_id)
def test_bad_inputs_raise_input_error_naming_the_argument(decl):
    fam, plan = classify(decl.declaration)
    fn = fam.compile(decl.declaration, plan)
    if decl.is_mask:
        tensors, data = _mask_inputs(decl)
        kw, h0 = dict(data=data, block_size=MASK_TILE), None
    else:
        arrays, h0, _ = _mixer_inputs(decl)
        tensors = [torch.tensor(a, dtype=FP32) for a in arrays]
        states = tuple(torch.tensor(s[:1], dtype=FP32)                     # B = 1 unpacked: N = 1
                       for s in (h0 if isinstance(h0, tuple) else (h0,)))
        h0, kw = (states if isinstance(h0, tuple) else states[0]), {}
    problems = []
    for what, bad, state, culprit in _bad_calls(decl, tensors, h0):
        call_kw = dict(kw) if state is None else dict(kw, initial_state=state)
        with record_launches() as launched:
            try:
                fn(*bad, **call_kw)
            except InputError as e:
                if culprit is not None and not _names(str(e), culprit):
                    problems.append(f"{what}: the InputError does not name {culprit!r}: {e}")
            except Exception as e:                  # noqa: BLE001 - any other error is the finding
                problems.append(f"{what}: {type(e).__name__} instead of InputError: {e}")
            else:
                problems.append(f"{what}: no error")
        if launched:
            problems.append(f"{what}: kernels launched before the error: {sorted(launched)}")
    assert not problems, f"{decl.name}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------- tuning

def _tuning_request(d: Decl):
    from mixir import tuning
    fields = dict(B=1, T=512, H=2, K=64, V=64, aot=False, timed=False, write=False, strategies=None)
    if d.is_mask:
        fields["data"] = lambda B, H_, T_: example_data(d.name, B, H_, T_, d.mask_args)
    return tuning.request(**fields)


def _has_feasible(space, shape, gpu, feasible):
    """One CP-SAT solve (the full enumeration, seconds per space, is ``mixir tune``'s business);
    the brute-force enumeration without ortools."""
    from mixir.autotune import solver
    if solver.available():
        return solver.first_feasible(space, shape, gpu) is not None
    return bool(feasible(space, shape, gpu))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tunable_families_have_a_tuning_space(family):
    """Every declaration whose plan has tunable strategies gets tuning targets with feasible
    configs on an H100 at the request's shape; a family with nothing tunable says so by
    ``tunable_strategies() == ()``."""
    from mixir.autotune import hardware
    from mixir.autotune.pipeline import TuningTarget, feasible
    fam = get(family)
    problems = []
    for d in _of(family):
        plan = fam.analyse(d.declaration)
        tunable = tuple(fam.tunable_strategies(plan))
        if not tunable:
            continue
        req = _tuning_request(d)
        targets = fam.tuning_targets(d.declaration, plan, req)
        if not targets:
            problems.append(f"{d.name}: tunable strategies {tunable} but tuning_targets() is empty")
            continue
        for t in targets:
            if not isinstance(t, TuningTarget):
                problems.append(f"{d.name}: {t!r} is not a TuningTarget")
            elif not _has_feasible(t.space, t.shape, hardware.get(req.gpu), feasible):
                problems.append(f"{d.name}: {t.strategy}: no feasible config on {req.gpu}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- AOT

def _record(d: Decl):
    """Every kernel launch of forward and backward (GPU launch parameters: a recording)."""
    if not d.is_mask:
        from mixir.verify import record_kernels
        return record_kernels(d.declaration, dtype="bfloat16", T=T)
    fam, plan = classify(d.declaration)
    fn = fam.compile(d.declaration, plan)
    (q, k, v), data = _mask_inputs(d, dtype=torch.bfloat16)
    xs = [t.requires_grad_() for t in (q, k, v)]
    with record_launches() as records:
        fn(*xs, data=data).float().sum().backward()
    return records


#: spills known and documented, exactly (a new spill fails, and so does a fixed one, so the list
#: stays true). None: the gated-linear backward output kernel's 8 B/thread spill went with the
#: fp32 round trips around the core (its epilogue now stores 16-bit gradients and the decay terms).
KNOWN_SPILLS: dict = {}


@pytest.mark.aot
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_declaration_per_family_builds_for_sm90_without_spills(family):
    from mixir.lowering.common import aot
    d = _of(family)[0]
    records = list(_record(d).values())
    if not records:
        if type(get(family)).__module__.startswith("mixir."):
            pytest.fail(f"{d.name}: the built-in {family} family launched no kernel")
        pytest.skip(f"the {family} family launches no Triton kernel")
    results = aot.build_all(records, ["sm_90"], workers=0, errors="collect")
    table = aot.format_table(results)
    assert all(isinstance(r, aot.KernelResources) for r in results), table
    assert all(r.fits for r in results), table
    spills = {r.kernel.rsplit(".", 1)[-1]: r.spills for r in results if r.spills}
    assert spills == KNOWN_SPILLS.get(family, {}), f"{d.name} spills registers on sm_90:\n{table}"


# ---------------------------------------------------------------------------------------- the toy

def test_toy_algebra_is_new_and_routes_to_the_toy_family_once_registered():
    m = toy_library.running_max
    unregister(TOY.name)
    try:
        with pytest.raises(UnsupportedMixerError) as e:
            classify(m)
        assert all(f.name in str(e.value) for f in families() if isinstance(m, f.declaration))
        with pytest.raises(UnsupportedMixerError):
            mixir.compile(m)
    finally:
        register(TOY)
    fam, plan = classify(m)
    assert fam is TOY and family_of(plan) is TOY and plan.gate == "q"
    fn = mixir.compile(m)
    x = torch.tensor([[[[1.0]], [[-2.0]], [[3.0]], [[0.5]]]])            # [B=1, T=4, H=1, D=1]
    o, S = fn(x, torch.ones_like(x), initial_state=torch.tensor([[[2.0]]]), output_final_state=True)
    assert o.flatten().tolist() == [2.0, 2.0, 3.0, 3.0] and S.item() == 3.0


def test_toy_family_refuses_other_algebra_and_in_tree_families_keep_their_mixers():
    """Priority 5 puts the toy first: it must refuse every other declaration with a reason."""
    for name, entry in MIXERS.items():
        if entry.family != TOY.name:
            with pytest.raises(UnsupportedMixerError, match="not a running maximum"):
                TOY.analyse(entry.mixer)

    @mixir.mixer
    def running_min(x: mixir.In["D"], S: mixir.State["D"]):
        S = mixir.minimum(S, x)
        return S, S
    with pytest.raises(UnsupportedMixerError, match="not max"):
        TOY.analyse(running_min)


def _imports(path) -> set:
    tree = ast.parse(open(path).read())
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out |= {(a.name, None) for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0:
            out |= {(n.module, a.name) for a in n.names}
    return out


def test_toy_needs_no_edit_outside_its_package():
    """No mixir module names the toy; this file registers it with ``mixir.lowering.family``'s
    public functions alone; the toy package reaches mixir through public names and the shared
    machinery every family uses (``lowering.common``, ``dsl``, the library's ``LibraryEntry``)."""
    toy_dir = os.path.join(HERE, "toy_family")
    for d, _, files in os.walk(MIXIR_DIR):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(d, f)).read()
                assert "toy_family" not in text and TOY.name not in text, os.path.join(d, f)
    from_family = {name for mod, name in _imports(__file__) if mod == "mixir.lowering.family"}
    assert "register" in from_family and "unregister" in from_family
    assert not {n for n in from_family if n.startswith("_")}, from_family
    allowed = {"mixir", "mixir.dsl", "mixir.errors", "mixir.lowering.family", "mixir.library.registry",
               "torch", "__future__", "dataclasses"}
    shared = ("mixir.dsl.", "mixir.lowering.common.")
    for f in sorted(os.listdir(toy_dir)):
        if f.endswith(".py"):
            for mod, name in _imports(os.path.join(toy_dir, f)):
                assert mod in allowed or mod.startswith(shared), f"{f} imports {mod}"
                assert not (name or "").startswith("_"), f"{f} imports private {mod}.{name}"
