"""Model registry and ``create_model``: compact's own models by name, any timm or torchvision classifier
by prefix (``timm:resnet18``, ``torchvision:mobilenet_v2``).

Every model is built without pretrained weights (compact never downloads or unpickles weights; to start
from published weights, load a state dict into the built model yourself), with ``num_classes`` and
``in_chans`` settable, and its ``forward`` returns final logits only. Extra constructor arguments pass an
allow-list (:mod:`compact.models.arguments`), since they may come from files.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from compact._registry import Registry
from compact.errors import CompactError, UnknownNameError
from compact.models.arguments import TIMM_ARGS, TORCHVISION_ARGS, Arg, check_model_args, check_sizes

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
PREFIXES = ("timm", "torchvision")
#: registered model name -> the constructor arguments it accepts besides num_classes and in_chans
MODEL_ARGS: dict[str, dict[str, Arg]] = {}


def register_model(name: str, args: dict[str, Arg] | None = None) -> Callable:
    """Decorator registering a builder ``fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module``.

    ``args`` declares the extra keyword arguments the builder accepts (name -> :class:`Arg`); any other
    argument is refused before the builder is called.
    """
    MODEL_ARGS[name] = dict(args or {})
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """compact's own registered model names matching ``pattern`` (timm/torchvision names are not listed)."""
    return MODELS.names(pattern)


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first Conv2d for one taking ``in_chans`` channels (same kernel, stride, padding, groups)."""
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_chans:
                    return
                if child.groups != 1:
                    raise CompactError(
                        f"cannot change the input channels of {type(model).__name__}: its first convolution "
                        f"{parent_name + '.' if parent_name else ''}{child_name} is grouped"
                    )
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    bias=child.bias is not None,
                    padding_mode=child.padding_mode,
                )
                setattr(parent, child_name, new)
                return
    raise CompactError(f"{type(model).__name__} has no Conv2d whose input channels could be set to {in_chans}")


def _create_timm(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    import timm

    _check_timm_name(name)
    kwargs = check_model_args("timm", TIMM_ARGS, kwargs, f"timm:{name}")
    return _construct(
        f"timm:{name}",
        lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs),
    )


def _check_timm_name(name: str) -> None:
    import timm

    # an exact architecture name (an optional ".tag" names pretrained weights): no wildcards, and none of
    # timm's "hf-hub:" / "local-dir:" prefixes, which read a configuration from elsewhere
    arch = name.split(".", 1)[0]
    if not arch or arch not in set(timm.list_models()) or ":" in name or "*" in name or "?" in name:
        close = timm.list_models(f"*{arch[:6]}*")[:20] if arch.isidentifier() else []
        if not close:
            raise CompactError(
                f"unknown timm model {name!r}: give an architecture name as timm.list_models() lists it "
                "(e.g. timm:resnet18), optionally with a .tag; no wildcards or hub/local prefixes"
            )
        raise UnknownNameError("timm model", name, close, hint="(showing timm models with a similar name)")


def _construct(model: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Run a library constructor, turning its complaints about arguments and sizes into one clear error."""
    try:
        return build()
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        if isinstance(exc, CompactError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompactError(f"cannot build {model} with these arguments: {first}") from exc


def _create_torchvision(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    _check_torchvision_name(name)
    kwargs = check_model_args("torchvision", TORCHVISION_ARGS, kwargs, f"torchvision:{name}")
    # aux_logits heads of inception/googlenet would make forward return a tuple in train mode
    if name in ("inception_v3", "googlenet"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    # weights=None always: torchvision would download the named weights
    model = _construct(
        f"torchvision:{name}", lambda: tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    )
    _replace_first_conv(model, in_chans)
    return model


def _check_torchvision_name(name: str) -> None:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)  # classification models only
    if name not in valid:
        raise UnknownNameError("torchvision classification model", name, valid)


def check_model_spec(name: Any, kwargs: Any = None) -> None:
    """Check a model name and its extra arguments as :func:`create_model` would, without building it (to
    validate a recipe or configuration before hours of work)."""
    if not isinstance(name, str) or not name:
        raise CompactError(f"model name must be a non-empty string, got {name!r}")
    kwargs = {} if kwargs is None else kwargs
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "timm":
        _check_timm_name(rest)
        check_model_args("timm", TIMM_ARGS, kwargs, name)
    elif sep and prefix == "torchvision":
        _check_torchvision_name(rest)
        check_model_args("torchvision", TORCHVISION_ARGS, kwargs, name)
    elif sep:
        raise CompactError(f"unknown model prefix {prefix!r} in {name!r}; valid prefixes: {', '.join(PREFIXES)}")
    else:
        _check_own_name(name)
        check_model_args(name, MODEL_ARGS.get(name, {}), kwargs, name)


def _check_own_name(name: str) -> None:
    if name not in MODELS:
        similar = [n for n in MODELS.names() if fnmatch.fnmatchcase(n, f"*{name}*")]
        raise UnknownNameError(
            "model",
            name,
            MODELS.names(),
            hint=("did you mean " + ", ".join(similar) + "? " if similar else "")
            + "timm and torchvision models are named timm:<name> and torchvision:<name>",
        )


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build a classifier by name, freshly initialised (never with downloaded weights).

    ``name`` is one of :func:`list_models` (compact's own, e.g. ``cifar_resnet56``), ``timm:<name>`` or
    ``torchvision:<name>``. ``kwargs`` must pass the family's allow-list (:mod:`compact.models.arguments`):
    ``pretrained``, ``weights``, ``pretrained_cfg*``, ``checkpoint_path`` and layer names are refused.
    """
    if not isinstance(name, str) or not name:
        raise CompactError(f"model name must be a non-empty string, got {name!r}")
    check_sizes(num_classes, in_chans)
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix == "timm":
            return _create_timm(rest, num_classes, in_chans, **kwargs)
        if prefix == "torchvision":
            return _create_torchvision(rest, num_classes, in_chans, **kwargs)
        raise CompactError(f"unknown model prefix {prefix!r} in {name!r}; valid prefixes: {', '.join(PREFIXES)}")
    _check_own_name(name)
    kwargs = check_model_args(name, MODEL_ARGS.get(name, {}), kwargs, name)
    return _construct(name, lambda: MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs))
