"""Every benchmark runs in its --quick mode and prints its figures (a JSON object on its last line), so
that none can rot unnoticed (issue: bp_cost.py crashed once a new method was registered)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _helpers import needs_fmnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NEEDS_DATA = {"train_throughput.py", "ddp_scaling.py", "face_verification.py"}  # they read Fashion-MNIST


def _run(name: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_benchmark_has_a_quick_mode():
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    assert scripts == ["bp_cost.py", "cascade_overhead.py", "ddp_scaling.py", "face_verification.py", "gpu_check.py",
                       "prune_cost.py", "thread_split.py", "train_throughput.py"]  # fmt: skip
    for name in scripts:
        assert "--quick" in (BENCHMARKS / name).read_text(), name


def test_bp_cost_quick_times_every_method_and_the_mwbp_floor():
    from compact.methods import METHODS, list_methods

    figures = _run("bp_cost.py")
    trainable = {m for m in list_methods() if not METHODS.get(m).needs_trained_trunk}
    assert set(figures["ms_per_iter"]) == trainable
    assert figures["ratio_to_standard"]["standard"] == 1.0 and figures["mwbp_floor_ratio"] > 0
    # Table 9: counted MACs of one iteration; the shared forward saves what naive MW-BP computes per loss
    counted = figures["counted_ratio_to_standard"]
    assert set(counted) == trainable and counted["standard"] == 1.0
    assert 1 < counted["mwbp"] < counted["naive-mwbp"] and counted["joint"] < counted["relay"]
    fwd = figures["forward_macs"]
    assert fwd["naive"] / fwd["shared"] == pytest.approx(2.0, abs=0.1)  # exits at 7, 13 and 20 of 20 layers


def test_cascade_overhead_quick_times_the_cascade_against_the_full_graph():
    figures = _run("cascade_overhead.py")
    assert set(figures["ms_per_image"]) == {
        "full graph", "full graph, ORT defaults", "cascade t=1", "cascade t=1, 1 thread", "segments only"
    }  # fmt: skip
    assert set(figures["one_thread_vs_default_session"]) == {"1", "64"}
    assert all(v["median"] > 0 for d in figures["ms_per_image"].values() for v in d.values())
    assert 0 < figures["macs_overhead"] < 0.01  # the heads only: no feature is computed twice


def test_thread_split_quick_times_both_layouts():
    import os

    figures = _run("thread_split.py")
    n = os.cpu_count() or 1
    assert set(figures["images_per_s"]) == {f"1 process x {n} threads", f"{n} processes x 1 thread"}
    one, split = figures["images_per_s"].values()
    assert one > 0 and split > 0 and figures["split_over_threads"] == pytest.approx(split / one, rel=0.01)


def test_gpu_check_says_when_there_is_no_gpu():
    import torch

    figures = _run("gpu_check.py")
    assert figures["cuda"] is torch.cuda.is_available()


def test_prune_cost_quick_prunes_and_profiles():
    rows = _run("prune_cost.py")
    assert set(rows) == {"unpruned", "l1 round-to 8"}
    assert rows["l1 round-to 8"]["macs_conv_linear"] < rows["unpruned"]["macs_conv_linear"]


@needs_fmnist
@pytest.mark.parametrize("name", sorted(NEEDS_DATA))
def test_data_benchmarks_quick(name):
    figures = _run(name)
    assert figures  # the figures of every method
    if name == "face_verification.py":  # a verification accuracy per output, every epoch
        assert len(figures["verification_pct"]) == 3 and all(0 <= v <= 100 for v in figures["verification_pct"])
    if name == "train_throughput.py":  # every precision and memory format this machine runs
        want = {f"{m} {p} {f}" for m in ("standard", "mwbp") for p in ("fp32", "bf16") for f in ("contiguous",
                "channels_last")}  # fmt: skip
        assert want <= set(figures["variants"]) and all(v > 0 for v in figures["variants"].values())
