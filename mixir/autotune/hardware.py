"""Hardware table for the autotuner: one row per GPU, figures from the vendor data sheets
(sources per row in docs/autotune.md and in ``GPU.source``).

Units: bytes, bytes/s, FLOP/s. Shared memory per block is the opt-in maximum
(``cudaDevAttrMaxSharedMemoryPerBlockOptin``); per SM the whole carve-out available to CTAs.
``mma`` gives the tensor-core instruction shape (M, N, K) per operand dtype that Triton's
``tl.dot`` lowers to (``mma.sync`` on sm_8x, ``wgmma`` on sm_90: M = 64 per warp group).
"""
from __future__ import annotations

import dataclasses
import re

from ..errors import TuningError

KiB = 1024
GB = 1e9
TF = 1e12

_MMA_AMPERE = {"bf16": (16, 8, 16), "fp16": (16, 8, 16), "fp32": (16, 8, 8)}   # fp32 = tf32
_MMA_HOPPER = {"bf16": (64, 8, 16), "fp16": (64, 8, 16), "fp32": (64, 8, 8)}

# per compute capability (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability")
_CC = {
    80: dict(smem_block=163 * KiB, smem_sm=164 * KiB, max_threads_sm=2048, max_blocks_sm=32, mma=_MMA_AMPERE),
    86: dict(smem_block=99 * KiB, smem_sm=100 * KiB, max_threads_sm=1536, max_blocks_sm=16, mma=_MMA_AMPERE),
    89: dict(smem_block=99 * KiB, smem_sm=100 * KiB, max_threads_sm=1536, max_blocks_sm=24, mma=_MMA_AMPERE),
    90: dict(smem_block=227 * KiB, smem_sm=228 * KiB, max_threads_sm=2048, max_blocks_sm=32, mma=_MMA_HOPPER),
}


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    cc: int                       # compute capability, e.g. 90
    sms: int
    hbm_bw: float                 # bytes/s
    l2_bytes: int
    fp32_flops: float             # dense, non-tensor FLOP/s
    bf16_flops: float             # dense tensor-core FLOP/s (fp32 accumulate)
    fp16_flops: float
    tf32_flops: float             # dense tensor-core tf32 FLOP/s
    source: str
    aliases: tuple = ()
    smem_block: int = 0           # opt-in max shared memory per block, bytes
    smem_sm: int = 0
    regs_per_thread: int = 255
    regs_per_sm: int = 65536
    max_threads_block: int = 1024
    max_threads_sm: int = 2048
    max_warps_sm: int = 64
    max_blocks_sm: int = 32
    warp_size: int = 32
    mma: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)

    @property
    def arch(self) -> str:
        return f"sm_{self.cc}"

    def tensor_flops(self, dtype: str) -> float:
        return {"bf16": self.bf16_flops, "fp16": self.fp16_flops, "fp32": self.tf32_flops}[dtype]

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mma"] = {k: list(v) for k, v in self.mma.items()}
        d["aliases"] = list(self.aliases)
        return d


def _row(name, cc, sms, bw_gbs, l2_mib, fp32_tf, bf16_tf, fp16_tf, tf32_tf, source, aliases=()):
    c = _CC[cc]
    return GPU(name=name, cc=cc, sms=sms, hbm_bw=bw_gbs * GB, l2_bytes=int(l2_mib * 1024 * 1024),
               fp32_flops=fp32_tf * TF, bf16_flops=bf16_tf * TF, fp16_flops=fp16_tf * TF,
               tf32_flops=tf32_tf * TF, source=source, aliases=tuple(aliases),
               smem_block=c["smem_block"], smem_sm=c["smem_sm"], max_threads_sm=c["max_threads_sm"],
               max_warps_sm=c["max_threads_sm"] // 32, max_blocks_sm=c["max_blocks_sm"], mma=dict(c["mma"]))


# Dense (non-sparse) tensor-core figures; GeForce parts: "FP16/BF16 Tensor with FP32 accumulate".
GPUS: dict[str, GPU] = {g.name: g for g in [
    _row("A100-40GB", 80, 108, 1555, 40, 19.5, 312, 312, 156,
         "NVIDIA A100 Tensor Core GPU data sheet (SXM4 40GB), 2021", ("a100", "a100-sxm4-40gb", "a100-40g")),
    _row("A100-80GB", 80, 108, 2039, 40, 19.5, 312, 312, 156,
         "NVIDIA A100 Tensor Core GPU data sheet (SXM4 80GB), 2021", ("a100-80g", "a100-sxm4-80gb", "a100-sxm")),
    _row("A10", 86, 72, 600, 6, 31.2, 125, 125, 62.5,
         "NVIDIA A10 Tensor Core GPU data sheet, 2021", ("nvidia-a10",)),
    _row("RTX-3090", 86, 82, 936, 6, 35.6, 71, 71, 35.6,
         "NVIDIA Ampere GA102 GPU Architecture whitepaper v2, table 9 (RTX 3090)", ("3090", "rtx3090", "geforce-rtx-3090")),
    _row("L4", 89, 58, 300, 48, 30.3, 121, 121, 60,
         "NVIDIA L4 Tensor Core GPU data sheet, 2023", ("nvidia-l4",)),
    _row("L40S", 89, 142, 864, 96, 91.6, 362.05, 362.05, 183,
         "NVIDIA L40S GPU data sheet, 2023", ("nvidia-l40s",)),
    _row("RTX-4090", 89, 128, 1008, 72, 82.6, 165.2, 165.2, 82.6,
         "NVIDIA Ada Lovelace GPU Architecture whitepaper v1.1, appendix table (RTX 4090)", ("4090", "rtx4090", "geforce-rtx-4090")),
    _row("H100-SXM", 90, 132, 3350, 50, 67, 989.4, 989.4, 494.7,
         "NVIDIA H100 Tensor Core GPU data sheet (SXM5 80GB), 2023", ("h100", "h100-sxm5", "h100-sxm5-80gb", "h100-80gb-hbm3")),
    _row("H100-PCIe", 90, 114, 2000, 50, 51, 756, 756, 378,
         "NVIDIA H100 Tensor Core GPU data sheet (PCIe 80GB), 2023", ("h100-pcie-80gb", "h100pcie")),
    _row("H200", 90, 132, 4800, 50, 67, 989.4, 989.4, 494.7,
         "NVIDIA H200 Tensor Core GPU data sheet (SXM 141GB), 2024", ("h200-sxm", "h200-141gb")),
]}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower().replace("nvidia", "").replace("geforce", ""))


_ALIASES = {}
for _g in GPUS.values():
    for _a in (_g.name,) + _g.aliases:
        _ALIASES[_norm(_a)] = _g.name


def names() -> list[str]:
    return list(GPUS)


def get(name) -> GPU:
    """A table row by name or alias ("h100", "H100-SXM", "a100", "sm_90" → the first sm_90 row...)."""
    if isinstance(name, GPU):
        return name
    key = _norm(name)
    if key in _ALIASES:
        return GPUS[_ALIASES[key]]
    m = re.fullmatch(r"sm(\d{2,3})a?", key)
    if m:
        return nearest_cc(int(m.group(1)))
    raise TuningError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)} "
                      f"(aliases such as 'h100', 'a100', '4090', or an architecture 'sm_90')")


def nearest_cc(cc: int) -> GPU:
    """The first table row with the compute capability closest to ``cc`` (ties: the lower one)."""
    best = min(GPUS.values(), key=lambda g: (abs(g.cc - cc), g.cc > cc))
    return best


def from_device_name(device_name: str, cc: int | None = None) -> GPU:
    """Match a CUDA device name ("NVIDIA H100 80GB HBM3") against the table; unknown names fall
    back to the nearest compute capability (``cc``)."""
    n = _norm(device_name)
    # longest alias contained in the device name wins ("h100pcie" before "h100")
    hits = sorted((a for a in _ALIASES if a and a in n), key=len, reverse=True)
    if "pcie" in n:
        pcie = [a for a in hits if "pcie" in a]
        hits = pcie + hits
    if hits:
        g = GPUS[_ALIASES[hits[0]]]
        if g.name == "A100-40GB" and "80g" in n:
            g = GPUS["A100-80GB"]
        if cc is None or g.cc == cc:
            return g
    if cc is None:
        raise TuningError(f"GPU {device_name!r} is not in the hardware table and no compute "
                          f"capability was given; known GPUs: {', '.join(GPUS)}")
    return nearest_cc(cc)


def detect() -> GPU | None:
    """The table row of the current CUDA device (by name, else nearest compute capability);
    None without a CUDA device."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return from_device_name(torch.cuda.get_device_name(idx), major * 10 + minor)
    except TuningError:
        raise
    except Exception:
        return None


__all__ = ["GPU", "GPUS", "get", "detect", "names", "nearest_cc", "from_device_name"]
