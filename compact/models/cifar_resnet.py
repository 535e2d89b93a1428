"""The CIFAR ResNets of He et al. (2016), as used by the MW-BP paper: ResNet-20/32/44/56/110.

Three stages of ``n`` basic blocks with 16, 32 and 64 channels, depth ``6n + 2``. The default shortcut is
option A of the ResNet paper (identity, subsampled and zero-padded where the shape changes), which gives
the published parameter counts (ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.73M). Option B uses a 1x1
convolution and BatchNorm on the changing shortcuts instead.

``forward`` returns the final logits only; exits are attached from outside (``compact.exits``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compact.errors import CompactError
from compact.models._builder import register_model
from compact.models.arguments import Arg

_SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU: two weighted layers."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad_channels = 0
        self.subsample = stride != 1 or in_planes != planes
        self.downsample: nn.Module | None = None
        if self.subsample and shortcut == "B":
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        elif self.subsample:
            self.pad_channels = planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        elif self.subsample:
            identity = x[:, :, :: self.stride, :: self.stride]
            half = self.pad_channels // 2
            identity = F.pad(identity, (0, 0, 0, 0, half, self.pad_channels - half))
        else:
            identity = x
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for small images (CIFAR 32x32, Fashion-MNIST 28x28): depth = 6n + 2."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise CompactError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in _SHORTCUTS:
            raise CompactError(f"unknown shortcut option {shortcut!r}; valid: {', '.join(_SHORTCUTS)}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _make(depth: int):
    def build(num_classes: int = 10, in_chans: int = 3, shortcut: str = "A") -> CifarResNet:
        return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, shortcut=shortcut)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), 3 stages of {(depth - 2) // 6} basic blocks."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"cifar_resnet{_depth}",
        args={"shortcut": Arg("choice", choices=("A", "B"), help="A: zero-padding shortcuts, B: 1x1 projections")},
    )(_make(_depth))
