"""Peak memory of torch's CPU allocator around a call, shared by the benchmarks (a GPU run reads
``torch.cuda.max_memory_allocated`` instead)."""
from __future__ import annotations

import os


def torch_cpu_peak_bytes(fn):
    """(peak bytes of torch's CPU allocator while ``fn`` runs, above the level before it, from
    ``torch.profiler``'s memory events; the result of ``fn``). None when the profiler's event tree
    cannot be read (a private API). The Triton interpreter's NumPy scratch (the tiles, which a GPU
    keeps in registers) is not counted: this is the memory the algorithm allocates as tensors."""
    from torch.profiler import ProfilerActivity, profile
    saved = os.dup(2)
    try:   # the profiler's C++ side prints start/stop lines on stderr: silence them
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        from torch._C._profiler import _EventType
        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                ef = node.extra_fields
                events.append((node.start_time_ns, ef.alloc_size, ef.total_allocated))
            stack.extend(node.children)
    except Exception:  # noqa: BLE001
        return None, result
    if not events:
        return 0, result
    events.sort()
    base = events[0][2] - events[0][1]
    return max(0, max(e[2] for e in events) - base), result
