"""The training engine: configuration, epochs, evaluation, checkpoints, resume, metrics, run folders."""

from __future__ import annotations

from compact._lazy import lazy_getattr

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


__getattr__ = lazy_getattr("compact.engine", _LAZY, globals())


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
