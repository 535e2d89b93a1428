"""compact's small interface over FX feature extraction (torchvision's, with timm's leaf modules).

Everything that traces a model goes through here, so a change in timm's or torchvision's helpers is
absorbed in one place. Node names are FX qualified names: a module path such as ``layer1.3`` selects the
output of the last operation inside that module.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from compact.errors import CompactError

_WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)
_WEIGHTED_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d, torch.conv1d, torch.conv3d}


def graph_node_names(model: nn.Module) -> list[str]:
    """Train-mode graph node names of ``model``, in execution order."""
    from timm.layers import get_graph_node_names

    try:
        train_names, _ = get_graph_node_names(model)
    except Exception as exc:  # FX raises many types for untraceable code
        raise CompactError(f"{type(model).__name__} cannot be traced by torch.fx: {exc}") from exc
    return train_names


def feature_extractor(model: nn.Module, return_nodes: list[str]) -> fx.GraphModule:
    """A module sharing ``model``'s parameters that returns ``{name: output}`` for ``return_nodes``.

    Operations that none of the requested outputs need are removed, so an extractor for an early node
    computes only the network up to that node.
    """
    from timm.layers import create_feature_extractor

    with warnings.catch_warnings():
        # torchvision notes when train- and eval-mode graphs differ (dropout): expected, both are kept
        warnings.filterwarnings("ignore", message="NOTE. The nodes obtained by tracing")
        try:
            return create_feature_extractor(model, return_nodes=list(return_nodes))
        except ValueError as exc:
            raise CompactError(str(exc)) from exc
        except Exception as exc:
            raise CompactError(f"{type(model).__name__} cannot be traced by torch.fx: {exc}") from exc


def weighted_depths(extractor: fx.GraphModule) -> dict[str, int]:
    """Depth of each returned node: convolution/linear layers on the longest path from the input.

    Shortcut convolutions in parallel with a block's main path do not add depth; gating convolutions on a
    side path (squeeze-excitation) do, since they lie on the longest path. A module the tracer keeps whole
    counts all the weighted layers inside it.
    """
    graph = extractor.train_graph if hasattr(extractor, "train_graph") else extractor.graph
    depth: dict[fx.Node, int] = {}
    out: dict[str, int] = {}
    for node in graph.nodes:
        weighted = 0
        if node.op == "call_module":
            # a leaf may be a composite (e.g. conv-norm-act kept whole by the tracer): count its layers
            leaf = extractor.get_submodule(node.target)
            weighted = sum(isinstance(m, _WEIGHTED_MODULES) for m in leaf.modules())
        elif node.op == "call_function" and node.target in _WEIGHTED_FUNCTIONS:
            weighted = 1
        depth[node] = weighted + max((depth[a] for a in node.all_input_nodes), default=0)
        if node.op == "output":
            for name, value in node.args[0].items():
                out[name] = depth[value]
    return out
