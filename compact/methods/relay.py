"""Relay BP (Shen et al. 2016; paper Eq. 8).

A layer in segment ``k`` (between exits ``k-1`` and ``k``) receives gradients only from the losses
``k .. k+c``: loss ``i`` reaches the segments ``max(0, i-c) .. i`` and its own head. With ``c >= K`` it is
Joint BP. One backward per loss over the shared forward (restricted to those parameters), gradients summed,
then a single update. ``c = 1`` as in the paper's experiments.
"""

from __future__ import annotations

import torch

from compact.errors import CompactError
from compact.methods.base import METHODS, BPMethod, StepOutput


@METHODS.register("relay")
class RelayBP(BPMethod):
    name = "relay"
    options = {"c": 1}

    def __init__(self, net, sgd=None, weighting=None, c: int = 1) -> None:
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise CompactError(f"relay's c must be an integer >= 1, got {c!r}")
        self.c = c
        super().__init__(net, sgd, weighting)
        k = net.num_outputs
        segments = [net.segment_parameters(s) for s in range(k)]
        self._reach = [
            [p for s in range(max(0, i - c), i + 1) for p in segments[s]] + net.head_parameters(i) for i in range(k)
        ]

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._sgd([{"params": list(self.net.parameters())}])]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        outs = self.net.forward_exits(x)
        losses = self._losses(outs, y)
        gammas = self.weighting.gammas()
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        last = len(losses) - 1
        for i, loss in enumerate(losses):
            self._backward(gammas[i] * loss, inputs=self._reach[i], retain_graph=i < last)
        self._apply_update(opt)
        return StepOutput([loss.item() for loss in losses], [o.detach() for o in outs])
