"""The training engine: configuration, epochs, evaluation, checkpoints, resume, metrics, run folders."""

from __future__ import annotations

import importlib
from typing import Any

#: name -> module, imported on first use (the command line builds its parser without loading torch)
_LAZY = {
    "Callback": "compact.engine.callbacks",
    "RunContext": "compact.engine.callbacks",
    "load_checkpoint": "compact.engine.checkpoint",
    "save_checkpoint": "compact.engine.checkpoint",
    "TrainConfig": "compact.engine.config",
    "read_yaml": "compact.engine.config",
    "resolve_config": "compact.engine.config",
    "Run": "compact.engine.run",
    "export_output": "compact.engine.run",
    "open_run": "compact.engine.run",
    "TrainingDiverged": "compact.engine.callbacks",
    "build_network": "compact.engine.trainer",
    "evaluate": "compact.engine.trainer",
    "train": "compact.engine.trainer",
    "train_epoch": "compact.engine.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compact.engine' has no attribute {name!r}")


__all__ = [
    "Callback",
    "RunContext",
    "Run",
    "TrainConfig",
    "TrainingDiverged",
    "build_network",
    "evaluate",
    "export_output",
    "load_checkpoint",
    "open_run",
    "read_yaml",
    "resolve_config",
    "save_checkpoint",
    "train",
    "train_epoch",
]
