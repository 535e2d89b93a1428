"""The paper's other CIFAR networks (its Table 1): Wide ResNet, ResNeXt-29, DenseNet-BC and MobileNetV2.

Each follows its original paper's CIFAR definition:

- Wide ResNet (Zagoruyko & Komodakis 2016): depth ``6n + 4``, widen factor ``k``; pre-activation basic
  blocks (BN-ReLU-conv3x3, dropout between the two convolutions), stages of 16k, 32k, 64k channels, 1x1
  projection on the shortcuts that change shape. WRN-28-10: 36.5M parameters.
- ResNeXt-29 (Xie et al. 2017, CIFAR): a 3x3 stem of 64 channels and 3 stages of 3 bottleneck blocks
  (1x1, grouped 3x3 with ``cardinality`` groups, 1x1); block widths ``cardinality x base_width x 2^stage``,
  outputs 256, 512, 1024; 1x1 projection shortcuts. 8x64d: 34.4M, 16x64d: 68.1M parameters.
- DenseNet-BC (Huang et al. 2017): depth ``L``, growth ``k``: a 3x3 stem of 2k channels, 3 dense blocks of
  ``(L - 4) / 6`` bottleneck layers (BN-ReLU-conv1x1 to 4k, BN-ReLU-conv3x3 to k), transitions halving the
  channels (compression 0.5) and the resolution. DenseNet-BC-100 (k = 12): 0.8M parameters. Each layer
  returns its input concatenated with its new features, so an exit can follow any layer.
- MobileNetV2 (Sandler et al. 2018) with the CIFAR strides used by the common CIFAR ports (stride 1 in the
  stem and in the second stage, so 32x32 inputs end at 4x4): the paper's inverted residuals (a residual
  only where stride 1 and channels match), width 1.0, ReLU6, a 1x1 convolution to 1280 channels. Strides do
  not change parameters: 2,236,682 for 10 classes, the count of torchvision's ``mobilenet_v2``.

``forward`` returns the final logits only; exits are attached from outside (``compact.exits``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compact.errors import CompactError
from compact.models._builder import register_model
from compact.models.arguments import Arg


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# -- Wide ResNet ----------------------------------------------------------------------------------------
class WideBasic(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + identity


class CifarWideResNet(nn.Module):
    """WRN-d-k for small images: depth ``d = 6n + 4``, widen factor ``k``."""

    def __init__(
        self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise CompactError(f"Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40), got {depth}")
        if not 1 <= widen <= 20:
            raise CompactError(f"Wide ResNet widen factor must be an integer in 1..20 (e.g. 2, 4, 8, 10), got {widen}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        in_planes = 16
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBasic(in_planes, planes, 2 if (i > 0 and j == 0) else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


_DROPOUT = Arg("float", 0.0, 0.9, help="dropout between the two convolutions of each block")


@register_model(
    "cifar_wrn",
    args={
        "depth": Arg("int", 10, 202, help="6n+4: 10, 16, 22, 28, 40, ..."),
        "widen": Arg("int", 1, 20, help="widen factor k"),
        "dropout": _DROPOUT,
    },
)
def cifar_wrn(num_classes: int = 10, in_chans: int = 3, depth: int = 28, widen: int = 10, dropout: float = 0.0):
    """CIFAR Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016); default WRN-28-10."""
    return CifarWideResNet(depth, widen, num_classes, in_chans, dropout)


def _wrn(depth: int, widen: int):
    def build(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0) -> CifarWideResNet:
        return CifarWideResNet(depth, widen, num_classes, in_chans, dropout)

    build.__doc__ = f"CIFAR Wide ResNet WRN-{depth}-{widen} (Zagoruyko & Komodakis 2016)."
    return build


for _d, _k in ((28, 10), (16, 4)):
    register_model(f"cifar_wrn{_d}_{_k}", args={"dropout": _DROPOUT})(_wrn(_d, _k))


# -- ResNeXt-29 -----------------------------------------------------------------------------------------
class ResNeXtBottleneck(nn.Module):
    """1x1 (to ``width``) - grouped 3x3 (``cardinality`` groups, stride) - 1x1 (to ``out``), post-activation."""

    def __init__(self, in_planes: int, width: int, out_planes: int, cardinality: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNeXt(nn.Module):
    """ResNeXt-29 (C x dd) for small images: 3 stages of 3 bottleneck blocks."""

    def __init__(self, cardinality: int, base_width: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i in range(3):
            width, out_planes = cardinality * base_width * 2**i, 256 * 2**i
            blocks = []
            for j in range(3):
                blocks.append(
                    ResNeXtBottleneck(in_planes, width, out_planes, cardinality, 2 if (i > 0 and j == 0) else 1)
                )
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _resnext(cardinality: int, base_width: int):
    def build(num_classes: int = 10, in_chans: int = 3) -> CifarResNeXt:
        return CifarResNeXt(cardinality, base_width, num_classes, in_chans)

    build.__doc__ = f"CIFAR ResNeXt-29 {cardinality}x{base_width}d (Xie et al. 2017)."
    return build


for _c in (8, 16):
    register_model(f"cifar_resnext29_{_c}x64d")(_resnext(_c, 64))


# -- DenseNet-BC ----------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4k) - BN-ReLU-conv3x3 (k); returns the input with the k new channels appended."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression) - 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNetBC(nn.Module):
    """DenseNet-BC-depth with growth rate k for small images (3 dense blocks, compression 0.5)."""

    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise CompactError(f"DenseNet-BC depth must be 6n+4 with n >= 1 (40, 100, 190, 250), got {depth}")
        n = (depth - 4) // 6
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_chans, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            stages.append(nn.Sequential(*layers))
            if i < 2:
                stages.append(Transition(planes, planes // 2))
                planes //= 2
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = stages
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.dense3(self.trans2(self.dense2(x)))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar_densenet_bc100")
def cifar_densenet_bc100(num_classes: int = 10, in_chans: int = 3) -> CifarDenseNetBC:
    """CIFAR DenseNet-BC-100, growth rate 12 (Huang et al. 2017)."""
    return CifarDenseNetBC(100, 12, num_classes, in_chans)


# -- MobileNetV2 ----------------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """1x1 expansion (t), depthwise 3x3 (stride), linear 1x1 projection; a residual where shapes match."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


#: (expansion t, channels c, blocks n, stride s) of MobileNetV2's Table 2, with the CIFAR strides
MOBILENETV2_CIFAR = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))  # fmt: skip


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with stride 1 in the stem and in the second stage (32x32 inputs)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        blocks, in_planes = [], 32
        for t, c, n, s in MOBILENETV2_CIFAR:
            for i in range(n):
                blocks.append(InvertedResidual(in_planes, c, t, s if i == 0 else 1))
                in_planes = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(in_planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(1280, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@register_model("cifar_mobilenet_v2", args={"dropout": Arg("float", 0.0, 0.9, help="dropout before the classifier")})
def cifar_mobilenet_v2(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.2) -> CifarMobileNetV2:
    """MobileNetV2 for CIFAR (Sandler et al. 2018; stride 1 in the stem and second stage)."""
    return CifarMobileNetV2(num_classes, in_chans, dropout)
