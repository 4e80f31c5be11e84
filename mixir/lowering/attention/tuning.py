"""Tuning attention masks: AOT validation of configs and the pipeline behind
``mixir tune attention:<mask>``.

solve (``autotune.attention_space``: the mask's tile profile -> the space -> every feasible
config) -> rank (``autotune.cost``) -> AOT-compile the top candidates for the GPU's architecture
(record the three kernels a config launches, on tiny CPU inputs, and build them with
``lowering.aot.build_all``; a config that spills or exceeds a limit is dropped and the next one is
compiled) -> write the best to the tuning database under the mask's key (strategy
``"attention"``), where ``tiles.choose`` finds it at run time.
"""
from __future__ import annotations

import torch

from ...errors import MixirError, TuningError
from ...dsl.mask import Mask

MAX_ROUNDS = 3        # AOT rounds of top_k candidates each before giving up
_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def record_config(mask: Mask, config: dict, *, dtype: str = "bf16", D: int = 64, data_fn=None,
                  score_mod=None, backward: bool = True) -> list:
    """The ``LaunchRecord``s of the attention kernels that ``config`` launches (forward and, with
    ``backward``, dQ and dK/dV), recorded on tiny CPU inputs with the launch parameters a GPU
    would use. ``data_fn(B, H, T)``: the mask's (and score_mod's) data tensors."""
    from ..common.launch import record_launches
    from .ops import attention
    BM, BN = int(config["BM"]), int(config["BN"])
    B, H, T = 1, 2, max(BM, BN) + 3              # a partial last tile: the general code path
    g = torch.Generator().manual_seed(0)
    dt = _TORCH[dtype]
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(dt).requires_grad_(backward) for _ in range(3))
    data = data_fn(B, H, T) if data_fn is not None else {}
    with record_launches() as records:
        o = attention(q, k, v, mask=mask, score_mod=score_mod, data=data, config=dict(config))
        if backward:
            o.float().sum().backward()
    return list(records.values())


def compile_configs(mask: Mask, configs: list, arch: str, *, dtype: str = "bf16", D: int = 64,
                    data_fn=None, score_mod=None, workers=None, timeout_s: float = 300) -> list:
    """One ``autotune.aot_check.CompiledConfig`` per config: its kernels built for ``arch``
    (registers, spills, shared memory). Kernels shared between configs compile once."""
    from ...autotune.aot_check import compile_recorded
    return compile_recorded(
        configs, lambda cfg: record_config(mask, cfg, dtype=dtype, D=D, data_fn=data_fn, score_mod=score_mod),
        arch, workers=workers, timeout_s=timeout_s)


def tune_mask(mask: Mask, gpu="h100", *, name=None, B=8, T=4096, H=16, D=128, dtype="bf16",
              data_fn=None, top_k=4, aot=True, write=True, directory=None, workers=None,
              progress=None):
    """Tune ``mask`` for one shape on ``gpu``; returns an ``autotune.pipeline.TuneResult``
    (``.table()``) with one ``StrategyResult`` (strategy ``"attention"``)."""
    from . import space as asp
    from ...autotune import cost, db, hardware
    from ...autotune.pipeline import Candidate, StrategyResult, TuneResult, _key, diverse
    say = progress or (lambda msg: None)
    gpu = hardware.get(gpu)
    dtype = db.dtype_name(dtype)
    say(f"[attention] tile profile of {mask.name} at T={T}")
    # one (batch, head) is representative of the visited fraction (and keeps this O(T^2 / 256))
    profile = asp.tile_profile(mask, 1, 1, T, data_fn(1, 1, T) if data_fn else None)
    space = asp.make_space(profile)
    shape = asp.shape(B, T, H, D, dtype)
    feas = asp.feasible(space, shape, gpu)           # TuningError naming the binding constraint
    ranked = cost.rank(space, shape, gpu, feas)
    say(f"[attention] {len(feas)} feasible configs; best predicted {ranked[0][1].time_s * 1e3:.3f} ms")
    cands, tried, rounds, best = [], set(), 0, None
    while best is None and rounds < MAX_ROUNDS:
        pick = diverse(ranked, top_k, skip=tried)     # differing in more than num_stages first
        if not pick:
            break
        rounds += 1
        tried |= {_key(cfg) for cfg, _ in pick}
        todo = []
        for cfg, c in pick:
            res = asp.resources(space, shape, cfg)
            todo.append(Candidate(asp.to_config(cfg, shape), c.time_s, res["smem"], res["regs"],
                                  round=rounds))
        cands += todo
        if not aot:
            best = todo[0]
            break
        say(f"[attention] AOT round {rounds}: compiling {len(todo)} configs for {gpu.arch}")
        comp = compile_configs(mask, [c.config for c in todo], gpu.arch, dtype=dtype, D=D,
                               data_fn=data_fn, workers=workers)
        for c, cc in zip(todo, comp):
            c.compiled = cc
            if not cc.ok:
                c.dropped = cc.reason()
            elif cc.max_shared > gpu.smem_block:
                c.dropped = f"shared memory {cc.max_shared} B > {gpu.smem_block} B"
        best = next((c for c in todo if c.ok), None)
    if best is None and cands and aot:
        raise TuningError(f"no config of the attention space compiled without spills for "
                          f"{mask.name} D={D} {dtype} on {gpu.name} ({len(cands)} candidates in "
                          f"{rounds} AOT rounds)")
    r = StrategyResult("attention", shape, len(feas), cands, best, "aot" if aot else "model",
                       n_feasible_after=len(feas), rounds=rounds if aot else 0)
    if best is not None and write:
        cc = best.compiled
        compiled = None if cc is None else {"max_shared": cc.max_shared,
                                            "max_registers": cc.max_registers, "spills": cc.spills}
        r.db_path = db.record(mask.key, gpu, dtype, B, T, H, D, D, "attention", best.config,
                              source=r.source, predicted_s=best.predicted_s, compiled=compiled,
                              directory=directory, extra={"mask": name or mask.name})
    return TuneResult(f"attention:{name or mask.name}", gpu, [r])


def library_mask(spec: str):
    """(name, Mask, data_fn) of ``NAME[:ARG,ARG...]``, a library mask with its integer arguments
    (e.g. ``sliding_window:1024``, ``moba:64,3``: block size and top-k; default: the example
    arguments of ``library.MASKS``)."""
    from ...library import attention as library
    name, _, rest = spec.partition(":")
    if name not in library.MASKS:
        raise MixirError(f"no library attention mask {name!r}; known: {', '.join(sorted(library.MASKS))}")
    try:
        args = tuple(int(x) for x in rest.split(",") if x.strip()) if rest else None
    except ValueError:
        raise MixirError(f"attention mask arguments must be integers, got {rest!r}") from None
    factory, example = library.MASKS[name]
    margs = example if args is None else args
    mask = factory(*(margs[:1] if name == "moba" else margs))

    def data_fn(B, H, T):
        return library.example_data(name, B, H, T, margs if name == "moba" else ())
    return name + (f"({','.join(map(str, margs))})" if margs else ""), mask, data_fn


def tune_library_mask(spec: str, gpu="h100", **kw):
    """``tune_mask`` for a library mask given as ``NAME[:ARG,...]`` (``library_mask``)."""
    name, mask, data_fn = library_mask(spec)
    return tune_mask(mask, gpu, name=name, data_fn=data_fn, **kw)


__all__ = ["record_config", "compile_configs", "tune_mask", "library_mask", "tune_library_mask"]
