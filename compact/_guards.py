"""Limits on one call into third-party code that can run away on some models: torch-pruning's dependency
tracking multiplies channel indices through some attention reshapes (timm's EfficientFormerV2: 17 GB within
7 minutes, still growing) and loops without end through others (timm's ReXNet: no group after 10 minutes).
Under these limits such a call fails with an exception instead of exhausting the machine or hanging, and the
process is left as it was.

- :func:`memory_ceiling`: an address-space limit (``RLIMIT_AS``, Linux) for the duration of the call: the
  process's current virtual size plus half the memory the system has available (at least 2 GiB). Not applied
  where it could harm: off Linux, and once CUDA is initialised (its driver reserves large virtual ranges); a
  lower limit the user set stays in force.
- :func:`time_limit`: a real-time alarm that raises :class:`TimeLimitExceeded` in the call; ``SIGALRM`` on
  the main thread of a Unix process, else a timer thread that raises it asynchronously in the calling thread
  (CPython's ``PyThreadState_SetAsyncExc``; like a signal handler, it lands between two Python bytecodes, so
  a single C call that never returns is not stopped); ``COMPACT_CALL_TIMEOUT_S`` sets the seconds (0: no
  limit).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: the least memory a guarded call may add, whatever the system has available
MIN_EXTRA_BYTES = 2 * 2**30
#: seconds a guarded call may take unless ``COMPACT_CALL_TIMEOUT_S`` says otherwise: torch-pruning groups
#: the layers of timm's ResNet-152 or ConvNeXt-Base at 224 px in about 2 s on one CPU core
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "COMPACT_CALL_TIMEOUT_S"


class TimeLimitExceeded(BaseException):
    """Raised inside a call that outlived :func:`time_limit` (a BaseException, so that the guarded code's
    own ``except Exception`` clauses do not swallow it); ``args[0]`` is the limit in seconds."""


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


def timeout_seconds() -> float:
    """``COMPACT_CALL_TIMEOUT_S`` (seconds, 0 for none), else :data:`DEFAULT_TIMEOUT_S`."""
    from compact.errors import CompactError

    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10**6:
        raise CompactError(f"{TIMEOUT_ENV} must be a number of seconds in 0..1000000 (0: no limit), got {text!r}")
    return value


@contextmanager
def time_limit(seconds: float | None = None) -> Iterator[float | None]:
    """Raise :class:`TimeLimitExceeded` in the block once it has run ``seconds`` (default:
    :func:`timeout_seconds`); yields the limit, or None where none was set (0 seconds, or a Python without
    ``PyThreadState_SetAsyncExc`` off the main thread)."""
    limit = timeout_seconds() if seconds is None else float(seconds)
    if limit <= 0:
        yield None
        return
    alarm = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # a real-time timer of the caller's own runs: keep it
    )
    with _signal_alarm(limit) if alarm else _thread_alarm(limit) as set_limit:
        yield set_limit


@contextmanager
def _signal_alarm(limit: float) -> Iterator[float]:
    def expire(signum, frame) -> None:  # noqa: ANN001 (signal handler signature)
        raise TimeLimitExceeded(limit)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _thread_alarm(limit: float) -> Iterator[float | None]:
    """A timer thread that raises :class:`TimeLimitExceeded` in this thread after ``limit`` seconds, unless
    the block has ended first (a lock orders the two, so it never lands after the block)."""
    try:
        import ctypes

        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except (ImportError, AttributeError):  # not CPython
        yield None
        return

    class Expired(TimeLimitExceeded):
        def __init__(self) -> None:  # raised as a class: Python calls it without arguments
            super().__init__(limit)

    target = threading.get_ident()
    lock = threading.Lock()
    state = {"running": True, "fired": False}

    def expire() -> None:
        with lock:
            if state["running"]:
                set_async_exc(ctypes.c_ulong(target), ctypes.py_object(Expired))
                state["fired"] = True

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    timer.start()
    try:
        yield limit
    finally:
        with lock:
            state["running"] = False
            if state["fired"]:  # not delivered yet (the block ended right at the limit): withdraw it
                set_async_exc(ctypes.c_ulong(target), None)
        timer.cancel()
