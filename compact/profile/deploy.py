"""The inference form of re-parameterizable networks, which is what their published costs describe.

MobileOne, RepVGG, FastViT, RepViT, LeViT, TinyViT and other timm families train with parallel branches or
separate convolution and BatchNorm layers that fold into one layer for inference (their ``reparameterize``,
``fuse`` or ``switch_to_deploy`` methods). Profiled as trained, such a network counts the branches it will
never run: MobileOne-S0 has about four times the parameters of its deployed form (without its classifier).
:func:`inference_form` folds a copy of the network (timm's ``reparameterize_model``), checks that the
folded copy computes the same outputs, and returns it for counting, export and timing.
:func:`deployed_macs` is the count that pruning aims at, so that a pruning target means the deployed cost.

An exit model runs a traced (``torch.fx``) cut of its backbone whose graph calls the branches one by one,
so it cannot be folded after the fact: :func:`fold_exit` loads the trunk's weights into an eager backbone of
the same architecture, folds that and cuts it again at the exit's node.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

#: the methods timm's re-parameterizable layers provide
METHODS = ("reparameterize", "fuse", "switch_to_deploy")
#: the largest relative difference between the folded and the trained form's outputs that counts as equal
MAX_FOLD_DIFF = 1e-3


def _relative_diff(folded: torch.Tensor, trained: torch.Tensor) -> float:
    """max |folded - trained| / max(1, max |trained|)."""
    return float((folded - trained).abs().max() / trained.abs().max().clamp(min=1.0))


def _note(layers: list[str], trained: nn.Module, diff: float) -> dict[str, Any]:
    """What a profile or manifest records about a folded network."""
    return {
        "folded_layers": len(layers),
        "params_as_trained": sum(p.numel() for p in trained.parameters()),
        "max_relative_diff": diff,
        "how": "timm reparameterize_model (branches and BatchNorm folded into single layers, as deployed)",
    }


def foldable_layers(module: nn.Module) -> list[str]:
    """Names of the layers under ``module`` that have an inference form."""
    return [name for name, m in module.named_modules() if name and any(hasattr(m, a) for a in METHODS)]


def fold_exit(exit_model: nn.Module, backbone: nn.Module) -> nn.Module:
    """The exit model ``exit_model`` (an :class:`~compact.exits.standalone.ExitModel`) rebuilt on the folded
    form of ``backbone``, an eager network of its architecture and sizes, into which the trunk's weights are
    loaded first (``backbone`` is changed; layers past the exit keep whatever weights they had)."""
    from timm.utils.model import reparameterize_model

    from compact.exits.standalone import ExitModel, cut_backbone

    state = exit_model.trunk.state_dict()
    state._metadata = getattr(backbone.state_dict(), "_metadata", None)  # the trunk's graph has other module paths
    unexpected = backbone.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the trunk has weights the backbone lacks: {unexpected[:3]}")
    folded = reparameterize_model(backbone.eval(), inplace=True)
    return ExitModel(cut_backbone(folded, exit_model.node), exit_model.node, copy.deepcopy(exit_model.head)).eval()


@torch.no_grad()
def inference_form(
    module: nn.Module, input_size: Sequence[int], exit_backbone: Callable[[], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any] | None, list[str]]:
    """``(module to profile, note, warnings)``: a folded copy of ``module`` with a note on what was folded
    when it has foldable layers and the copy computes the same outputs; else ``module`` itself, with a
    warning when it has foldable layers that could not be folded. An exit model is folded through
    :func:`fold_exit` with the eager backbone that ``exit_backbone()`` makes."""
    from timm.utils.model import reparameterize_model

    try:
        backbone = exit_backbone() if exit_backbone is not None else None
    except Exception as exc:  # e.g. a pruned trunk whose sizes a fresh backbone cannot take
        return module, None, [f"its backbone could not be rebuilt to fold it for inference ({type(exc).__name__})"]
    layers = foldable_layers(module if backbone is None else backbone)
    if backbone is not None:  # the layers the exit's trunk runs
        used = [name for name, _ in module.trunk.named_modules() if name]
        layers = [n for n in layers if any(u == n or u.startswith(n + ".") for u in used)]
    if not layers:
        return module, None, []
    what = f"{len(layers)} layer(s) with an inference form (e.g. {layers[0]})"
    if backbone is None and any(isinstance(m, torch.fx.GraphModule) for m in module.modules()):
        return (
            module,
            None,
            [
                f"{what} sit in a traced exit, which cannot be folded: params, MACs and latency are those of the "
                "training-time form, above the deployed network's"
            ],
        )
    module = module.eval()
    try:
        folded = reparameterize_model(module).eval() if backbone is None else fold_exit(module, backbone)
        x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
        diff = _relative_diff(folded(x), module(x))
    except Exception as exc:  # a family whose folding fails on this network: measure it as it is
        return module, None, [f"{what}: folding them failed ({type(exc).__name__}); profiled as trained"]
    if not diff <= MAX_FOLD_DIFF:
        return (
            module,
            None,
            [
                f"{what}: the folded network differs from the trained one by {diff:.1e} (limit {MAX_FOLD_DIFF}); "
                "profiled as trained"
            ],
        )
    return folded, _note(layers, module, diff), []


@torch.no_grad()
def fold_network(net: nn.Module, input_size: Sequence[int]) -> tuple[nn.Module, dict[str, Any] | None, list[str]]:
    """``(network, note, warnings)`` for a :class:`~compact.exits.MultiExitNet` ``net``: a copy whose backbone
    is folded for inference, with the same exits and heads, when it has foldable layers and every output of
    the copy equals ``net``'s; else ``net`` itself (with a warning when folding failed)."""
    from timm.utils.model import reparameterize_model

    from compact.exits import attach_exits

    layers = foldable_layers(net.backbone)
    if not layers:
        return net, None, []
    what = f"{len(layers)} layer(s) with an inference form (e.g. {layers[0]})"
    net = net.eval()
    try:
        backbone = reparameterize_model(net.backbone).eval()
        folded = attach_exits(backbone, nodes=list(net.exit_nodes), head=net.head_type, input_size=input_size,
                              check=False)  # fmt: skip
        folded.heads.load_state_dict(net.heads.state_dict())
        folded.eval()
        x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
        diff = max(_relative_diff(a, b) for a, b in zip(folded.forward_exits(x), net.forward_exits(x), strict=True))
    except Exception as exc:  # a family whose folding fails on this network: keep it as it is
        return net, None, [f"{what}: folding them failed ({type(exc).__name__}); kept as trained"]
    if not diff <= MAX_FOLD_DIFF:
        return net, None, [f"{what}: the folded network differs by {diff:.1e} (limit {MAX_FOLD_DIFF}); kept as trained"]
    return folded, _note(layers, net, diff), []


def as_deployed(module: nn.Module, input_size: Sequence[int]) -> nn.Module:
    """``module`` as it runs once deployed: its folded copy (:func:`inference_form`) when it has foldable
    layers that fold to the same outputs, else ``module`` itself (a network that cannot be folded runs as
    trained). ``module``'s train/eval mode is kept."""
    if not foldable_layers(module):
        return module
    was_training = module.training
    try:
        return inference_form(module, input_size)[0]
    finally:
        module.train(was_training)


def deployed_macs(module: nn.Module, input_size: Sequence[int]) -> int:
    """Convolution and linear MACs of ``module`` as deployed (:func:`as_deployed`): the cost that pruning
    targets aim at, so that a re-parameterizable network is not pruned to a count of branches it never runs."""
    from compact.profile.counting import conv_linear_macs

    return conv_linear_macs(as_deployed(module, input_size), input_size)
