"""The configuration of a training run: the paper's CIFAR schedule by default, every value settable from
Python, a YAML file (``--config``) or the command line, in increasing order of precedence.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from compact._numbers import MAX_EPOCHS, MAX_SEED, is_finite_number
from compact._resources import resolve
from compact._yaml import read_yaml_file
from compact.errors import CompactError

PLACEMENT_KEYS = ("exits", "exit_blocks", "exit_layers", "exit_nodes")


#: training losses: cross-entropy, or a margin softmax on a cosine classifier (faces; compact.face.margin)
LOSSES = ("ce", "arcface", "cosface")
#: training precisions (autocast dtypes; ``auto`` picks bf16 on a GPU that supports it)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

#: the largest learning rate (and weight decay) taken: far above any schedule, far below float32's range
MAX_LR = 1e4

#: the most DataLoader worker processes taken (each is a process: a typo must not start thousands)
MAX_WORKERS = 256


@dataclass
class TrainConfig:
    """Everything that defines a run.

    Schedule (paper Section 5.2): SGD, Nesterov momentum 0.9, weight decay 5e-4, batch 128, 400 epochs,
    lr 0.1 divided by 10 (``lr_decay``) at 40% and 60% of the epochs (``lr_milestones``, fractions).
    Exits are placed by exactly one of ``exits`` (number of outputs, final included), ``exit_blocks``,
    ``exit_layers`` or ``exit_nodes``; with none, the network has only its final output.
    ``num_classes`` defaults to the dataset's. ``image_size``, ``augment``, ``flip``, ``in_chans``: how
    images are fed (see :class:`compact.data.DataOptions`; defaults: the dataset's own).
    ``device``: ``auto`` takes CUDA when available. ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast in
    training; float16 with loss scaling, CUDA only) or ``auto`` (bf16 on a GPU that has it, else fp32);
    evaluation runs in float32. ``channels_last``: model and batches in channels-last memory format.
    ``loss``: ``ce`` (cross-entropy) or a margin softmax, ``arcface`` or ``cosface``, with ``loss_scale`` and
    ``loss_margin`` (defaults 64 and 0.5 / 0.35), for models ending in a cosine classifier (mobilefacenet)
    with ``embedding`` exit heads. ``val_pairs``: a packed validation file or an LFW folder whose pairs are
    verified (10-fold accuracy of every output) at every evaluation.
    ``eval_every``: evaluate every N epochs (and always after the last one); the other epochs' records have
    no test error.
    ``init_from``: a run folder or model file whose backbone weights start the run (fine-tuning, or the
    frozen trunk of the ``probe`` method); the heads start fresh.
    ``soft_prune``: ``{"ratios": {layer: fraction}, "round_to": n}`` for soft filter pruning (set by
    ``compact prune --method sfp``): filters are zeroed after every epoch and removed at the end.
    """

    model: str = ""
    init_from: str | None = None
    method: str = "standard"
    method_options: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    exits: int | None = None
    exit_blocks: list[int] | None = None
    exit_layers: list[int] | None = None
    exit_nodes: list[str] | None = None
    head: str = "bn-relu-gap-fc"
    nu: float | None = None
    schedule: str = "constant"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None
    test_subset: int | None = None
    image_size: int | None = None
    augment: str | None = None
    flip: bool = True
    in_chans: int | None = None
    workers: int = 2
    epochs: int = 400
    batch_size: int = 128
    eval_batch_size: int = 512
    eval_every: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: list[float] = field(default_factory=lambda: [0.4, 0.6])
    lr_decay: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    loss: str = "ce"
    loss_scale: float | None = None
    loss_margin: float | None = None
    val_pairs: str | None = None
    soft_prune: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise CompactError("no model given: set --model (e.g. cifar_resnet56, timm:resnet18)")
        _check_types(self)
        _check_int(self, "epochs", 1, MAX_EPOCHS)
        _check_int(self, "batch_size", 1)
        _check_int(self, "eval_batch_size", 1)
        _check_int(self, "eval_every", 1, MAX_EPOCHS)
        if self.loss not in LOSSES:
            raise CompactError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for key in ("loss_scale", "loss_margin"):
            value = getattr(self, key)
            if value is not None and (not is_finite_number(value) or self.loss == "ce"):
                what = "a number" if self.loss != "ce" else "given only with loss arcface or cosface"
                raise CompactError(f"{key} must be {what}, got {value!r}")
        if self.val_pairs is not None and self.loss == "ce":
            raise CompactError("val_pairs measures face verification of embeddings: train with loss arcface or cosface")
        if self.precision not in PRECISIONS:
            raise CompactError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check_int(self, "seed", 0, MAX_SEED)
        _check_int(self, "workers", 0, MAX_WORKERS)
        for key in ("num_classes", "exits", "subset", "test_subset", "image_size", "in_chans"):
            if getattr(self, key) is not None:
                _check_int(self, key, 1)
        # bounds a real schedule never reaches: lr 1e308 overflowed float32 inside torch (an internal error),
        # momentum >= 1 or a "decay" above 1 make SGD grow without bound
        if not is_finite_number(self.lr) or not 0 < self.lr <= MAX_LR:
            raise CompactError(f"lr must be a number in (0, {MAX_LR:g}], got {self.lr!r}")
        if not is_finite_number(self.lr_decay) or not 0 < self.lr_decay <= 1:
            raise CompactError(f"lr_decay (the factor at each milestone) must be in (0, 1], got {self.lr_decay!r}")
        if not is_finite_number(self.momentum) or not 0 <= self.momentum < 1:
            raise CompactError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not is_finite_number(self.weight_decay) or not 0 <= self.weight_decay <= MAX_LR:
            raise CompactError(f"weight_decay must be a number in [0, {MAX_LR:g}], got {self.weight_decay!r}")
        ms = self.lr_milestones
        if not isinstance(ms, list) or not all(is_finite_number(m) and 0 < m <= 1 for m in ms) or ms != sorted(ms):
            raise CompactError(f"lr_milestones must be increasing fractions of the epochs in (0, 1], got {ms!r}")
        placed = [k for k in PLACEMENT_KEYS if getattr(self, k) is not None]
        if len(placed) > 1:
            raise CompactError(f"give only one way to place exits, got {', '.join(placed)}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,3})?", self.device):
            raise CompactError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        from compact.methods import METHODS

        method = METHODS.get(self.method)  # unknown methods list the valid ones
        if method.needs_trained_trunk and not self.init_from:
            raise CompactError(f"method {self.method} works on a trained network: set init_from (a run or model file)")
        if self.method != "standard" and self.placement == {"num_outputs": 1}:
            # every other method trains several outputs: with one it would be standard BP under another name
            raise CompactError(
                f"method {self.method} trains several outputs but this run has only the final one; give exits "
                "(--exits N with N >= 2, --exit-blocks, --exit-layers or --exit-nodes) or use method standard"
            )
        options = method.options
        if not isinstance(self.method_options, dict) or set(self.method_options) - set(options):
            valid = ", ".join(options) or "none"
            raise CompactError(f"method {self.method} takes options: {valid}; got {self.method_options!r}")
        if self.soft_prune is not None and (
            not isinstance(self.soft_prune, dict) or not isinstance(self.soft_prune.get("ratios"), dict)
        ):
            raise CompactError(f"soft_prune must be a mapping with 'ratios' (layer: fraction), got {self.soft_prune!r}")
        from compact.models.arguments import check_kwargs_mapping

        self.model_kwargs = check_kwargs_mapping(self.model_kwargs, "model_kwargs")

    @property
    def placement(self) -> dict[str, Any]:
        """The keyword argument of :func:`compact.exits.attach_exits` that places the exits."""
        key = next((k for k in PLACEMENT_KEYS if getattr(self, k) is not None), None)
        if key is None:
            return {"num_outputs": 1}
        name = {"exits": "num_outputs", "exit_blocks": "blocks", "exit_layers": "layers", "exit_nodes": "nodes"}[key]
        return {name: getattr(self, key)}

    def milestone_epochs(self) -> list[int]:
        """0-based epochs at whose start the learning rate is decayed; never epoch 0 (a short run would
        otherwise train at the decayed rate from its start: 0.4 of one epoch rounds to 0)."""
        return [max(1, round(m * self.epochs)) for m in self.lr_milestones]

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        decays = sum(epoch >= m for m in self.milestone_epochs())
        return self.lr * self.lr_decay**decays

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping whose keys may use ``-`` or ``_``; unknown keys are an error."""
        if not isinstance(values, dict):
            raise CompactError(f"{source}: expected a mapping of option: value, got {type(values).__name__}")
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - set(cls.keys()))
        if unknown:
            raise CompactError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(cls.keys())}")
        try:
            return cls(**normalised)
        except TypeError as exc:
            raise CompactError(f"{source}: {exc}") from exc


#: ``--smoke`` (training commands and recipe entries): one epoch of one training batch and one evaluation
#: batch of small images; it checks that a setup runs end to end and measures nothing
SMOKE: dict[str, Any] = {
    "subset": 16,
    "test_subset": 16,
    "batch_size": 16,
    "eval_batch_size": 16,
    "epochs": 1,
}
#: the image side of a smoke run on an image folder, unless one is given (in-memory data keeps its own)
SMOKE_IMAGE_SIZE = 32


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from ``path``: plain data only, no aliases, bounded size (:mod:`compact._yaml`)."""
    data = read_yaml_file(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompactError(f"{path}: expected a mapping of option: value at the top level")
    return data


def resolve_config(cli: dict[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Built-in defaults, overridden by ``config_file`` (YAML), overridden by ``cli`` (options given).

    ``config_file`` is a path or the name of a shipped configuration (``compact configs`` lists them).
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        config_file = resolve("config", config_file)
        values.update({str(k).replace("-", "_"): v for k, v in read_yaml(config_file).items()})
        if "download" in values:  # it writes into the data_dir the file names: the user's choice alone
            raise CompactError(f"{config_file}: a configuration file cannot ask to download; pass --download")
    values.update(cli)
    return TrainConfig.from_dict(values, f"options (with {config_file})" if config_file else "options")


#: the type of every option that is not checked for a range below (None allowed where the default is None)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "init_from": (str,),
    "method": (str,),
    "method_options": (dict,),
    "model_kwargs": (dict,),
    "exit_nodes": (list,),
    "exit_blocks": (list,),
    "exit_layers": (list,),
    "head": (str,),
    "schedule": (str,),
    "data": (str,),
    "data_dir": (str,),
    "download": (bool,),
    "augment": (str,),
    "flip": (bool,),
    "nesterov": (bool,),
    "device": (str,),
    "precision": (str,),
    "channels_last": (bool,),
    "loss": (str,),
    "val_pairs": (str,),
    "soft_prune": (dict,),
}


def _check_types(cfg: TrainConfig) -> None:
    for key, kinds in _TYPES.items():
        value = getattr(cfg, key)
        optional = next(f for f in fields(cfg) if f.name == key).default is None
        if (value is None and optional) or isinstance(value, kinds):
            continue
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise CompactError(f"{key} must be a {' or '.join(k.__name__ for k in kinds)}, got {text}")
    for key, kind in (("exit_nodes", str), ("exit_blocks", int), ("exit_layers", int)):
        value = getattr(cfg, key)
        if value is not None and (not value or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
            raise CompactError(f"{key} must be a non-empty list of {'names' if kind is str else 'integers'}")
    if cfg.nu is not None and (not is_finite_number(cfg.nu) or not 0 <= cfg.nu <= 100):
        raise CompactError(f"nu must be a number in [0, 100] (0: equal weights), got {cfg.nu!r}")
    if any(len(str(getattr(cfg, k) or "")) > 4096 for k in ("model", "init_from", "data", "data_dir", "device")):
        raise CompactError("a name or path in the configuration is longer than 4096 characters")


def _check_int(cfg: TrainConfig, key: str, minimum: int, maximum: int | None = None) -> None:
    value = getattr(cfg, key)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        valid = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise CompactError(f"{key} must be an integer {valid}, got {value!r}")
