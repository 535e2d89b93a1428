"""Job locks of `compact run` (several processes on one output folder): taken and released, held against a
second taker, taken over from a dead or recycled holder, never taken from another host's run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from compact.recipes.locks import UNREADABLE_GRACE_S, _me, job_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_is_held_for_the_block_and_released_after(tmp_path):
    path = tmp_path / ".running.lock"
    with job_lock(path) as holder:
        assert holder is None
        stored = json.loads(path.read_text())
        assert stored["pid"] == os.getpid() and stored["host"] == socket.gethostname()
        with job_lock(path) as second:  # a second taker (here: the same live process) is refused
            assert second is not None and f"pid {os.getpid()}" in second and "remove it if that run is dead" in second
        assert path.is_file()  # the refused taker left the lock alone
    assert not path.exists()


def test_a_lock_is_released_when_the_work_fails(tmp_path):
    path = tmp_path / ".running.lock"
    try:
        with job_lock(path):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not path.exists()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / ".running.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": None, "since": "x"}))
    with job_lock(path) as holder:
        assert holder is None and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_recycled_pid_does_not_hold_the_lock(tmp_path):
    me = _me()
    if me["start"] is None:  # no /proc: a live pid is taken at its word
        return
    path = tmp_path / ".running.lock"
    path.write_text(json.dumps({**me, "start": str(int(me["start"]) + 1)}))  # our pid, another process's start
    with job_lock(path) as holder:
        assert holder is None


def test_another_hosts_lock_holds_and_is_named(tmp_path):
    path = tmp_path / ".running.lock"
    path.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "since": "2026-11-30 10:00:00 UTC"}))
    with job_lock(path) as holder:
        assert holder is not None and "pid 1 on elsewhere.example since 2026-11-30 10:00:00 UTC" in holder
    assert json.loads(path.read_text())["host"] == "elsewhere.example"


def test_an_unreadable_lock_holds_briefly_then_is_stale(tmp_path):
    path = tmp_path / ".running.lock"
    path.write_bytes(b"")  # its creator died (or is still writing it)
    with job_lock(path) as holder:
        assert holder is not None and "being written" in holder
    old = path.stat().st_mtime - UNREADABLE_GRACE_S - 5
    os.utime(path, (old, old))
    with job_lock(path) as holder:
        assert holder is None
    for junk in (b"\xff\xfe", b"[1, 2]", b"{" * 100000):
        path.write_bytes(junk)
        os.utime(path, (old, old))
        with job_lock(path) as holder:
            assert holder is None, junk[:10]


def test_a_lock_replaced_by_a_taker_is_not_removed_by_the_first_holder(tmp_path):
    path = tmp_path / ".running.lock"
    with job_lock(path) as holder:
        assert holder is None
        path.write_text(json.dumps({"host": "elsewhere.example", "pid": 7}))  # someone took it over
    assert json.loads(path.read_text())["pid"] == 7


def test_a_folder_in_the_locks_place_is_a_clear_refusal(tmp_path):
    path = tmp_path / ".running.lock"
    path.mkdir()
    old = path.stat().st_mtime - UNREADABLE_GRACE_S - 5
    os.utime(path, (old, old))
    with job_lock(path) as holder:
        assert holder is not None and "cannot be taken (it is not a plain file" in holder
    assert path.is_dir()
