"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the network's weights and buffers, the method's state (every optimizer, one per loss
for MW-BP; the learning rate; the loss-weighting schedule), the RNG state, the number of completed epochs,
the metrics history and the identity of the network (model, exits, head, method), which is checked on
resume. It is written with ``torch.save`` to a temporary file and renamed, and read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only and never runs code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from compact._atomic import atomic_path
from compact.errors import CompactError

FORMAT = "compact.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; corrupt or foreign files raise naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CompactError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompactError(f"checkpoint {path} is corrupt or truncated ({first})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CompactError(f"{path} is not a compact checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CompactError(
            f"checkpoint {path} has format version {state.get('format_version')}; this compact reads {FORMAT_VERSION}"
        )
    return state


def check_identity(path: str | Path, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint made for another network or method, naming what differs."""
    diffs = [f"{k}: checkpoint has {stored.get(k)!r}, run has {v!r}" for k, v in expected.items() if stored.get(k) != v]
    if diffs:
        raise CompactError(f"checkpoint {path} is from another model or method ({'; '.join(diffs)})")
