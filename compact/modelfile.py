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
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compact._atomic import atomic_path
from compact._numbers import MAX_SEED, is_count, is_finite_list, is_finite_number
from compact._version import __version__
from compact.errors import CompactError

FORMAT = "compact.model"
FORMAT_VERSION = 1
KINDS = ("full", "multi-exit", "exit")
_META_KEY = "compact"
#: buffers that torch.fx makes of tensors a traced forward creates (a cut trunk's attention masks, position
#: indices): rebuilt by tracing the architecture, numbered by how often the model was traced before, so never
#: stored and never read from a file
_TRACE_CONSTANT = re.compile(r"(^|\.)_tensor_constant\d+$")


def _stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not _TRACE_CONSTANT.search(k)}


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
        _check_info(self)

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "compact_version": __version__, **asdict(self)}
        )

    @classmethod
    def from_json(cls, text: str, path: Path | str = "<model>") -> ModelInfo:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CompactError(f"{path}: the model description is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CompactError(f"{path} is not a compact model file (no {FORMAT!r} description)")
        version = data.get("format_version")
        if not is_count(version) or version != FORMAT_VERSION:  # True == 1 must not pass
            raise CompactError(
                f"{path} has model-file format version {version}; this compact ({__version__}) reads version "
                f"{FORMAT_VERSION}"
            )
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("arch", "num_classes", "in_chans", "input_size") if k not in fields]
        if missing:
            raise CompactError(f"{path}: incomplete model description (no {', '.join(missing)})")
        try:
            return cls(**fields)
        except CompactError as exc:
            raise CompactError(f"{path}: {exc}") from None


#: largest channel/feature count an attribute of a model file may set
MAX_DIM = 1 << 20
_NAME_LIMIT = 300


def _fail(what: str, value: Any) -> None:
    text = repr(value)
    raise CompactError(f"bad model description: {what}, got {text if len(text) <= 60 else text[:57] + '...'}")


def _is_str(value: Any, limit: int = _NAME_LIMIT) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_info(info: ModelInfo) -> None:
    """Types and bounds of every field: a description comes from a file, which may be crafted."""
    from compact.models.arguments import MAX_SIDE, check_kwargs_mapping, check_sizes

    if not _is_str(info.arch):
        _fail("arch must be a model name", info.arch)
    check_sizes(info.num_classes, info.in_chans)
    size = info.input_size
    if not isinstance(size, list | tuple) or len(size) != 3 or not all(_is_int(s) for s in size):
        _fail("input_size must be [C, H, W] (integers)", size)
    if size[0] != info.in_chans or not all(1 <= s <= MAX_SIDE for s in size[1:]):
        _fail(f"input_size must be [in_chans, H, W] with H, W in 1..{MAX_SIDE}", size)
    info.input_size = list(size)
    if info.kind not in KINDS:
        raise CompactError(f"unknown model kind {info.kind!r}; valid: {', '.join(KINDS)}")
    if not isinstance(info.exit_nodes, list) or not all(_is_str(n) for n in info.exit_nodes):
        _fail("exit_nodes must be a list of node names", info.exit_nodes)
    if info.kind == "exit" and len(info.exit_nodes) != 1:
        raise CompactError("an exit model names exactly one exit node")
    if info.head is not None and not _is_str(info.head, 64):
        _fail("head must be a head type name", info.head)
    if info.kind != "full" and not info.head:
        raise CompactError(f"a {info.kind} model needs a head type")
    info.model_kwargs = check_kwargs_mapping(info.model_kwargs, "bad model description")
    if not isinstance(info.attrs, dict) or not all(
        isinstance(k, str) and len(k) <= _NAME_LIMIT and isinstance(v, dict) and all(_is_str(a, 64) for a in v)
        for k, v in info.attrs.items()
    ):
        _fail("attrs must map module names to {attribute: value}", info.attrs)
    for key, positive in (("mean", False), ("std", True)):
        v = getattr(info, key)
        if v is not None and not is_finite_list(v, info.in_chans, positive):
            _fail(f"{key} must be a list of {info.in_chans} finite numbers" + (" > 0" if positive else ""), v)
    if info.classes is not None and (
        not isinstance(info.classes, list)
        or len(info.classes) != info.num_classes
        or not all(isinstance(c, str) and len(c) <= _NAME_LIMIT for c in info.classes)
    ):
        _fail(f"classes must be a list of {info.num_classes} names", info.classes)
    if info.dataset is not None and not _is_str(info.dataset, 4096):
        _fail("dataset must be a dataset name", info.dataset)
    if info.params is not None and not _is_int(info.params):
        _fail("params must be an integer", info.params)
    if not isinstance(info.source, dict):
        _fail("source must be a mapping", info.source)
    for key in ("seed", "output", "depth", "epochs"):
        if key in info.source and not _is_int(info.source[key]):
            _fail(f"source.{key} must be an integer", info.source[key])
    if not 0 <= info.source.get("seed", 0) <= MAX_SEED:
        _fail(f"source.seed must lie in 0..{MAX_SEED}", info.source["seed"])
    subset = info.source.get("subset")
    if subset is not None and not (_is_int(subset) and subset > 0):
        _fail("source.subset must be null or a positive number of images", subset)


def training_settings(info: ModelInfo) -> dict[str, Any]:
    """The training options that work continuing from a model file inherits (probe, prune, fine-tune): its
    architecture and arguments, classes, data set and seed, and the input it takes (a network trained on
    Fashion-MNIST resized to 32 px is fed 32 px images again)."""
    out: dict[str, Any] = {
        "model": info.arch,
        "model_kwargs": info.model_kwargs,
        "num_classes": info.num_classes,
        "data": info.dataset or "fashion-mnist",
        "seed": int(info.source.get("seed", 0)) if _is_int(info.source.get("seed", 0)) else 0,
    }
    c, h, w = info.input_size
    if h == w:
        out["image_size"] = h
    if c in (1, 3):
        out["in_chans"] = c
    return out


def build_module(
    info: ModelInfo, shapes: dict[str, tuple[int, ...]] | None = None, source: Path | str = "the model file"
) -> nn.Module:
    """The architecture ``info`` describes, freshly initialised: at its original (unpruned) sizes, or, given
    the stored tensors' ``shapes``, with the backbone resized to them and ``info.attrs`` set *before* exits
    are traced onto it (a traced graph keeps the attribute values it saw, e.g. a LayerNorm's
    ``normalized_shape``, so resizing afterwards would leave the graph computing at the old sizes).
    ``source`` names the file in the error raised when the resized layers contradict their attributes."""
    from compact.exits import attach_exits
    from compact.exits.standalone import build_exit_model
    from compact.models import create_model

    backbone = create_model(info.arch, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_kwargs)
    if info.kind == "full":
        return backbone
    if shapes is not None:
        prefix = "backbone." if info.kind == "multi-exit" else "trunk."
        _conform(
            backbone,
            {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)},
            {k[len(prefix) :]: v for k, v in info.attrs.items() if k.startswith(prefix)},
        )
        _check_layer_shapes(backbone, source, prefix)  # exits are traced by running it: sizes must agree first
    if info.kind == "multi-exit":
        placement = {"nodes": info.exit_nodes} if info.exit_nodes else {"num_outputs": 1}
        # checked when the exits were first attached; the file's weights are checked on saving
        return attach_exits(backbone, **placement, head=info.head, input_size=info.input_size, check=False)
    return build_exit_model(backbone, info.exit_nodes[0], info.head, info.num_classes, info.input_size)


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in _stored(tensors).items()}


def _plain(value: Any) -> bool:
    if isinstance(value, bool | int | str) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple | list):
        return all(isinstance(v, bool | int | float | str) for v in value)
    return False


def plain_attrs(module: nn.Module) -> dict[str, Any]:
    """The plain (numbers, strings, flat tuples) public attributes of ``module``: what a model file may set."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}


def _attr_diff(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    ref_modules = dict(reference.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        ref = ref_modules.get(name)
        if ref is None:
            continue
        ref_attrs = plain_attrs(ref)
        changed = {k: v for k, v in plain_attrs(module).items() if k in ref_attrs and ref_attrs[k] != v}
        if changed:
            diff[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}
    # an exit model's trunk keeps only the weights of layers the tracer went through: their attributes come
    # from the backbone they were cut from (compact.exits.standalone.ExitModel)
    mine, ref_backbone = getattr(model, "backbone_attrs", None), getattr(reference, "backbone_attrs", None)
    if isinstance(mine, dict) and isinstance(ref_backbone, dict):
        for name, attrs in mine.items():
            ref_attrs = ref_backbone.get(name, {})
            changed = {k: v for k, v in attrs.items() if k in ref_attrs and ref_attrs[k] != v}
            if changed:
                entry = diff.setdefault(f"trunk.{name}", {})
                entry.update({k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()})
    return diff


def _conform(
    module: nn.Module, shapes: dict[str, tuple[int, ...]], attrs: dict[str, dict[str, Any]], traced: bool = False
) -> None:
    """Resize parameters/buffers of ``module`` to ``shapes`` and set ``attrs`` (see the module docstring).

    ``traced``: ``module`` is an exit model whose backbone :func:`build_module` already conformed before
    cutting it; an attribute its trunk's bare containers lack was checked and set there, and is skipped."""
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
            if traced and name.startswith("trunk.") and k not in vars(owner):
                continue
            setattr(owner, k, _checked_attr(owner, name, k, v))


def _checked_attr(owner: nn.Module, name: str, key: str, value: Any) -> Any:
    """``value`` for the structural attribute ``key`` of module ``name``, refused unless the attribute is a
    plain (non-private) one the freshly built module already has and ``value`` has its type and sane bounds:
    a file may resize a layer, never replace a method, a hook or a class."""
    where = f"the model description sets {name or '(model)'}.{key}"
    current = vars(owner).get(key, _MISSING)
    if key.startswith("_") or key == "training" or current is _MISSING or not _plain(current):
        raise CompactError(f"{where}, which is not a plain structural attribute of {type(owner).__name__}")
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = _is_int(value) and 0 <= value <= MAX_DIM
    elif isinstance(current, float):
        ok = is_finite_number(value) and abs(value) <= MAX_DIM
    elif isinstance(current, str):
        ok = isinstance(value, str) and len(value) <= 64 and value.replace("_", "").replace("-", "").isalnum()
    elif isinstance(current, tuple | list):
        ok = (
            isinstance(value, list | tuple)
            and len(value) == len(current)
            and all(_is_int(v) and 0 <= v <= MAX_DIM for v in value)
        )
        value = tuple(value) if isinstance(current, tuple) else list(value)
    else:  # None: it stays None (a layer's optional part that a file cannot add)
        ok = value is None
    if not ok:
        raise CompactError(f"{where} to {value!r}, which is not a valid value for {current!r}"[:300])
    return value


_MISSING = object()


#: layers whose size attributes fix the shapes of every tensor they hold
_SIZED_LAYERS = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
)


def _expected_shapes(m: nn.Module) -> dict[str, tuple[int, ...]] | None:
    """The shapes that the size attributes of a convolution, linear, normalisation or embedding layer give its
    own tensors (None when its attributes are themselves inconsistent)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.groups < 1 or m.in_channels % m.groups or m.out_channels % m.groups:
            return None
        k = tuple(m.kernel_size)
        w = (
            (m.in_channels, m.out_channels // m.groups, *k)
            if m.transposed
            else (m.out_channels, m.in_channels // m.groups, *k)
        )
        return {"weight": w, "bias": (m.out_channels,)}
    if isinstance(m, nn.Linear):
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if isinstance(m, nn.modules.batchnorm._NormBase):
        n = (m.num_features,)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n}
    if isinstance(m, nn.LayerNorm):
        return {"weight": tuple(m.normalized_shape), "bias": tuple(m.normalized_shape)}
    if isinstance(m, nn.GroupNorm):
        if m.num_groups < 1 or m.num_channels % m.num_groups:
            return None
        return {"weight": (m.num_channels,), "bias": (m.num_channels,)}
    if isinstance(m, nn.Embedding):
        return {"weight": (m.num_embeddings, m.embedding_dim)}
    return None


def _check_layer_shapes(module: nn.Module, path: Path | str, prefix: str = "") -> None:
    """The size attributes of convolutions, linear, normalisation and embedding layers agree with every tensor
    they hold (a file cannot describe a layer that its tensors contradict); layers are named ``prefix`` +
    their name in ``module``, as the file names them."""
    for name, m in module.named_modules():
        if not isinstance(m, _SIZED_LAYERS):
            continue
        want = _expected_shapes(m)
        ok = want is not None and all(
            getattr(m, key, None) is None or tuple(getattr(m, key).shape) == shape for key, shape in want.items()
        )
        if not ok:
            raise CompactError(
                f"{path}: the sizes of layer {prefix}{name} contradict its weights (corrupt or crafted file)"
            )


def _check_values(tensors: dict[str, torch.Tensor], current: dict[str, torch.Tensor], path: Path | str) -> None:
    """Every stored tensor has the kind of values its module holds (floating point where the module has
    floating point, integers where integers, never complex) and no NaN or infinity: compact never writes a
    file with non-finite weights, so one that has them is corrupt or crafted. ``current``: the module's state."""
    for key, t in tensors.items():
        if t.is_complex() or (key in current and t.is_floating_point() != current[key].is_floating_point()):
            want = current[key].dtype if key in current else "a real dtype"
            raise CompactError(
                f"{path}: tensor {key} holds {t.dtype} values where the model holds {want} (corrupt or crafted file)"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CompactError(f"{path}: tensor {key} holds NaN or infinite values (corrupt or crafted file)")


def _load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], info: ModelInfo, path: Path | str) -> None:
    tensors = _stored(tensors)
    _conform(module, {k: tuple(t.shape) for k, t in tensors.items()}, info.attrs, traced=info.kind == "exit")
    current = module.state_dict()
    expected = set(_stored(current))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CompactError(
            f"{path}: weights do not match the {info.kind} {info.arch} they describe "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    _check_values(tensors, current, path)
    # a safetensors file keeps no state-dict metadata; modules that read their version from it (torchvision's
    # MNASNet refuses to load without one) get the versions of the code that rebuilt them
    tensors = OrderedDict(tensors)
    tensors._metadata = getattr(current, "_metadata", None)  # type: ignore[attr-defined]
    try:
        module.load_state_dict(tensors, strict=False)  # every stored key was checked above; constants stay
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CompactError(f"{path}: weights do not fit the {info.kind} {info.arch} they describe ({first})") from None
    _check_layer_shapes(module, path)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output: all exits of a multi-exit network, else the single output."""
    forward_exits = getattr(model, "forward_exits", None)
    return list(forward_exits(x)) if forward_exits is not None else [model(x)]


def structure_attrs(model: nn.Module, info: ModelInfo) -> dict[str, dict[str, Any]]:
    """The plain attributes of ``model`` that differ from a fresh build of ``info`` (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        reference = build_module(info)
    return _attr_diff(model, reference)


def rebuild(info: ModelInfo, state: dict[str, torch.Tensor], source: Path | str) -> nn.Module:
    """The module ``info`` describes with the weights ``state`` (of a model file or a checkpoint) loaded;
    the caller's random state is left alone.

    The module is run once on a zero batch of ``info.input_size`` (eval mode, no gradients): a description
    and tensors that agree layer by layer can still fail to compose (a kernel larger than the feature map
    it meets, a pruned layer whose successor was not resized), and that must be refused here with the
    file's name, not later as an internal error in whatever command loaded it."""
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CompactError(f"{source}: the stored weights are not a mapping of tensors")
    try:
        with torch.random.fork_rng(devices=[]):
            module = build_module(info, _shapes(state), source)
        _load_weights(module, state, info, source)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            _outputs(module, torch.zeros(1, *info.input_size))
        module.train(was_training)
    except CompactError as exc:  # e.g. tracing the exits found that the layers do not fit together
        if str(source) in str(exc):
            raise
        raise CompactError(f"{source}: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # torch's own shape and type errors: the file's parts do not compose
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CompactError(
            f"{source}: the {info.kind} {info.arch} it describes does not run on its input size "
            f"{info.input_size} ({type(exc).__name__}: {first}); the file is corrupt or crafted"
        ) from None
    return module


def save_model(model: nn.Module, path: str | Path, info: ModelInfo, verify: bool = True) -> ModelInfo:
    """Write ``model`` with its description ``info`` (``attrs`` and ``params`` are filled in here).

    The description must rebuild ``model``: the architecture is built from ``info``, conformed to the
    model's tensor shapes and attributes and loaded with its weights; with ``verify`` its outputs on a
    random batch must equal the model's (eval mode). The file is written to a temporary name and renamed.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in _stored(model.state_dict()).items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CompactError(
            f"cannot save {type(model).__name__}: it has non-finite weights (NaN or infinite) in {len(bad)} "
            f"tensor(s), e.g. {bad[0]}; the training diverged"
        )
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        info.attrs = _attr_diff(model, build_module(info))
        reference = build_module(info, _shapes(state))
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
        raise CompactError(f"model file {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for bad headers
        if path.suffix.lower() == ".onnx":
            raise CompactError(
                f"{path} is an ONNX graph, not a compact model file: give the .safetensors file or run folder it "
                "was exported from (compact export writes both)"
            ) from exc
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
    return rebuild(info, tensors, path).to(device).eval(), info
