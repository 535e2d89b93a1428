"""A ceiling on the memory one call may add to the process (Linux), for third-party code that can grow without
bound on some models: torch-pruning's dependency tracking multiplies channel indices through some attention
reshapes (timm's EfficientFormerV2 took 17 GB within 7 minutes and kept growing). Under the ceiling such a
call fails with ``MemoryError`` instead of exhausting the machine, and the process is left as it was.

The ceiling is an address-space limit (``RLIMIT_AS``) set for the duration of the call: the process's current
virtual size plus half the memory the system has available (at least 2 GiB). It is not applied where it could
harm: off Linux, and once CUDA is initialised (its driver reserves large virtual ranges); a lower limit the
user set stays in force.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: the least memory a guarded call may add, whatever the system has available
MIN_EXTRA_BYTES = 2 * 2**30


def _status_kib(path: str, key: str) -> int | None:
    """The value (kB) of ``key`` in a ``/proc`` status file, or None."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_extra_bytes() -> int:
    """Half the memory the system has available now, at least :data:`MIN_EXTRA_BYTES`."""
    available = _status_kib("/proc/meminfo", "MemAvailable")
    return max(MIN_EXTRA_BYTES, (available or 0) * 1024 // 2)


@contextmanager
def memory_ceiling(extra_bytes: int | None = None) -> Iterator[int | None]:
    """Limit the process's address space to its current size plus ``extra_bytes`` (default:
    :func:`default_extra_bytes`) inside the block; yields how much it may add, or None where no ceiling was
    set."""
    if not sys.platform.startswith("linux"):
        yield None
        return
    import resource

    import torch

    current = _status_kib("/proc/self/status", "VmSize")
    if current is None or (torch.cuda.is_available() and torch.cuda.is_initialized()):
        yield None
        return
    extra = default_extra_bytes() if extra_bytes is None else int(extra_bytes)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current * 1024 + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:  # the user's own limit is lower: it stays
        yield None
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield extra
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
