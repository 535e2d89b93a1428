"""Configuration of a probe run: heads trained on the frozen trunk of a trained network (paper footnote 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compact.errors import CompactError

#: the paper does not give the schedule of its probe heads; heads on frozen features converge quickly
PROBE_EPOCHS = 40
#: what a probe run takes over from the trained run it probes
INHERITED = (
    "model",
    "model_kwargs",
    "num_classes",
    "head",
    "data",
    "data_dir",
    "subset",
    "test_subset",
    "image_size",
    "augment",
    "flip",
    "in_chans",
    "workers",
    "seed",
    "batch_size",
    "eval_batch_size",
    "eval_every",
    "device",
)


def probe_config(source: Path, cli: dict[str, Any]):
    """The configuration of a probe run on ``source``: model and data from the source, heads and schedule
    from ``cli``."""
    from compact.engine.config import TrainConfig
    from compact.engine.run import open_run
    from compact.modelfile import read_info, training_settings

    if source.is_dir():
        stored = open_run(source).config.to_dict()
        base = {k: stored[k] for k in INHERITED}
    else:
        info = read_info(source)
        if info.kind == "exit":
            raise CompactError(f"{source} is a single exit; probing needs the whole trained network")
        base = training_settings(info)
        if info.head:
            base["head"] = info.head
    values = {**base, "epochs": PROBE_EPOCHS, **cli, "method": "probe", "init_from": str(source)}
    return TrainConfig.from_dict(values, "options")
