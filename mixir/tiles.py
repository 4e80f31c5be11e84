"""Tile arithmetic shared by the lowering (block sizes of the kernels) and the autotuner (the
shapes its resource formulas see): the one definition of each."""
from __future__ import annotations


def pow2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def padded(n: int) -> int:
    """A head size as the kernels hold it: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, pow2(n))


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive integers."""
    return (a + b - 1) // b
