"""A multi-exit network cut into segments at its exits, for early-exit inference.

Segment ``i`` (``i < K``) takes the tensors that cross cut ``i - 1`` (segment 0: the image), computes the
backbone's operations between cut ``i - 1`` and cut ``i``, and returns the tensors that cross cut ``i`` and
the logits of exit ``i``; the last segment returns the final logits. The cut is made in the backbone's
traced graph (eval mode) in execution order, so every operation belongs to exactly one segment: a cascade
run to the end computes each feature once, plus the heads it ran.

What crosses a cut is usually the exit's feature alone (a ResNet's block output); for graphs where a later
operation reads an earlier tensor (a skip over the cut, the input reused), those tensors cross too and are
passed along until their last reader.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from compact.errors import CompactError
from compact.exits import _fx

#: largest tolerated |segment - network| logit difference, scaled as the profiler scales ONNX parity
PARITY_LIMIT = 1e-4


class Segment(nn.Module):
    """``body`` (an FX graph module: the cut tensors in, ``(*tensors crossing the next cut, exit feature)``
    out) followed by the exit's ``head``; the last segment has no head and its body returns the logits."""

    def __init__(self, body: fx.GraphModule, head: nn.Module | None, num_in: int, num_out: int) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.num_in = num_in
        self.num_out = num_out  # tensors crossing the next cut (0 for the last segment)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.body(*inputs)
        if self.head is None:
            return (outs[-1],)
        return (*outs[:-1], self.head(outs[-1]))


@dataclass
class Cut:
    """The segments of a network and what crosses each cut (node names of the traced graph)."""

    segments: list[Segment]
    crossing: list[list[str]]  # crossing[i]: names of the tensors passed from segment i to i + 1


def _plain(value: object) -> bool:
    """Whether ``value`` is data a graph can hold as a constant: numbers, strings, None, dtypes, sizes and
    lists or tuples of them (never a tensor, whose values would be those of one example batch)."""
    if isinstance(value, list | tuple):  # torch.Size too
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str | torch.dtype | torch.device)


def _a(value: object) -> str:
    """'an int', 'a tuple': the value's type with its article, for messages."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


@dataclass
class _Traced:
    """What :func:`_values` found out about the nodes that cross a cut."""

    constants: dict[fx.Node, object]  # same value at every batch size: baked in
    per_batch: dict[fx.Node, tuple[int, int]]  # ints equal to a * batch + c: (a, c), rebuilt after the cut
    batch_major: set[fx.Node]  # tensors whose first dimension is the batch


def _values(ext: fx.GraphModule, nodes: list[fx.Node], input_size: Sequence[int]) -> _Traced:
    """Trace ``nodes`` at batch 1, 2 and 3. A value that is not a tensor (a feature size MViTv2's blocks hand
    on beside their tokens) cannot cross a cut as it is, since an ONNX graph's outputs are tensors (the
    exporter drops the others, and the outputs after them take their names): one that stays the same is a
    constant; an int that follows the batch size (PiT's and CoaT's ``B`` from ``x.shape``) is rebuilt in each
    later segment from the first dimension of a tensor that crosses with it; anything else is refused."""
    values, firsts = [], []
    device = next((q.device for q in ext.parameters()), torch.device("cpu"))
    batches = (1, 2, 3)
    for batch in batches:
        interpreter = fx.Interpreter(ext, garbage_collect_values=False)
        with torch.no_grad():
            interpreter.run(torch.zeros(batch, *input_size, device=device))
        env = interpreter.env
        values.append({n: env[n] for n in nodes if not isinstance(env[n], torch.Tensor)})
        firsts.append({n for n in nodes if isinstance(env[n], torch.Tensor) and env[n].dim() and len(env[n]) == batch})
    traced = _Traced({}, {}, set.intersection(*firsts))
    for node, value in values[0].items():
        if not _plain(value):
            raise CompactError(
                f"the network cannot be cut at these exits: a cut passes {node.name}, {_a(value)} "
                "holding tensors, and an ONNX segment takes single tensors only (choose other exits with "
                "--exit-nodes)"
            )
        seen = [v.get(node) for v in values]
        if all(v == value for v in seen):
            traced.constants[node] = value
        elif all(type(v) is int for v in seen) and seen[1] - seen[0] == seen[2] - seen[1]:
            a = seen[1] - seen[0]
            traced.per_batch[node] = (a, seen[0] - a * batches[0])
        else:
            raise CompactError(
                f"the network cannot be cut at these exits: beside its tensors, a cut passes {node.name}, "
                f"{_a(value)} that changes with the batch size ({', '.join(map(repr, seen))} at batch "
                "1, 2, 3), and an ONNX segment takes tensors only (choose other exits with --exit-nodes)"
            )
    return traced


def _rebuild(g: fx.Graph, source: fx.Node, a: int, c: int) -> fx.Node:
    """``a * source.size(0) + c`` in ``g``: an int that follows the batch size, after the cut it crossed."""
    value = g.call_method("size", (source, 0))
    if a != 1:
        value = g.call_function(operator.mul, (value, a))
    if c:
        value = g.call_function(operator.add, (value, c))
    return value


def split(net: nn.Module, input_size: Sequence[int] | None = None) -> Cut:
    """Cut a :class:`~compact.exits.MultiExitNet` into ``net.num_outputs`` segments (see the module
    docstring). The segments share nothing with ``net``'s later training: call on a network in its final
    state (they reference its parameters). With ``input_size`` (C, H, W), values other than tensors that
    cross a cut are baked into the segments that read them (sizes) or rebuilt there from a tensor's first
    dimension (ints that follow the batch size), so that every segment takes and returns tensors only, as an
    ONNX graph does; without it they are passed along as they are."""
    if not getattr(net, "exit_nodes", None):
        raise CompactError("a cascade needs a network with auxiliary exits; this one has only its final output")
    ext = _fx.feature_extractor(net.backbone, [*net.exit_nodes, net.final_node])
    ext.eval()
    graph = ext.graph
    output = next(n for n in graph.nodes if n.op == "output")
    values = output.args[0]
    cuts = [values[name] for name in [*net.exit_nodes, net.final_node]]
    order = {n: i for i, n in enumerate(graph.nodes)}
    positions = [order[c] for c in cuts]
    if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
        raise CompactError(
            "the exits are not computed in order of depth in the traced graph; a cascade cannot stop between them"
        )

    def segment_of(node: fx.Node) -> int:
        for i, p in enumerate(positions):
            if order[node] <= p:
                return i
        return len(cuts) - 1

    computed = [n for n in graph.nodes if n.op not in ("get_attr", "output")]
    seg = {n: segment_of(n) for n in computed}
    last = len(cuts) - 1
    crossing: list[list[fx.Node]] = []
    for i in range(last):
        live = [n for n in computed if seg[n] <= i and any(u.op != "output" and seg.get(u, -1) > i for u in n.users)]
        crossing.append(live)
        if not live:
            raise CompactError(f"nothing computed before exit {i} is used after it: the network cannot be cut there")

    # arguments traced at their defaults (timm's ViT: attn_mask=None, is_causal=False) are placeholders that
    # hold their value: constants in every segment, never inputs
    constants: dict[fx.Node, object] = {n: n.args[0] for n in computed if n.op == "placeholder" and n.args}
    traced = _Traced({}, {}, set())
    if input_size:
        crossed = sorted({n for c in crossing for n in c if n not in constants}, key=order.get)
        traced = _values(ext, crossed, input_size)
        constants.update(traced.constants)
    crossing = [[n for n in c if n not in constants and n not in traced.per_batch] for c in crossing]
    segments = []
    for i in range(len(cuts)):
        g = fx.Graph()
        env: dict[fx.Node, object] = dict(constants)
        inputs = crossing[i - 1] if i > 0 else [n for n in computed if n.op == "placeholder" and n not in constants]
        if i == 0 and len(inputs) != 1:
            raise CompactError(f"a cascade needs a network with one input, this one has {len(inputs)}")
        for k, node in enumerate(inputs):
            env[node] = g.placeholder(f"in{k}")

        def arg(a: fx.Node, env=env, g=g, i=i, inputs=inputs) -> fx.Node:
            if a not in env and a in traced.per_batch:
                source = next((n for n in inputs if n in traced.batch_major), None)
                if source is None:
                    raise CompactError(
                        f"the network cannot be cut at these exits: segment {i} reads {a.name}, an int that "
                        "follows the batch size, and no tensor that crosses with it has the batch as its first "
                        "dimension to rebuild it from (choose other exits with --exit-nodes)"
                    )
                env[a] = _rebuild(g, env[source], *traced.per_batch[a])
            if a not in env:
                if a.op != "get_attr":
                    raise CompactError(f"segment {i} reads {a.name}, which is not passed across the cut")
                env[a] = g.node_copy(a)
            return env[a]

        for node in computed:
            if seg[node] != i or node in env:
                continue
            for a in node.all_input_nodes:
                arg(a)
            env[node] = g.node_copy(node, arg)
        outs = [env[n] for n in crossing[i]] if i < last else []
        g.output((*outs, env[cuts[i]]))
        body = fx.GraphModule(ext, g)
        head = net.heads[i] if i < last else None
        segments.append(Segment(body, head, len(inputs), len(outs)).eval())
    return Cut(segments, [[n.name for n in c] for c in crossing])


@torch.no_grad()
def run_segments(segments: Sequence[Segment], x: torch.Tensor) -> list[torch.Tensor]:
    """Logits of every exit (final last) by running the segments one after another on all of ``x``."""
    logits, carry = [], (x,)
    for s in segments:
        outs = s(*carry)
        carry = outs[:-1]
        logits.append(outs[-1])
    return logits


def scaled_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|): the profiler's parity measure."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max() / max(1.0, float(b.float().abs().max())))


@torch.no_grad()
def check_segments(net: nn.Module, segments: Sequence[Segment], input_size: Sequence[int]) -> list[float]:
    """Per exit, the scaled difference between the segments' logits and the network's shared forward
    (eval mode, random inputs); raises if one exceeds :data:`PARITY_LIMIT`."""
    x = torch.randn(4, *input_size, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        expected = net.forward_exits(x)
    finally:
        net.train(was_training)
    got = run_segments(segments, x)
    diffs = [scaled_difference(a, b) for a, b in zip(got, expected, strict=True)]
    bad = [f"exit {i}: {d:.3g}" for i, d in enumerate(diffs) if not d <= PARITY_LIMIT]
    if bad:
        raise CompactError(f"the cut network differs from the multi-exit network ({', '.join(bad)})")
    return diffs
