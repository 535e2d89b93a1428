"""Filter importances that follow the pruning papers, as torch-pruning ``Importance`` objects.

A torch-pruning group lists every layer touched when a set of channels is removed: the convolutions whose
output filters go, the BatchNorm after them, the layers reading those channels. The papers rank filters by
the filters themselves, so these importances look only at the *output filters* the group removes (the
pruned convolution's own weights; for channels coupled by residual additions, the filters of every coupled
convolution, concatenated):

- :class:`FilterNorm` (``p=1``: PFEC, Li et al. 2017; ``p=2``: SFP, He et al. 2018): the p-norm of each
  filter. torch-pruning's ``MagnitudeImportance`` instead sums magnitudes over the whole group (BatchNorm
  and the next layer's input weights included) and normalises per group.
- :class:`GeometricMedian` (FPGM, He et al. 2019): the sum of Euclidean distances from each filter to the
  other filters of its layer; the filters nearest the geometric median (smallest sum) are the most
  replaceable and go first. torch-pruning's ``FPGMImportance`` measures distances between ``|w|^p``
  (squared magnitudes by default, so sign information is lost), over every layer of the group including
  input channels, and averages them; the paper uses the raw filter weights of the pruned layer.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


def group_filters(group) -> torch.Tensor | None:
    """(n, k) matrix: row ``j`` holds every output filter the group removes for its ``j``-th root channel."""
    n = len(group[0].idxs)
    blocks = []
    for i, (dep, idxs) in enumerate(group):
        if dep.pruning_fn not in _OUT_FNS:
            continue
        root = group[i].root_idxs
        if any(r is None for r in root):
            continue
        weight = dep.layer.weight.detach()
        if getattr(dep.layer, "transposed", False):
            weight = weight.transpose(0, 1)
        rows = weight[idxs].flatten(1).float()
        block = torch.zeros(n, rows.shape[1], device=rows.device)
        block[root] = rows
        blocks.append(block)
    return torch.cat(blocks, dim=1) if blocks else None


class FilterNorm(tp.importance.Importance):
    """p-norm of the removed output filters (higher = more important)."""

    def __init__(self, p: int = 1) -> None:
        self.p = p

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        filters = group_filters(group)
        return None if filters is None else filters.norm(p=self.p, dim=1)


class GeometricMedian(tp.importance.Importance):
    """Sum of Euclidean distances to the other filters (higher = farther from the median = more important)."""

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        filters = group_filters(group)
        if filters is None:
            return None
        return torch.cdist(filters[None], filters[None], p=2)[0].sum(dim=1)
