"""One exit of a multi-exit network as a standalone model: the backbone cut after the exit's node, plus
the exit's head ("multiple compact models at once").

The cut backbone is an FX graph module that keeps only the layers the exit needs, so the standalone model
is physically smaller: its parameters are those of layers ``0..L_i`` and head ``i``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from compact.errors import CompactError
from compact.exits import _fx
from compact.exits.heads import create_head
from compact.exits.layout import channels, feature_layouts


class ExitModel(nn.Module):
    """``head(trunk(x)[node])``: logits of one exit; ``trunk`` computes the backbone up to ``node`` only.

    ``backbone_attrs`` keeps the plain attributes that the backbone's modules had when the trunk was cut
    (module name -> attributes): a layer the tracer went through lives on in the trunk as a bare container
    of its weights, and its attributes (a LayerNorm's ``normalized_shape``) only as constants in the graph's
    code, so a model file could not otherwise say that a pruned one changed them.
    """

    def __init__(
        self, trunk: nn.Module, node: str, head: nn.Module, backbone_attrs: dict[str, dict] | None = None
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.node = node
        self.head = head
        self.backbone_attrs = dict(backbone_attrs or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)[self.node])


def cut_backbone(backbone: nn.Module, node: str) -> nn.Module:
    """The part of ``backbone`` up to ``node``, as a module returning ``{node: feature}``; shares parameters."""
    return _fx.feature_extractor(backbone, [node])


def build_exit_model(
    backbone: nn.Module, node: str, head_type: str, num_classes: int, input_size: Sequence[int]
) -> ExitModel:
    """A fresh exit model on ``backbone`` (whose layers it shares) with a new head of ``head_type``."""
    trunk = cut_backbone(backbone, node)
    was_training = trunk.training
    trunk.eval()
    try:
        feats, layouts = feature_layouts(trunk, input_size, [node])
    finally:
        trunk.train(was_training)
    head = create_head(head_type, channels(feats[node], layouts[node]), num_classes, layouts[node])
    return ExitModel(trunk, node, head, _used_attrs(backbone, trunk))


def _used_attrs(backbone: nn.Module, trunk: nn.Module) -> dict[str, dict]:
    """The plain attributes of the backbone's modules that ``trunk`` uses (see :class:`ExitModel`)."""
    from compact.modelfile import plain_attrs

    used = {name for name, _ in trunk.named_modules() if name}
    return {name: plain_attrs(m) for name, m in backbone.named_modules() if name in used}


def extract_exit(net: nn.Module, output: int) -> nn.Module:
    """A deep copy of output ``output`` of a :class:`MultiExitNet`: an :class:`ExitModel` for an auxiliary
    exit, the backbone itself (without heads) for the final output."""
    i = net._check_output(output)
    if i == net.num_outputs - 1:
        return copy.deepcopy(net.backbone)
    node = net.exit_nodes[i]
    trunk = cut_backbone(copy.deepcopy(net.backbone), node)
    model = ExitModel(trunk, node, copy.deepcopy(net.heads[i]), _used_attrs(net.backbone, trunk))
    model.train(net.training)
    return model


def exit_index(net: nn.Module, which: str | int) -> int:
    """Parse ``which`` (an output index, negative counts from the end, or ``"final"``) for ``net``."""
    if isinstance(which, str):
        if which == "final":
            return net.num_outputs - 1
        try:
            which = int(which)
        except ValueError:
            raise CompactError(
                f"exit {which!r} is not an output index; valid: 0..{net.num_outputs - 1} or 'final'"
            ) from None
    return net._check_output(which)
