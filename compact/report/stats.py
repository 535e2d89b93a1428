"""Paired comparisons over seeds: the mean difference of two models' test errors with its 95% confidence
interval, and a verdict on a claim that the first is better.

Entries of a recipe trained with the same seed share the data subset and its order, so their errors are
compared seed by seed: the differences ``d_s = a_s - b_s`` over the ``n`` common seeds have mean ``m`` and
standard deviation ``s``, and the interval is ``m -/+ t(0.975, n - 1) * s / sqrt(n)`` (Student's t, from
scipy). A claim "``a`` has lower error than ``b``" *holds* when the whole interval lies below 0, is
*reversed* when it lies above 0, and is *inconclusive* otherwise, and always with a single seed (no
interval can be computed from one difference).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

HOLDS, REVERSED, INCONCLUSIVE = "holds", "reversed", "inconclusive"
VERDICTS = (HOLDS, REVERSED, INCONCLUSIVE)
LEVEL = 0.95


@dataclass
class Paired:
    """``a - b`` over the common seeds (percentage points of test error)."""

    n: int
    seeds: list[int]
    mean: float | None
    low: float | None
    high: float | None
    verdict: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Paired:
    """The paired difference ``a - b`` of two models' errors by seed, with the verdict on "a is lower"."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Paired(0, [], None, None, None, INCONCLUSIVE, "no seed in common: nothing to compare")
    mean = statistics.fmean(diffs)
    if n == 1:
        return Paired(1, seeds, mean, None, None, INCONCLUSIVE, "one seed: no confidence interval")
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = HOLDS if high < 0 else REVERSED if low > 0 else INCONCLUSIVE
    return Paired(n, seeds, mean, low, high, verdict)
