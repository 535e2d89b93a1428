"""The saved-tensor mechanism behind MW-BP: live parameters, checked activations, refused copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compact.errors import CompactError
from compact.exits import attach_exits
from compact.methods import NonLiveWeightError, SavedTensorModifiedError, create_method, live_parameters
from compact.models import create_model


def test_backward_reads_updated_parameter_and_stored_activation():
    w = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    with live_parameters([w], x):
        h = torch.tanh(x) @ w  # mm saves tanh(x) (activation) and w (parameter)
    w_old = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    gx, gw = torch.autograd.grad(h.sum(), [x, w])
    ones = torch.ones(5, 4, dtype=torch.float64)
    # input gradient through the updated weight, weight gradient from the stored activation
    assert torch.allclose(gx, (ones @ w.detach().T) * (1 - torch.tanh(x.detach()) ** 2))
    assert not torch.allclose(gx, (ones @ w_old.T) * (1 - torch.tanh(x.detach()) ** 2))
    assert torch.allclose(gw, torch.tanh(x.detach()).T @ ones)


def test_views_of_parameters_are_live():
    lin = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with live_parameters(lin.parameters(), x):
        out = lin(x)  # saves weight.t(), a view
    with torch.no_grad():
        lin.weight.mul_(3.0)
    (gx,) = torch.autograd.grad(out.sum(), [x])
    assert torch.allclose(gx, torch.ones(4, 2, dtype=torch.float64) @ lin.weight.detach())


def test_inplace_change_of_activation_is_still_caught():
    w = nn.Parameter(torch.randn(3, 3))
    x = torch.randn(2, 3, requires_grad=True)
    with live_parameters([w], x):
        z = torch.tanh(x @ w)  # tanh saves its output
    with torch.no_grad():
        z.add_(1.0)
    with pytest.raises(SavedTensorModifiedError, match="modified by an inplace operation"):
        z.sum().backward(inputs=[w])


def test_tensor_derived_from_parameters_is_refused_naming_the_parameters():
    w = nn.Parameter(torch.randn(3, 3))
    b = nn.Parameter(torch.randn(3))
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(NonLiveWeightError, match=r"computed from an unnamed \(3, 3\) tensor \(by MulBackward0\)"):
        with live_parameters([w], x):
            x @ (w * 2.0)
    with pytest.raises(NonLiveWeightError, match=r"computed from layer.bias, layer.weight \(by AddBackward0\)"):
        with live_parameters([("layer.weight", w), ("layer.bias", b)], x):
            x @ (w + b)


class _IndexedPositions(nn.Module):
    """Relative positions read from a learnt table by index inside the forward, as MViTv2's attention does:
    the indexed table is a value computed from a parameter and saved for backward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, channels) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        offsets = torch.arange(h)[:, None] - torch.arange(h)[None, :] + 3  # (h, h) in 0..6 for h <= 4
        positions = self.table[offsets]  # (h, h, C)
        return x + torch.einsum("nchw,hwc->nchw", x, positions)


def test_mwbp_names_a_parameter_indexed_in_the_forward_and_naive_mwbp_trains_it():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_chans=1)
    model.layer1[0].add_module("positions", _IndexedPositions(16))
    block = model.layer1[0]
    block.forward = (lambda f: lambda x: block.positions(f(x)))(block.forward)
    net = attach_exits(model, 3, input_size=(1, 4, 4))
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    with pytest.raises(NonLiveWeightError, match=r"computed from backbone.layer1.0.positions.table .*naive-mwbp"):
        create_method("mwbp", net).train_step(x, y)
    before = block.positions.table.detach().clone()
    create_method("naive-mwbp", net).train_step(x, y)
    assert not torch.equal(block.positions.table, before)  # trained, every loss through its own forward


def _tiny_net():
    return attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=(1, 12, 12))


def test_mwbp_refuses_torch_compile():
    net = _tiny_net()
    net.backbone.layer2.compile()
    with pytest.raises(CompactError, match="torch.compile"):
        create_method("mwbp", net)
