"""Timing blocks of calls: calibrate a block length, then measure one block."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["block_mean", "block_median", "calls_per_block"]


def calls_per_block(
    fn: Callable[[], object], target_s: float, *, warmup: int = 3, max_calls: int = 5000
) -> int:
    """How many calls of ``fn`` fill about ``target_s`` (after ``warmup`` unmeasured calls),
    judged from the median of five timed calls."""
    for _ in range(warmup):
        fn()
    one = block_median(fn, 5)
    return max(1, min(max_calls, round(target_s / max(one, 1e-7))))


def block_mean(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call, averaged over ``calls`` back-to-back calls (timeit's way)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def block_median(fn: Callable[[], object], calls: int) -> float:
    """The median of ``calls`` individually timed calls (robust to a stray slow call)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
