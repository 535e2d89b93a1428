"""Margin-softmax training of embeddings (ArcFace, CosFace) on top of a cosine classifier.

A network for faces ends with a :class:`CosineClassifier`: its outputs are ``cos(theta_j)``, the cosine of
the angle between the embedding and identity ``j``'s weight vector, so every output (each exit and the
final one) is trained by the same loss without changing any backpropagation method: the method's
criterion becomes :class:`MarginLoss`.

- ArcFace (Deng et al. 2019): the target logit becomes ``cos(theta_y + m)``;
- CosFace (Wang et al. 2018): the target logit becomes ``cos(theta_y) - m``;

then every logit is multiplied by the scale ``s`` and cross-entropy is taken. For ArcFace, where
``theta_y + m`` would exceed pi (so that adding the margin would *raise* the logit), the target logit is
``cos(theta_y) - m sin(m)`` instead, as in the ArcFace reference implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compact.errors import CompactError

MARGINS = ("arcface", "cosface")
#: default (scale, margin) of each kind, from the ArcFace and CosFace papers
DEFAULTS = {"arcface": (64.0, 0.5), "cosface": (64.0, 0.35)}


class _NormalizedLinear(torch.autograd.Function):
    """``x @ (W / |W|).T`` whose backward recomputes ``W / |W|`` from the saved ``W``: only the input and the
    parameter itself are saved, so MW-BP's later backward passes see the updated ``W`` (Eq. 10); autograd's
    own ``F.normalize(W)`` would save the forward-time norm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return x @ F.normalize(weight, dim=1).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        norm = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        w_hat = weight / norm
        grad_x = grad @ w_hat
        grad_w_hat = grad.t() @ x
        grad_w = (grad_w_hat - w_hat * (grad_w_hat * w_hat).sum(1, keepdim=True)) / norm
        return grad_x, grad_w


def _fx_leaf(cls: type) -> type:
    """Keep ``cls`` whole when compact traces a network (its custom backward and precision switch are not
    traceable); timm's tracer, which compact's feature extraction uses, reads this registry."""
    from timm.layers import register_notrace_module

    return register_notrace_module(cls)


@_fx_leaf
class CosineClassifier(nn.Module):
    """cos(angle between the embedding and each class's weight vector): ``normalize(x) @ normalize(W).T``,
    computed in float32."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # exporters and counters: plain operators
            return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        with torch.autocast(x.device.type, enabled=False):
            return _NormalizedLinear.apply(F.normalize(x.float(), dim=1), self.weight.float())


class MarginLoss(nn.Module):
    """Cross-entropy of margin-adjusted, scaled cosine logits (see the module docstring)."""

    def __init__(self, kind: str = "arcface", scale: float | None = None, margin: float | None = None) -> None:
        super().__init__()
        if kind not in MARGINS:
            raise CompactError(f"unknown margin loss {kind!r}; valid: {', '.join(MARGINS)}")
        s, m = DEFAULTS[kind]
        self.kind = kind
        self.scale = float(s if scale is None else scale)
        self.margin = float(m if margin is None else margin)
        if not math.isfinite(self.scale) or not 0 < self.scale <= 1000:
            raise CompactError(f"margin-loss scale must be in (0, 1000], got {scale!r}")
        high = math.pi / 2 if kind == "arcface" else 1.0
        if not math.isfinite(self.margin) or not 0 <= self.margin < high:
            raise CompactError(f"{kind} margin must be in [0, {high:.4g}), got {margin!r}")

    def adjusted(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The logits after the margin and the scale (before cross-entropy)."""
        cos_t = cosine.float().clamp(-1.0, 1.0)
        target_cos = cos_t.gather(1, target[:, None])
        if self.kind == "cosface":
            new = target_cos - self.margin
        else:
            m = self.margin
            sin_t = (1.0 - target_cos.pow(2)).clamp_min(0.0).sqrt()
            new = target_cos * math.cos(m) - sin_t * math.sin(m)
            # theta + m > pi: keep the logit decreasing in theta (ArcFace's fallback)
            new = torch.where(target_cos > math.cos(math.pi - m), new, target_cos - math.sin(math.pi - m) * m)
        return self.scale * cos_t.scatter(1, target[:, None], new)

    def forward(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.adjusted(cosine, target), target)
