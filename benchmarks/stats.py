"""Summaries of timing samples: nearest-rank percentiles, median with min-max, interleaving.

Alternatives are always measured interleaved (round-robin, rotating the order every round) so
that a burst of load from another process hits all of them alike and their ratios survive.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "LatencySummary",
    "Spread",
    "interleave",
    "percentile",
    "spread",
    "summarize_latencies",
]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence: the smallest value such that at least
    ``p`` percent of the values are ≤ it (the convention of wrk and HdrHistogram).

    ``percentile(v, 0)`` is the minimum, ``percentile(v, 100)`` the maximum.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements, with the smallest and largest seen."""

    median: float
    min: float
    max: float
    n: int

    def scaled(self, factor: float) -> Spread:
        return Spread(self.median * factor, self.min * factor, self.max * factor, self.n)

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of an empty sequence")
    return Spread(
        median=float(statistics.median(values)),
        min=float(min(values)),
        max=float(max(values)),
        n=len(values),
    )


@dataclass(frozen=True)
class LatencySummary:
    """Per-request latencies in seconds, summarized."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    def to_dict(self, unit: float = 1e3) -> dict[str, float | int]:
        """Times multiplied by ``unit`` (milliseconds by default)."""
        return {
            "count": self.count,
            "mean": self.mean * unit,
            "p50": self.p50 * unit,
            "p90": self.p90 * unit,
            "p99": self.p99 * unit,
            "min": self.min * unit,
            "max": self.max * unit,
        }


def summarize_latencies(latencies: Sequence[float]) -> LatencySummary:
    ordered = sorted(latencies)
    if not ordered:
        raise ValueError("no latencies to summarize")
    return LatencySummary(
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        min=ordered[0],
        max=ordered[-1],
    )


def interleave(
    alternatives: Mapping[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
    """Call every alternative once per round, rotating the starting one each round.

    Each callable measures one block and returns one sample; the result maps each name to its
    ``rounds`` samples, in round order (so sample ``i`` of two names comes from the same round).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    names = list(alternatives)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            samples[name].append(float(alternatives[name]()))
    return samples
