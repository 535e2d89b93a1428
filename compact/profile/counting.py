"""Counting parameters and multiply-accumulates (MACs).

Two counters that agree on convolutions and linear layers:

- :func:`conv_linear_macs`: forward hooks on ``Conv*d`` / ``Linear`` modules; exact, fast (one forward),
  and what the pruning literature reports as "FLOPs" (one fused multiply-add = one MAC). The pruning
  target search calls it many times.
- :func:`count`: fvcore's ``FlopCountAnalysis`` (a traced forward; fvcore counts one fused multiply-add as
  one flop, i.e. MACs) for the total, including normalisation and pooling layers it knows, plus the list of
  operators it skipped, so that a count is never silently low.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

_CONV_LINEAR_OPS = ("conv", "linear", "addmm", "matmul", "bmm", "einsum")


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def conv_linear_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """MACs of every convolution and linear layer for one input of ``input_size`` (C, H, W), eval mode."""
    total = 0

    def conv_hook(m: nn.Module, inputs, output) -> None:
        nonlocal total
        kernel = m.weight[0].numel()  # (in_channels / groups) * k_h * k_w: the MACs of one output element
        total += output.numel() * kernel

    def linear_hook(m: nn.Module, inputs, output) -> None:
        nonlocal total
        total += output.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


@dataclass
class Counts:
    """``macs``: fvcore's total; ``macs_conv_linear``: convolutions and matrix products only."""

    params: int
    macs: int
    macs_conv_linear: int
    by_operator: dict[str, int] = field(default_factory=dict)
    skipped_ops: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def count(model: nn.Module, input_size: Sequence[int] | None = None, inputs: tuple[torch.Tensor, ...] = ()) -> Counts:
    """Parameters and MACs of ``model`` (eval mode) with fvcore, for one input of ``input_size`` (C, H, W),
    or for the given example ``inputs`` (a model taking several tensors, e.g. a cascade segment)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = tuple(inputs) if inputs else (torch.zeros(1, *input_size, device=device),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # import and tracer warnings; skipped operators are reported below
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, args)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            by_op = dict(analysis.by_operator())
            skipped = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    conv_linear = sum(v for k, v in by_op.items() if any(k.startswith(op) for op in _CONV_LINEAR_OPS))
    return Counts(param_count(model), int(sum(by_op.values())), int(conv_linear), by_op, skipped)
