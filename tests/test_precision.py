"""Mixed precision: MW-BP stays exact under autocast (backward i through low-precision casts of the weights as
updated by update i-1), Joint/standard match plain PyTorch AMP, float16 loss scaling skips only the
updates that overflowed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compact import attach_exits
from compact.methods import SGDConfig, create_method, live_parameters

from _helpers import DEVICE, needs_fmnist

BF = torch.bfloat16
#: autocast dtypes to test: bfloat16 on the CPU; also float16 on a GPU (COMPACT_TEST_DEVICE=cuda)
DTYPES = [BF] + ([torch.float16] if DEVICE.type == "cuda" else [])


def test_a_saved_cast_of_a_parameter_is_rebuilt_from_its_current_value():
    w = nn.Parameter(torch.randn(3, 4))
    x = torch.randn(5, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=BF), live_parameters([w], x):
        h = torch.tanh(x) @ w  # autocast saves a bfloat16 copy of w (and of tanh(x))
    w_old = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    (gx,) = torch.autograd.grad(h.float().sum(), [x])
    ones = torch.ones(5, 4, dtype=BF)
    tanh_grad = 1 - torch.tanh(x.detach()) ** 2
    assert torch.allclose(gx, (ones @ w.detach().to(BF).T).float() * tanh_grad, rtol=1e-6)  # cast of the new w
    assert not torch.allclose(gx, (ones @ w_old.to(BF).T).float() * tanh_grad, atol=1e-2)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))  # fmt: skip


def _net():
    return attach_exits(_mlp(), nodes=["3"], head="gap-fc", input_size=(8,))


def _plain_sgd(lr):
    return SGDConfig(lr=lr, momentum=0.0, nesterov=False, weight_decay=0.0)


def _linear_back(g, x_in, w_b):
    """Backward of ``F.linear`` in bfloat16 as autograd does it: (input grad, weight grad, bias grad); the
    parameter gradients are cast to float32 as the backward of autocast's cast does."""
    return g @ w_b, (x_in.t() @ g).t().float(), g.sum(0).float()


def _reference(P: dict, x, y, lr: float, live: bool, dtype: torch.dtype = BF) -> dict:
    """One MW-BP iteration (exit after layer 1, then the final output) in bfloat16, written out: one shared
    forward with the casts of the weights before the iteration; backward 0 and update 0; backward 1
    through the casts of the weights *after* update 0 (``live``) or of the forward-time weights (not Eq. 10)."""
    P = {k: v.clone() for k, v in P.items()}
    b = {k: v.to(dtype) for k, v in P.items()}  # forward-time casts
    xb = x.to(dtype)
    r0 = F.relu(F.linear(xb, b["0.weight"], b["0.bias"]))
    r1 = F.relu(F.linear(r0, b["2.weight"], b["2.bias"]))
    z0 = F.linear(r1, b["h.weight"], b["h.bias"])
    r2 = F.relu(F.linear(r1, b["4.weight"], b["4.bias"]))
    z1 = F.linear(r2, b["6.weight"], b["6.bias"])

    def dlogits(z):
        z = z.float().detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(z, y), [z])  # the float32 loss's own gradient
        return g.to(dtype)

    # loss 0: head and layers 0..2, weights as in the forward (nothing updated yet)
    g = dlogits(z0)
    g, gw_h, gb_h = _linear_back(g, r1, b["h.weight"])
    g = g * (r1 > 0)
    g, gw2, gb2 = _linear_back(g, r0, b["2.weight"])
    g = g * (r0 > 0)
    _, gw0, gb0 = _linear_back(g, xb, b["0.weight"])
    for name, grad in {"h.weight": gw_h, "h.bias": gb_h, "2.weight": gw2, "2.bias": gb2, "0.weight": gw0,
                       "0.bias": gb0}.items():  # fmt: skip
        P[name] = P[name] - lr * grad
    now = {k: v.to(dtype) for k, v in P.items()} if live else b
    # loss 1: the whole backbone, through the weights as they are now
    g = dlogits(z1)
    g, gw6, gb6 = _linear_back(g, r2, now["6.weight"])
    g = g * (r2 > 0)
    g, gw4, gb4 = _linear_back(g, r1, now["4.weight"])
    g = g * (r1 > 0)
    g, gw2, gb2 = _linear_back(g, r0, now["2.weight"])  # through layer 2 as updated by loss 0 (Eq. 10)
    g = g * (r0 > 0)
    _, gw0, gb0 = _linear_back(g, xb, now["0.weight"])
    for name, grad in {"6.weight": gw6, "6.bias": gb6, "4.weight": gw4, "4.bias": gb4, "2.weight": gw2,
                       "2.bias": gb2, "0.weight": gw0, "0.bias": gb0}.items():  # fmt: skip
        P[name] = P[name] - lr * grad
    return P


def _params(net) -> dict:
    out = {k.removeprefix("backbone."): v.detach().clone() for k, v in net.named_parameters()}
    return {k.replace("heads.0.fc.", "h."): v for k, v in out.items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_mwbp_under_autocast_equals_a_hand_written_reference(dtype):
    """Tolerance: 1e-6 absolute on the updated float32 weights (the reference runs the same low-precision
    kernels; on the CPU they agree to the bit). The forward-time casts (not Eq. 10) differ by 1.8e-4."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 8).to(DEVICE), torch.randint(0, 4, (32,)).to(DEVICE)
    net = _net().to(DEVICE).train()
    assert {n for n in _params(net)} == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias",
                                         "6.weight", "6.bias", "h.weight", "h.bias"}  # fmt: skip
    start = _params(net)
    lr = 0.5
    method = create_method("mwbp", net, sgd=_plain_sgd(lr))
    method.set_precision(dtype)
    method.train_step(x, y)
    got = _params(net)
    exact = _reference(start, x, y, lr, live=True, dtype=dtype)
    stale = _reference(start, x, y, lr, live=False, dtype=dtype)
    err = max((got[k] - exact[k]).abs().max().item() for k in got)
    gap = max((exact[k] - stale[k]).abs().max().item() for k in got)
    assert err < 1e-6, err
    assert gap > 100 * max(err, 1e-6), (gap, err)  # Eq. 10 matters here, and compact follows it


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method_name", ["standard", "joint"])
def test_standard_and_joint_under_autocast_match_plain_pytorch_amp(method_name, dtype):
    torch.manual_seed(2)
    x, y = torch.randn(16, 8).to(DEVICE), torch.randint(0, 4, (16,)).to(DEVICE)
    net = _net().to(DEVICE).train()
    twin = copy.deepcopy(net)
    method = create_method(method_name, net, sgd=_plain_sgd(0.3))
    method.set_precision(dtype)
    method.train_step(x, y)
    opt = torch.optim.SGD(twin.parameters(), lr=0.3)
    with torch.autocast(DEVICE.type, dtype=dtype):
        outs = twin.forward_exits(x)
        losses = [F.cross_entropy(o, y) for o in outs]
        gammas = method.weighting.gammas()
        loss = losses[-1] if method_name == "standard" else sum(g * v for g, v in zip(gammas, losses, strict=True))
    loss.backward()
    opt.step()
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        if method_name == "standard" and name.startswith("heads."):
            continue
        assert torch.equal(a, b), name


def test_float16_loss_scaling_skips_only_the_update_that_overflowed():
    """fp16 semantics on the CPU (float32 compute, a real GradScaler): update 0's gradients are made
    infinite; update 0 is skipped, update 1 applies, the scale halves once at the end of the iteration."""
    torch.manual_seed(3)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    net = _net().train()
    method = create_method("mwbp", net, sgd=_plain_sgd(0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    method.set_precision(None, scaler)
    head = net.heads[0].fc.weight
    calls = []

    def poison(grad):
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == 1 else grad

    handle = head.register_hook(poison)
    before = _params(net)
    method.train_step(x, y)
    handle.remove()
    after = _params(net)
    assert method.skipped_updates == 1 and scaler.get_scale() == 512.0
    assert torch.equal(after["h.weight"], before["h.weight"])  # update 0 (head 0 + layers 0-2) skipped
    assert not torch.equal(after["6.weight"], before["6.weight"])  # update 1 applied
    assert not torch.equal(after["0.weight"], before["0.weight"])  # ... to the whole backbone
    assert all(torch.isfinite(v).all() for v in after.values())


# -- the engine and the command line ------------------------------------------------------------------
def test_channels_last_keeps_mwbp_exact():
    from compact.engine.trainer import use_channels_last
    from compact.models import create_model

    torch.manual_seed(4)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    plain = attach_exits(create_model("cifar_resnet20"), 3, input_size=(3, 16, 16)).train()
    fast = copy.deepcopy(plain)
    use_channels_last(fast)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    create_method("mwbp", plain).train_step(x, y)
    create_method("mwbp", fast).train_step(x.contiguous(memory_format=torch.channels_last), y)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_precision_and_channels_last_bad_input():
    from compact.engine import TrainConfig
    from compact.engine.trainer import resolve_precision, use_channels_last
    from compact.errors import CompactError

    with pytest.raises(CompactError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == (None, None)
    assert resolve_precision("bf16", torch.device("cpu"))[0] is torch.bfloat16
    with pytest.raises(CompactError, match="precision must be one of fp32, bf16, fp16, auto"):
        TrainConfig.from_dict({"model": "cifar_resnet20", "precision": "half"}, "config")
    with pytest.raises(CompactError, match="channels-last is for 2-D convolutional networks"):
        use_channels_last(_mlp())


@needs_fmnist
def test_training_command_with_bf16_and_channels_last(tmp_path, capsys):
    import yaml

    from compact.cli import main

    def argv(out, precision, *extra):
        return ["train-mwbp", "--model", "cifar_resnet20", "--exits", "3", "--smoke", "--precision", precision,
                *extra, "--out", str(out)]  # fmt: skip

    assert main(argv(tmp_path / "run", "bf16", "--channels-last")) == 0
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["precision"] == "bf16" and cfg["channels_last"] is True
    assert main(argv(tmp_path / "fp16", "fp16")) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists()  # refused before anything is written


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    """Without a GPU here, the CUDA queries are stood in for: a GPU that lacks bfloat16."""
    from compact.engine.trainer import resolve_precision
    from compact.errors import CompactError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    gpu = torch.device("cuda")
    with pytest.raises(CompactError, match="Old GPU has no bfloat16 support; use --precision fp16 or fp32"):
        resolve_precision("bf16", gpu)
    assert resolve_precision("auto", gpu) == (None, None)  # auto falls back to float32 there
