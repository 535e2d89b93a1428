"""Model registry and ``create_model``: compact's own models by name, any timm or torchvision classifier
by prefix (``timm:resnet18``, ``torchvision:mobilenet_v2``).

Every model is built without pretrained weights unless asked, with ``num_classes`` and ``in_chans``
settable, and its ``forward`` returns final logits only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from compact._registry import Registry
from compact.errors import CompactError, UnknownNameError

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
PREFIXES = ("timm", "torchvision")


def register_model(name: str) -> Callable:
    """Decorator registering a builder ``fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module``."""
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


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    if not timm.list_models(name) and not timm.list_pretrained(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:20]
        raise UnknownNameError("timm model", name, close, hint="(showing timm models with a similar name)")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _create_torchvision(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)  # classification models only
    if name not in valid:
        raise UnknownNameError("torchvision classification model", name, valid)
    if pretrained:
        model = tvm.get_model(name, weights="DEFAULT", **kwargs)
        head_changed = _reset_classifier(model, num_classes)
        if not head_changed:
            raise CompactError(f"could not find the classifier of torchvision:{name} to set num_classes")
    else:
        # aux_logits heads of inception/googlenet would make forward return a tuple in train mode
        if name in ("inception_v3", "googlenet"):
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    _replace_first_conv(model, in_chans)
    return model


def _reset_classifier(model: nn.Module, num_classes: int) -> bool:
    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None or last.out_features == num_classes:
        return last is not None
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))
    return True


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a classifier by name.

    ``name`` is one of :func:`list_models` (compact's own, e.g. ``cifar_resnet56``), ``timm:<name>`` or
    ``torchvision:<name>``. ``pretrained`` downloads weights (online users only) for timm/torchvision.
    """
    if not isinstance(name, str) or not name:
        raise CompactError(f"model name must be a non-empty string, got {name!r}")
    if num_classes <= 0:
        raise CompactError(f"num_classes must be > 0, got {num_classes}")
    if in_chans <= 0:
        raise CompactError(f"in_chans must be > 0, got {in_chans}")
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix == "timm":
            return _create_timm(rest, num_classes, in_chans, pretrained, **kwargs)
        if prefix == "torchvision":
            return _create_torchvision(rest, num_classes, in_chans, pretrained, **kwargs)
        raise CompactError(f"unknown model prefix {prefix!r} in {name!r}; valid prefixes: {', '.join(PREFIXES)}")
    if name not in MODELS:
        similar = [n for n in MODELS.names() if fnmatch.fnmatchcase(n, f"*{name}*")]
        raise UnknownNameError(
            "model",
            name,
            MODELS.names(),
            hint=("did you mean " + ", ".join(similar) + "? " if similar else "")
            + "timm and torchvision models are named timm:<name> and torchvision:<name>",
        )
    if pretrained:
        raise CompactError(f"no pretrained weights are published for {name}; train it with compact train")
    return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
