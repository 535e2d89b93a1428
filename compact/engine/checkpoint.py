"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the network's weights and buffers, the method's state (every optimizer, one per loss
for MW-BP; the learning rate; the loss-weighting schedule), the RNG state, the number of completed epochs,
the metrics history and the identity of the network (model, exits, head, method), which is checked on
resume. It is written with ``torch.save`` to a temporary file and renamed, and read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only and never runs code.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from compact._atomic import atomic_path
from compact._numbers import is_count
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
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False, i.e. running the file's code: never relay it
        if re.search(r"unsupported global|GLOBAL .* blocked|not an allowed global", str(exc), re.IGNORECASE):
            raise CompactError(
                f"checkpoint {path} was refused: it holds objects other than tensors and plain containers "
                "(compact never unpickles anything else)"
            ) from None
        raise CompactError(f"checkpoint {path} is corrupt or truncated (not a checkpoint compact wrote)") from None
    except MemoryError:
        raise CompactError(f"checkpoint {path} is too large to load into memory") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, struct.error, UnicodeDecodeError, RecursionError) as exc:  # fmt: skip
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Weights only" in first:
            first = "it holds objects other than tensors and plain containers"
        raise CompactError(f"checkpoint {path} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CompactError(f"{path} is not a compact checkpoint")
    if not is_count(state.get("format_version")) or state["format_version"] != FORMAT_VERSION:
        raise CompactError(
            f"checkpoint {path} has format version {state.get('format_version')!r}; this compact reads {FORMAT_VERSION}"
        )
    _check_fields(path, state)
    return state


#: field -> (type, what it is), for the fields a training checkpoint must have
_FIELDS = {
    "epoch": (int, "the number of completed epochs"),
    "identity": (dict, "the network's identity"),
    "config": (dict, "the run's configuration"),
    "model_info": (dict, "the model description"),
    "model": (dict, "the network's weights"),
    "method": (dict, "the optimizers' state"),
    "rng": (dict, "the random number generator state"),
    "history": (list, "the metrics history"),
}


def _check_fields(path: Path, state: dict[str, Any]) -> None:
    for key, (kind, what) in _FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if key not in state else f"a {type(value).__name__}"
            raise CompactError(f"checkpoint {path} is damaged: {key!r} ({what}) is {got}, expected a {kind.__name__}")
    if state["epoch"] < 0 or state["epoch"] != len(state["history"]):
        raise CompactError(f"checkpoint {path} is damaged: epoch {state['epoch']} but {len(state['history'])} records")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise CompactError(f"checkpoint {path} is damaged: 'model' must map names to tensors")
    if not isinstance(state["rng"].get("torch"), torch.Tensor) or state["rng"]["torch"].dtype != torch.uint8:
        raise CompactError(f"checkpoint {path} is damaged: 'rng' has no torch generator state")
    if not all(isinstance(r, dict) for r in state["history"]):
        raise CompactError(f"checkpoint {path} is damaged: 'history' must be a list of epoch records")


def check_identity(path: str | Path, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint made for another network or method, naming what differs."""
    diffs = [f"{k}: checkpoint has {stored.get(k)!r}, run has {v!r}" for k, v in expected.items() if stored.get(k) != v]
    if diffs:
        raise CompactError(f"checkpoint {path} is from another model or method ({'; '.join(diffs)})")
