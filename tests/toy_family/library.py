"""The toy family's built-in mixer, as a library entry (what ``mixir/library/<family>.py`` holds
for an in-tree family)."""
from __future__ import annotations

import mixir as mx
from mixir import In, State
from mixir.library.registry import LibraryEntry

from .analysis import NAME


@mx.mixer
def running_max(x: In["D"], q: In["D"], S: State["D"]):
    """S_t = max(S_{t-1}, x_t), o_t = q_t * S_t (a gated running maximum; S_0 = 0 by default)."""
    S = mx.maximum(S, x)
    return q * S, S


def _call(x, q, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """The public wrapper (fla-style keywords), through ``mixir.compile``."""
    return mx.compile(running_max)(x, q, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens)


ENTRY = LibraryEntry("running_max", running_max, _call, NAME,
                     "gated running maximum S = max(S, x), o = q * S", "(toy family of the tests)",
                     {"D": "V"})
ENTRIES = {ENTRY.name: ENTRY}
