"""The ResNet recipes of Li et al. (2017, "Pruning Filters for Efficient ConvNets", PFEC), Table 1 / Sec. 4.2.

For CIFAR ResNet-56 and ResNet-110 the paper prunes only the first convolution of each residual block,
with one ratio per stage, and skips the layers it found sensitive. Layers are numbered as in the paper's
code: every convolution in order, the stem being layer 1, so the first convolutions of the blocks are the
even layers 2, 4, ...; the stage of layer ``l`` is ``(l - 2) // (2 n)`` for ``n`` blocks per stage.
Published FLOPs reductions: ResNet-56-A 10.4%, ResNet-56-B 27.6%, ResNet-110-A 15.9%, ResNet-110-B 38.6%
(38.7% in the text).
"""

from __future__ import annotations

from torch import nn

from compact.errors import CompactError

#: (model, variant) -> (skipped layers, removal ratio per stage)
RECIPES: dict[tuple[str, str], tuple[tuple[int, ...], tuple[float, float, float]]] = {
    ("cifar_resnet56", "A"): ((16, 20, 38, 54), (0.1, 0.1, 0.1)),
    ("cifar_resnet56", "B"): ((16, 18, 20, 34, 38, 54), (0.6, 0.3, 0.1)),
    ("cifar_resnet110", "A"): ((36,), (0.5, 0.0, 0.0)),
    ("cifar_resnet110", "B"): ((36, 38, 74), (0.5, 0.4, 0.3)),
}
#: published FLOPs reductions (fraction), Li et al. 2017, Table 1
PUBLISHED_REDUCTION = {
    ("cifar_resnet56", "A"): 0.104,
    ("cifar_resnet56", "B"): 0.276,
    ("cifar_resnet110", "A"): 0.159,
    ("cifar_resnet110", "B"): 0.387,
}


def recipe_names() -> list[str]:
    return sorted({f"pfec-{v.lower()}" for _, v in RECIPES})


def pfec_ratios(model: nn.Module, arch: str, recipe: str) -> dict[str, float]:
    """Removal ratio of each pruned convolution (by module name) for ``recipe`` (``pfec-a`` / ``pfec-b``)."""
    from compact.models.cifar_resnet import CifarResNet

    variant = recipe.lower().removeprefix("pfec-").upper()
    key = (arch, variant)
    if key not in RECIPES:
        valid = ", ".join(f"{a} --recipe pfec-{v.lower()}" for a, v in RECIPES)
        raise CompactError(f"no PFEC recipe {recipe!r} for {arch}; published recipes: {valid}")
    if not isinstance(model, CifarResNet):
        raise CompactError(f"the PFEC recipes are defined for compact's CIFAR ResNets, not {type(model).__name__}")
    skip, per_stage = RECIPES[key]
    n = (model.depth - 2) // 6
    ratios: dict[str, float] = {}
    layer = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or name.endswith("downsample.0"):
            continue
        layer += 1
        if layer % 2 == 0 and layer not in skip:
            ratio = per_stage[(layer - 2) // (2 * n)]
            if ratio > 0:
                ratios[name] = ratio
    return ratios
