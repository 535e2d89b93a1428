"""Standard BP: the final loss only; auxiliary heads (if any) are neither computed nor trained."""

from __future__ import annotations

import torch

from compact.methods.base import METHODS, BPMethod, StepOutput


@METHODS.register("standard")
class StandardBP(BPMethod):
    name = "standard"

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._sgd([{"params": list(self.net.backbone.parameters())}])]

    @classmethod
    def trains_output(cls, i: int, num_outputs: int) -> bool:
        return i % num_outputs == num_outputs - 1

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        out = self.net(x)
        loss = self.criterion(out, y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        self._backward(loss)
        self._apply_update(opt)
        k = self.net.num_outputs - 1
        return StepOutput([None] * k + [loss.item()], [None] * k + [out.detach()])
