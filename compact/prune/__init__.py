"""Pruning baselines on torch-pruning: L1-norm (PFEC), FPGM and soft filter pruning, to a target MACs."""

from compact.prune.base import (
    ALLOCATIONS,
    PRUNERS,
    PruneMethod,
    PruneSettings,
    SearchResult,
    allocate,
    never_pruned,
    parse_macs,
    prunable_layers,
    prune_layers,
    search_ratios,
)
from compact.prune.importance import FilterNorm, GeometricMedian
from compact.prune.pfec import PUBLISHED_REDUCTION, pfec_ratios
from compact.prune.sfp import SoftFilterPruning

__all__ = [
    "ALLOCATIONS",
    "PRUNERS",
    "PUBLISHED_REDUCTION",
    "FilterNorm",
    "GeometricMedian",
    "PruneMethod",
    "PruneSettings",
    "SearchResult",
    "SoftFilterPruning",
    "allocate",
    "never_pruned",
    "parse_macs",
    "pfec_ratios",
    "prunable_layers",
    "prune_layers",
    "search_ratios",
]
