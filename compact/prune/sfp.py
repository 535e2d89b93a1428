"""Soft filter pruning (SFP, He et al. 2018) as an engine hook.

After every training epoch the lowest-L2 filters of each pruned layer (``ratios``, fixed at the start) are
set to zero, together with everything that would be removed with them whose output would otherwise not
be zero (the BatchNorm scale and shift of those channels); the zeroed filters keep training during the
next epoch. At the end exactly the filters zeroed last are removed (they are not re-ranked: zero filters
tie), so the soft-pruned network and the physically smaller one compute the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compact.engine.callbacks import Callback, RunContext
from compact.errors import CompactError
from compact.prune.base import (
    PRUNERS,
    PruneSettings,
    attention_modules,
    block_size_links,
    dependency_graph_for,
    prune_layers,
    refresh_block_sizes,
    refresh_head_sizes,
)

# the parts of a group whose outputs are the removed channels: zeroing them makes those channels zero
_OUT_FNS = {
    tp.prune_conv_out_channels,
    tp.prune_depthwise_conv_out_channels,
    tp.prune_linear_out_channels,
    tp.prune_batchnorm_out_channels,
    tp.prune_groupnorm_out_channels,
    tp.prune_layernorm_out_channels,
    tp.prune_instancenorm_out_channels,
}


def _output_side(group) -> tuple[nn.Module, list[int]]:
    """The layer whose output channels a torch-pruning group removes, and their indices: the group's root,
    or, when the root is a layer's *input* side (torch-pruning roots an attention group told its heads at the
    output projection's inputs), the first convolution or linear layer of the group whose outputs it removes
    (the q, k and v projection), which :meth:`SoftFilterPruning.finalize` prunes as outputs."""
    for dep, idxs in group:
        if dep.pruning_fn in _OUT_FNS and isinstance(dep.layer, nn.modules.conv._ConvNd | nn.Linear):
            if dep is group[0].dep or group[0].dep.pruning_fn not in _OUT_FNS:
                return dep.layer, list(idxs)
    raise CompactError("a torch-pruning group removes no output channels of a convolution or linear layer")


class SoftFilterPruning(Callback):
    """Zero, then finally remove, ``ratios[name]`` of the output filters of each named layer.

    As a training callback (what ``compact prune --method sfp`` passes to the engine) it zeroes the filters
    of the network's backbone after every epoch's training, keeps what it zeroed in the checkpoints, and
    removes those filters when training ends. ``input_size`` defaults to the run's.
    """

    state_key = "soft_prune"

    def __init__(
        self, ratios: dict[str, float], input_size: Sequence[int] | None = None, round_to: int | None = 8
    ) -> None:
        self.ratios = dict(ratios)
        self.input_size = list(input_size) if input_size is not None else None
        self.settings = PruneSettings(allocation="uniform", round_to=round_to)
        self.zeroed: dict[str, list[int]] = {}

    @classmethod
    def from_config(cls, soft_prune: dict[str, Any]) -> SoftFilterPruning:
        """The callback for a training configuration's ``soft_prune`` entry (``ratios``, ``round_to``)."""
        return cls(soft_prune["ratios"], None, soft_prune.get("round_to"))

    # -- the engine's hooks ---------------------------------------------------------------------------
    def _size(self, ctx: RunContext) -> None:
        if self.input_size is None:
            self.input_size = list(ctx.extra["input_size"])

    def after_train_epoch(self, ctx: RunContext) -> None:
        self._size(ctx)
        self.zero(ctx.net.backbone)  # the zeroed filters keep training in the next epoch

    def on_train_end(self, ctx: RunContext) -> None:
        self._size(ctx)
        self.finalize(ctx.net.backbone)  # remove exactly the filters zeroed last

    def zero(self, model: nn.Module) -> dict[str, list[int]]:
        """Rank the filters by their current L2 norm and zero the lowest of each layer; returns what was zeroed."""
        names = {m: n for n, m in model.named_modules()}
        groups = prune_layers(model, self.input_size, PRUNERS.get("sfp"), self.ratios, self.settings, interactive=True)
        with torch.no_grad():
            zeroed = self._zero_groups(groups, names)
        self.zeroed = zeroed
        return zeroed

    @staticmethod
    def _zero_groups(groups, names: dict[nn.Module, str]) -> dict[str, list[int]]:
        zeroed: dict[str, list[int]] = {}
        for group in groups:
            for dep, idxs in group:
                layer, fn = dep.layer, dep.pruning_fn
                if fn not in _OUT_FNS:
                    continue  # inputs of the next layers: those channels are zero already
                index = torch.as_tensor(idxs, dtype=torch.long, device=layer.weight.device)
                if isinstance(layer, nn.modules.conv._ConvNd | nn.Linear):
                    weight = layer.weight.transpose(0, 1) if getattr(layer, "transposed", False) else layer.weight
                    weight[index] = 0
                elif getattr(layer, "weight", None) is not None:  # normalisation layers
                    layer.weight[index] = 0
                if getattr(layer, "bias", None) is not None:
                    layer.bias[index] = 0
            layer, idxs = _output_side(group)
            zeroed[names[layer]] = sorted(int(i) for i in idxs)
        return zeroed

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove exactly the filters zeroed last (physically), in place."""
        if not self.zeroed:
            raise CompactError("soft filter pruning has zeroed nothing yet (no epoch finished)")
        graph = dependency_graph_for(model, self.input_size)
        modules = dict(model.named_modules())
        was_training = model.training
        model.eval()
        links = block_size_links(model)
        head_sizes = [(m, m.head_dim) for m in attention_modules(model)]
        for name, idxs in self.zeroed.items():
            layer = modules[name]
            fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
            graph.get_pruning_group(layer, fn, idxs=list(idxs)).prune()
        refresh_block_sizes(links)
        refresh_head_sizes(head_sizes)
        model.train(was_training)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "zeroed": self.zeroed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("ratios") != self.ratios:
            raise CompactError("the checkpoint's soft-pruning ratios differ from this run's")
        self.zeroed = {k: list(v) for k, v in state.get("zeroed", {}).items()}
