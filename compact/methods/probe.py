"""Probe heads: train only the auxiliary heads on a frozen, already trained network (paper footnote 3).

This is how the paper obtains the intermediate models of networks trained without auxiliary losses
(standard BP, Table 6): every layer of the trained network is fixed and only the heads attached at the
exits are trained. Here the backbone runs in eval mode (its BatchNorm statistics do not move) and without
gradients; the heads run in train mode and are updated by one SGD over their parameters, on the sum of
their losses (the heads do not interact, so each gets exactly its own gradient). The final output is the
trained network's own and is reported, not trained.
"""

from __future__ import annotations

import torch

from compact.methods.base import METHODS, BPMethod, StepOutput


@METHODS.register("probe")
class ProbeHeads(BPMethod):
    name = "probe"
    #: the trunk must come from a trained network (``init_from`` in the training configuration)
    needs_trained_trunk = True

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._sgd([{"params": [p for h in self.net.heads for p in h.parameters()]}])]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        net = self.net
        net.backbone.eval()  # frozen BatchNorm statistics (the engine puts the whole net in train mode)
        with torch.no_grad():
            feats = net.features(x)
        outs = [head(feats[node]) for head, node in zip(net.heads, net.exit_nodes, strict=True)]
        losses = self._losses(outs, y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        if losses:
            self._backward(torch.stack(losses).sum())
            self._apply_update(opt)
        final = feats[net.final_node]
        return StepOutput(
            [loss.item() for loss in losses] + [self.criterion(final, y).item()],
            [o.detach() for o in outs] + [final],
        )
