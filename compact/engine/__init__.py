"""The training engine: configuration, epochs, evaluation, checkpoints, resume, metrics, run folders."""

from compact.engine.callbacks import Callback, RunContext
from compact.engine.checkpoint import load_checkpoint, save_checkpoint
from compact.engine.config import TrainConfig, read_yaml, resolve_config
from compact.engine.run import Run, export_output, open_run
from compact.engine.trainer import TrainingDiverged, build_network, evaluate, train, train_epoch

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
