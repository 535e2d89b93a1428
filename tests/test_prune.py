"""Pruning: published PFEC reductions, MACs targets met on physically smaller models, SFP's exactness, the
paper importances against hand computation, saved pruned models, the command, and bad input."""

from __future__ import annotations

import copy
import json
import signal
import sys
import threading
import time

import pytest
import torch
from torch import nn

from compact import create_model
from compact.cli import main
from compact.errors import CompactError
from compact.modelfile import ModelInfo, load_model, save_model
from compact.profile import conv_linear_macs, count, param_count
from compact.prune import (
    PRUNERS,
    PUBLISHED_REDUCTION,
    FilterNorm,
    GeometricMedian,
    PruneSettings,
    SoftFilterPruning,
    allocate,
    parse_macs,
    pfec_ratios,
    prunable_layers,
    prune_layers,
    search_ratios,
)

from _helpers import needs_fmnist

SIZE = (1, 28, 28)


def _busy_bn(model: nn.Module, size) -> nn.Module:
    """Non-trivial BatchNorm parameters and statistics, so that a channel left half-removed would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        model.train()
        model(torch.randn(8, *size, generator=g))
    return model.eval()


@pytest.mark.parametrize("arch, variant", sorted(PUBLISHED_REDUCTION))
def test_pfec_recipes_give_the_published_flops_reductions(arch, variant):
    model = create_model(arch)
    pruned = prune_layers(
        copy.deepcopy(model),
        (3, 32, 32),
        PRUNERS.get("l1"),
        pfec_ratios(model, arch, f"pfec-{variant}"),
        PruneSettings(round_to=None),
    )
    before, after = count(model, (3, 32, 32)), count(pruned, (3, 32, 32))
    reduction = 1 - after.macs_conv_linear / before.macs_conv_linear
    assert reduction == pytest.approx(PUBLISHED_REDUCTION[(arch, variant)], abs=0.005)
    # the hook counter and fvcore agree on convolution + linear MACs
    assert after.macs_conv_linear == conv_linear_macs(pruned, (3, 32, 32))


def test_importances_against_hand_computation():
    import torch_pruning as tp

    from compact.prune.base import dependency_graph_for

    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5], [3.0, 0.0], [1.2, -0.9]]).view(4, 2, 1, 1))
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    group = dependency_graph_for(model, (2, 4, 4)).get_pruning_group(
        conv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3]
    )
    # only the pruned convolution's own filters count (not the BatchNorm, not the next layer's inputs)
    assert FilterNorm(p=1)(group).tolist() == pytest.approx([2.0, 1.0, 3.0, 2.1])
    assert FilterNorm(p=2)(group).tolist() == pytest.approx([2**0.5, 0.5**0.5, 3.0, 1.5])
    filters = conv.weight.detach().view(4, 2)
    by_hand = [sum(float((filters[i] - filters[j]).norm()) for j in range(4)) for i in range(4)]
    assert GeometricMedian()(group).tolist() == pytest.approx(by_hand)

    # pruning half of the layer removes the lowest-ranked filters: the smallest L1 norms ([.5, .5], [1, -1]),
    # or the filters nearest the geometric median ([1.2, -.9] and [1, -1]: distance sums 3.80 and 4.04)
    for method, removed in (("l1", [1, 0]), ("fpgm", [3, 0])):
        pruned = prune_layers(
            copy.deepcopy(model),
            (2, 4, 4),
            PRUNERS.get(method),
            {"0": 0.5},
            PruneSettings(round_to=None),
            interactive=True,
        )
        assert sorted(pruned[0][0].idxs) == sorted(removed), method


@pytest.mark.parametrize("method", ["l1", "fpgm", "sfp"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_each_method_hits_the_macs_target_on_a_smaller_model(method, allocation):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_chans=1, shortcut="B")
    full = conv_linear_macs(model, SIZE)
    settings = PruneSettings(allocation=allocation)
    result = search_ratios(model, SIZE, PRUNERS.get(method), full // 2, settings)
    pruned = prune_layers(copy.deepcopy(model), SIZE, PRUNERS.get(method), result.ratios, settings)
    measured = count(pruned, SIZE).macs_conv_linear
    assert measured == result.macs and abs(measured / (full // 2) - 1) <= 0.03
    assert param_count(pruned) < 0.7 * param_count(model)
    assert pruned(torch.randn(2, *SIZE)).shape == (2, 10)
    assert pruned.fc.out_features == 10  # the classifier is never pruned
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)  # --round-to 8


def test_option_a_shortcuts_prune_only_the_first_conv_of_each_block():
    model = create_model("cifar_resnet20", in_chans=1)
    layers = prunable_layers(model, SIZE, PRUNERS.get("l1"))
    assert list(layers) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_sfp_removes_exactly_the_zeroed_filters_and_keeps_the_outputs(shortcut):
    torch.manual_seed(0)
    model = _busy_bn(create_model("cifar_resnet20", in_chans=1, shortcut=shortcut), SIZE)
    soft = SoftFilterPruning(allocate(prunable_layers(model, SIZE, PRUNERS.get("sfp")), 0.5, PruneSettings()), SIZE)
    norms = model.layer2[1].conv1.weight.detach().flatten(1).norm(dim=1)
    zeroed = soft.zero(model)["layer2.1.conv1"]
    conv = model.layer2[1].conv1
    kept = [i for i in range(conv.out_channels) if i not in zeroed]
    assert len(zeroed) == 16 and conv.weight[zeroed].abs().sum() == 0
    assert norms[zeroed].max() <= norms[kept].min()  # SFP zeroes the lowest L2 norms
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        expected = model(x)
    survivors = conv.weight.detach()[kept].clone()
    soft.finalize(model)
    if shortcut == "A":  # only block-internal channels go: the survivors are exactly the filters not zeroed
        assert torch.equal(model.layer2[1].conv1.weight.detach(), survivors)
    assert model.layer2[1].conv1.out_channels == 16
    with torch.no_grad():
        got = model(x)
    assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.parametrize(
    "name", ["timm:resnet18", "timm:mobilenetv3_small_100", "torchvision:mobilenet_v2", "torchvision:resnet18"]
)
def test_timm_and_torchvision_models_prune_save_and_reload(name, tmp_path):
    size = (3, 32, 32)
    torch.manual_seed(0)
    model = _busy_bn(create_model(name), size)
    full = conv_linear_macs(model, size)
    settings = PruneSettings()
    result = search_ratios(model, size, PRUNERS.get("l1"), full // 2, settings)
    pruned = prune_layers(copy.deepcopy(model), size, PRUNERS.get("l1"), result.ratios, settings).eval()
    assert abs(conv_linear_macs(pruned, size) / (full // 2) - 1) <= 0.03
    save_model(pruned, tmp_path / "p.safetensors", ModelInfo(name, 10, 3, list(size)))
    back, info = load_model(tmp_path / "p.safetensors")
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert torch.allclose(back(x), pruned(x), atol=1e-5, rtol=1e-4)
    assert info.attrs and param_count(back) == param_count(pruned) < param_count(model)


@pytest.mark.parametrize("custom_scale", [None, 0.05], ids=["head-size-scale", "custom-scale"])
def test_attention_heads_lose_the_same_dimensions_and_keep_their_temperature(tmp_path, custom_scale):
    """A ViT's q, k and v are pruned by head dimension, equally in every head (torch-pruning told the heads);
    the module's head size follows, and the queries are rescaled so that attention keeps its softmax
    temperature: dimensions that contribute nothing (zero q, k and v rows, zero projection columns) are
    removed without changing the output. Before, every timm ViT was refused (a stale head size)."""
    size = (3, 32, 32)
    torch.manual_seed(0)
    model = create_model("timm:vit_tiny_patch16_224", num_classes=5, img_size=32).eval()
    heads, dim = 3, 64
    dead = torch.arange(0, dim, 4)  # 16 of each head's 64 dimensions
    with torch.no_grad():
        for block in model.blocks:
            for part in range(3):  # q, k, v
                for h in range(heads):
                    rows = part * heads * dim + h * dim + dead
                    block.attn.qkv.weight[rows] = 0
                    block.attn.qkv.bias[rows] = 0
            for h in range(heads):
                block.attn.proj.weight[:, h * dim + dead] = 0
            if custom_scale:  # a qk_scale of its own, which only the explicit softmax path reads
                block.attn.scale, block.attn.fused_attn = custom_scale, False
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
    ratios = {f"blocks.{i}.attn.qkv": 0.25 for i in range(len(model.blocks))}
    pruned = prune_layers(copy.deepcopy(model), size, PRUNERS.get("l1"), ratios, PruneSettings()).eval()
    for block in pruned.blocks:
        assert (block.attn.num_heads, block.attn.head_dim, block.attn.qkv.out_features) == (3, 48, 3 * 3 * 48)
        assert block.attn.proj.in_features == 144 and block.attn.scale == 48**-0.5
    with torch.no_grad():
        assert torch.allclose(pruned(x), expected, atol=1e-5, rtol=1e-4)
    for fused in (False, True):  # timm's explicit softmax path and scaled_dot_product_attention agree
        for block in pruned.blocks:
            block.attn.fused_attn = fused
        with torch.no_grad():
            assert torch.allclose(pruned(x), expected, atol=1e-5, rtol=1e-4)
    save_model(pruned, tmp_path / "vit.safetensors", ModelInfo("timm:vit_tiny_patch16_224", 5, 3, list(size)))
    back, _ = load_model(tmp_path / "vit.safetensors")
    with torch.no_grad():
        assert torch.allclose(back(x), expected, atol=1e-5, rtol=1e-4)


def test_sfp_on_attention_removes_the_zeroed_head_dimensions_and_keeps_the_outputs():
    """torch-pruning roots an attention group at the output projection's *inputs*; soft pruning used to
    remove that many *output* channels of the projection at the end (the embedding width went negative)."""
    size = (3, 32, 32)
    torch.manual_seed(0)
    model = create_model("timm:vit_tiny_patch16_224", num_classes=5, img_size=32).eval()
    soft = SoftFilterPruning({f"blocks.{i}.attn.qkv": 0.25 for i in range(len(model.blocks))}, size)
    zeroed = soft.zero(model)
    assert set(zeroed) == {f"blocks.{i}.attn.qkv" for i in range(len(model.blocks))}
    dims = {i % 64 for i in zeroed["blocks.0.attn.qkv"]}
    assert len(zeroed["blocks.0.attn.qkv"]) == 3 * 3 * 16 and len(dims) == 16  # the same 16 dims in every head
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
    soft.finalize(model)
    assert all(b.attn.head_dim == 48 and b.attn.proj.in_features == 144 for b in model.blocks)
    assert model.blocks[0].attn.proj.out_features == 192  # the embedding keeps its width
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-4)


def test_macs_parsing_and_bad_targets():
    assert parse_macs("63M") == 63_000_000 and parse_macs("1.5G") == 1_500_000_000 and parse_macs("500k") == 500_000
    with pytest.raises(CompactError, match="cannot read '63 apples'"):
        parse_macs("63 apples")
    model = create_model("cifar_resnet20", in_chans=1)
    full = conv_linear_macs(model, SIZE)
    with pytest.raises(CompactError, match="not below the model's"):
        search_ratios(model, SIZE, PRUNERS.get("l1"), full + 1, PruneSettings())
    with pytest.raises(CompactError, match="too small to reach.*residual stream of option-A shortcuts are never"):
        search_ratios(model, SIZE, PRUNERS.get("l1"), full // 10, PruneSettings())
    model = create_model("cifar_resnet20", in_chans=1, shortcut="B")
    with pytest.raises(CompactError, match=r"too small to reach.* remain \(the classifier is never pruned\)"):
        search_ratios(model, SIZE, PRUNERS.get("l1"), full // 200, PruneSettings())
    with pytest.raises(CompactError, match=r"per-layer cap \(max_layer_ratio\) must be a number in"):
        PruneSettings(max_layer_ratio=1.0)


def test_untraceable_model_is_named():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)

        def forward(self, x, mask):
            return self.conv(x) * mask

    with pytest.raises(CompactError, match="torch-pruning cannot trace TwoInputs: TypeError"):
        prunable_layers(TwoInputs(), SIZE, PRUNERS.get("l1"))


def test_a_dependency_graph_that_does_not_match_the_layers_is_named():
    """timm's EfficientViT (MIT) splits a convolution's output into attention heads by reshaping: torch-pruning
    groups channel indices beyond the layer's size, which was an internal IndexError."""
    model = create_model("timm:efficientvit_b0", num_classes=10, in_chans=3)
    with pytest.raises(CompactError, match=r"dependency graph of EfficientVit does not match its layers .*qkv"):
        prunable_layers(model, (3, 32, 32), PRUNERS.get("l1"))


@needs_fmnist
def test_prune_command_end_to_end(tmp_path, capsys):
    common = ["--subset", "128", "--test-subset", "64", "--batch-size", "64", "--no-progress"]
    run = tmp_path / "source"
    assert (
        main(["train", "--model", "cifar_resnet20", "--exits", "3", "--epochs", "1", *common, "--out", str(run)]) == 0
    )
    assert main(["export", str(run), "--exit", "1", "--out", str(tmp_path / "exit1.safetensors")]) == 0
    out = tmp_path / "pruned"
    # prune the deep network down to the MACs of its own middle exit, then fine-tune one epoch
    assert (
        main(
            [
                "prune",
                "--method",
                "fpgm",
                "--from",
                str(run),
                "--match",
                str(tmp_path / "exit1.safetensors"),
                "--epochs",
                "1",
                *common,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "prune.json").read_text())
    exit_macs = conv_linear_macs(load_model(tmp_path / "exit1.safetensors")[0], SIZE)
    assert report["target_macs"] == exit_macs and abs(report["target_deviation"]) <= 0.03
    assert report["after"]["macs_conv_linear"] < report["before"]["macs_conv_linear"]
    assert set(report["test_error_pct"]) == {"source", "pruned", "final"}
    model, info = load_model(out / "pruned.safetensors")
    assert info.kind == "full" and param_count(model) == report["after"]["params"]

    # an interrupted job resumes from its run folder and writes the same report again
    (out / "prune.json").unlink()
    assert main(["prune", "--method", "fpgm", "--from", str(run), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "prune.json").read_text())["after"] == report["after"]

    capsys.readouterr()
    assert main(["prune", "--method", "fpgm", "--from", str(run), "--macs-ratio", "0.5", "--out", str(out)]) == 2
    assert "holds a pruning job" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--method", "taylor", "--macs-ratio", "0.5"],
            "unknown pruning method 'taylor'; valid pruning methods: fpgm, l1, sfp",
        ),
        (["--method", "l1", "--macs-ratio", "1.5"], "must be in (0, 1)"),
        (["--method", "l1", "--macs-ratio", "0.5", "--target-macs", "3M"], "exactly one target"),
        (
            ["--method", "sfp", "--macs-ratio", "0.5", "--allocation", "global"],
            "sfp prunes every layer at the same rate",
        ),
        (["--method", "fpgm", "--recipe", "pfec-b"], "L1-norm (PFEC) recipes"),
    ],
)
def test_prune_bad_input(extra, message, tmp_path, capsys):
    argv = ["prune", "--model", "cifar_resnet20", *extra, "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@needs_fmnist
def test_sfp_command_trains_from_scratch_and_ends_physically_pruned(tmp_path):
    out = tmp_path / "sfp"
    argv = [
        "prune",
        "--method",
        "sfp",
        "--model",
        "cifar_resnet20",
        "--macs-ratio",
        "0.6",
        "--epochs",
        "2",
        "--subset",
        "128",
        "--test-subset",
        "64",
        "--batch-size",
        "64",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "prune.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the last evaluation ran on the soft-pruned network; the physically pruned one scores the same
    assert report["test_error_pct"]["final"] == pytest.approx(history[-1]["test_error_pct"][-1])
    assert abs(report["target_deviation"]) <= 0.03
    model, _ = load_model(out / "pruned.safetensors")
    assert param_count(model) == report["after"]["params"] < report["before"]["params"]


def test_no_finetune_writes_the_one_model_name(tmp_path, capsys):
    from compact.cli import main

    from _helpers import fake_cifar10_py

    fake_cifar10_py(tmp_path / "cifar", n=8)
    out = tmp_path / "job"
    argv = ["prune", "--method", "l1", "--model", "cifar_resnet20", "--macs-ratio", "0.5", "--no-finetune"]
    argv += ["--data", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "prune.json").read_text())
    assert (out / "pruned.safetensors").is_file() and report["model"] == str(out / "pruned.safetensors")
    assert report["search_probes"] >= 1 and "prune-and-measure probes" in capsys.readouterr().out


def test_search_stops_at_the_first_probe_close_enough():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_chans=1, shortcut="B")
    full = conv_linear_macs(model, SIZE)
    exact = search_ratios(model, SIZE, PRUNERS.get("l1"), full // 2, PruneSettings(), close_enough=0.0)
    loose = search_ratios(model, SIZE, PRUNERS.get("l1"), full // 2, PruneSettings(), close_enough=0.03)
    assert loose.probes < exact.probes  # every bisection step and mixing probe vs. a few
    assert abs(loose.macs / (full // 2) - 1) <= 0.03 and abs(exact.macs - full // 2) <= abs(loose.macs - full // 2)


class _ConvClassifier(nn.Module):
    """SqueezeNet's idiom: a 1x1 convolution classifies, and the only linear layer sits early in the network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.mix = nn.Linear(16, 16)  # channel mixing on NHWC features: the last linear layer, not the classifier
        self.body = nn.Conv2d(16, 32, 3, padding=1)
        self.classifier = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = torch.relu(self.body(torch.relu(x)))
        return self.classifier(x).mean((2, 3))


def test_a_convolution_that_classifies_is_never_pruned_whatever_the_registration_order():
    torch.manual_seed(0)
    model = _ConvClassifier().eval()
    layers = prunable_layers(model, SIZE, PRUNERS.get("l1"))
    assert "classifier" not in layers and "body" in layers
    pruned = prune_layers(model, SIZE, PRUNERS.get("l1"), {n: 0.5 for n in layers}, PruneSettings(round_to=None))
    assert pruned.classifier.out_channels == 10 and pruned.body.out_channels == 16
    assert pruned(torch.randn(3, *SIZE)).shape == (3, 10)


def test_pruning_that_would_change_the_output_is_an_error(monkeypatch):
    import compact.prune.base as base

    monkeypatch.setattr(base, "never_pruned", lambda model, input_size=None: [])  # the classifier left unprotected
    model = _ConvClassifier().eval()
    with pytest.raises(CompactError, match=r"changed its output from shape \(1, 10\) to \(1, 5\)"):
        prune_layers(model, SIZE, PRUNERS.get("l1"), {"classifier": 0.5}, PruneSettings(round_to=None))


def _tiny_mobileone() -> nn.Module:
    """A stem, a depthwise and a pointwise block of timm's MobileOne (both with parallel branches that fold
    into one convolution each), pooling and a classifier."""
    from timm.models.byobnet import MobileOneBlock

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        MobileOneBlock(16, 16, kernel_size=3, group_size=1, num_conv_branches=2),  # depthwise: groups = 16
        MobileOneBlock(16, 32, kernel_size=1, num_conv_branches=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return _busy_bn(net, (3, 8, 8))


def _folded_macs_by_hand(net: nn.Module) -> int:
    """Conv+linear MACs of the tiny MobileOne folded, from its channel counts at 8x8: a 3x3 stem, one 3x3
    depthwise and one 1x1 convolution (each block's branches merged), and the classifier."""
    stem, dw, pw, fc = net[0], net[1].conv_kxk[0].conv, net[2].conv_kxk[0].conv, net[5]
    return (
        64 * (9 * 3 * stem.out_channels + 9 * dw.out_channels + pw.in_channels * pw.out_channels) + fc.in_features * 10
    )


def test_re_parameterizable_blocks_still_fold_after_pruning_and_targets_count_them_folded():
    """torch-pruning resizes layers, not the sizes blocks keep beside them: timm's MobileOne kept groups = 16
    after its depthwise convolution went to 8 channels and failed to fold (division by zero), so a pruned
    MobileOne was counted, pruned and timed in its training form, with twice the branches it deploys."""
    from timm.utils.model import reparameterize_model

    from compact.profile.deploy import deployed_macs, inference_form
    from compact.prune.job import Target, resolve_target

    size = (3, 8, 8)
    net = _tiny_mobileone()
    full_folded = _folded_macs_by_hand(net)
    assert deployed_macs(net, size) == full_folded < conv_linear_macs(net, size)  # the branches run as trained

    pruned = prune_layers(copy.deepcopy(net), size, PRUNERS.get("l1"), {"0": 0.5}, PruneSettings(round_to=None))
    assert pruned[1].conv_kxk[0].conv.groups == pruned[1].groups == 8
    folded, note, warnings = inference_form(pruned, size)
    assert warnings == [] and note["max_relative_diff"] < 1e-5
    assert conv_linear_macs(folded, size) == _folded_macs_by_hand(pruned) == deployed_macs(pruned, size)

    # the search and a ratio target aim at the deployed cost, not the training form's
    goal = resolve_target(Target(ratio=0.5), net, size)
    assert goal == round(0.5 * full_folded)
    found = search_ratios(net, size, PRUNERS.get("l1"), goal, PruneSettings(round_to=None))
    result = prune_layers(copy.deepcopy(net), size, PRUNERS.get("l1"), found.ratios, PruneSettings(round_to=None))
    by_timm = conv_linear_macs(reparameterize_model(result), size)
    assert by_timm == found.macs == _folded_macs_by_hand(result)
    assert abs(by_timm / goal - 1) <= 0.03 and conv_linear_macs(result, size) > 1.3 * goal


def test_soft_pruning_refreshes_the_sizes_of_re_parameterizable_blocks():
    from compact.profile.deploy import inference_form

    size = (3, 8, 8)
    net = _tiny_mobileone()
    soft = SoftFilterPruning({"0": 0.5}, size, round_to=None)
    soft.zero(net)
    soft.finalize(net)
    assert net[1].groups == net[1].conv_kxk[0].conv.groups == 8
    assert inference_form(net.eval(), size)[1]["max_relative_diff"] < 1e-5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory ceiling is Linux's RLIMIT_AS")
def test_a_torch_pruning_call_that_grows_without_bound_is_stopped_by_the_memory_ceiling(monkeypatch):
    """timm's EfficientFormerV2 made torch-pruning's grouping take 17 GB within 7 minutes, still growing; under
    the ceiling it is a one-line error after the allowance (here 256 MiB), and the limit is restored."""
    import resource

    import compact._guards as guards
    from compact.prune.base import _traced

    monkeypatch.setattr(guards, "default_extra_bytes", lambda: 256 * 2**20)
    before = resource.getrlimit(resource.RLIMIT_AS)

    def runaway():
        held = []
        while True:
            held.append(bytearray(16 * 2**20))

    with pytest.raises(CompactError, match=r"torch-pruning ran out of memory trying to group the layers of Linear: "
                       r"it needed more than 0\.2 GiB"):  # fmt: skip
        _traced("group the layers of", nn.Linear(2, 2), runaway)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert len(bytearray(512 * 2**20)) == 512 * 2**20  # more than the allowance: the ceiling is gone
    monkeypatch.setattr(guards.sys, "platform", "darwin")  # no ceiling set: the process's own limit ran out
    with pytest.raises(CompactError, match=r"ran out of memory trying to trace Linear: it needed more than the "
                       r"process's memory limit \(its dependency"):  # fmt: skip
        _traced("trace", nn.Linear(2, 2), lambda: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(CompactError, match="torch-pruning cannot trace Linear: ValueError: no"):
        _traced("trace", nn.Linear(2, 2), lambda: (_ for _ in ()).throw(ValueError("no")))  # other failures as before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory ceiling is Linux's RLIMIT_AS")
def test_the_memory_ceiling_keeps_a_lower_limit_the_user_set():
    import resource

    from compact._guards import memory_ceiling

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with memory_ceiling(2**40) as extra:  # 1 TiB more: above any limit in force here
        assert extra is not None and resource.getrlimit(resource.RLIMIT_AS)[0] > 2**40
    low = 2**45 if soft == resource.RLIM_INFINITY else soft
    resource.setrlimit(resource.RLIMIT_AS, (low, hard))
    try:
        with memory_ceiling(2**46) as extra:
            assert extra is None and resource.getrlimit(resource.RLIMIT_AS)[0] == low
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="the time limit is Unix's SIGALRM")
def test_a_torch_pruning_call_that_never_ends_is_stopped_by_the_time_limit(monkeypatch):
    """torch-pruning's grouping of timm's ReXNet-1.0 had not finished after 10 minutes (at 64 px; ResNet-152
    at 224 px takes about 2 s)."""
    from compact._guards import TIMEOUT_ENV, time_limit
    from compact.prune.base import _traced

    def endless():
        while True:
            pass

    handler = signal.getsignal(signal.SIGALRM)
    monkeypatch.setenv(TIMEOUT_ENV, "0.3")
    start = time.perf_counter()
    with pytest.raises(CompactError, match=r"did not finish trying to group the layers of Linear within 0\.3 s .*"
                       r"COMPACT_CALL_TIMEOUT_S=0 lifts the limit"):  # fmt: skip
        _traced("group the layers of", nn.Linear(2, 2), endless)
    assert time.perf_counter() - start < 5
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert _traced("trace", nn.Linear(2, 2), lambda: 7) == 7  # a call within the limit returns its value
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(CompactError, match=r"COMPACT_CALL_TIMEOUT_S must be a number of seconds in 0..1000000 "):
        _traced("trace", nn.Linear(2, 2), lambda: 7)
    monkeypatch.setenv(TIMEOUT_ENV, "0")
    with time_limit() as limit:
        assert limit is None  # 0: no limit


def test_the_time_limit_also_stops_a_call_off_the_main_thread(monkeypatch):
    """No signal reaches a worker thread (a server, a notebook's executor): a timer thread raises the limit
    in it instead, and never after the block has ended."""
    from compact._guards import TIMEOUT_ENV, time_limit
    from compact.prune.base import _traced

    def endless():
        while True:
            pass

    monkeypatch.setenv(TIMEOUT_ENV, "0.3")
    seen: list = []

    def work() -> None:
        start = time.perf_counter()
        try:
            _traced("group the layers of", nn.Linear(2, 2), endless)
        except CompactError as exc:
            seen.append((str(exc), time.perf_counter() - start))
        with time_limit(0.2) as limit:
            seen.append(limit)
            total = sum(range(1000))  # ends well within the limit
        time.sleep(0.5)  # past the limit: nothing may land here
        seen.append(total)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    (message, took), limit, total = seen
    assert "did not finish trying to group the layers of Linear within 0.3 s" in message and took < 5
    assert limit == 0.2 and total == 499500
    if not hasattr(signal, "setitimer"):
        return
    # on the main thread, while a timer of the caller's own runs, the limit still holds and the timer stays
    handler = signal.getsignal(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        with pytest.raises(CompactError, match="within 0.3 s"):
            _traced("trace", nn.Linear(2, 2), endless)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 90
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
