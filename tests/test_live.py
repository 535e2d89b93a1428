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


def test_tensor_derived_from_parameters_is_refused():
    w = nn.Parameter(torch.randn(3, 3))
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(NonLiveWeightError, match="computed from parameters"):
        with live_parameters([w], x):
            x @ (w * 2.0)


def _tiny_net():
    return attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=(1, 12, 12))


def test_mwbp_refuses_torch_compile():
    net = _tiny_net()
    net.backbone.layer2.compile()
    with pytest.raises(CompactError, match="torch.compile"):
        create_method("mwbp", net)
