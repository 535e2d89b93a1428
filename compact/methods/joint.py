"""Joint BP (paper Eq. 6): one backward of the weighted sum of all losses, one update."""

from __future__ import annotations

import torch

from compact.methods.base import METHODS, BPMethod, StepOutput


@METHODS.register("joint")
class JointBP(BPMethod):
    name = "joint"

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._sgd([{"params": list(self.net.parameters())}])]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        outs = self.net.forward_exits(x)
        losses = self._losses(outs, y)
        total = sum(g * loss for g, loss in zip(self.weighting.gammas(), losses, strict=True))
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        self._backward(total)
        self._apply_update(opt)
        return StepOutput([loss.item() for loss in losses], [o.detach() for o in outs])
