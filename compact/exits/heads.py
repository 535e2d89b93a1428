"""Auxiliary classifier heads, the three types of the MW-BP authors' code.

``bn-relu-gap-fc`` (their type A, the default), ``relu-gap-fc`` (type D) and ``gap-fc`` (type C). Unlike the
authors' code, the ReLU is never in-place: the feature a head reads is also the input of the next block.
Features may be 4-D (N, C, H, W; pooled by global average) or 2-D (N, C; used as they are).
"""

from __future__ import annotations

import torch
from torch import nn

from compact._registry import Registry
from compact.errors import CompactError

HEADS: Registry[type[nn.Module]] = Registry("head type")


def _pool(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 2:
        return x
    raise CompactError(f"exit heads take 4-D (N,C,H,W) or 2-D (N,C) features, got shape {tuple(x.shape)}")


class _Head(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, feature_dim: int = 4) -> None:
        super().__init__()
        if feature_dim not in (2, 4):
            raise CompactError(f"exit heads take 4-D or 2-D features, got {feature_dim}-D")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.zeros_(self.fc.bias)


@HEADS.register("bn-relu-gap-fc")
class BnReluGapFc(_Head):
    """BatchNorm -> ReLU -> global average pooling -> fully connected (authors' default)."""

    def __init__(self, in_channels: int, num_classes: int, feature_dim: int = 4) -> None:
        super().__init__(in_channels, num_classes, feature_dim)
        self.bn = nn.BatchNorm2d(in_channels) if feature_dim == 4 else nn.BatchNorm1d(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(torch.relu(self.bn(x))))


@HEADS.register("relu-gap-fc")
class ReluGapFc(_Head):
    """ReLU -> global average pooling -> fully connected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(torch.relu(x)))


@HEADS.register("gap-fc")
class GapFc(_Head):
    """Global average pooling -> fully connected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(x))


@HEADS.register("embedding")
class EmbeddingHead(nn.Module):
    """For embedding tasks (faces): BatchNorm -> PReLU -> global average pooling -> linear to a 128-d
    embedding -> BatchNorm, then a cosine classifier (train with :class:`compact.face.margin.MarginLoss`).
    Global average pooling stands in for MobileFaceNet's GDConv, whose kernel would depend on the exit's
    feature-map size."""

    EMBEDDING = 128

    def __init__(self, in_channels: int, num_classes: int, feature_dim: int = 4) -> None:
        super().__init__()
        from compact.face.margin import CosineClassifier

        if feature_dim not in (2, 4):
            raise CompactError(f"exit heads take 4-D or 2-D features, got {feature_dim}-D")
        self.in_channels, self.num_classes, self.feature_dim = in_channels, num_classes, feature_dim
        self.bn = nn.BatchNorm2d(in_channels) if feature_dim == 4 else nn.BatchNorm1d(in_channels)
        self.act = nn.PReLU(in_channels)
        self.fc = nn.Linear(in_channels, self.EMBEDDING, bias=False)
        self.bn_embedding = nn.BatchNorm1d(self.EMBEDDING)
        self.classifier = CosineClassifier(self.EMBEDDING, num_classes)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_embedding(self.fc(_pool(self.act(self.bn(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))


def create_head(head_type: str, in_channels: int, num_classes: int, feature_dim: int = 4) -> nn.Module:
    """Build a head of a registered type (see ``HEADS.names()``)."""
    return HEADS.get(head_type)(in_channels, num_classes, feature_dim)
