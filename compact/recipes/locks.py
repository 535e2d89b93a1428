"""Job locks: several ``compact run`` processes may share one output folder (e.g. two shares of a long recipe
run side by side, one per core); each job, and the final profiling, is done by one process only.

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local file systems) that names the
holder: host, pid and, on Linux, the process's start time (so a recycled pid is not mistaken for the holder).
A lock whose holder is gone (same host, no such process) is stale and taken over: a run killed by a signal
leaves its lock behind, and the next run must not wait on it forever. A lock of another host cannot be
checked; it holds until someone removes the file (the message names it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

#: a lock file that cannot be read (its creator died between creating and writing it) counts as stale after
#: this many seconds; a live creator writes it within microseconds
UNREADABLE_GRACE_S = 60.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after the last ')' are plain
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _me() -> dict[str, object]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start": _start_time(pid),
        "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _alive(holder: dict) -> bool:
    """Whether the process named in a lock (on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OverflowError:
        return False
    start = holder.get("start")
    now = _start_time(pid)
    return start is None or now is None or start == now


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _holder(path: Path) -> dict | None:
    """The live holder of the lock at ``path``; None when there is no lock or it was stale (then removed)."""
    try:
        holder = json.loads(path.read_text())
        if not isinstance(holder, dict):
            raise ValueError
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        if age < UNREADABLE_GRACE_S:
            return {"pid": "?", "host": "?", "since": "just now (lock being written)"}
        holder = {}
    if holder and (holder.get("host") != socket.gethostname() or _alive(holder)):
        return holder
    with contextlib.suppress(OSError):  # (a folder in its place stays, and the taker gives up after a few tries)
        path.unlink()
    return None


@contextlib.contextmanager
def job_lock(path: str | Path) -> Iterator[str | None]:
    """Hold the lock at ``path`` for the ``with`` block and yield None; or, when another live process holds
    it, yield a description of that process (the caller skips the work) and touch nothing."""
    path = Path(path)
    for _ in range(3):  # a stale lock removed, or a race lost against another taker: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None:
                yield f"{describe(holder)} (lock {path.name}; remove it if that run is dead)"
                return
            continue
        break
    else:
        yield f"the lock {path} cannot be taken (it is not a plain file, or keeps reappearing)"
        return
    mine = _me()
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine) + "\n")
        yield None
    finally:
        # release only our own lock (a stale-lock taker may have replaced it if we looked dead)
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
            if json.loads(path.read_text()) == mine:
                path.unlink()
