"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018), the network of the MW-BP paper's Section 5.4.

Table 1 of Chen et al. for a 112x112 input: a 3x3 convolution (64, stride 2), a depthwise 3x3 convolution
(64), bottlenecks (expansion t, channels c, repeats n, stride s) (2, 64, 5, 2), (4, 128, 1, 2),
(2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1), a 1x1 convolution to 512, a linear global depthwise
convolution (GDConv 7x7) and a linear 1x1 convolution to the 128-d embedding; BatchNorm after every
convolution, PReLU as non-linearity. 0.99M parameters and 221M MAdds without the classifier (checked in the
tests).

``forward`` returns the logits of a cosine classifier on the embedding (:class:`CosineClassifier`: cos of
the angle to each identity's weight vector); train it with a margin-softmax loss
(:mod:`compact.face.margin`). :func:`compact.face.verification.embed` reads the embedding that feeds the
classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from compact.errors import CompactError
from compact.face.margin import CosineClassifier
from compact.models._builder import register_model
from compact.models.arguments import Arg
from compact.models.cifar_nets import _init

#: (expansion t, channels c, repeats n, stride s) of Chen et al.'s Table 1
MOBILEFACENET = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
EMBEDDING = 128


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if k == 3 else 0, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return layers + ([nn.PReLU(cout)] if act else [])


class FaceBottleneck(nn.Module):
    """Inverted residual with PReLU: 1x1 expansion, depthwise 3x3 (stride), linear 1x1; residual where the
    shapes match."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet for 112x112 faces (any input whose side is a multiple of 16 works; GDConv covers the
    final map): a 128-d embedding and a cosine classifier over ``num_classes`` identities."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int = 112) -> None:
        super().__init__()
        if input_size % 16 != 0 or not 32 <= input_size <= 512:
            raise CompactError(
                f"MobileFaceNet takes square inputs whose side is a multiple of 16 (e.g. 112), got {input_size}"
            )
        self.stem = nn.Sequential(*_conv_bn(in_chans, 64, 3, 2), *_conv_bn(64, 64, 3, groups=64))
        blocks, cin = [], 64
        for t, c, n, s in MOBILEFACENET:
            for i in range(n):
                blocks.append(FaceBottleneck(cin, c, t, s if i == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        side = input_size // 16
        self.conv_sep = nn.Sequential(*_conv_bn(cin, 512, 1))
        self.gdconv = nn.Sequential(nn.Conv2d(512, 512, side, groups=512, bias=False), nn.BatchNorm2d(512))
        self.linear = nn.Sequential(nn.Conv2d(512, EMBEDDING, 1, bias=False), nn.BatchNorm2d(EMBEDDING))
        self.classifier = CosineClassifier(EMBEDDING, num_classes)
        _init(self)  # the CIFAR networks' initialisation: Kaiming (fan out) convolutions, unit BatchNorm

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_sep(self.blocks(self.stem(x)))
        return torch.flatten(self.linear(self.gdconv(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x))


@register_model(
    "mobilefacenet",
    args={"input_size": Arg("int", 32, 512, help="input side, a multiple of 16 (default 112): sizes the GDConv")},
)
def mobilefacenet(num_classes: int = 10, in_chans: int = 3, input_size: int = 112) -> MobileFaceNet:
    """MobileFaceNet (Chen et al. 2018) for 112x112 faces, with a cosine classifier for margin losses."""
    return MobileFaceNet(num_classes, in_chans, input_size)
