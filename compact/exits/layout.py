"""Which dimension of an exit's feature holds its channels.

A head pools a feature over everything but its channels, so it must know where they are. PyTorch
convolutions give ``(N, C, H, W)``, but Swin (timm and torchvision) keeps its stages ``(N, H, W, C)`` and
vision transformers give tokens ``(N, L, C)``. Taking dimension 1 for channels everywhere trains heads on
nonsense there (a Swin stage's height read as its channels) without any error.

The channel dimension is followed through the traced graph, on one forward: the input's is dimension 1, a
convolution or batch/group/instance norm puts it at dimension 1, a linear layer (or ``x @ weight``) at the
last; permutes, transposes, reshapes, indexing and reductions move it; any other operation keeps it where
its inputs have it when it keeps that dimension's size. Where it cannot be followed (a reshape that splits
the channels into heads), it is unknown until the next layer that defines it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from compact.errors import CompactError
from compact.exits import _fx

#: feature layouts a head accepts, by (rank, channel dimension)
LAYOUTS = {(2, 1): "nc", (3, 1): "ncl", (3, 2): "nlc", (4, 1): "nchw", (4, 3): "nhwc"}

_CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)
_CHANNELS_FIRST_FUNCTIONS = {
    F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, F.conv_transpose1d,
    F.conv_transpose2d, F.conv_transpose3d, F.batch_norm, F.instance_norm, F.group_norm, torch.batch_norm,
    torch.group_norm, torch.instance_norm,
}  # fmt: skip
_RESHAPES = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, "reshape", "view",
             "flatten", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as", "contiguous"}  # fmt: skip
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp, "mean", "sum",
               "amax", "amin", "std", "var", "logsumexp"}  # fmt: skip
_UNKNOWN = {torch.einsum, F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold, "unfold", "as_strided"}


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps the shape of every tensor a node returns."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


Dims = frozenset[int]


def channels(feature: torch.Tensor, layout: str) -> int:
    """The number of channels of ``feature`` in ``layout``."""
    return int(feature.shape[-1] if layout in ("nhwc", "nlc") else feature.shape[1])


def feature_layouts(
    extractor: fx.GraphModule, input_size: Sequence[int], names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Run ``extractor`` (in its current mode) on one zero input of ``input_size``; returns its outputs and,
    for each of ``names``, the layout of that output (one of :data:`LAYOUTS`' values). A feature whose
    channel dimension cannot be told is a :class:`CompactError` that names it."""
    graph = extractor.graph
    recorder = _Recorder(extractor)
    with torch.no_grad():
        outputs = recorder.run(torch.zeros(1, *input_size))
    dims: dict[fx.Node, Dims | None] = {}
    for n in graph.nodes:
        dims[n] = _channels(n, extractor, recorder, dims)
    returned = next(n for n in graph.nodes if n.op == "output").args[0]
    layouts = {}
    for name in names:
        node = returned[name]
        shape, found = recorder.shapes.get(node), dims.get(node)
        axis = next(iter(found)) if found is not None and len(found) == 1 else None
        layout = LAYOUTS.get((len(shape), axis)) if shape is not None else None
        if shape is not None and len(shape) == 2:
            layout = "nc"  # (N, C): nothing else it can be
        if layout is None:
            what = f"shape {tuple(shape)}" if shape is not None else "not a tensor"
            where = "cannot be told" if found is None else f"is {sorted(found)}"
            raise CompactError(
                f"the feature at {name!r} ({what}) has no layout an exit head takes: its channel dimension "
                f"{where}; heads take (N, C, H, W), (N, H, W, C), (N, L, C), (N, C, L) or (N, C) features. "
                "Place the exit at another node (e.g. a block's output)"
            )
        layouts[name] = layout
    return outputs, layouts


def _channels(n: fx.Node, root: nn.Module, rec: _Recorder, known: dict[fx.Node, Dims | None]) -> Dims | None:
    """The dimensions of ``n``'s tensor that hold channels (more than one where a reshape split them, e.g.
    ShuffleNet's channel shuffle), or None when they cannot be told."""
    shape = rec.shapes.get(n)
    if n.op == "placeholder":
        return frozenset({1}) if shape is not None and len(shape) >= 2 else None
    if shape is None or n.op in ("get_attr", "output"):
        return None
    rank = len(shape)
    first, last = frozenset({1}), frozenset({rank - 1})
    target = n.target
    if n.op == "call_module":
        module = root.get_submodule(target)
        if isinstance(module, _CHANNELS_FIRST_MODULES):
            return first
        if isinstance(module, nn.Linear):
            return last
        weighted = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
        if weighted:  # a module the tracer keeps whole: its last weighted layer decides
            return first if isinstance(weighted[-1], nn.modules.conv._ConvNd) else last
        return _kept(n, shape, rec, known)
    if target in _CHANNELS_FIRST_FUNCTIONS:
        return first
    if target is F.linear:
        return last
    if target in _UNKNOWN:
        return None
    if _fx._is_matmul(n):
        if any(x.op == "get_attr" for x in n.all_input_nodes):
            return last  # ``x @ self.weight``: a linear layer written out
        other = n.args[-1] if isinstance(n.args[-1], fx.Node) else None
        b = known.get(other) if other is not None else None
        return last if b is not None and b == frozenset({len(rec.shapes.get(other) or ()) - 1}) else None
    if target in (torch.cat, torch.concat, torch.stack):
        return _kept(n, shape, rec, known)
    source = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    before = rec.shapes.get(source) if source is not None else None
    if source is None or before is None:
        return _tuple_item(n, rec, known) if target is operator.getitem else None
    held = known.get(source)
    if held is None:
        return _kept(n, shape, rec, known)
    args = [None if isinstance(x, fx.Node) else x for x in n.args[1:]]
    order = _reordered(target, args, len(before))
    if order is not None:
        return frozenset(order.index(d) for d in held) if all(d in order for d in held) else None
    if target in _RESHAPES:
        return _reshaped(before, held, shape)
    if target is operator.getitem:
        return _indexed(n.args[1], before, held)
    if target in _REDUCTIONS:
        return _reduced(n, before, held, shape)
    return _kept(n, shape, rec, known)


def _reordered(target: Any, args: list[Any], rank: int) -> list[int] | None:
    """For a permute, transpose or movedim: the input dimension at each output position."""
    ints = all(isinstance(a, int) for a in args)
    if target in ("permute", torch.permute):
        dims = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else args
        return [d % rank for d in dims] if dims and all(isinstance(d, int) for d in dims) else None
    if target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes, "t", torch.t) and ints:
        d0, d1 = (args[0] % rank, args[1] % rank) if len(args) >= 2 else (0, 1)
        order = list(range(rank))
        order[d0], order[d1] = order[d1], order[d0]
        return order
    if target in ("movedim", torch.movedim) and len(args) == 2 and ints:
        order = list(range(rank))
        order.insert(args[1] % rank, order.pop(args[0] % rank))
        return order
    return None


def _kept(n: fx.Node, shape: tuple[int, ...], rec: _Recorder, known: dict[fx.Node, Dims | None]) -> Dims | None:
    """The channel dimensions of the inputs that keep them (same rank, same sizes there), if they agree."""
    inputs = [x for x in n.all_input_nodes if rec.shapes.get(x) is not None and known.get(x) is not None]
    concatenated = n.target in (torch.cat, torch.concat)
    if n.target is torch.stack:
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        found = {known[x] for x in inputs}
        if len(found) != 1 or not isinstance(dim, int):
            return None
        return frozenset(d + 1 if dim % len(shape) <= d else d for d in found.pop())
    candidates = set()
    for x in inputs:
        s, held = rec.shapes[x], known[x]
        if len(s) == len(shape) and (concatenated or all(s[d] == shape[d] for d in held)):
            candidates.add(held)
    if len(candidates) == 1:
        return candidates.pop()
    same_shape = {known[x] for x in inputs if rec.shapes[x] == shape}
    return same_shape.pop() if len(same_shape) == 1 else None


def _blocks(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[range, range]] | None:
    """A row-major reshape as pairs (input dimensions, output dimensions) of equal element counts."""
    blocks, i, j = [], 0, 0
    while i < len(before) or j < len(after):
        si, sj = i, j
        pi = pj = 1
        if i < len(before):
            pi, i = before[i], i + 1
        if j < len(after):
            pj, j = after[j], j + 1
        while pi != pj:
            if pi < pj and i < len(before):
                pi, i = pi * before[i], i + 1
            elif pj < pi and j < len(after):
                pj, j = pj * after[j], j + 1
            else:
                return None
        blocks.append((range(si, i), range(sj, j)))
    return blocks


def _reshaped(before: tuple[int, ...], held: Dims, after: tuple[int, ...]) -> Dims | None:
    """Where the channel dimensions ``held`` of ``before`` land in ``after``: the output dimensions of each
    block of input dimensions that holds only channels (and dimensions of size 1)."""
    if 0 in before:
        return None
    blocks = _blocks(before, after)
    if blocks is None:
        return None
    out: set[int] = set()
    for ins, outs in blocks:
        wide = {d for d in ins if before[d] > 1}
        if not wide & held:
            continue
        if not wide <= held:
            return None  # channels merged with another dimension
        out |= {d for d in outs if after[d] > 1} or set(outs)
    return frozenset(out) or None


def _indexed(index: Any, shape: tuple[int, ...], held: Dims) -> Dims | None:
    """Where the channel dimensions land after ``tensor[index]`` with basic indexing (ints, slices, None, ...)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, fx.Node) or not (i is None or i is Ellipsis or isinstance(i, int | slice)) for i in items):
        return None
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(shape) - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * fill + items[k + 1 :]
    items += [slice(None)] * (len(shape) - sum(1 for i in items if i is not None))
    dim, out, found = 0, 0, set()
    for i in items:
        if i is None:
            out += 1
            continue
        if dim in held:
            if isinstance(i, int):
                return None
            found.add(out)
        dim += 1
        out += 0 if isinstance(i, int) else 1
    return frozenset(found) or None


def _reduced(n: fx.Node, before: tuple[int, ...], held: Dims, after: tuple[int, ...]) -> Dims | None:
    if len(after) == len(before):
        return held if all(after[d] == before[d] for d in held) else None
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, list | tuple) or not all(isinstance(d, int) for d in dims):
        return None
    gone = {d % len(before) for d in dims}
    if gone & held:
        return None
    return frozenset(d - sum(1 for g in gone if g < d) for d in held)


def _tuple_item(n: fx.Node, rec: _Recorder, known: dict[fx.Node, Dims | None]) -> Dims | None:
    """``pieces[i]`` of a split, chunk or unbind along another dimension than the channels'."""
    parent = n.args[0]
    source = parent.args[0] if isinstance(parent, fx.Node) and parent.args else None
    if not isinstance(source, fx.Node) or known.get(source) is None or rec.shapes.get(source) is None:
        return None
    held, rank = known[source], len(rec.shapes[source])
    if parent.target in ("unbind", torch.unbind):
        dim = parent.args[1] if len(parent.args) > 1 else parent.kwargs.get("dim", 0)
        if not isinstance(dim, int) or dim % rank in held:
            return None
        return frozenset(d - (1 if dim % rank < d else 0) for d in held)
    if parent.target in ("split", "chunk", "tensor_split", torch.split, torch.chunk, torch.tensor_split):
        dim = parent.kwargs.get("dim", parent.args[2] if len(parent.args) > 2 else 0)
        return held if isinstance(dim, int) and dim % rank not in held else None
    return None
