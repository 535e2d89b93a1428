"""Latency measurement that survives a shared, noisy machine.

Every candidate (a model under a runtime at a batch size) is warmed up, then timed in ``rounds`` rounds;
in each round every candidate runs ``repeats`` times back to back and the mean time per call is one
sample. Candidates are interleaved within a round, in an order that rotates every round, so slow phases
of the machine hit all of them alike. Reported: the median of the samples and their 10th-90th percentile
spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples_ms: list[float]

    def to_dict(self) -> dict:
        return {
            "median": round(self.median_ms, 4),
            "p10": round(self.p10_ms, 4),
            "p90": round(self.p90_ms, 4),
            "rounds": len(self.samples_ms),
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_interleaved(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, repeats: int = 5, warmup: int = 3
) -> dict[str, Timing]:
    """Milliseconds per call of each candidate (see the module docstring)."""
    if rounds < 1 or repeats < 1:
        raise ValueError("rounds and repeats must be >= 1")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = candidates[name]
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            samples[name].append(1000 * (time.perf_counter() - start) / repeats)
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = Timing(statistics.median(ordered), _quantile(ordered, 0.1), _quantile(ordered, 0.9), values)
    return out
