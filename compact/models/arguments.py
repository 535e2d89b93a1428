"""The model constructor arguments compact accepts, per model family: an allow-list of plain values.

Constructor arguments reach :func:`compact.models.create_model` from files (a model file's description, a
run's ``config.yaml``, a recipe) and from ``--model-arg``. timm and torchvision constructors take arguments
that fetch and unpickle weights (``pretrained``, ``pretrained_cfg_overlay={'url': ...}``, ``weights``,
``checkpoint_path``) or name Python objects (``act_layer='...'``, ``norm_layer``), so none of those values may
come from a file: only the arguments listed here pass, each checked against its type and range, and the
model is always built without pretrained weights.

compact's own models declare their arguments when they are registered
(``register_model(name, args={...})``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compact._numbers import is_number
from compact.errors import CompactError

#: arguments that fetch, load or unpickle something, or that name code: refused with their own message
FORBIDDEN = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "checkpoint_path",
    "cache_dir",
    "weights",
    "weights_backbone",
    "progress",
    "url",
    "file",
    "hf_hub_id",
    "features_only",
    "scriptable",
    "exportable",
    "no_jit",
)


@dataclass(frozen=True)
class Arg:
    """One allowed argument: ``kind`` is ``float``, ``int``, ``bool`` or ``choice``; numbers lie in
    ``[low, high]``; a ``choice`` is one of ``choices``."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    def check(self, key: str, value: Any, where: str) -> Any:
        if self.kind == "choice":
            if isinstance(value, bool) or value not in self.choices:
                valid = ", ".join(repr(c) for c in self.choices)
                raise CompactError(f"{where}: {key} must be one of {valid}, got {_short(value)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool) or (self.choices and value not in self.choices):
                allowed = " or ".join(repr(c) for c in self.choices) if self.choices else "true or false"
                raise CompactError(f"{where}: {key} must be {allowed}, got {_short(value)}")
            return value
        number_ok = is_number(value)
        if self.kind == "int" and not isinstance(value, int):
            number_ok = False
        if not number_ok or not math.isfinite(value):
            what = "an integer" if self.kind == "int" else "a number"
            raise CompactError(f"{where}: {key} must be {what}, got {_short(value)}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise CompactError(f"{where}: {key} must lie in [{self.low}, {self.high}], got {value!r}")
        return float(value) if self.kind == "float" else int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: upper bounds of the sizes a file or option may ask for (a larger model is built by code, not from a file)
MAX_CLASSES = 100_000
MAX_IN_CHANS = 64
MAX_SIDE = 2048

_RATE = Arg("float", 0.0, 0.95)

#: timm: regularisation and pooling (``timm.create_model`` passes them to every model that knows them)
TIMM_ARGS: dict[str, Arg] = {
    "drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "drop_block_rate": _RATE,
    "global_pool": Arg("choice", choices=("avg", "max", "avgmax", "catavgmax")),
    "output_stride": Arg("choice", choices=(8, 16, 32)),
    # the input side of models built for one size (ViT, Swin, Mixer): e.g. 32 for CIFAR
    "img_size": Arg("int", 8, MAX_SIDE),
}

#: torchvision: the plain constructor arguments of its classification models
TORCHVISION_ARGS: dict[str, Arg] = {
    "dropout": _RATE,
    "stochastic_depth_prob": _RATE,
    "width_mult": Arg("float", 0.05, 4.0),
    "zero_init_residual": Arg("bool"),
    "init_weights": Arg("bool"),
    "transform_input": Arg("bool"),
    "aux_logits": Arg("bool", choices=(False,)),  # True makes forward return a tuple in train mode
}


def check_model_args(family: str, allowed: Mapping[str, Arg], kwargs: Mapping[str, Any], model: str) -> dict:
    """``kwargs`` checked against ``allowed`` (a copy with normalised values); anything else is refused."""
    where = f"model argument of {model}"
    kwargs = check_kwargs_mapping(kwargs, where)
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise CompactError(f"{where}: unknown argument {key!r}; {family} models take: {valid}")
        out[key] = allowed[key].check(key, value, where)
    return out


#: keyword arguments compact passes itself: a mapping of extra arguments may not name them
RESERVED = ("name", "num_classes", "in_chans")


def check_kwargs_mapping(kwargs: Any, where: str) -> dict[str, Any]:
    """A mapping of extra constructor arguments as stored in a file or a configuration: string keys, none
    of the arguments compact sets itself, none that fetch (the per-family allow-list is applied when the
    model is built)."""
    if not isinstance(kwargs, Mapping):
        raise CompactError(f"{where}: model arguments must be a mapping, got {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise CompactError(f"{where}: model argument names are identifiers, got {_short(key)}")
        if key in RESERVED:
            raise CompactError(
                f"{where}: {key!r} is set by compact itself (from the data, or --num-classes and --input-size) "
                "and cannot be a model argument"
            )
        if key in FORBIDDEN or key.startswith("pretrained"):
            raise CompactError(
                f"{where}: model argument {key!r} is refused: compact builds models without pretrained weights and "
                "never fetches or loads anything a constructor argument names"
            )
    return dict(kwargs)


def check_sizes(num_classes: Any, in_chans: Any) -> None:
    """Bounds on the class count and input channels, so that no file or option can make compact allocate
    an absurd classifier or stem."""
    for name, value, high in (("num_classes", num_classes, MAX_CLASSES), ("in_chans", in_chans, MAX_IN_CHANS)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
            raise CompactError(f"{name} must be an integer in 1..{high}, got {_short(value)}")
