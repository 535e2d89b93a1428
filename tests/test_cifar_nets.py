"""The paper's other CIFAR networks: published parameter counts, MACs against hand counts, exits, one step of
every method, ONNX parity of an exit, pruning, and bad input."""

from __future__ import annotations

import pytest
import torch

from compact import attach_exits, create_method, create_model
from compact.errors import CompactError
from compact.methods import METHODS, list_methods
from compact.profile import conv_linear_macs

#: published parameter counts (10 classes) and the allowed relative difference
PUBLISHED = {
    "cifar_wrn28_10": (36.5e6, 0.02),  # Zagoruyko & Komodakis 2016, Table 1
    "cifar_resnext29_8x64d": (34.4e6, 0.02),  # Xie et al. 2017, Table 7
    "cifar_resnext29_16x64d": (68.1e6, 0.02),
    "cifar_densenet_bc100": (0.8e6, 0.04),  # Huang et al. 2017, Table 2 (0.8M, one decimal)
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_papers(name):
    count, tol = PUBLISHED[name]
    params = sum(p.numel() for p in create_model(name, num_classes=10).parameters())
    assert abs(params - count) / count < tol, params


def test_mobilenet_v2_cifar_has_torchvisions_parameters():
    import torchvision

    ours = sum(p.numel() for p in create_model("cifar_mobilenet_v2", num_classes=10).parameters())
    assert ours == sum(p.numel() for p in torchvision.models.mobilenet_v2(num_classes=10).parameters()) == 2_236_682


# -- conv + linear MACs on 32x32, counted by hand from each paper's definition --------------------------
def wrn_macs(depth: int, k: int) -> int:
    n, total, c_in, s = (depth - 4) // 6, 32 * 32 * 3 * 16 * 9, 16, 32
    for i, c in enumerate((16 * k, 32 * k, 64 * k)):
        s = 32 >> i
        for j in range(n):
            total += s * s * c_in * c * 9 + s * s * c * c * 9 + (s * s * c_in * c if j == 0 and c_in != c else 0)
            c_in = c
    return total + 64 * k * 10


def resnext_macs(card: int, width: int) -> int:
    total, c_in, s_in = 32 * 32 * 3 * 64 * 9, 64, 32
    for i in range(3):
        w, out, s = card * width * 2**i, 256 * 2**i, 32 >> i
        for j in range(3):
            total += s_in * s_in * c_in * w + s * s * w * (w // card) * 9 + s * s * w * out
            total += s * s * c_in * out if j == 0 else 0
            c_in, s_in = out, s
    return total + 1024 * 10


def densenet_bc_macs(depth: int, k: int) -> int:
    n, c, total = (depth - 4) // 6, 2 * k, 32 * 32 * 3 * 2 * k * 9
    for b in range(3):
        s = 32 >> b
        for _ in range(n):
            total += s * s * c * 4 * k + s * s * 4 * k * k * 9
            c += k
        if b < 2:
            total += s * s * c * (c // 2)
            c //= 2
    return total + c * 10


def mobilenet_v2_macs() -> int:
    from compact.models.cifar_nets import MOBILENETV2_CIFAR

    total, c_in, s = 32 * 32 * 3 * 32 * 9, 32, 32
    for t, c, n, stride in MOBILENETV2_CIFAR:
        for i in range(n):
            h = c_in * t
            total += s * s * c_in * h if t != 1 else 0
            s //= stride if i == 0 else 1
            total += s * s * h * 9 + s * s * h * c
            c_in = c
    return total + s * s * 320 * 1280 + 1280 * 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar_wrn16_4", lambda: wrn_macs(16, 4)),
        ("cifar_wrn28_10", lambda: wrn_macs(28, 10)),
        ("cifar_resnext29_8x64d", lambda: resnext_macs(8, 64)),
        ("cifar_densenet_bc100", lambda: densenet_bc_macs(100, 12)),
        ("cifar_mobilenet_v2", mobilenet_v2_macs),
    ],
)
def test_macs_on_32x32_match_a_hand_count(name, expected):
    assert conv_linear_macs(create_model(name, num_classes=10), (3, 32, 32)) == expected()


def test_published_flops():
    """Figures quoted by the papers that report them: DenseNet-BC-100 (k=12) 0.29 GFLOPs (Huang et al.
    2017, multiply-adds), WRN-28-10 5.25G (the count quoted with Zagoruyko & Komodakis' network)."""
    assert abs(densenet_bc_macs(100, 12) / 0.29e9 - 1) < 0.02
    assert abs(wrn_macs(28, 10) / 5.25e9 - 1) < 0.01


# -- exits, methods, ONNX, pruning --------------------------------------------------------------------
#: the paper's output counts (Table 1) and a small input that keeps the heavy networks fast
PAPER_OUTPUTS = {
    "cifar_wrn28_10": 2,
    "cifar_wrn16_4": 2,
    "cifar_resnext29_8x64d": 3,
    "cifar_resnext29_16x64d": 3,
    "cifar_densenet_bc100": 4,
    "cifar_mobilenet_v2": 3,
}
SMALL = (3, 8, 8)


@pytest.mark.parametrize("name", sorted(PAPER_OUTPUTS))
def test_exits_at_the_papers_counts_and_every_method_steps(name):
    torch.manual_seed(0)
    x, y = torch.randn(2, *SMALL), torch.tensor([1, 3])
    net = attach_exits(create_model(name, num_classes=10), PAPER_OUTPUTS[name], input_size=SMALL)
    depths = net.depths
    assert len(depths) == PAPER_OUTPUTS[name] and depths == sorted(set(depths))
    # evenly spread: the gaps between outputs differ by at most one block's depth
    gaps = [b - a for a, b in zip([0, *depths], depths, strict=False)]
    assert max(gaps) - min(gaps) <= max(gaps) // 2 + 3
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for method in list_methods():
        if METHODS.get(method).needs_trained_trunk:
            continue
        net.load_state_dict(before)  # every method steps from the same weights
        out = create_method(method, net).step(x, y)
        losses = [v for v in out.losses if v is not None]  # standard BP has no loss on the exits
        assert len(out.losses) == PAPER_OUTPUTS[name] and out.losses[-1] is not None
        assert all(torch.isfinite(torch.tensor(losses))), (method, out.losses)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    "name", ["cifar_wrn16_4", "cifar_resnext29_8x64d", "cifar_densenet_bc100", "cifar_mobilenet_v2"]
)
def test_onnx_parity_of_an_exit(name, tmp_path):
    from compact.exits.standalone import extract_exit
    from compact.profile.onnx_export import export_onnx, ort_session, parity

    net = attach_exits(create_model(name, num_classes=10), PAPER_OUTPUTS[name], input_size=SMALL).eval()
    exit0 = extract_exit(net, 0).eval()
    path = export_onnx(exit0, SMALL, tmp_path / "exit0.onnx")
    assert parity(exit0, ort_session(path), SMALL) < 1e-4


@pytest.mark.parametrize(
    ("name", "method"),
    [("cifar_wrn16_4", "l1"), ("cifar_mobilenet_v2", "fpgm"), ("cifar_densenet_bc100", "l1"), ("cifar_wrn16_4", "sfp")],
)
def test_pruning_to_half_the_macs(name, method):
    from compact.prune import PRUNERS, PruneSettings, SoftFilterPruning, prune_layers, search_ratios

    size = (3, 16, 16)
    model = create_model(name, num_classes=10).eval()
    base = conv_linear_macs(model, size)
    spec, settings = PRUNERS.get(method), PruneSettings(round_to=8)
    result = search_ratios(model, size, spec, base // 2, settings)
    if spec.soft:
        soft = SoftFilterPruning(result.ratios, size, 8)
        soft.zero(model)
        soft.finalize(model)
    else:
        prune_layers(model, size, spec, result.ratios, settings)
    assert abs(conv_linear_macs(model, size) / base - 0.5) < 0.05
    assert model(torch.randn(2, *size)).shape == (2, 10)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: create_model("cifar_wrn", depth=27, widen=2),
            r"depth must be 6n\+4 with n >= 1 \(10, 16, 22, 28, 40\)",
        ),
        (lambda: create_model("cifar_wrn", depth=28, widen=0), r"widen must lie in \[1, 20\]"),
        (lambda: create_model("cifar_wrn", depth=28, widen=2.5), "widen must be an integer"),
        (lambda: create_model("cifar_wrn16_4", depth=28), "depth"),
        (lambda: attach_exits(create_model("cifar_wrn16_4"), 10, input_size=SMALL), "only 6 blocks"),
        (lambda: attach_exits(create_model("cifar_resnext29_8x64d"), 11, input_size=SMALL), "only 9 blocks"),
    ],
)
def test_bad_input_names_the_valid_values(build, message):
    with pytest.raises(CompactError, match=message):
        build()


def test_generic_wrn_builds_any_valid_shape():
    net = create_model("cifar_wrn", depth=10, widen=1, num_classes=7, in_chans=1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
