"""MW-BP and the other six methods against hand-written backpropagation (tests/_reference.py).

float64 tiny networks with 3 losses, several iterations with Nesterov momentum and weight decay: compact's
parameters must equal the reference's to 1e-10 (on the CPU, or on the GPU that COMPACT_TEST_DEVICE names).
The same setting shows that Joint BP, Naive MW-BP and backpropagating through the old weights are
different algorithms.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compact.exits import LossWeighting, attach_exits
from compact.methods import SGDConfig, create_method

import _reference as R
from _helpers import DEVICE

LR = 0.2
SGD_KW = dict(momentum=0.9, nesterov=True, weight_decay=5e-4)


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.b2 = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.b3 = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.b3(self.b2(self.b1(x))))


class InplaceBlock(nn.Module):
    """``h = lin(x); h.relu_(); return h``: an in-place statement whose return value is unused."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.lin = nn.Linear(a, b)

    def forward(self, x):
        h = self.lin(x)
        h.relu_()
        return h


class TinyInplaceMLP(nn.Module):
    """Both in-place idioms: statements FX would drop, and an exit (on ``b2.0``) that ReLU(inplace) changes."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = InplaceBlock(4, 6)
        self.b2 = nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True))
        self.b3 = InplaceBlock(6, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.b3(self.b2(self.b1(x))))


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s1 = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.s3 = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.s3(self.s2(self.s1(x))), 1), 1))


def _lin(prefix, bias=True):
    return R.Linear(f"{prefix}.weight", f"{prefix}.bias" if bias else None)


def _bn(prefix):
    return R.BatchNorm(f"{prefix}.weight", f"{prefix}.bias")


def build(kind: str, seed: int = 0):
    """(compact MultiExitNet in float64, reference Net, batches) with identical parameters."""
    torch.manual_seed(seed)
    if kind == "mlp":
        net = attach_exits(TinyMLP(), nodes=["b1", "b2"], head="gap-fc", input_size=(4,))
        ref = R.Net(
            [
                [_lin("backbone.b1.0"), R.Tanh()],
                [_lin("backbone.b2.0"), R.Tanh()],
                [_lin("backbone.b3.0"), R.Tanh(), _lin("backbone.fc")],
            ],
            [[_lin("heads.0.fc")], [_lin("heads.1.fc")]],
        )
        batches = [(torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(4)]
    elif kind == "mlp-inplace":
        net = attach_exits(TinyInplaceMLP(), nodes=["b1", "b2.0"], head="gap-fc", input_size=(4,))
        ref = R.Net(
            [
                [_lin("backbone.b1.lin"), R.ReLU()],
                [_lin("backbone.b2.0")],  # the exit sees the value before the in-place ReLU
                [R.ReLU(), _lin("backbone.b3.lin"), R.ReLU(), _lin("backbone.fc")],
            ],
            [[_lin("heads.0.fc")], [_lin("heads.1.fc")]],
        )
        batches = [(torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(4)]
    else:
        net = attach_exits(TinyConvNet(), nodes=["s1", "s2"], head="bn-relu-gap-fc", input_size=(2, 6, 6))
        ref = R.Net(
            [
                [R.Conv("backbone.s1.0.weight", "backbone.s1.0.bias"), _bn("backbone.s1.1"), R.ReLU()],
                [R.Conv("backbone.s2.0.weight", None), _bn("backbone.s2.1"), R.ReLU()],
                [
                    R.Conv("backbone.s3.0.weight", "backbone.s3.0.bias", stride=2),
                    _bn("backbone.s3.1"),
                    R.ReLU(),
                    R.GAP(),
                    _lin("backbone.fc"),
                ],
            ],
            [[_bn(f"heads.{i}.bn"), R.ReLU(), R.GAP(), _lin(f"heads.{i}.fc")] for i in range(2)],
        )
        batches = [(torch.randn(6, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(4)]
    net.double().to(DEVICE).train()
    batches = [(x.to(DEVICE), y.to(DEVICE)) for x, y in batches]
    with torch.no_grad():  # make BatchNorm scales non-trivial so that updated weights matter
        for name, p in net.named_parameters():
            if ".bn." in name or name.endswith("1.weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    P0 = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert set(P0) == set().union(*(ref.trunk_names(i) | ref.head_names(i) for i in range(3)))
    return net, ref, batches, P0


def train_compact(net, method, batches, lr=LR, **options):
    m = create_method(method, net, SGDConfig(lr=lr, **SGD_KW), **options)
    for x, y in batches:
        m.step(x, y)
    return {n: p.detach() for n, p in net.named_parameters()}, m


def max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


REFERENCE_OF = {
    "mwbp": ("mwbp", False),
    "reverse-mwbp": ("mwbp", True),
    "naive-mwbp": ("naive", False),
    "naive-reverse-mwbp": ("naive", True),
    "joint": ("joint", False),
    "relay": ("relay", False),
    "standard": ("standard", False),
}


@pytest.mark.parametrize("kind", ["mlp", "mlp-inplace", "conv"])
@pytest.mark.parametrize("method", list(REFERENCE_OF))
def test_method_equals_hand_written_reference(kind, method):
    net, ref, batches, P0 = build(kind)
    gammas = LossWeighting(net.depths).gammas()
    got, _ = train_compact(net, method, batches)
    algorithm, reverse = REFERENCE_OF[method]
    want = R.run(algorithm, ref, P0, batches, gammas, LR, reverse=reverse, **SGD_KW)
    assert max_diff(got, want) < 1e-10
    assert max_diff(got, P0) > 1e-3  # it did train


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_mwbp_authors_lr_scaling_equals_reference(kind):
    net, ref, batches, P0 = build(kind)
    gammas = LossWeighting(net.depths).gammas()
    got, _ = train_compact(net, "mwbp", batches, lr_scaling="authors")
    want = R.run("mwbp", ref, P0, batches, gammas, LR, lr_scaling="authors", **SGD_KW)
    assert max_diff(got, want) < 1e-10
    paper = R.run("mwbp", ref, P0, batches, gammas, LR, **SGD_KW)
    assert max_diff(got, paper) > 1e-4


def test_relay_with_large_c_is_joint():
    net, ref, batches, P0 = build("conv")
    got, _ = train_compact(net, "relay", batches, c=5)
    want = R.run("joint", ref, P0, batches, LossWeighting(net.depths).gammas(), LR, **SGD_KW)
    assert max_diff(got, want) < 1e-10


def test_mwbp_differs_from_joint_naive_and_old_weights():
    net, ref, batches, P0 = build("conv")
    gammas = LossWeighting(net.depths).gammas()
    got, _ = train_compact(net, "mwbp", batches)
    for other in ("joint", "naive", "old-weights"):
        theirs = R.run(other, ref, P0, batches, gammas, LR, **SGD_KW)
        assert max_diff(got, theirs) > 1e-4, other


def test_allow_mutation_on_saved_tensors_backpropagates_through_old_weights():
    """The trap named in the issue: it runs, but it is the old-weights algorithm, not Eq. 10."""
    net, ref, batches, P0 = build("conv")
    gammas = LossWeighting(net.depths).gammas()
    m = create_method("mwbp", net, SGDConfig(lr=LR, **SGD_KW))
    for x, y in batches:
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            losses = [m.criterion(o, y) for o in net.forward_exits(x)]
            for i in range(3):
                m._update(i, losses[i], gammas[i], retain_graph=i < 2)
    got = {n: p.detach() for n, p in net.named_parameters()}
    old = R.run("old-weights", ref, P0, batches, gammas, LR, **SGD_KW)
    assert max_diff(got, old) < 1e-10
    assert max_diff(got, R.run("mwbp", ref, P0, batches, gammas, LR, **SGD_KW)) > 1e-4


def _captured_grads(method, net, batches):
    grads = {}

    def hook(opt, args, kwargs):
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    grads[id(p)] = grads.get(id(p), 0) + p.grad.clone()

    m = create_method(method, net, SGDConfig(lr=0.0, **SGD_KW))
    for opt in m.optimizers:
        opt.register_step_pre_hook(hook)
    m.step(*batches[0])
    return {n: grads[id(p)] for n, p in net.named_parameters() if id(p) in grads}


def test_with_zero_lr_mwbp_per_loss_gradients_sum_to_joint():
    net, _, batches, P0 = build("conv")
    mw = _captured_grads("mwbp", net, batches)
    net2, _, _, _ = build("conv")
    joint = _captured_grads("joint", net2, batches)
    assert set(mw) == set(joint)
    assert max_diff(mw, joint) < 1e-12
    assert max_diff({n: p.detach() for n, p in net.named_parameters()}, P0) == 0


def test_batchnorm_statistics_once_per_iteration_for_shared_forward():
    for method, expected in (("mwbp", 4), ("reverse-mwbp", 4), ("joint", 4), ("naive-mwbp", 12)):
        net, _, batches, _ = build("conv")
        train_compact(net, method, batches)
        assert net.backbone.s1[1].num_batches_tracked.item() == expected, method
