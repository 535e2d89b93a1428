"""Multi-way BP (paper Algorithm 1, Eq. 9-10) and its three variants of Section 4.5.

``mwbp``: one shared forward, then for each loss ``i`` from shallow to deep a backward and an SGD update of
the parameters loss ``i`` depends on (layers ``0..L_i`` and head ``i``). Backward ``i`` propagates through
the parameters as already updated by updates ``0..i-1`` and uses the features of the shared forward; see
:mod:`compact.methods._live` for how this is made exact in PyTorch.

``reverse-mwbp``: the same, deep loss first. ``naive-mwbp`` / ``naive-reverse-mwbp``: a fresh forward
before each backward (up to the exit in question only, as the paper's Table 9 cost implies), so each
backward sees features recomputed with the updated weights. In the naive variants, BatchNorm layers before
exit ``i`` update their running statistics once per forward that reaches them; in the shared-forward
variants, once per iteration.

Optimizers follow the authors' code: one SGD (Nesterov momentum, weight decay) per loss, each with its own
momentum state, covering layers ``0..L_i`` plus head ``i``; weight decay is therefore applied by every
update that covers a parameter.

``lr_scaling`` (how ``gamma_i`` enters update ``i``):

- ``"paper"`` (default): Eq. 9 exactly, ``U <- U - alpha * gamma_i * dxi_i/dU`` for every parameter of the
  update, head included. It is the default because it is the algorithm the paper states and the one the
  tests prove against a hand-written reference.
- ``"authors"``: as tanmingkui/multiwaybp's ``aux_trainer.py``: trunk gradients scaled by ``gamma_i`` and the
  trunk learning rate of auxiliary update ``i`` divided by ``sum_{j >= i, j < K} gamma_j``; head gradients
  unscaled at the base learning rate.
"""

from __future__ import annotations

import torch

from compact.errors import CompactError
from compact.methods._live import live_parameters, refuse_compiled
from compact.methods.base import METHODS, BPMethod, StepOutput

LR_SCALINGS = ("paper", "authors")


class MultiWayBP(BPMethod):
    """Sequential per-loss updates; subclasses fix the order and whether the forward is shared."""

    reverse: bool = False
    shared_forward: bool = True
    options = {"lr_scaling": "paper"}

    def __init__(self, net, sgd=None, weighting=None, lr_scaling: str = "paper") -> None:
        if lr_scaling not in LR_SCALINGS:
            raise CompactError(f"unknown lr_scaling {lr_scaling!r}; valid: {', '.join(LR_SCALINGS)}")
        self.lr_scaling = lr_scaling
        refuse_compiled(net)
        super().__init__(net, sgd, weighting)
        self._params = [[p for g in opt.param_groups for p in g["params"]] for opt in self.optimizers]
        self._trunk_count = [len(net.trunk_parameters(i)) for i in range(net.num_outputs)]

    @property
    def order(self) -> list[int]:
        outputs = list(range(self.net.num_outputs))
        return outputs[::-1] if self.reverse else outputs

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        net = self.net
        return [
            self._sgd(
                [
                    {"params": net.trunk_parameters(i), "role": "trunk"},
                    {"params": net.head_parameters(i), "role": "head"},
                ]
            )
            for i in range(net.num_outputs)
        ]

    def _lr_scale(self, optimizer_index: int, group: dict) -> float:
        k = self.net.num_outputs - 1
        if self.lr_scaling == "paper" or group["role"] == "head" or optimizer_index == k:
            return 1.0
        gammas = self.weighting.gammas()
        return 1.0 / sum(gammas[optimizer_index:k])

    def _update(self, i: int, loss: torch.Tensor, gamma: float, retain_graph: bool) -> None:
        opt = self.optimizers[i]
        opt.zero_grad(set_to_none=True)
        params = self._params[i]
        self._backward(loss, inputs=params, retain_graph=retain_graph)
        scaled = params if self.lr_scaling == "paper" else params[: self._trunk_count[i]]
        if gamma != 1.0:
            for p in scaled:
                if p.grad is not None:
                    p.grad.mul_(gamma)
        self._apply_update(opt)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if torch.compiler.is_compiling():
            raise CompactError(f"{self.name} steps cannot be traced by torch.compile; call them uncompiled")
        self._apply_lr()  # gammas (hence the authors' lr division) may change with the schedule
        gammas = self.weighting.gammas()
        k = self.net.num_outputs
        losses: list[float | None] = [None] * k
        logits: list[torch.Tensor | None] = [None] * k
        if self.shared_forward:
            batch = x.detach().requires_grad_(True)
            with live_parameters(self.net.named_parameters(), batch):
                outs = self.net.forward_exits(batch)
            loss_t = self._losses(outs, y)
            for n, i in enumerate(self.order):
                self._update(i, loss_t[i], gammas[i], retain_graph=n < k - 1)
            losses = [loss.item() for loss in loss_t]
            logits = [o.detach() for o in outs]
        else:
            for i in self.order:
                out = self.net.forward_exit(x, i)
                loss = self.criterion(out, y)
                self._update(i, loss, gammas[i], retain_graph=False)
                losses[i], logits[i] = loss.item(), out.detach()
        return StepOutput(losses, logits)


@METHODS.register("mwbp")
class MWBP(MultiWayBP):
    name = "mwbp"


@METHODS.register("reverse-mwbp")
class ReverseMWBP(MultiWayBP):
    name = "reverse-mwbp"
    reverse = True


@METHODS.register("naive-mwbp")
class NaiveMWBP(MultiWayBP):
    name = "naive-mwbp"
    shared_forward = False


@METHODS.register("naive-reverse-mwbp")
class NaiveReverseMWBP(MultiWayBP):
    name = "naive-reverse-mwbp"
    reverse = True
    shared_forward = False
