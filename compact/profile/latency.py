"""Latency measurement that survives a shared, noisy machine.

Every candidate (a model under a runtime at a batch size) is warmed up, then timed in ``rounds`` rounds;
in each round every candidate runs ``repeats`` times back to back and the mean time per call is one
sample. Candidates are interleaved within a round, in an order that rotates every round, so slow phases
of the machine hit all of them alike. Reported: the median of the samples and their 10th-90th percentile
spread.

Before each timed block the harness pauses ``settle_ms`` and makes one untimed call. Runtimes keep worker
threads spinning for a while after a call (ONNX Runtime's intra-op pool, OpenMP); without the pause those
threads take the cores from the next candidate, and the call that wakes a pool is slower than the steady
state. Measured on the 2-core machine of profiles/fmnist-converged (2026-12-01): a ResNet-20 exit of 0.54 ms
alone in PyTorch took 2.8 ms when interleaved with spinning ONNX Runtime sessions. The pause does not stop
that for every pair of runtimes, so time different runtimes in separate calls (as ``profile_models`` does).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

#: default pause before each timed block (see the module docstring)
SETTLE_MS = 10.0


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
    candidates: dict[str, Callable[[], object]],
    rounds: int = 15,
    repeats: int = 5,
    warmup: int = 3,
    settle_ms: float = SETTLE_MS,
) -> dict[str, Timing]:
    """Milliseconds per call of each candidate (see the module docstring); ``settle_ms`` = 0 times the
    candidates back to back, with no pause and no untimed call before each block."""
    if rounds < 1 or repeats < 1:
        raise ValueError("rounds and repeats must be >= 1")
    if not settle_ms >= 0:
        raise ValueError(f"settle_ms must be >= 0, got {settle_ms}")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = candidates[name]
            if settle_ms:
                time.sleep(settle_ms / 1000)
                fn()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            samples[name].append(1000 * (time.perf_counter() - start) / repeats)
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = Timing(statistics.median(ordered), _quantile(ordered, 0.1), _quantile(ordered, 0.9), values)
    return out
