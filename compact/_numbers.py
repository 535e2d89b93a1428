"""Type tests for numbers read from files and recipes, where ``True`` is an ``int`` to Python but never a
count, a rate or an error to compact."""

from __future__ import annotations

import math
from typing import Any

#: the largest seed compact takes (options, recipes, files): seeds reach NumPy and torch generators, which
#: take 32 or 64 bits
MAX_SEED = 2**31 - 1
#: the most epochs a run may ask for, far beyond any published schedule (a larger number is a typo, and a run
#: of it would never end)
MAX_EPOCHS = 100_000


def is_number(value: Any) -> bool:
    """An int or float that is not a bool; NaN and infinities included (a diverged run's error)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or float that is not a bool, NaN or infinite."""
    return is_number(value) and math.isfinite(value)


def is_count(value: Any, low: int = 0) -> bool:
    """An int that is not a bool, at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_finite_list(value: Any, length: int, positive: bool = False) -> bool:
    """A list of ``length`` finite numbers (each > 0 with ``positive``): a normalisation's mean or std."""
    return (
        isinstance(value, list)
        and len(value) == length
        and all(is_finite_number(x) and (x > 0 or not positive) for x in value)
    )
