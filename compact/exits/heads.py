"""Auxiliary classifier heads, the three types of the MW-BP authors' code.

``bn-relu-gap-fc`` (their type A, the default), ``relu-gap-fc`` (type D) and ``gap-fc`` (type C). Unlike the
authors' code, the ReLU is never in-place: the feature a head reads is also the input of the next block.
A head takes its feature in the layout the network gives it: (N, C, H, W), (N, H, W, C) (Swin's stages),
(N, L, C) (transformer tokens), (N, C, L) or (N, C); it pools globally over everything but the channels.
"""

from __future__ import annotations

import torch
from torch import nn

from compact._registry import Registry
from compact.errors import CompactError

HEADS: Registry[type[nn.Module]] = Registry("head type")


#: feature layouts (see :mod:`compact.exits.layout`) and the BatchNorm that normalises their channels
_NORM = {
    "nchw": nn.BatchNorm2d,
    "nhwc": nn.BatchNorm2d,
    "ncl": nn.BatchNorm1d,
    "nlc": nn.BatchNorm1d,
    "nc": nn.BatchNorm1d,
}


def _channels_first(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` with its channels at dimension 1: (N, H, W, C) and (N, L, C) features are permuted."""
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    if layout == "nlc":
        return x.transpose(1, 2)
    return x


def _pool(x: torch.Tensor) -> torch.Tensor:
    """Global average over everything but the batch and the channels (dimension 1)."""
    return x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x


def _check_layout(layout: str) -> None:
    if layout not in _NORM:
        raise CompactError(f"unknown feature layout {layout!r}; heads take: {', '.join(_NORM)}")


class _Head(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, layout: str = "nchw") -> None:
        super().__init__()
        _check_layout(layout)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.layout = layout
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.zeros_(self.fc.bias)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_first(x, self.layout)


@HEADS.register("bn-relu-gap-fc")
class BnReluGapFc(_Head):
    """BatchNorm -> ReLU -> global average pooling -> fully connected (authors' default)."""

    def __init__(self, in_channels: int, num_classes: int, layout: str = "nchw") -> None:
        super().__init__(in_channels, num_classes, layout)
        self.bn = _NORM[layout](in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(torch.relu(self.bn(self._features(x)))))


@HEADS.register("relu-gap-fc")
class ReluGapFc(_Head):
    """ReLU -> global average pooling -> fully connected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(torch.relu(self._features(x))))


@HEADS.register("gap-fc")
class GapFc(_Head):
    """Global average pooling -> fully connected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(self._features(x)))


@HEADS.register("embedding")
class EmbeddingHead(nn.Module):
    """For embedding tasks (faces): BatchNorm -> PReLU -> global average pooling -> linear to a 128-d
    embedding -> BatchNorm, then a cosine classifier (train with :class:`compact.face.margin.MarginLoss`).
    Global average pooling stands in for MobileFaceNet's GDConv, whose kernel would depend on the exit's
    feature-map size."""

    EMBEDDING = 128

    def __init__(self, in_channels: int, num_classes: int, layout: str = "nchw") -> None:
        super().__init__()
        from compact.face.margin import CosineClassifier

        _check_layout(layout)
        self.in_channels, self.num_classes, self.layout = in_channels, num_classes, layout
        self.bn = _NORM[layout](in_channels)
        self.act = nn.PReLU(in_channels)
        self.fc = nn.Linear(in_channels, self.EMBEDDING, bias=False)
        self.bn_embedding = nn.BatchNorm1d(self.EMBEDDING)
        self.classifier = CosineClassifier(self.EMBEDDING, num_classes)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_embedding(self.fc(_pool(self.act(self.bn(_channels_first(x, self.layout))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))


def create_head(head_type: str, in_channels: int, num_classes: int, layout: str = "nchw") -> nn.Module:
    """Build a head of a registered type (see ``HEADS.names()``) for features of ``layout`` (``nchw``,
    ``nhwc``, ``nlc``, ``ncl`` or ``nc``; see :func:`compact.exits.layout.feature_layouts`)."""
    return HEADS.get(head_type)(in_channels, num_classes, layout)
