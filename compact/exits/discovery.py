"""Finding the blocks of a network after which exits can be attached.

A block is the outermost module of a known building-block class (residual blocks, inverted residuals,
dense blocks, ConvNeXt and transformer blocks) of compact's CIFAR networks, timm (ResNet, RegNet, MobileNet,
EfficientNet, ConvNeXt, ViT, Swin, Mixer, GhostNet, ResNeSt, RepVGG, MobileViT, LeViT, MetaFormer, CoaT, CaiT,
GCViT, EfficientViT, FastViT, TinyViT, HGNetV2, RepViT, Next-ViT, MViTv2 families) or torchvision (ResNet,
MobileNetV2/V3, ShuffleNetV2, DenseNet, ConvNeXt, ViT, Swin, RegNet, EfficientNet(V2), MNASNet, GoogLeNet,
Inception v3, SqueezeNet, MaxViT). For other models, pass module or graph-node
names explicitly; when discovery finds nothing, the error lists the candidate module names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compact.errors import CompactError

#: Class names recognised as blocks, by family (matched on the class name, so no import is needed).
BLOCK_CLASSES: dict[str, tuple[str, ...]] = {
    "residual": (
        "BasicBlock",
        "Bottleneck",
        "PreBasicBlock",
        "ResBottleneck",
        "BottleneckBlock",
        "WideBasic",
        "ResNeXtBottleneck",
    ),
    "inverted residual": (
        "InvertedResidual",
        "DepthwiseSeparableConv",
        "EdgeResidual",
        "UniversalInvertedResidual",
        "CondConvResidual",
        "FaceBottleneck",
    ),
    "dense": ("_DenseBlock", "DenseBlock", "DenseLayer"),  # DenseLayer: compact's, returns the concatenation
    # their features need not be (N, C, H, W): Swin's are (N, H, W, C), ViT's tokens (N, L, C); the heads
    # follow the channels (compact.exits.layout)
    "convnext and transformer": (
        "ConvNeXtBlock",  # timm ConvNeXt
        "CNBlock",  # torchvision ConvNeXt
        "SwinTransformerBlock",  # timm and torchvision Swin
        "SwinTransformerBlockV2",
        "Block",  # timm ViT, DeiT, BEiT, ...
        "EncoderBlock",  # torchvision ViT
        "MixerBlock",  # timm MLP-Mixer
    ),
    "other": ("GhostBottleneck", "ResNestBottleneck", "RepVggBlock"),
    "torchvision": (
        "ResBottleneckBlock",  # RegNet
        "MBConv",  # EfficientNet
        "FusedMBConv",  # EfficientNetV2
        "_InvertedResidual",  # MNASNet
        "Inception",  # GoogLeNet
        "InceptionA",  # Inception v3
        "InceptionB",
        "InceptionC",
        "InceptionD",
        "InceptionE",
        "Fire",  # SqueezeNet
        "MaxVitLayer",
    ),
    # timm's hybrid, MetaFormer-style and efficient networks (a block of a class not listed here is found
    # through the stage ends timm declares, model.feature_info, when no listed block reaches half the depth)
    "timm hybrid": (
        "MobileVitBlock",
        "MobileVitV2Block",
        "LevitBlock",
        "MetaFormerBlock",  # PoolFormer, ConvFormer, CAFormer
        "MetaNeXtBlock",  # InceptionNeXt
        "SerialBlock",  # CoaT (its parallel blocks return several scales and are not exit points)
        "LayerScaleBlock",  # CaiT's patch blocks (not its class-attention blocks)
        "GlobalContextVitBlock",
        "EfficientVitBlock",
        "RepMixerBlock",  # FastViT
        "TinyVitBlock",
        "HighPerfGpuBlock",  # HGNetV2
        "RepViTBlock",
        "NextConvBlock",
        "NextTransformerBlock",
        "MultiScaleBlock",  # MViTv2: returns (tokens, feature size); the exit is taken at the tokens
    ),
}
_ALL = {name for names in BLOCK_CLASSES.values() for name in names}


@dataclass(frozen=True)
class Block:
    """A candidate exit point: module (or graph-node) name, 1-based index and depth in weighted layers."""

    name: str
    index: int
    depth: int


def discover_block_names(model: nn.Module) -> list[str]:
    """Names of the outermost known blocks of ``model`` in registration order (may be empty)."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or type(module).__name__ not in _ALL:
            continue
        if any(name.startswith(outer + ".") for outer in names):
            continue
        names.append(name)
    return names


def candidate_module_names(model: nn.Module, max_depth: int = 2, limit: int = 60) -> list[str]:
    """Module names up to ``max_depth`` levels deep: what to offer when discovery fails."""
    out = [n for n, _ in model.named_modules() if n and n.count(".") < max_depth]
    return out[:limit]


def no_blocks_error(model: nn.Module) -> CompactError:
    names = ", ".join(candidate_module_names(model))
    return CompactError(
        f"found no known blocks in {type(model).__name__} (known block classes: {', '.join(sorted(_ALL))}); "
        f"pass exit points explicitly as module or graph-node names, for example from: {names} "
        "(compact.exits.graph_node_names(model) lists every graph node)"
    )
