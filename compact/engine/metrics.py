"""Per-epoch metrics of a run: ``metrics.jsonl`` (one JSON object per epoch), ``metrics.csv`` (the same,
flattened) and TensorBoard scalars when the ``tensorboard`` package is installed.

Per-output lists are indexed like the network's outputs: ``0..K-1`` auxiliary exits shallow to deep,
``K`` the final output; ``None`` where a method neither computes nor trains an output (standard BP's
heads). Errors are top-1 error rates in percent.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from compact._atomic import write_text
from compact._jsonfile import read_json_lines

PER_OUTPUT = ("train_loss", "train_error_pct", "test_loss", "test_error_pct")
SCALARS = ("epoch", "lr", "nu", "epoch_time_s", "train_images_per_s", "data_wait_share")


def csv_columns(num_outputs: int) -> list[str]:
    return [*SCALARS[:3], *(f"{k}_{i}" for k in PER_OUTPUT for i in range(num_outputs)), *SCALARS[3:]]


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (an absent file is an empty history; a damaged one, e.g. a
    line that is not a JSON object, raises a :class:`~compact.errors.CompactError` naming the line)."""
    return read_json_lines(path)


class MetricsLog:
    """Writes the whole history at every epoch, each file atomically, so the files always agree with the
    last checkpoint (a resumed run rewrites them from the checkpoint's history)."""

    def __init__(self, run_dir: Path, num_outputs: int, tensorboard: bool = True, first_epoch: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.num_outputs = num_outputs
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.writer = None
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=first_epoch + 1)

    def write(self, history: list[dict[str, Any]], tensorboard: bool = True) -> None:
        """Rewrite the files from ``history``; log its last record to TensorBoard if ``tensorboard``."""
        write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=csv_columns(self.num_outputs), extrasaction="ignore")
        w.writeheader()
        for r in history:
            row = {k: r.get(k) for k in SCALARS}
            for k in PER_OUTPUT:
                for i, v in enumerate(r.get(k) or []):
                    row[f"{k}_{i}"] = v
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if tensorboard and self.writer is not None and history:
            self._tensorboard(history[-1])

    def _tensorboard(self, r: dict[str, Any]) -> None:
        step = r["epoch"]
        for k in PER_OUTPUT:
            for i, v in enumerate(r[k]):
                if v is not None:
                    self.writer.add_scalar(f"{k}/output_{i}", v, step)
        for k in ("lr", "nu", "train_images_per_s", "data_wait_share"):
            self.writer.add_scalar(k, r[k], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
