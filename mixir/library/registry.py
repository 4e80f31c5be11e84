"""The registry of built-in mixers: ``MIXERS[name]`` is a ``LibraryEntry``.

An entry holds the traced ``Mixer`` (the declaration is the definition: no hand-written kernel
stands behind it), its public wrapper, and what tests, benchmarks and the CLI need to exercise the
*declared* mixer without knowing it: the size of each named feature dim and value ranges for each
argument (log-decays ≤ 0, Mamba's A < 0, time steps > 0, ...).

    entry = MIXERS["gla"]
    arrays = entry.make_inputs(rng, B=2, T=16, H=4, K=8, V=8)        # declaration order
    h0 = entry.make_initial_state(rng, N=2, H=4, K=8, V=8)
    o, hT = mixir.reference(entry.mixer)(*arrays, initial_state=h0, output_final_state=True)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from ..dsl.mixer import Mixer
from ..errors import InputError
from ..lowering import family as lowering_family
from ..lowering.common.call import widen_mixed

# ---- value ranges ------------------------------------------------------------------------------


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


#: name -> f(rng, shape) in float64. Each keeps the declared mixer inside its valid domain.
SAMPLERS: dict = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    # a log-decay (log of a forget gate in (0, 1)), fla's F.logsigmoid(randn): values < 0
    "log_decay": lambda rng, shape: _logsigmoid(rng.standard_normal(shape)),
    # Mamba's A = -exp(A_log): strictly negative
    "negative": lambda rng, shape: -np.exp(0.5 * rng.standard_normal(shape)),
    # a time step already through softplus (Mamba-2's dt): strictly positive, modest
    "time_step": lambda rng, shape: rng.uniform(0.02, 0.5, shape),
    # a strictly positive quantity of either size (LightNet's running normaliser)
    "positive": lambda rng, shape: np.exp(rng.standard_normal(shape)),
    # a key of a Householder transition, not normalised but with |k|² ≈ 0.5 (so that β ∈ [0, 2]
    # keeps the eigenvalue 1 − β|k|² of (I − β k kᵀ) about within [−1, 1]: a stable state)
    "key": lambda rng, shape: 0.7 * rng.standard_normal(shape) / np.sqrt(shape[-1]),
    # a Householder β over its whole useful range: eigenvalues 1 − β of (I − β k kᵀ) in [−1, 1]
    "beta_neg": lambda rng, shape: rng.uniform(0.0, 2.0, shape),
    # bounded values, for biases that go through a softplus
    "uniform": lambda rng, shape: rng.uniform(-1.0, 1.0, shape),
    # log of an S4-style time step Δ ~ U[1e-3, 1e-1] (S4D's log_dt initialisation range)
    "log_time_step": lambda rng, shape: np.log(rng.uniform(1e-3, 1e-1, shape)),
    # a recurrent weight [.., D_in, D_out] at an initialiser's scale N(0, 1/D_in): a stable cell
    # (unit-variance weights make tanh/sigmoid RNNs chaotic at D = 64, where fp32 and the fp64
    # reference part ways after a few dozen steps whatever the kernels do)
    "recurrent": lambda rng, shape: rng.standard_normal(shape) / np.sqrt(shape[-2]),
}


@dataclasses.dataclass(frozen=True, eq=False)
class LibraryEntry:
    """One built-in mixer.

    - ``name``: registry key, equal to ``mixer.name``;
    - ``mixer``: the traced declaration (``mixir.reference(entry.mixer)``, ``mixir.compile(...)``);
    - ``wrapper``: the public fla-style function that calls the compiled mixer (several entries may
      share one wrapper, e.g. the Mamba-1 variants);
    - ``family``: the family the analysis should find (``"gated_linear"``, ``"householder"``,
      ``"lti"``, ``"rnn"``);
    - ``description``, ``paper``: one line each (docs/library.md has the full formulas);
    - ``dims``: each named feature dim → ``"K"`` or ``"V"``, the size it takes in ``make_inputs``;
    - ``samplers``: argument or state name → a key of ``SAMPLERS`` (default ``"normal"``);
    - ``requires``: lowering features needed beyond today's one-state gated-linear analysis
      (``("two_states",)`` for LightNet); empty when ``mixir.compile`` should accept it.
    """
    name: str
    mixer: Mixer
    wrapper: Callable
    family: str
    description: str
    paper: str
    dims: Mapping[str, str]
    samplers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    requires: tuple = ()

    def sizes(self, K: int, V: int) -> dict:
        """Named feature dim → size, for head sizes ``K`` and ``V``."""
        return {d: {"K": K, "V": V}[which] for d, which in self.dims.items()}

    def _sample(self, rng, name, shape, dtype):
        kind = self.samplers.get(name, "normal")
        return np.asarray(SAMPLERS[kind](rng, shape)).astype(dtype)

    def make_inputs(self, rng, B: int, T: int, H: int, K: int, V: int, dtype=np.float64) -> tuple:
        """Valid random positional arrays for the *declared* mixer, in declaration order:
        per-token inputs ``[B, T, H, *dims]``, per-head parameters ``[H, *dims]``."""
        sizes = self.sizes(K, V)
        out = []
        for spec in self.mixer.inputs:
            lead = (B, T, H) if spec.kind == "input" else (H,)
            out.append(self._sample(rng, spec.name, lead + tuple(sizes[d] for d in spec.dims), dtype))
        return tuple(out)

    def make_initial_state(self, rng, N: int, H: int, K: int, V: int, dtype=np.float64):
        """A valid random initial state ``[N, H, *dims]`` (a tuple when the mixer has several)."""
        sizes = self.sizes(K, V)
        states = tuple(self._sample(rng, s.name, (N, H) + tuple(sizes[d] for d in s.dims), dtype)
                       for s in self.mixer.states)
        return states[0] if len(states) == 1 else states

    def __repr__(self):
        extra = f", requires={self.requires}" if self.requires else ""
        return f"<LibraryEntry {self.name} ({self.family}{extra}): {self.description}>"


MIXERS: dict = {}


def register(mixer: Mixer, wrapper: Callable, *, description: str, paper: str, dims: Mapping[str, str],
             samplers: Mapping[str, str] | None = None, family: str = "gated_linear",
             requires: tuple = ()) -> LibraryEntry:
    if mixer.name in MIXERS:
        raise ValueError(f"library mixer {mixer.name!r} is registered twice")
    unknown = set(samplers or {}) - {a.name for a in mixer.args} - {s.name for s in mixer.states}
    if unknown:
        raise ValueError(f"library mixer {mixer.name}: samplers for unknown arguments {sorted(unknown)}")
    entry = LibraryEntry(mixer.name, mixer, wrapper, family, description, paper, dict(dims),
                         dict(samplers or {}), tuple(requires))
    MIXERS[mixer.name] = entry
    return entry


def register_entry(entry: LibraryEntry) -> LibraryEntry:
    """Add an entry built elsewhere (the RNN and LTI modules build theirs directly)."""
    if entry.name in MIXERS:
        raise ValueError(f"library mixer {entry.name!r} is registered twice")
    MIXERS[entry.name] = entry
    return entry


def families() -> dict:
    """family name → sorted names of the library mixers the analysis puts in it."""
    out: dict = {}
    for name, e in MIXERS.items():
        out.setdefault(e.family, []).append(name)
    return {k: sorted(v) for k, v in sorted(out.items())}


# ---- calling the compiled mixer ----------------------------------------------------------------

_COMPILED: dict = {}


def compiled(mixer: Mixer):
    """``mixir.compile(mixer)`` (``lowering.family.compile_mixer``), once per (mixer fingerprint,
    compile function).

    The compile function is looked up at call time (not at import), so a test that substitutes it
    is honoured; keying on the function keeps such substitutes apart.
    """
    compile_mixer = lowering_family.compile_mixer
    key = (mixer.fingerprint, compile_mixer)
    fn = _COMPILED.get(key)
    if fn is None:
        fn = _COMPILED[key] = compile_mixer(mixer)
    return fn


def call(mixer: Mixer, arrays, *, initial_state=None, output_final_state=False, cu_seqlens=None,
         strategy=None, group=None, **scalars):
    """Run the compiled ``mixer`` on arrays in declaration order; scalar keywords left at ``None``
    are not passed, so the declaration's defaults (e.g. ``scale = K ** -0.5``) apply. fp32 q/k
    with 16-bit v run in fp32 and return v's dtype (fla's mixed precision: ``widen_mixed``).
    ``group``: context parallelism (docs/distributed.md), passed on only when given."""
    scalars = {k: v for k, v in scalars.items() if v is not None}
    if group is not None:
        scalars["group"] = group
    arrays, out_dtype = widen_mixed(mixer, arrays)
    res = compiled(mixer)(*arrays, initial_state=initial_state, output_final_state=output_final_state,
                          cu_seqlens=cu_seqlens, strategy=strategy, **scalars)
    if out_dtype is None:
        return res
    return (res[0].to(out_dtype), res[1]) if output_final_state else res.to(out_dtype)


def check_chunk_size(where: str, chunk_size) -> None:
    """fla's ``chunk_size`` keyword: ``None`` or a power of two >= 16 (fla's kernels take 16, 32,
    64, 128). **Advisory** in mixir: the chunked kernels take their chunk length from their launch
    config (default 64, tuned per GPU by ``mixir tune``), and the chunk length never changes the
    function computed. Accepted so that fla calls run unchanged, checked so a wrong value is not
    silently taken (docs/library.md, "fla keywords")."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 16 or \
            chunk_size & (chunk_size - 1):
        raise InputError(f"{where}: chunk_size must be a power of two >= 16 (fla's 16, 32, 64, 128), "
                         f"got {chunk_size!r}")


def clear_cache():
    """Forget every compiled library mixer."""
    _COMPILED.clear()
