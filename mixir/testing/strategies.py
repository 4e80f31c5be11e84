"""Hypothesis strategies for differential tests of any declared mixer.

Hypothesis draws only *parameters* (sizes, a dtype, an integer seed, flags); the arrays are then
built by the plain, deterministic functions ``make_inputs`` and ``make_case`` from a NumPy RNG
seeded with the drawn integer. Every draw ``note()``s the equivalent call, so a failing example is
reported as one line that rebuilds its inputs exactly:

    mixir.testing.make_case(gla, Shape(B=1, T=37, H=2, sizes={'K': 16, 'V': 7}),
                            dtype=torch.bfloat16, seed=1234, ranges={'gk': (-5.0, 0.0)}, ...)

Value ranges: every input is N(0, 1) unless the caller says otherwise with ``ranges``, keyed by
argument name (the strategy cannot tell a gate from a key by its name):

- ``(lo, hi)``: uniform in ``[lo, hi]``; log-decays are ``(-5, 0)`` or similar;
- ``"normal"``: N(0, 1) (the default);
- ``"unit"``: N(0, 1), then L2-normalised over the argument's feature dims (delta-rule keys);
- a callable ``f(rng, shape) -> ndarray`` (it will not print reproducibly; prefer the above).

With ``extreme`` the edge values of a range are mixed in: both endpoints (a log-decay of exactly
0, i.e. a gate of exactly 1; beta = 2 for a ``(0, 2)`` range) and, for ranges whose upper end is
<= 0 (log-decays), ``DEEP_LOG_DECAY`` = -1e3: ``exp(-1e3)`` is exactly 0 in fp32 and float64 and
``exp(+1e3)`` overflows in both, so a kernel that divides by a decay or forms ``exp(-cumsum)``
produces inf/NaN while the reference stays finite. ``extremes={"g": (0.0, -50.0)}`` overrides the
edge values per argument.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import note
from hypothesis import strategies as st

__all__ = ["DEEP_LOG_DECAY", "Shape", "Case", "shapes", "dtypes", "cu_seqlens", "mixer_inputs",
           "cases", "make_inputs", "make_case", "default_extremes"]

#: The "gate = 0" value mixed into log-decay ranges by ``extreme``.
DEEP_LOG_DECAY = -1e3

_DTYPE_NAMES = {torch.float32: "torch.float32", torch.bfloat16: "torch.bfloat16",
                torch.float16: "torch.float16", torch.float64: "torch.float64"}


@dataclasses.dataclass(frozen=True)
class Shape:
    """Sizes of one call: batch ``B``, time ``T``, heads ``H`` and each named feature dim."""
    B: int
    T: int
    H: int
    sizes: dict

    def of(self, spec) -> tuple:
        """The array shape of an ``ArgSpec`` (``[B, T, H, *dims]`` or ``[H, *dims]``)."""
        feat = tuple(self.sizes[d] for d in spec.dims)
        return (self.B, self.T, self.H) + feat if spec.kind == "input" else (self.H,) + feat

    def state_shape(self, spec, N=None) -> tuple:
        """The shape ``[N, H, *dims]`` of a state (``N`` = B unless given)."""
        return (self.B if N is None else N, self.H) + tuple(self.sizes[d] for d in spec.dims)


def _note(text):
    try:
        note(text)
    except Exception:  # noqa: BLE001 - outside a test (e.g. ``.example()``) there is nothing to note to
        pass


def _size_strategy(spec, default_range, odd):
    if isinstance(spec, int):
        return st.just(spec)
    if isinstance(spec, (list, tuple)) and not (len(spec) == 2 and isinstance(spec, tuple)):
        return st.sampled_from(sorted(spec))
    lo, hi = spec if spec is not None else default_range
    specials = sorted({2 ** i for i in range(12) if lo <= 2 ** i <= hi} | set(odd))
    if not specials:
        return st.integers(lo, hi)
    return st.one_of(st.sampled_from(specials), st.integers(lo, hi))


def shapes(mixer, *, batch=(1, 2), seqlen=(1, 80), heads=(1, 3), dim=(16, 128),
           special_seqlens=(1, 37, 64, 65, 128), odd_dims=(7, 33), dims=None):
    """Strategy of ``Shape`` for ``mixer``.

    ``batch``, ``seqlen``, ``heads`` and ``dim`` are inclusive ``(lo, hi)`` ranges; T is drawn from
    ``special_seqlens`` inside the range (1, non-multiples of 64 such as 37 and 65) or from the
    range; each feature dim from the powers of two inside ``dim``, the ``odd_dims`` (drawn even
    outside ``dim``; pass ``()`` where a kernel needs powers of two) or the range. ``dims`` maps a
    dim name to its own rule: an int (fixed), a list of allowed sizes, or a ``(lo, hi)`` tuple.
    CI keeps these tiny: kernels run in Triton's CPU interpreter.
    """
    dims = dict(dims or {})
    names = mixer.feature_dims()
    lo_t, hi_t = seqlen
    specials = sorted(t for t in special_seqlens if lo_t <= t <= hi_t)
    t_strategy = (st.one_of(st.sampled_from(specials), st.integers(lo_t, hi_t)) if specials
                  else st.integers(lo_t, hi_t))

    @st.composite
    def draw_shape(draw):
        B = draw(st.integers(*batch))
        T = draw(t_strategy)
        H = draw(st.integers(*heads))
        sizes = {d: draw(_size_strategy(dims.get(d), dim, odd_dims), label=d) for d in names}
        return Shape(B, T, H, sizes)

    return draw_shape()


def dtypes(allowed=(torch.float32, torch.bfloat16, torch.float16)):
    """Strategy of the input dtype (fp32 first, so failures shrink towards it)."""
    return st.sampled_from(tuple(allowed))


def cu_seqlens(T, *, max_seqs=4, empty=True, dtype=torch.int32):
    """Strategy of ``cu_seqlens`` offsets ``[0, ..., T]`` (a 1-D ``dtype`` tensor) for a packed
    batch of length ``T``: 1..``max_seqs`` sequences, and with ``empty`` sometimes empty sequences
    (at the start, inside or at the end)."""

    @st.composite
    def draw_cu(draw):
        n = draw(st.integers(1, max(1, max_seqs)))
        cuts = sorted(draw(st.lists(st.integers(0, T), min_size=n - 1, max_size=n - 1)))
        offs = [0] + cuts + [T]
        if empty and draw(st.booleans()):
            i = draw(st.integers(0, len(offs) - 1))
            offs.insert(i, offs[i])
        return torch.tensor(offs, dtype=dtype)

    return draw_cu()


def default_extremes(rng_spec):
    """Edge values mixed in by ``extreme`` for a range spec (``()`` for non-range specs)."""
    if not (isinstance(rng_spec, tuple) and len(rng_spec) == 2):
        return ()
    lo, hi = float(rng_spec[0]), float(rng_spec[1])
    values = [hi, lo]
    if hi <= 0.0:
        values.append(DEEP_LOG_DECAY)
    return tuple(dict.fromkeys(values))


def _base(rng, spec_range, shape, nfeat, name):
    if spec_range is None or spec_range == "normal":
        return rng.standard_normal(shape)
    if spec_range == "unit":
        x = rng.standard_normal(shape)
        if nfeat == 0:
            return np.sign(x) + (x == 0)
        axes = tuple(range(len(shape) - nfeat, len(shape)))
        return x / np.sqrt((x * x).sum(axis=axes, keepdims=True))
    if isinstance(spec_range, tuple) and len(spec_range) == 2:
        lo, hi = float(spec_range[0]), float(spec_range[1])
        return rng.uniform(lo, hi, size=shape)
    if callable(spec_range):
        return np.asarray(spec_range(rng, shape), dtype=np.float64).reshape(shape)
    raise ValueError(f"ranges[{name!r}]: expected (lo, hi), 'normal', 'unit' or a callable, "
                     f"got {spec_range!r}")


def _mix_extremes(rng, x, values, lead):
    """Set part of ``x`` to ``values``: single elements, whole tokens/heads, or everything."""
    mode = rng.choice(["elements", "rows", "all"], p=[0.5, 0.35, 0.15])
    if mode == "all":
        x[...] = rng.choice(values)
        return x
    if mode == "rows":
        mask = rng.random(x.shape[:lead]) < rng.uniform(0.1, 0.5)
        pick = rng.choice(values, size=x.shape[:lead])
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - lead))
        pick = pick.reshape(mask.shape)
    else:
        mask = rng.random(x.shape) < rng.uniform(0.05, 0.4)
        pick = rng.choice(values, size=x.shape)
    return np.where(mask, pick, x)


def make_inputs(mixer, shape, seed, *, ranges=None, extreme=False, extremes=None):
    """The positional arrays of ``mixer`` (NumPy float64, in declaration order) for ``shape``,
    reproducibly from ``seed``. See the module doc for ``ranges``, ``extreme`` and ``extremes``."""
    ranges = dict(ranges or {})
    extremes = dict(extremes or {})
    known = {s.name for s in mixer.inputs}
    unknown = (set(ranges) | set(extremes)) - known
    if unknown:
        raise ValueError(f"{mixer.name} has no tensor argument(s) {sorted(unknown)}; "
                         f"its tensor arguments are {sorted(known)}")
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in mixer.inputs:
        shp = shape.of(spec)
        r = ranges.get(spec.name)
        x = _base(rng, r, shp, len(spec.dims), spec.name)
        values = extremes.get(spec.name, default_extremes(r))
        if extreme and len(values):
            lead = 3 if spec.kind == "input" else 1
            x = _mix_extremes(rng, np.array(x, dtype=np.float64), np.asarray(values, np.float64), lead)
        arrays.append(np.ascontiguousarray(x, dtype=np.float64))
    return arrays


def _as_tensors(arrays, dtype):
    return [torch.as_tensor(a).to(dtype) for a in arrays]


def mixer_inputs(mixer, shape, dtype=None, *, ranges=None, extreme=None, extremes=None):
    """Strategy of the positional arrays of ``mixer`` for a fixed ``shape``.

    Draws an integer seed (and ``extreme`` when it is None) and returns ``make_inputs(...)``:
    NumPy float64 arrays, or torch tensors rounded to ``dtype`` when one is given. Combine with
    ``shapes`` through ``st.data()`` or ``shapes(m).flatmap(lambda s: mixer_inputs(m, s))``.
    """
    @st.composite
    def draw_inputs(draw):
        seed = draw(st.integers(0, 2 ** 32 - 1), label="seed")
        ext = draw(st.booleans(), label="extreme") if extreme is None else bool(extreme)
        _note(f"mixir.testing.make_inputs({mixer.name}, {shape!r}, seed={seed}, ranges={ranges!r}, "
              f"extreme={ext}, extremes={extremes!r})"
              + ("" if dtype is None else f"  # then rounded to {_DTYPE_NAMES.get(dtype, dtype)}"))
        arrays = make_inputs(mixer, shape, seed, ranges=ranges, extreme=ext, extremes=extremes)
        return arrays if dtype is None else _as_tensors(arrays, dtype)

    return draw_inputs()


@dataclasses.dataclass
class Case:
    """One generated test case: what ``check`` needs, and how to rebuild it."""
    mixer: object
    shape: Shape
    dtype: torch.dtype
    seed: int
    arrays: list                 # NumPy float64, declaration order (the checker rounds them)
    initial_state: object        # None, an fp32 tensor, or a tuple of them (several states)
    cu_seqlens: object           # None or an int tensor [N + 1]
    ranges: dict = None
    extreme: bool = False
    extremes: dict = None

    def kwargs(self) -> dict:
        """Keyword arguments of ``check`` for this case."""
        return {"dtype": self.dtype, "initial_state": self.initial_state,
                "cu_seqlens": self.cu_seqlens}

    def repro(self) -> str:
        cu = None if self.cu_seqlens is None else [int(x) for x in self.cu_seqlens.tolist()]
        return (f"mixir.testing.make_case({self.mixer.name}, {self.shape!r}, "
                f"dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)}, seed={self.seed}, "
                f"ranges={self.ranges!r}, extreme={self.extreme}, extremes={self.extremes!r}, "
                f"initial_state={self.initial_state is not None}, cu_seqlens={cu})")

    def __repr__(self):
        return self.repro()

    def _repr_pretty_(self, p, cycle):      # how hypothesis prints a falsifying example
        p.text(self.repro())


def make_case(mixer, shape, *, dtype=torch.float32, seed=0, ranges=None, extreme=False,
              extremes=None, initial_state=False, cu_seqlens=None) -> Case:
    """Build a ``Case`` deterministically (this is what failing examples print).

    ``initial_state=True`` draws N(0, 1) fp32 initial states ``[N, H, *dims]`` from the same RNG;
    ``cu_seqlens`` is a list of offsets (needs ``shape.B == 1``)."""
    arrays = make_inputs(mixer, shape, seed, ranges=ranges, extreme=extreme, extremes=extremes)
    cu = None
    N = shape.B
    if cu_seqlens is not None:
        if shape.B != 1:
            raise ValueError("cu_seqlens needs shape.B == 1")
        cu = torch.as_tensor(list(cu_seqlens) if not isinstance(cu_seqlens, torch.Tensor)
                             else cu_seqlens, dtype=torch.int32)
        N = int(cu.numel()) - 1
    h0 = None
    if initial_state:
        rng = np.random.default_rng([seed, 1])
        states = tuple(torch.as_tensor(rng.standard_normal(shape.state_shape(s, N))).float()
                       for s in mixer.states)
        h0 = states[0] if len(states) == 1 else states
    return Case(mixer, shape, dtype, seed, arrays, h0, cu, ranges, bool(extreme), extremes)


def cases(mixer, *, shape=None, dtype=None, ranges=None, extreme=None, extremes=None,
          initial_state=None, varlen=None, max_seqs=4):
    """Strategy of complete ``Case``s for ``mixer``.

    ``shape``/``dtype``: strategies (default ``shapes(mixer)``, ``dtypes()``); ``extreme``,
    ``initial_state`` and ``varlen`` are drawn when None, else fixed. A varlen case has B = 1 and
    ``cu_seqlens`` from ``cu_seqlens(T, max_seqs=max_seqs)``. Notes the reproducing call.
    """
    shape_st = shapes(mixer) if shape is None else shape
    dtype_st = dtypes() if dtype is None else dtype

    @st.composite
    def draw_case(draw):
        shp = draw(shape_st, label="shape")
        dt = draw(dtype_st, label="dtype")
        seed = draw(st.integers(0, 2 ** 32 - 1), label="seed")
        ext = draw(st.booleans(), label="extreme") if extreme is None else bool(extreme)
        h0 = draw(st.booleans(), label="initial_state") if initial_state is None else bool(initial_state)
        vl = draw(st.booleans(), label="varlen") if varlen is None else bool(varlen)
        cu = None
        if vl:
            shp = dataclasses.replace(shp, B=1)
            cu = [int(x) for x in draw(cu_seqlens(shp.T, max_seqs=max_seqs), label="cu_seqlens")]
        case = make_case(mixer, shp, dtype=dt, seed=seed, ranges=ranges, extreme=ext,
                         extremes=extremes, initial_state=h0, cu_seqlens=cu)
        _note(case.repro())
        return case

    return draw_case()
