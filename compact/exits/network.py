"""A network with auxiliary exits: one shared forward gives the logits of every output.

:func:`attach_exits` wraps any model whose blocks can be discovered (or named) into a
:class:`MultiExitNet`. The wrapped model is untouched: ``MultiExitNet.forward`` is the plain model's forward
(final logits only), so FLOP counters, pruners and ONNX export keep seeing a single-output network; the
exits are reached through :meth:`MultiExitNet.forward_exits` and :meth:`MultiExitNet.forward_exit`, which
run FX feature extractors sharing the backbone's parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from compact.errors import CompactError
from compact.exits import _fx
from compact.exits.discovery import Block, discover_block_names, no_blocks_error
from compact.exits.heads import HEADS, create_head
from compact.exits.layout import channels, feature_layouts


def even_positions(num_blocks: int, num_outputs: int) -> list[int]:
    """1-based block numbers for ``num_outputs - 1`` auxiliary exits spread evenly (paper Section 4.1.2).

    The paper puts an output every ``tau = ceil(L / K^)`` layers. compact applies the rule in blocks, so that
    every exit falls on a block boundary: a spacing of ``s = floor(B / K^)`` blocks, counted back from the
    final output. For ResNet-56 (27 blocks) and 5 outputs this gives blocks 7, 12, 17, 22, i.e. layers
    15, 25, 35, 45 as in the paper's Table 6, whereas a literal 12-layer spacing (12, 24, 36, 48) would
    not fall on block ends.
    """
    k = num_outputs - 1
    if num_outputs < 1:
        raise CompactError(f"the number of outputs (final included) must be >= 1, got {num_outputs}")
    if k > num_blocks:
        raise CompactError(
            f"{k} auxiliary exits ({num_outputs} outputs) requested but the network has only {num_blocks} blocks"
        )
    spacing = max(1, num_blocks // num_outputs)
    return [max(i + 1, num_blocks - spacing * (k - i)) for i in range(k)]


class MultiExitNet(nn.Module):
    """A backbone plus auxiliary heads.

    Outputs are indexed ``0..K``: ``0..K-1`` are the auxiliary exits (shallow to deep) and ``K`` is the
    backbone's own final output. ``depths[i]`` is output ``i``'s depth in weighted layers (the paper's
    ``L_i``), used by the loss weights of Eq. 5.
    """

    def __init__(
        self,
        backbone: nn.Module,
        exit_nodes: Sequence[str],
        heads: Sequence[nn.Module],
        depths: Sequence[int],
        final_node: str,
        head_type: str = "bn-relu-gap-fc",
    ) -> None:
        super().__init__()
        if len(exit_nodes) != len(heads) or len(depths) != len(heads) + 1:
            raise CompactError("MultiExitNet needs one head per exit node and one depth per output")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.exit_nodes = list(exit_nodes)
        self.depths = [int(d) for d in depths]
        self.final_node = final_node
        self.head_type = head_type
        # FX extractors share the backbone's parameters; kept out of the module tree so that state_dict,
        # parameters() and optimizers see each parameter once.
        self.__dict__["_extractors"] = {}

    # -- structure ---------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.heads) + 1

    def _extractor(self, key: int | str) -> nn.Module:
        cache = self.__dict__["_extractors"]
        if key not in cache:
            nodes = [*self.exit_nodes, self.final_node] if key == "all" else [self.exit_nodes[key]]
            ext = _fx.feature_extractor(self.backbone, nodes)
            ext.train(self.training)
            cache[key] = ext
        return cache[key]

    def train(self, mode: bool = True) -> MultiExitNet:
        super().train(mode)
        for ext in self.__dict__["_extractors"].values():
            ext.train(mode)
        return self

    def _check_output(self, i: int) -> int:
        if not isinstance(i, int) or not -self.num_outputs <= i < self.num_outputs:
            raise CompactError(f"output index {i!r} does not exist; valid: 0..{self.num_outputs - 1} (final last)")
        return i % self.num_outputs

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final logits only, exactly the backbone's forward."""
        return self.backbone(x)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One backbone forward returning the feature at every exit node and the final logits
        (under ``final_node``)."""
        if not self.exit_nodes:
            return {self.final_node: self.backbone(x)}
        return self._extractor("all")(x)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One shared forward: logits of every output, shallow to deep, final last."""
        if not self.exit_nodes:
            return [self.backbone(x)]
        feats = self.features(x)
        outs = [head(feats[name]) for head, name in zip(self.heads, self.exit_nodes, strict=True)]
        outs.append(feats[self.final_node])
        return outs

    def forward_exit(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Logits of output ``i`` alone, computing the network only up to that exit."""
        i = self._check_output(i)
        if i == self.num_outputs - 1:
            return self.backbone(x)
        return self.heads[i](self._extractor(i)(x)[self.exit_nodes[i]])

    # -- parameters by output ----------------------------------------------------------------------
    def trunk_parameters(self, i: int) -> list[nn.Parameter]:
        """Backbone parameters that output ``i`` depends on (layers ``0..L_i``), in backbone order."""
        i = self._check_output(i)
        if i == self.num_outputs - 1:
            return list(self.backbone.parameters())
        used = {id(p) for p in self._extractor(i).parameters()}
        return [p for p in self.backbone.parameters() if id(p) in used]

    def head_parameters(self, i: int) -> list[nn.Parameter]:
        """Parameters of output ``i``'s own classifier head (empty for the final output)."""
        i = self._check_output(i)
        return [] if i == self.num_outputs - 1 else list(self.heads[i].parameters())

    def output_parameters(self, i: int) -> list[nn.Parameter]:
        """Every parameter of the exit-``i`` sub-model: trunk up to ``L_i`` plus head ``i``."""
        return self.trunk_parameters(i) + self.head_parameters(i)

    def segment_parameters(self, s: int) -> list[nn.Parameter]:
        """Backbone parameters of segment ``s``: layers ``L_{s-1}+1 .. L_s`` (segment 0 starts at the input)."""
        s = self._check_output(s)
        below = {id(p) for p in self.trunk_parameters(s - 1)} if s > 0 else set()
        return [p for p in self.trunk_parameters(s) if id(p) not in below]

    def output_param_counts(self) -> list[int]:
        """Parameter count of each output's sub-model (trunk up to ``L_i`` plus head ``i``)."""
        return [sum(p.numel() for p in self.output_parameters(i)) for i in range(self.num_outputs)]

    def describe(self) -> list[dict]:
        """One row per output: name, depth, parameter count and the layout of the feature its head reads
        (``nchw``, ``nhwc``, ``nlc``, ...; None for the final output)."""
        counts = self.output_param_counts()
        names = [*self.exit_nodes, f"{self.final_node} (final)"]
        layouts = [getattr(h, "layout", None) for h in self.heads] + [None]
        return [
            {"output": i, "node": names[i], "depth": self.depths[i], "params": counts[i], "feature": layouts[i]}
            for i in range(self.num_outputs)
        ]


def attach_exits(
    model: nn.Module,
    num_outputs: int | None = None,
    *,
    blocks: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    nodes: Sequence[str] | None = None,
    head: str = "bn-relu-gap-fc",
    input_size: Sequence[int] = (3, 32, 32),
    check: bool = True,
) -> MultiExitNet:
    """Attach auxiliary heads to ``model``.

    Choose the exits with exactly one of:

    - ``num_outputs``: total number of outputs, final included (the paper's ``K^``); auxiliary exits are
      spread evenly over the discovered blocks (:func:`even_positions`);
    - ``blocks``: 1-based numbers of the discovered blocks after which to attach exits;
    - ``layers``: depths in weighted layers (e.g. ``[15, 25, 35, 45]`` for ``cifar_resnet56``), each of
      which must be the depth at which a discovered block ends;
    - ``nodes``: module or FX graph-node names, for models whose blocks are not discovered.

    ``input_size`` (C, H, W) is used once, with a dummy batch in eval mode, to size the heads. ``check``:
    verify the extraction on a random batch (:func:`check_faithful`); compact skips it only when it rebuilds
    a network it described itself (a model file or checkpoint, checked when the exits were first attached).
    """
    if hasattr(model, "_orig_mod") or type(model).__name__ == "OptimizedModule":
        raise CompactError(
            "attach exits to the plain model, not to the result of torch.compile (FX cannot trace a compiled "
            "module); compile afterwards if you need to"
        )
    check_input_size(model, input_size)
    chosen = [a is not None for a in (num_outputs, blocks, layers, nodes)]
    if sum(chosen) != 1:
        raise CompactError("give exactly one of num_outputs, blocks, layers or nodes to place the exits")
    HEADS.get(head)  # validate early
    found, final_node, final_depth = _candidates(model, nodes, require_blocks=num_outputs != 1)

    if nodes is not None:
        selected = found
    elif num_outputs is not None:
        selected = [found[b - 1] for b in even_positions(len(found), int(num_outputs))]
    elif blocks is not None:
        blocks = [int(b) for b in blocks]
        bad = [b for b in blocks if not 1 <= b <= len(found)]
        if bad:
            raise CompactError(f"block positions {bad} out of range; {type(model).__name__} has blocks 1..{len(found)}")
        selected = [found[b - 1] for b in blocks]
    else:
        by_depth = {b.depth: b for b in found}
        bad = [d for d in layers if int(d) not in by_depth]
        if bad:
            valid = ", ".join(str(b.depth) for b in found)
            raise CompactError(f"no block ends at layer(s) {bad}; blocks end at layers: {valid}")
        selected = [by_depth[int(d)] for d in layers]

    depths = [b.depth for b in selected]
    if any(later <= earlier for earlier, later in itertools.pairwise(depths)):
        raise CompactError(
            "exit positions must be strictly increasing in depth; got "
            + ", ".join(f"{b.name} (layer {b.depth})" for b in selected)
        )
    if depths and depths[-1] >= final_depth:
        raise CompactError(f"exit {selected[-1].name} is not shallower than the final output (layer {final_depth})")

    # size the heads with one dummy batch in eval mode (no BatchNorm statistics change)
    was_training = model.training
    model.eval()
    extractor = _fx.feature_extractor(model, [*(b.name for b in selected), final_node]).eval()
    try:
        feats, layouts = feature_layouts(extractor, input_size, [b.name for b in selected])
    finally:
        model.train(was_training)
    num_classes = feats[final_node].shape[-1]
    heads = [
        create_head(head, channels(feats[b.name], layouts[b.name]), num_classes, layouts[b.name]) for b in selected
    ]
    net = MultiExitNet(model, [b.name for b in selected], heads, [*depths, final_depth], final_node, head)
    net.__dict__["_extractors"]["all"] = extractor.train(model.training)  # reuse the trace
    if check:
        check_faithful(net, input_size)
    return net


def _runs(model: nn.Module, input_size: Sequence[int]) -> str | None:
    """None if ``model`` runs on one input of ``input_size``, else the first line of its complaint."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


def check_input_size(model: nn.Module, input_size: Sequence[int]) -> None:
    """Refuse an input size the model cannot take (its feature maps shrink to nothing, or its layers expect
    another size), naming a square size that works: the smallest up to 1024 px where sizes above it work too
    (a network whose sizes must divide a window has no such size; multiples of 32 below a bisected size are
    tried to catch one), else the model's declared default."""
    was_training = model.training
    model.eval()
    try:
        problem = _runs(model, input_size)
        if problem is None:
            return
        hint = ""
        if len(input_size) == 3:
            c, side = int(input_size[0]), int(max(input_size[1:]))
            default = _default_side(model)
            if _runs(model, (c, 1024, 1024)) is None:
                lo, hi = side, 1024  # lo fails, hi works
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if _runs(model, (c, mid, mid)) is None else (mid, hi)
                # bisection assumes that every size above the smallest works: sizes just above it must, and
                # none of the multiples of 32 below it (timm's HaloNet-26t takes 256 and 512 px, not 288..480)
                above = all(_runs(model, (c, s, s)) is None for s in (hi + 1, hi + 2, hi + 3))
                if above and all(_runs(model, (c, s, s)) is not None for s in range(side // 32 * 32 + 32, hi, 32)):
                    hint = f"; the smallest square input it takes is {c}x{hi}x{hi} (--image-size {hi})"
            if not hint and default is not None and _runs(model, (c, default, default)) is None:
                hint = f"; it takes its default size {c}x{default}x{default} (--image-size {default})"
    finally:
        model.train(was_training)
    raise CompactError(f"{type(model).__name__} cannot take inputs of size {tuple(input_size)} ({problem}){hint}")


def _default_side(model: nn.Module) -> int | None:
    """The square input side a timm model declares in its configuration (library metadata), if any."""
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, tuple | list) and len(size) == 3 and size[1] == size[2] and isinstance(size[1], int):
        return size[1]
    return None


def check_faithful(net: MultiExitNet, input_size: Sequence[int]) -> None:
    """Refuse a network whose extracted graphs compute something else than the model: on a random batch in
    eval mode, the shared forward's final output must equal the model's own forward, and each exit computed
    alone (``forward_exit``) must equal the same exit of the shared forward (``forward_exits``)."""
    param = next(iter(net.parameters()), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            outs = net.forward_exits(x)
            checks = [("the final output of the shared forward", outs[-1], net.backbone(x))]
            checks += [(f"exit {i} computed alone", net.forward_exit(x, i), outs[i]) for i in range(len(net.heads))]
    finally:
        net.train(was_training)
    wrong = []
    for what, a, b in checks:
        if a.shape != b.shape:
            wrong.append(f"{what} has shape {tuple(a.shape)} instead of {tuple(b.shape)}")
            continue
        diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        scale = max(1.0, b.float().abs().max().item() if b.numel() else 1.0)
        if not diff <= 1e-4 * scale:
            wrong.append(f"{what} differs by {diff:.3g}")
    if wrong:
        raise CompactError(
            f"cannot attach exits to {type(net.backbone).__name__} faithfully: {'; '.join(wrong)} (the traced graph "
            "does not compute what the model's forward computes; place the exits elsewhere or report the model)"
        )


def _candidates(
    model: nn.Module, nodes: Sequence[str] | None, require_blocks: bool = True
) -> tuple[list[Block], str, int]:
    """Candidate exit points (discovered blocks, or the given names) with depths; final node and its depth."""
    names_in_graph = _fx.graph_node_names(model)
    if not names_in_graph:
        raise CompactError(f"{type(model).__name__} has an empty graph")
    final_node = names_in_graph[-1]
    if nodes is not None:
        names = [str(n) for n in nodes]
        if not names:
            raise CompactError("nodes is empty; give at least one module or graph-node name")
        if final_node in names:
            raise CompactError(f"{final_node!r} is the final output; exits must be placed before it")
    else:
        # a known block that FX keeps inside a leaf module (timm's MobileViT blocks) has no node of its own
        names = [n for n in discover_block_names(model) if _in_graph(n, names_in_graph)]
    depth_of = _fx.weighted_depths(_fx.feature_extractor(model, [*dict.fromkeys(names), final_node]))
    final_depth = depth_of[final_node]
    if nodes is None and require_blocks and (not names or max(depth_of[n] for n in names) < final_depth / 2):
        # no known blocks, or known ones only in the first half (the rest is of classes compact does not know):
        # the stage ends timm declares for feature extraction, where they reach deeper
        stages = _stage_blocks(model, names_in_graph, final_node)
        if stages and (not names or max(d for _, d in stages) > max(depth_of[n] for n in names)):
            return [Block(n, i + 1, d) for i, (n, d) in enumerate(stages)], final_node, final_depth
        if not names:
            raise no_blocks_error(model)
    return [Block(n, i + 1, depth_of[n]) for i, n in enumerate(names)], final_node, final_depth


def _in_graph(name: str, names_in_graph: Sequence[str]) -> bool:
    """Whether ``name`` selects a graph node: a node's own name, or a module some nodes run inside."""
    return name in names_in_graph or any(g.startswith(name + ".") for g in names_in_graph)


def _stage_blocks(model: nn.Module, names_in_graph: Sequence[str], final_node: str) -> list[tuple[str, int]]:
    """(name, depth) of the feature stages a timm model declares (``model.feature_info``), strictly deeper
    one after the other and before the final output; empty when the model declares none or they cannot be
    extracted."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return []
    declared = [f.get("module") for f in info if isinstance(f, dict) and isinstance(f.get("module"), str)]
    names = [n for n in dict.fromkeys(declared) if n and n != final_node and _in_graph(n, names_in_graph)]
    if not names:
        return []
    try:
        depth_of = _fx.weighted_depths(_fx.feature_extractor(model, [*names, final_node]))
        if final_node not in depth_of:  # a declared stage is the final node under a module's name: returned once
            depth_of |= _fx.weighted_depths(_fx.feature_extractor(model, [final_node]))
    except CompactError:
        return []
    out: list[tuple[str, int]] = []
    for n in names:
        if n in depth_of and (not out or depth_of[n] > out[-1][1]) and depth_of[n] < depth_of[final_node]:
            out.append((n, depth_of[n]))
    return out


def list_blocks(model: nn.Module, nodes: Sequence[str] | None = None) -> list[Block]:
    """The candidate exit points of ``model`` (discovered blocks, or the given names) with their depths."""
    return _candidates(model, nodes)[0]
