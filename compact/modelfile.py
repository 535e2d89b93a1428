"""compact's one model file format: structure + weights in a single safetensors file, no code.

The file is a safetensors file (tensors only; reading it never runs code) whose metadata entry
``"compact"`` holds a JSON description of how to rebuild the module:

- ``arch``, ``num_classes``, ``in_chans``, ``model_kwargs``: the registered model to build
  (:func:`compact.models.create_model`);
- ``kind``: ``"full"`` (the model as built), ``"multi-exit"`` (the model with heads after ``exit_nodes``)
  or ``"exit"`` (the model cut after ``exit_nodes[0]`` plus its head: :class:`~compact.exits.ExitModel`);
- ``attrs``: plain attributes (ints, floats, strings, tuples) that differ from a fresh build, by module
  name, e.g. the channel counts of a pruned convolution; tensor shapes come from the tensors themselves.
  Loading builds the architecture, resizes every parameter or buffer whose stored shape differs, sets the
  attributes, then loads the weights strictly. This is how pruned models (physically smaller) are stored;
- ``input_size``, ``mean``, ``std``, ``classes``, ``dataset``: how to feed the model and read its output;
- ``source``: free-form provenance (run folder, method, epoch, output index, ...).

:func:`save_model` rebuilds the model from its description before writing and checks that the rebuilt
module computes the same outputs, so a file that is written can be read back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compact._atomic import atomic_path
from compact._version import __version__
from compact.errors import CompactError

FORMAT = "compact.model"
FORMAT_VERSION = 1
KINDS = ("full", "multi-exit", "exit")
_META_KEY = "compact"


@dataclass
class ModelInfo:
    """What a model file says about its model (everything but the weights)."""

    arch: str
    num_classes: int
    in_chans: int
    input_size: list[int]
    kind: str = "full"
    exit_nodes: list[str] = field(default_factory=list)
    head: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    dataset: str | None = None
    params: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CompactError(f"unknown model kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.kind == "exit" and len(self.exit_nodes) != 1:
            raise CompactError("an exit model names exactly one exit node")
        if self.kind != "full" and not self.head:
            raise CompactError(f"a {self.kind} model needs a head type")
        self.input_size = [int(s) for s in self.input_size]

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "compact_version": __version__, **asdict(self)}
        )

    @classmethod
    def from_json(cls, text: str, path: Path | str = "<model>") -> ModelInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CompactError(f"{path}: the model description is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CompactError(f"{path} is not a compact model file (no {FORMAT!r} description)")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CompactError(
                f"{path} has model-file format version {version}; this compact ({__version__}) reads version "
                f"{FORMAT_VERSION}"
            )
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise CompactError(f"{path}: incomplete model description ({exc})") from exc


def build_module(info: ModelInfo) -> nn.Module:
    """The architecture ``info`` describes, at its original (unpruned) sizes, freshly initialised."""
    from compact.exits import attach_exits
    from compact.exits.standalone import build_exit_model
    from compact.models import create_model

    backbone = create_model(info.arch, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_kwargs)
    if info.kind == "full":
        return backbone
    if info.kind == "multi-exit":
        placement = {"nodes": info.exit_nodes} if info.exit_nodes else {"num_outputs": 1}
        return attach_exits(backbone, **placement, head=info.head, input_size=info.input_size)
    return build_exit_model(backbone, info.exit_nodes[0], info.head, info.num_classes, info.input_size)


def _plain(value: Any) -> bool:
    if isinstance(value, bool | int | str) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple | list):
        return all(isinstance(v, bool | int | float | str) for v in value)
    return False


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}


def _attr_diff(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    ref_modules = dict(reference.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        ref = ref_modules.get(name)
        if ref is None:
            continue
        ref_attrs = _plain_attrs(ref)
        changed = {k: v for k, v in _plain_attrs(module).items() if k in ref_attrs and ref_attrs[k] != v}
        if changed:
            diff[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}
    return diff


def _conform(module: nn.Module, shapes: dict[str, tuple[int, ...]], attrs: dict[str, dict[str, Any]]) -> None:
    """Resize parameters/buffers of ``module`` to ``shapes`` and set ``attrs`` (see the module docstring)."""
    for key, shape in shapes.items():
        owner_name, _, leaf = key.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            continue  # reported by the strict load below
        current = getattr(owner, leaf, None)
        if not isinstance(current, torch.Tensor) or tuple(current.shape) == tuple(shape):
            continue
        fresh = torch.empty(shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, fresh, persistent=True)
    for name, values in attrs.items():
        try:
            owner = module.get_submodule(name)
        except AttributeError as exc:
            raise CompactError(f"the model description changes attributes of {name!r}, which does not exist") from exc
        for k, v in values.items():
            current = getattr(owner, k, None)
            setattr(owner, k, tuple(v) if isinstance(current, tuple) and isinstance(v, list) else v)


def _load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], info: ModelInfo, path: Path | str) -> None:
    _conform(module, {k: tuple(t.shape) for k, t in tensors.items()}, info.attrs)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CompactError(
            f"{path}: weights do not match the {info.kind} {info.arch} they describe "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    module.load_state_dict(tensors, strict=True)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output: all exits of a multi-exit network, else the single output."""
    forward_exits = getattr(model, "forward_exits", None)
    return list(forward_exits(x)) if forward_exits is not None else [model(x)]


def structure_attrs(model: nn.Module, info: ModelInfo) -> dict[str, dict[str, Any]]:
    """The plain attributes of ``model`` that differ from a fresh build of ``info`` (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        reference = build_module(info)
    return _attr_diff(model, reference)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], info: ModelInfo, source: Path | str) -> None:
    """Load ``state`` into ``module`` (built by :func:`build_module`), resizing it to the state's shapes."""
    _load_weights(module, state, info, source)


def save_model(model: nn.Module, path: str | Path, info: ModelInfo, verify: bool = True) -> ModelInfo:
    """Write ``model`` with its description ``info`` (``attrs`` and ``params`` are filled in here).

    The description must rebuild ``model``: the architecture is built from ``info``, conformed to the
    model's tensor shapes and attributes and loaded with its weights; with ``verify`` its outputs on a
    random batch must equal the model's (eval mode). The file is written to a temporary name and renamed.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        reference = build_module(info)
    info.attrs = _attr_diff(model, reference)
    info.params = sum(p.numel() for p in model.parameters())
    _load_weights(reference, state, info, path)
    if verify:
        was_training = model.training
        model.eval()
        reference.eval()
        device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
        x = torch.randn(2, *info.input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = _outputs(model, x.to(device)), _outputs(reference, x)
        model.train(was_training)
        if len(a) != len(b) or any(
            u.shape != v.shape or not torch.allclose(u.float().cpu(), v.float(), rtol=1e-4, atol=1e-5)
            for u, v in zip(a, b, strict=True)
        ):
            raise CompactError(
                f"cannot save {type(model).__name__} as a {info.kind} {info.arch}: rebuilding it from its "
                "description does not reproduce its outputs (the model was changed in a way the file format "
                "cannot describe)"
            )
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_META_KEY: info.to_json()})
    return info


def read_info(path: str | Path) -> ModelInfo:
    """The description stored in a model file, without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CompactError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise CompactError(f"{path} is not a readable compact model file ({exc})") from exc
    if _META_KEY not in meta:
        raise CompactError(f"{path} is a safetensors file without a compact model description")
    return ModelInfo.from_json(meta[_META_KEY], path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Rebuild the module stored in ``path`` (eval mode) and return it with its description."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_info(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CompactError(f"{path}: cannot read its weights ({exc}); the file is corrupt or truncated") from exc
    with torch.random.fork_rng(devices=[]):
        module = build_module(info)
    _load_weights(module, tensors, info, path)
    return module.to(device).eval(), info
