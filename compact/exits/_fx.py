"""compact's small interface over FX feature extraction (torchvision's, with timm's leaf modules).

Everything that traces a model goes through here, so a change in timm's or torchvision's helpers is
absorbed in one place. Node names are FX qualified names: a module path such as ``layer1.3`` selects the
output of the last operation inside that module.

Extraction is made faithful to eager execution in two ways that torchvision's helper is not:

- an in-place operation whose result is unused (``h.relu_()``, ``x.add_(y)``, ``ReLU(inplace=True)``) is
  kept whenever a later operation that is kept reads the tensor it changed (FX's dead-code elimination
  would drop it, and the extracted network would compute something else than the model);
- a returned node whose tensor a later in-place operation changes is returned as a copy taken at the node,
  so an exit sees the value at its node whether the extractor runs the rest of the network or not.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import fx, nn

from compact.errors import CompactError

_WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)
_WEIGHTED_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d, torch.conv1d, torch.conv3d}


def _tracer_kwargs() -> dict[str, Any]:
    """timm's modules and functions that FX must not trace into (torchvision's helpers take them)."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {"leaf_modules": list(get_notrace_modules()), "autowrap_functions": list(get_notrace_functions())}


def forward_defaults(model: nn.Module) -> dict[str, Any]:
    """The default of each parameter of ``model.forward`` after the input, to trace with.

    compact calls ``model(x)``, so those parameters hold their defaults; traced as further graph inputs,
    a branch on them (timm's Hiera: ``if mask is None: x = self.forward_head(x)``) would be decided by
    what a proxy answers, and the graph could silently leave out the classifier."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params[1:] if p.kind in named and p.default is not inspect.Parameter.empty}


def graph_node_names(model: nn.Module) -> list[str]:
    """Train-mode graph node names of ``model``, in execution order."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NOTE. The nodes obtained by tracing")  # as below
            train_names, _ = get_graph_node_names(
                model, tracer_kwargs=_tracer_kwargs(), concrete_args=forward_defaults(model) or None
            )
    except Exception as exc:  # FX raises many types for untraceable code
        raise CompactError(f"{type(model).__name__} cannot be traced by torch.fx: {exc}") from exc
    return train_names


def feature_extractor(model: nn.Module, return_nodes: list[str]) -> fx.GraphModule:
    """A module sharing ``model``'s parameters that returns ``{name: output}`` for ``return_nodes``.

    Operations that none of the requested outputs need are removed, so an extractor for an early node
    computes only the network up to that node.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    with warnings.catch_warnings(), mock.patch.object(fx.Graph, "eliminate_dead_code", _faithful_dead_code):
        # torchvision notes when train- and eval-mode graphs differ (dropout): expected, both are kept
        warnings.filterwarnings("ignore", message="NOTE. The nodes obtained by tracing")
        try:
            return create_feature_extractor(
                model,
                return_nodes=list(return_nodes),
                tracer_kwargs=_tracer_kwargs(),
                concrete_args=forward_defaults(model) or None,
            )
        except ValueError as exc:
            raise CompactError(str(exc)) from exc
        except Exception as exc:
            raise CompactError(f"{type(model).__name__} cannot be traced by torch.fx: {exc}") from exc


_INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift, operator.imatmul,
}  # fmt: skip
#: operations whose result shares memory with their first argument (an in-place change of one changes both)
_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute", "squeeze",
    "unsqueeze", "narrow", "select", "expand", "expand_as", "t", "unbind", "split", "chunk", "detach",
    "__getitem__", "as_strided", "movedim", "swapaxes", "unfold", "diagonal",
}  # fmt: skip
_VIEW_FUNCTIONS = {
    operator.getitem, torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
    torch.unsqueeze, torch.narrow, torch.select, torch.chunk, torch.split, torch.unbind, torch.t, torch.movedim,
    torch.swapaxes, torch.diagonal, torch.as_strided, torch.detach,
}  # fmt: skip


_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum}
_MATMUL_METHODS = {"matmul", "mm", "bmm", "addmm", "__matmul__", "__rmatmul__"}


def _is_matmul(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _MATMUL_FUNCTIONS
    return node.op == "call_method" and node.target in _MATMUL_METHODS


def _is_inplace_name(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__")


def mutated_input(node: fx.Node, root: nn.Module | None) -> fx.Node | None:
    """The node whose tensor ``node`` changes in place (its first argument), or None."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method" and isinstance(node.target, str) and _is_inplace_name(node.target):
        return first
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in _INPLACE_OPERATORS or _is_inplace_name(name) or node.kwargs.get("inplace") is True:
            return first
    if node.op == "call_module" and root is not None:
        try:
            module = root.get_submodule(node.target)
        except AttributeError:
            return None
        if getattr(module, "inplace", False) is True:
            return first
    return None


def _is_view(node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and node.target in _VIEW_FUNCTIONS


def alias_groups(graph: fx.Graph, root: nn.Module | None) -> dict[fx.Node, list[fx.Node]]:
    """Node -> every node that may share its memory (through views and in-place operations)."""
    parent: dict[fx.Node, fx.Node] = {}

    def find(n: fx.Node) -> fx.Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    for node in graph.nodes:
        base = mutated_input(node, root) or (node.args[0] if _is_view(node) else None)
        if base is not None:
            a, b = find(node), find(base)
            if a is not b:
                parent[a] = b
    members: dict[fx.Node, list[fx.Node]] = {}
    for node in graph.nodes:
        members.setdefault(find(node), []).append(node)
    return {node: members[find(node)] for node in graph.nodes}


def _faithful_dead_code(graph: fx.Graph, is_impure_node=None) -> bool:  # noqa: ANN001 (torch's signature)
    """Dead-code elimination that keeps what eager execution computes (see the module docstring): stands in
    for ``fx.Graph.eliminate_dead_code`` while an extractor is built."""
    root = graph.owning_module
    groups = alias_groups(graph, root)
    order = {n: i for i, n in enumerate(graph.nodes)}
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    # a returned value that a later in-place operation changes is returned as it was at its node
    for value in list(output.all_input_nodes):
        later = [m for m in groups[value] if order[m] > order[value] and mutated_input(m, root) is not None]
        if later and value.op != "placeholder":
            with graph.inserting_after(value):
                copy = graph.call_method("clone", (value,))
            output.replace_input_with(value, copy)
    groups = alias_groups(graph, root)
    order = {n: i for i, n in enumerate(graph.nodes)}
    last_returned = max((order[n] for n in output.all_input_nodes), default=-1)
    changed = False
    for node in reversed(list(graph.nodes)):
        if node.op in ("placeholder", "output") or node.users:
            continue
        # a shape assertion after everything returned checks later layers only; FX counts it as a side
        # effect, which kept every layer it reads the shape of (a shallow exit of GCViT or CoaT computed
        # the whole network: its MACs, parameters and latency were the full network's)
        late_assertion = _is_assertion(node) and order[node] > last_returned
        if not late_assertion and (is_impure_node(node) if is_impure_node is not None else node.is_impure()):
            continue
        if mutated_input(node, root) is not None and any(
            order[u] > order[node] for m in groups[node] for u in m.users if u is not node
        ):
            continue  # an in-place change that a later, kept operation reads
        graph.erase_node(node)
        changed = True
    return changed


def _is_assertion(node: fx.Node) -> bool:
    """``torch._assert`` and its kin (``torch._assert_async``, ``aten._assert_*``): checks without a value."""
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", None) or str(node.target)
    return name.split(".")[-1].startswith("_assert")


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
        elif _is_matmul(node) and any(a.op == "get_attr" for a in node.all_input_nodes):
            weighted = 1  # ``x @ self.weight``, ``torch.addmm(b, x, self.w)``: a linear layer written out
        depth[node] = weighted + max((depth[a] for a in node.all_input_nodes), default=0)
        if node.op == "output":
            for name, value in node.args[0].items():
                out[name] = depth[value]
    return out
