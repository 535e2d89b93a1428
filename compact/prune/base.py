"""Pruning methods, allocation and the search for a target number of MACs, on torch-pruning.

torch-pruning's ``DependencyGraph`` finds which layers must shrink together; its ``BasePruner`` picks
channels by an importance (compact's, :mod:`compact.prune.importance`) with either

- ``uniform`` allocation: every prunable layer loses the same fraction of its channels, or
- ``global`` allocation: channels are ranked across layers (importances normalised per group),

never more than ``max_layer_ratio`` of a layer, and keeping channel counts multiples of ``round_to``.
:func:`search_ratio` finds the pruning ratio whose physically pruned model has the target MACs
(convolution and linear MACs, measured, never computed from a formula), within a tolerance.

The classifier's outputs are never pruned. In CIFAR ResNets with zero-padding shortcuts (option A) the
residual stream cannot shrink consistently (the padding is fixed by the architecture), so there only the
first convolution of each block is pruned, as in Li et al. (2017); with 1x1-convolution shortcuts
(option B) everything but the classifier is prunable.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compact._guards import TIMEOUT_ENV, TimeLimitExceeded, memory_ceiling, time_limit
from compact._numbers import is_count
from compact._registry import Registry
from compact.errors import CompactError
from compact.profile.deploy import METHODS, deployed_macs
from compact.prune.importance import FilterNorm, GeometricMedian

ALLOCATIONS = ("uniform", "global")


@dataclass(frozen=True)
class PruneMethod:
    """``soft``: filters are zeroed after every training epoch and removed at the end (SFP)."""

    name: str
    importance: Callable[[], tp.importance.Importance]
    soft: bool
    description: str


PRUNERS: Registry[PruneMethod] = Registry("pruning method")
for _m in (
    PruneMethod(
        "l1",
        lambda: FilterNorm(p=1),
        False,
        "L1-norm filter pruning (PFEC, Li et al. 2017): prune a trained model, then fine-tune",
    ),
    PruneMethod(
        "fpgm", GeometricMedian, False, "geometric-median filter pruning (FPGM, He et al. 2019): prune, then fine-tune"
    ),
    PruneMethod(
        "sfp",
        lambda: FilterNorm(p=2),
        True,
        "soft filter pruning (SFP, He et al. 2018): zero the lowest-L2 filters after every epoch, "
        "keep training them, remove the last zeroed ones at the end",
    ),
):
    PRUNERS.register(_m.name)(_m)


@dataclass
class PruneSettings:
    allocation: str = "uniform"
    max_layer_ratio: float = 0.9
    round_to: int | None = 8

    def __post_init__(self) -> None:
        if not isinstance(self.allocation, str) or self.allocation not in ALLOCATIONS:
            raise CompactError(f"unknown allocation {self.allocation!r}; valid: {', '.join(ALLOCATIONS)}")
        ratio = self.max_layer_ratio
        if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1:
            raise CompactError(f"the per-layer cap (max_layer_ratio) must be a number in (0, 1), got {ratio!r}")
        r = self.round_to
        if r is not None and (not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= 1024):
            raise CompactError(f"round_to must be an integer in 1..1024, got {r!r}")


def parse_macs(text: str | int | float) -> int:
    """``63M``, ``1.2G``, ``500K`` or a plain number of MACs."""
    if isinstance(text, bool):
        raise CompactError(f"a MACs target is a number such as 63M, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG]?)\s*", str(text))
        if not m:
            raise CompactError(f"cannot read {text!r} as a number of MACs (examples: 63M, 1.2G, 500K)")
        value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if not math.isfinite(value) or value < 1 or value > MAX_MACS:
        raise CompactError(f"a MACs target must lie in 1..{MAX_MACS:.0e}, got {text!r}")
    return int(round(value))


#: the largest MACs target accepted (a thousand times the largest ImageNet classifiers)
MAX_MACS = 1e15


def never_pruned(model: nn.Module, input_size: Sequence[int] | None = None) -> list[nn.Module]:
    """Layers whose outputs are never pruned: the classifier and, with option-A shortcuts, the residual stream.

    The classifier is the last registered linear layer and, given ``input_size``, also the convolution or
    linear layer that a forward pass runs last: a network may classify with a 1x1 convolution (SqueezeNet)
    or register its classifier before other linear layers, and pruning it would drop classes.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ignored: list[nn.Module] = linears[-1:]
    if input_size is not None:
        last = _last_layer_run(model, input_size)
        if last is not None and all(last is not m for m in ignored):
            ignored.append(last)
    return ignored + _option_a_stream(model)


def _option_a_stream(model: nn.Module) -> list[nn.Module]:
    """The layers that write the residual stream of a CIFAR ResNet with option-A (zero-padding) shortcuts."""
    from compact.models.cifar_resnet import BasicBlock, CifarResNet

    if isinstance(model, CifarResNet):
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        if any(b.subsample and b.downsample is None for b in blocks):
            return [model.conv1, *(b.conv2 for b in blocks)]
    return []


@torch.no_grad()
def _last_layer_run(model: nn.Module, input_size: Sequence[int]) -> nn.Module | None:
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        _traced("run", model, lambda: model(_example(model, input_size)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order[-1] if order else None


def _output_shape(model: nn.Module, input_size: Sequence[int]) -> tuple[int, ...]:
    with torch.no_grad():
        out = model(_example(model, input_size))
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def _example(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(1, *input_size, device=device)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _traced(what: str, model: nn.Module, fn: Callable):
    """``fn()`` (a torch-pruning call on ``model``) with its failures as one-line errors, under a memory
    ceiling and a time limit (:mod:`compact._guards`): torch-pruning's dependency tracking grows without bound
    or loops without end on some models."""
    out_of_memory = False
    try:
        with warnings.catch_warnings(), memory_ceiling() as extra, time_limit():
            # parameters outside layers (layer scales, position embeddings) follow the channels along their last
            # non-singleton dimension, torch-pruning's default; its multi-line note about it is not the user's
            # concern (a wrong guess breaks the forward pass or changes the output shape: both are errors)
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            try:
                return fn()
            except Exception as exc:
                if not _out_of_memory(exc):
                    raise
                out_of_memory = True  # leaving this block frees what the failed call held, then the ceiling goes
        if out_of_memory:
            limit = (
                "the process's memory limit" if extra is None else f"{extra / 2**30:.1f} GiB beyond what compact held"
            )
            raise CompactError(
                f"torch-pruning ran out of memory trying to {what} {type(model).__name__}: it needed more than "
                f"{limit} (its dependency tracking can grow without bound through some reshapes, e.g. in attention "
                "layers); this architecture cannot be pruned"
            )
    except TimeLimitExceeded as exc:
        raise CompactError(
            f"torch-pruning did not finish trying to {what} {type(model).__name__} within {exc.args[0]:g} s (its "
            "dependency tracking can loop without end through some index-shifting layers); this architecture "
            f"cannot be pruned here ({TIMEOUT_ENV}=0 lifts the limit, {TIMEOUT_ENV}=N sets N seconds)"
        ) from None
    except CompactError:
        raise
    except Exception as exc:  # torch-pruning raises many types for operations it cannot trace
        raise CompactError(f"torch-pruning cannot {what} {type(model).__name__}: {type(exc).__name__}: {exc}") from exc


def dependency_graph_for(model: nn.Module, input_size: Sequence[int]) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` traced with one input of ``input_size``."""
    return _traced(
        "trace", model, lambda: tp.DependencyGraph().build_dependency(model, example_inputs=_example(model, input_size))
    )


def prunable_layers(model: nn.Module, input_size: Sequence[int], method: PruneMethod) -> dict[str, torch.Tensor]:
    """Name of the root layer of every prunable group -> importance of its channels, normalised by their mean
    (so that layers compare in global allocation), in the model's order."""
    names = {m: n for n, m in model.named_modules()}
    graph = dependency_graph_for(model, input_size)
    importance = method.importance()
    out: dict[str, torch.Tensor] = {}
    groups = graph.get_all_groups(
        ignored_layers=never_pruned(model, input_size), root_module_types=[nn.Conv2d, nn.Linear]
    )
    for group in _traced("group the layers of", model, lambda: list(groups)):
        try:
            imp = importance(group)
        except (IndexError, RuntimeError) as exc:  # channel indices beyond the layer: a mis-tracked reshape
            layer = names.get(group[0].dep.target.module, "?")
            raise CompactError(
                f"torch-pruning's dependency graph of {type(model).__name__} does not match its layers (the group of "
                f"{layer}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}); it cannot be pruned"
            ) from None
        if imp is None:
            continue
        out[names[group[0].dep.target.module]] = (imp / imp.mean().clamp_min(1e-12)).cpu()
    if not out:
        raise CompactError(f"{type(model).__name__} has no prunable layers (only the classifier was found)")
    return out


def allocate(layers: dict[str, torch.Tensor], ratio: float, settings: PruneSettings) -> dict[str, float]:
    """Fraction of channels to remove from each layer for an overall ``ratio``.

    Capped per layer at ``max_layer_ratio``, and so that at least ``round_to`` channels stay (torch-pruning
    rounds the remaining channels down to a multiple of ``round_to``, and skips a layer it would empty).
    """
    keep = settings.round_to or 1

    def capped(n: int, r: float) -> float:
        return max(0.0, min(r, settings.max_layer_ratio, (n - keep) / n))

    if settings.allocation == "uniform":
        return {name: capped(len(imp), ratio) for name, imp in layers.items()}
    scores = torch.cat(list(layers.values()))
    k = int(ratio * len(scores))
    if k == 0:
        return {name: 0.0 for name in layers}
    threshold = torch.kthvalue(scores, k).values
    return {name: capped(len(imp), int((imp <= threshold).sum()) / len(imp)) for name, imp in layers.items()}


def prune_layers(
    model: nn.Module,
    input_size: Sequence[int],
    method: PruneMethod,
    ratios: dict[str, float],
    settings: PruneSettings,
    interactive: bool = False,
):
    """Remove ``ratios[name]`` of the channels of each named layer (and everything coupled to them), in place.

    With ``interactive`` the torch-pruning groups are returned instead of pruned (for soft pruning).
    """
    modules = dict(model.named_modules())
    ratio_dict = {modules[n]: r for n, r in ratios.items() if r > 0}
    if not ratio_dict:
        return [] if interactive else model
    was_training = model.training
    model.eval()
    before = _output_shape(model, input_size)
    attention = attention_modules(model)
    head_sizes = [(m, m.head_dim) for m in attention]
    pruner = _traced(
        "trace",
        model,
        lambda: tp.pruner.BasePruner(
            model,
            example_inputs=_example(model, input_size),
            importance=method.importance(),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict,
            max_pruning_ratio=1.0,
            round_to=settings.round_to,
            ignored_layers=never_pruned(model, input_size),
            num_heads={m.qkv: m.num_heads for m in attention},
            prune_num_heads=False,
            prune_head_dims=True,
        ),
    )
    if interactive:
        groups = _traced("prune", model, lambda: list(pruner.step(interactive=True)))
        model.train(was_training)
        return groups
    links = block_size_links(model)
    _traced("prune", model, pruner.step)
    refresh_block_sizes(links)
    refresh_head_sizes(head_sizes)
    after = _traced("run the pruned", model, lambda: _output_shape(model, input_size))
    if after != before:  # a coupled layer reached the output: never hand on a model that predicts otherwise
        raise CompactError(
            f"pruning {type(model).__name__} changed its output from shape {before} to {after}: torch-pruning "
            "coupled the classifier to a pruned layer; this architecture cannot be pruned by compact"
        )
    model.train(was_training)
    return model


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Attention modules that keep their heads as timm's ``Attention`` does: a linear ``qkv`` of
    3 x heads x head size outputs, and int ``num_heads`` and ``head_dim``. Given their heads, torch-pruning
    removes the same dimensions from every head of q, k and v, so heads stay whole and equal
    (:func:`refresh_head_sizes` then updates the sizes the module reads in its forward)."""
    found = []
    for module in model.modules():
        qkv, n, d = (getattr(module, a, None) for a in ("qkv", "num_heads", "head_dim"))
        if isinstance(qkv, nn.Linear) and is_count(n) and is_count(d) and n > 0 and qkv.out_features == 3 * n * d:
            found.append(module)
    return found


@torch.no_grad()
def refresh_head_sizes(modules: list[tuple[nn.Module, int]]) -> None:
    """After pruning, for each (attention module, its head size before): the head size (and, where the
    module keeps them, its attention width and softmax scale) from its pruned ``qkv``, with the queries
    rescaled so that the scores keep their scale. Fused attention divides them by the square root of the
    head size it sees, so without that the softmax temperature of every head would change with pruning;
    with it, dimensions that contributed nothing are removed without changing the output, on the fused path
    and on one that multiplies by ``scale`` alike. A query norm without weights would undo the rescaling:
    such modules take the temperature of the new head size."""
    for module, old in modules:
        n = module.num_heads
        new = module.qkv.out_features // (3 * n)
        if new == old:
            continue
        scale = getattr(module, "scale", None)
        before = scale if isinstance(scale, float) else old**-0.5  # the scores were q.k * before
        module.head_dim = new
        if isinstance(getattr(module, "attn_dim", None), int):
            module.attn_dim = n * new
        if isinstance(scale, float):
            module.scale = new**-0.5
        factor = before * new**0.5  # (factor q).k / sqrt(new) = q.k * before
        norm = getattr(module, "q_norm", None)
        if norm is None or isinstance(norm, nn.Identity):
            bias = module.qkv.bias
            targets = [module.qkv.weight[: n * new], *([] if bias is None else [bias[: n * new]])]
        else:
            targets = [t for t in (getattr(norm, "weight", None), getattr(norm, "bias", None)) if t is not None]
        for t in targets:
            t.mul_(factor)


#: plain integer attributes in which re-parameterizable blocks keep the sizes of their convolutions (timm's
#: MobileOne: ``groups``; FastViT: ``in_chs``, ``out_chs``, ``groups``, ``dim``), read when they fold
SIZE_ATTRS = ("in_chs", "out_chs", "in_channels", "out_channels", "dim", "groups")
_CONV_SIZES = ("in_channels", "out_channels", "groups")


def block_size_links(model: nn.Module) -> list[tuple[nn.Module, str, list[tuple[nn.Module, str]]]]:
    """For every foldable block of ``model`` and every size attribute of it: the convolution sizes that hold
    the same value (``(block, attribute, [(conv, size), ...])``), taken before pruning changes them."""
    links = []
    for block in model.modules():
        if isinstance(block, nn.Conv2d) or not any(hasattr(block, a) for a in METHODS):
            continue
        convs = [c for c in block.modules() if isinstance(c, nn.Conv2d)]
        for attr in SIZE_ATTRS:
            value = getattr(block, attr, None)
            if type(value) is int:
                same = [(c, f) for c in convs for f in _CONV_SIZES if getattr(c, f) == value]
                if same:
                    links.append((block, attr, same))
    return links


def refresh_block_sizes(links: list[tuple[nn.Module, str, list[tuple[nn.Module, str]]]]) -> None:
    """After pruning, give each linked size attribute (:func:`block_size_links`) the new value of its
    convolutions when they all agree on one. torch-pruning resizes layers, not the attributes that blocks
    keep beside them, and a block folds with those: a stale ``groups`` makes timm's MobileOne fail to fold
    (division by zero). Whatever this leaves inconsistent is caught when the folded form is checked against
    the trained one (:func:`compact.profile.deploy.inference_form`)."""
    for block, attr, same in links:
        values = {getattr(c, f) for c, f in same}
        if len(values) == 1:
            setattr(block, attr, values.pop())


@dataclass
class SearchResult:
    """The per-layer pruning ratios that give ``macs`` (closest to ``target``)."""

    ratios: dict[str, float]
    macs: int
    target: int
    full_macs: int
    probes: int = 0  # prune-and-measure probes the search ran


class _CloseEnough(Exception):
    pass


def search_ratios(
    model: nn.Module,
    input_size: Sequence[int],
    method: PruneMethod,
    target_macs: int,
    settings: PruneSettings,
    tolerance: float = 0.03,
    steps: int = 12,
    refine: bool = True,
    close_enough: float = 0.005,
) -> SearchResult:
    """Per-layer pruning ratios whose pruned copy of ``model`` has conv+linear MACs closest to ``target_macs``,
    counted as deployed (:func:`compact.profile.deploy.deployed_macs`: a re-parameterizable network folded).

    First a bisection on the overall ratio (MACs fall as it grows; every probe prunes a copy and measures
    it). Channel rounding makes MACs a staircase, so the two ratios around the target are then mixed: the
    first ``j`` layers take the higher one, the rest the lower one, ``j`` found by bisection too.
    The search stops at the first probe within ``close_enough`` of the target (each probe prunes and
    measures a copy, which takes seconds on large networks). Raises when the target is above the model's
    MACs, or not reachable within ``tolerance``.
    """
    full = deployed_macs(model, input_size)
    if target_macs >= full:
        raise CompactError(f"target {target_macs:,} MACs is not below the model's {full:,} MACs")
    layers = prunable_layers(model, input_size, method)
    tried: list[tuple[int, dict[str, float]]] = []

    def measure(ratios: dict[str, float]) -> int:
        pruned = prune_layers(copy.deepcopy(model), input_size, method, ratios, settings)
        macs = deployed_macs(pruned, input_size)
        tried.append((macs, ratios))
        if abs(macs - target_macs) <= close_enough * target_macs:
            raise _CloseEnough
        return macs

    try:
        _bisect(model, layers, target_macs, settings, tolerance, steps, refine, measure)
    except _CloseEnough:
        pass
    macs, ratios = min(tried, key=lambda t: abs(t[0] - target_macs))
    if abs(macs - target_macs) > tolerance * target_macs:
        raise CompactError(
            f"no pruning gives {target_macs:,} MACs within {tolerance:.0%}: the closest is {macs:,}; with "
            f"--round-to {settings.round_to} channel counts move in coarse steps, try a smaller --round-to"
        )
    return SearchResult(ratios, macs, target_macs, full, probes=len(tried))


def _bisect(model, layers, target_macs, settings, tolerance, steps, refine, measure) -> None:
    """The probes of :func:`search_ratios`: bisection on the overall ratio, then mixing."""

    lo, hi = 0.0, settings.max_layer_ratio if settings.allocation == "uniform" else 1.0
    hi_macs = measure(allocate(layers, hi, settings))
    if hi_macs > target_macs * (1 + tolerance):
        kept = "the classifier is"
        if _option_a_stream(model):
            kept = "the classifier and the residual stream of option-A shortcuts are"
        raise CompactError(
            f"target {target_macs:,} MACs is too small to reach: with at most {settings.max_layer_ratio:.0%} of "
            f"every prunable layer removed, {hi_macs:,} MACs remain ({kept} never pruned); raise "
            "--max-layer-ratio or choose a larger target"
        )
    for _ in range(steps):
        mid = (lo + hi) / 2
        if measure(allocate(layers, mid, settings)) > target_macs:
            lo = mid
        else:
            hi = mid
    low, high = allocate(layers, lo, settings), allocate(layers, hi, settings)
    names = list(layers)
    a, b = 0, len(names) if refine else 0
    while b - a > 1:  # mixing: first j layers at the higher ratio
        j = (a + b) // 2
        mixed = {n: (high[n] if i < j else low[n]) for i, n in enumerate(names)}
        if measure(mixed) > target_macs:
            a = j
        else:
            b = j
