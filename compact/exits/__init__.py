"""Auxiliary exits: block discovery, heads, loss weights and the shared multi-exit forward."""

from compact.exits._fx import graph_node_names
from compact.exits.discovery import Block, discover_block_names
from compact.exits.heads import HEADS, create_head
from compact.exits.network import MultiExitNet, attach_exits, even_positions, list_blocks
from compact.exits.weighting import SCHEDULES, LossWeighting, loss_weights

__all__ = [
    "HEADS",
    "SCHEDULES",
    "Block",
    "LossWeighting",
    "MultiExitNet",
    "attach_exits",
    "create_head",
    "discover_block_names",
    "even_positions",
    "graph_node_names",
    "list_blocks",
    "loss_weights",
]
