"""Models, exit placement, heads and loss weights, checked against published and hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compact.errors import CompactError, UnknownNameError
from compact.exits import HEADS, LossWeighting, attach_exits, even_positions, list_blocks, loss_weights
from compact.methods import create_method, list_methods
from compact.models import create_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth,published", [(20, 0.27e6), (56, 0.85e6), (110, 1.73e6)])
def test_cifar_resnet_parameter_counts_match_literature(depth, published):
    assert abs(n_params(create_model(f"cifar_resnet{depth}")) - published) / published < 0.02


def _cifar_trunk_params(blocks: int) -> int:
    """Hand count of a CIFAR ResNet (option A) trunk up to the end of block ``blocks`` (1-based)."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    cin = 16
    for b in range(blocks):
        cout = (16, 32, 64)[b // 9]
        total += cin * cout * 9 + cout * cout * 9 + 4 * cout
        cin = cout
    return total


def test_resnet56_five_outputs_match_table6():
    net = attach_exits(create_model("cifar_resnet56"), 5)
    assert net.depths == [15, 25, 35, 45, 56]
    assert net.exit_nodes == ["layer1.6", "layer2.2", "layer2.7", "layer3.3"]
    head = lambda c: 2 * c + c * 10 + 10  # noqa: E731  BN(c) + FC(c -> 10)
    want = [_cifar_trunk_params(b) + head(c) for b, c in ((7, 16), (12, 32), (17, 32), (22, 64))]
    want.append(_cifar_trunk_params(27) + 64 * 10 + 10)
    assert net.output_param_counts() == want
    # the paper prints the counts truncated to 0.01M: 0.03M, 0.09M, 0.18M, 0.48M, 0.85M
    assert [math.floor(n / 1e4) / 100 for n in want] == [0.03, 0.09, 0.18, 0.48, 0.85]


def test_placements_agree():
    assert even_positions(27, 5) == [7, 12, 17, 22]
    assert even_positions(9, 3) == [3, 6]
    by_layers = attach_exits(create_model("cifar_resnet56"), layers=[15, 25, 35, 45])
    by_blocks = attach_exits(create_model("cifar_resnet56"), blocks=[7, 12, 17, 22])
    assert by_layers.exit_nodes == by_blocks.exit_nodes == ["layer1.6", "layer2.2", "layer2.7", "layer3.3"]


def test_loss_weights_eq5_and_schedules():
    assert loss_weights([15, 25, 35, 45, 56], 2.0) == pytest.approx([1 / 9, 25 / 81, 49 / 81, 1.0, 1.0])
    assert loss_weights([1, 45, 56], 2.0)[0] == 0.01  # floor of Eq. 5
    w1 = LossWeighting([15, 45, 56], schedule="adaptive-1")
    w2 = LossWeighting([15, 45, 56], schedule="adaptive-2")
    nus1, nus2 = [], []
    for _ in range(3):
        nus1.append(w1.nu)
        nus2.append(w2.nu)
        w1.on_lr_decay()
        w2.on_lr_decay()
    assert nus1 == [0.5, 1.0, 2.0] and nus2 == [2.0, 1.0, 0.5]
    restored = LossWeighting([15, 45, 56], schedule="adaptive-1")
    restored.load_state_dict(w1.state_dict())
    assert restored.gammas() == w1.gammas()


def test_shared_forward_matches_model_and_single_exits():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_chans=1)
    net = attach_exits(model, 3, input_size=(1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        outs = net.forward_exits(x)
        assert torch.equal(outs[-1], model(x))
        assert torch.equal(net(x), model(x))
        for i in range(3):
            assert torch.equal(net.forward_exit(x, i), outs[i])


@pytest.mark.parametrize("head", HEADS.names())
def test_head_types(head):
    net = attach_exits(create_model("cifar_resnet20"), 2, head=head).eval()
    assert [o.shape for o in net.forward_exits(torch.randn(2, 3, 32, 32))] == [(2, 10), (2, 10)]
    assert hasattr(net.heads[0], "bn") == (head in ("bn-relu-gap-fc", "embedding"))


FAMILIES = {
    "timm:resnet18": 18,
    "timm:regnetx_002": 41,
    "timm:mobilenetv3_small_050": 54,
    "timm:efficientnet_b0": 82,
    "timm:convnext_atto": 41,
    "timm:ghostnet_050": 86,
    "torchvision:resnet18": 18,
    "torchvision:mobilenet_v2": 53,
    "torchvision:mobilenet_v3_small": 54,
    "torchvision:shufflenet_v2_x0_5": 51,
    "torchvision:densenet121": 121,
    "torchvision:regnet_y_400mf": 82,
    "torchvision:efficientnet_b0": 82,
    "torchvision:googlenet": 22,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_block_discovery_on_timm_and_torchvision(name):
    model = create_model(name, num_classes=7, in_chans=1)
    blocks = list_blocks(model)
    assert len(blocks) >= 4
    depths = [b.depth for b in blocks]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    net = attach_exits(model, 3, input_size=(1, 32, 32))
    assert net.depths[-1] == FAMILIES[name]  # weighted layers on the longest path (ResNet-18: 18)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outs = net.forward_exits(x)
        assert torch.equal(outs[-1], model(x)) and all(o.shape == (2, 7) for o in outs)


def test_blocks_that_return_a_tuple_get_exits_at_their_tokens():
    """timm's MViTv2 blocks return (tokens, feature size): the exit's feature is the tokens, (N, L, C), as a
    hook on the block sees them, and its head pools over the tokens."""
    torch.manual_seed(0)
    model = create_model("timm:mvitv2_tiny", num_classes=5, img_size=32).eval()
    net = attach_exits(model, 3, input_size=(3, 32, 32)).eval()
    assert net.exit_nodes == ["stages.2.blocks.0", "stages.2.blocks.3"]  # after blocks 4 and 7 of 10
    assert [d["feature"] for d in net.describe()[:2]] == ["nlc", "nlc"]
    seen = {}
    handle = model.stages[2].blocks[0].register_forward_hook(lambda m, args, out: seen.update(out=out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)  # the plain network, which calls the block module
        handle.remove()
        feats = net.features(x)  # the traced extractor, which inlines it
        outs = net.forward_exits(x)
    tokens, size = seen["out"]
    assert tokens.shape == (2, 4, 384) and list(size) == [2, 2]  # stage 3 at 32 px: 2 x 2 tokens of 384 channels
    assert torch.equal(feats["stages.2.blocks.0"], tokens)
    assert torch.equal(outs[-1], logits) and all(o.shape == (2, 5) for o in outs)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:mobilenet_v2"])
@pytest.mark.parametrize("method", list_methods())
def test_every_method_steps_on_timm_and_torchvision(name, method):
    torch.manual_seed(0)
    net = attach_exits(create_model(name, num_classes=5, in_chans=1), 3, input_size=(1, 32, 32)).train()
    m = create_method(method, net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = m.step(torch.randn(4, 1, 32, 32), torch.randint(0, 5, (4,)))
    assert math.isfinite(out.losses[-1])
    changed = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("backbone.") for n in changed) == (method != "probe")  # probe: frozen trunk
    assert any(n.startswith("heads.") for n in changed) == (method != "standard")


# -- bad input -----------------------------------------------------------------------------------------
def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="cifar_resnet56"):
        create_model("resnet57")
    with pytest.raises(CompactError, match="valid prefixes"):
        create_model("keras:resnet50")
    with pytest.raises(UnknownNameError, match="torchvision classification model"):
        create_model("torchvision:not_a_net")
    net = attach_exits(create_model("cifar_resnet20"), 2)
    with pytest.raises(UnknownNameError, match="mwbp"):
        create_method("multiway", net)
    with pytest.raises(UnknownNameError, match="bn-relu-gap-fc"):
        attach_exits(create_model("cifar_resnet20"), 2, head="mlp")
    with pytest.raises(UnknownNameError, match="adaptive-1"):
        LossWeighting([1, 2], schedule="cosine")
    with pytest.raises(CompactError, match="option"):
        create_method("relay", net, lr_scaling="paper")


def test_bad_exit_placements():
    model = create_model("cifar_resnet20")  # 9 blocks
    with pytest.raises(CompactError, match="only 9 blocks"):
        attach_exits(model, 11)
    with pytest.raises(CompactError, match="out of range"):
        attach_exits(model, blocks=[3, 10])
    with pytest.raises(CompactError, match="strictly increasing"):
        attach_exits(model, blocks=[5, 3])
    with pytest.raises(CompactError, match="blocks end at layers: 3, 5, 7"):
        attach_exits(model, layers=[4])
    with pytest.raises(CompactError, match="not present"):
        attach_exits(model, nodes=["layer9"])
    with pytest.raises(CompactError, match="exactly one"):
        attach_exits(model, 3, blocks=[2])
    assert LossWeighting([15, 45, 56], nu=0).gammas() == [1.0, 1.0, 1.0]  # Table 7's equal weights
    with pytest.raises(CompactError, match="nu must be"):
        LossWeighting([15, 45, 56], nu=-1)


def test_model_without_known_blocks_names_candidates():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(CompactError, match=r"found no known blocks .* from: 0, 1, 2, 3, 4"):
        attach_exits(model, 2, input_size=(3, 8, 8))
    with pytest.raises(CompactError, match=r"Sequential cannot take inputs of size \(3, 32, 32\)"):
        attach_exits(model, 2)  # its flattened features fix the input size: 32 px is refused first
    net = attach_exits(model, nodes=["1"], head="gap-fc", input_size=(3, 8, 8))
    assert net.depths == [1, 3]


# -- faithful extraction: in-place idioms ------------------------------------------------------------------
class _ReluInPlaceBlock(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, x):
        h = self.lin(x)
        h.relu_()  # return value unused: FX's dead-code elimination would drop this statement
        return h


class _InPlaceMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1, self.b2, self.b3 = _ReluInPlaceBlock(8), _ReluInPlaceBlock(8), _ReluInPlaceBlock(8)
        self.pre = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)  # changes the output of `pre`, where an exit may sit
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.act(self.pre(self.b3(self.b2(self.b1(x))))))


def test_in_place_statements_are_kept_and_exits_see_the_value_at_their_node(tmp_path):
    from compact.exits.standalone import extract_exit

    torch.manual_seed(0)
    net = attach_exits(_InPlaceMLP(), nodes=["b1", "b2", "pre"], head="gap-fc", input_size=(8,)).eval()
    x = torch.randn(16, 8)
    with torch.no_grad():
        outs = net.forward_exits(x)
        assert torch.equal(outs[-1], net(x))  # the shared forward is the model's forward
        for i in range(3):
            assert torch.equal(net.forward_exit(x, i), outs[i])
            assert torch.equal(extract_exit(net, i)(x), outs[i])  # the exported exit too
        # independent computation: the exit on `pre` sees the value before the in-place ReLU
        h = x
        for b in (net.backbone.b1, net.backbone.b2, net.backbone.b3):
            h = torch.relu(b.lin(h))
        pre = net.backbone.pre(h)
        assert pre.min() < 0
        assert torch.allclose(outs[2], net.heads[2](pre), atol=1e-6)
        assert torch.allclose(outs[-1], net.backbone.fc(torch.relu(pre)), atol=1e-6)


def test_unfaithful_extraction_is_refused(monkeypatch):
    """With FX's own dead-code elimination (which drops `h.relu_()`), attach_exits notices and refuses."""
    from torch import fx

    from compact.exits import _fx

    monkeypatch.setattr(_fx, "_faithful_dead_code", fx.Graph.eliminate_dead_code)
    with pytest.raises(CompactError, match="cannot attach exits to _InPlaceMLP faithfully: the final output"):
        attach_exits(_InPlaceMLP(), nodes=["b1"], head="gap-fc", input_size=(8,))


def test_compiled_models_are_refused_with_compacts_message():
    model = torch.compile(create_model("cifar_resnet20"))
    with pytest.raises(CompactError, match="not to the result of torch.compile"):
        attach_exits(model, num_outputs=3)


def test_depth_counts_layers_written_as_matrix_products():
    """``torch.addmm(b, x, self.w)`` and ``x @ self.w`` with a parameter operand are weighted layers."""

    class MM(nn.Module):
        def __init__(self, a: int, b: int) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(a, b)), nn.Parameter(torch.zeros(b))

        def forward(self, x):
            return torch.relu(torch.addmm(self.b, x, self.w))

    class MatNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b1, self.b2, self.w = MM(4, 6), MM(6, 6), nn.Parameter(torch.randn(6, 3))

        def forward(self, x):
            return self.b2(self.b1(x)) @ self.w

    net = attach_exits(MatNet(), nodes=["b1", "b2"], head="gap-fc", input_size=(4,))
    assert net.depths == [1, 2, 3]
    assert LossWeighting(net.depths).gammas() == pytest.approx(LossWeighting([1, 2, 3]).gammas())


# -- where an exit's feature keeps its channels --------------------------------------------------------------
class _Stage(nn.Module):
    """A block of a channels-last network (like Swin's): LayerNorm and an MLP over the last dimension."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _ChannelsLastNet(nn.Module):
    """Conv stem, then (N, H, W, C) stages; H = W = 8 and C = 12, so dimension 1 is not the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 4, stride=4)
        self.s1, self.s2, self.s3 = _Stage(12), _Stage(12), _Stage(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        return self.fc(self.s3(self.s2(self.s1(x))).mean((1, 2)))


class _TokenNet(nn.Module):
    """Patch embedding to (N, L, C) tokens with a class token, like a vision transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 12))
        self.s1, self.s2, self.s3 = _Stage(12), _Stage(12), _Stage(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.fc(self.s3(self.s2(self.s1(x)))[:, 0])


class _Shuffle(nn.Module):
    """A conv block ending in ShuffleNet's channel shuffle: the channels are split in two, swapped, merged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 12, 3, padding=1)

    def forward(self, x):
        n, c, h, w = x.shape
        return torch.relu(self.conv(x)).view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class _ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 4, stride=4)
        self.b1, self.b2 = _Shuffle(), _Shuffle()
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.b2(self.b1(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize(
    "model, layout",
    [(_ChannelsLastNet, "nhwc"), (_TokenNet, "nlc"), (_ShuffleNet, "nchw")],
)
def test_heads_pool_over_everything_but_the_channels_in_any_layout(model, layout, tmp_path):
    torch.manual_seed(0)
    backbone = model()
    nodes = ["b1"] if model is _ShuffleNet else ["s1", "s2"]
    net = attach_exits(backbone, nodes=nodes, input_size=(3, 32, 32)).eval()
    assert [h.layout for h in net.heads] == [layout] * len(nodes)
    assert all(h.in_channels == 12 for h in net.heads)  # not H (8) or L (17)
    x = torch.randn(4, 3, 32, 32)
    feature = net.features(x)[nodes[0]]
    head = net.heads[0]
    with torch.no_grad():
        for p in head.bn.parameters():
            p.uniform_(0.5, 1.5)
        head.bn.running_mean.uniform_(-0.2, 0.2)
        # by hand: channels to dimension 1, BatchNorm (eval) per channel, ReLU, mean over the rest, linear
        f = feature.permute(0, 3, 1, 2) if layout == "nhwc" else feature.transpose(1, 2) if layout == "nlc" else feature
        shape = (1, -1) + (1,) * (f.dim() - 2)
        bn = head.bn
        normed = (f - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
        normed = normed * bn.weight.view(shape) + bn.bias.view(shape)
        expected = head.fc(torch.relu(normed).flatten(2).mean(2))
        assert torch.allclose(net.forward_exits(x)[0], expected, atol=1e-5)
    # the exported exit, in ONNX Runtime, computes the same
    from compact.exits.standalone import extract_exit
    from compact.profile.onnx_export import export_onnx, ort_session, parity

    exit0 = extract_exit(net, 0).eval()
    path = export_onnx(exit0, (3, 32, 32), tmp_path / "exit0.onnx")
    assert parity(exit0, ort_session(path), (3, 32, 32)) < 1e-5


def test_a_feature_whose_channels_cannot_be_followed_is_refused_by_name():
    class Split(nn.Module):  # channels reshaped into (heads, width): no single channel dimension
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 4, stride=4)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            h = self.conv(x)
            heads = h.view(h.shape[0], 3, 4, 8, 8)
            return self.fc(heads.flatten(2).mean(2).repeat(1, 4))

    with pytest.raises(CompactError, match=r"the feature at 'view' \(shape \(1, 3, 4, 8, 8\)\) has no layout"):
        attach_exits(Split(), nodes=["view"], input_size=(3, 32, 32))

    class Mixed(nn.Module):  # an einsum: compact does not follow the channels through it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 4, stride=4)
            self.w = nn.Parameter(torch.randn(12, 12))
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            h = torch.einsum("nchw,cd->nhwd", self.conv(x), self.w)
            return self.fc(h.mean((1, 2)))

    with pytest.raises(CompactError, match=r"'einsum' \(shape \(1, 8, 8, 12\)\) has no layout .*cannot be told"):
        attach_exits(Mixed(), nodes=["einsum"], input_size=(3, 32, 32))


def test_unknown_head_layouts_are_refused():
    from compact.exits import create_head

    with pytest.raises(CompactError, match="unknown feature layout 'nwhc'; heads take: nchw, nhwc, ncl, nlc, nc"):
        create_head("gap-fc", 8, 3, "nwhc")


def test_a_size_hint_is_only_given_where_it_is_true():
    """A network whose input must divide a window has no smallest size that works: bisection would name a
    size while most larger ones fail. compact names the model's declared default size instead, or none."""
    from compact.exits.network import check_input_size

    class Windowed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            torch._assert(x.shape[-1] % 8 == 0, "the side must divide the window (8)")
            return self.conv(x).mean((2, 3))

    model = Windowed()
    with pytest.raises(CompactError) as err:
        check_input_size(model, (3, 20, 20))
    assert str(err.value).endswith("(the side must divide the window (8))")  # no false "smallest" hint
    model.pretrained_cfg = {"input_size": (3, 24, 24)}
    with pytest.raises(CompactError, match=r"; it takes its default size 3x24x24 \(--image-size 24\)$"):
        check_input_size(model, (3, 20, 20))


def test_no_smallest_size_is_claimed_when_a_smaller_size_works():
    """timm's HaloNet-26t takes 248, 256, 504 and 512 px (none between, in steps of 8) and every size from
    1009 to 1024: the bisection between a failing size and 1024 px landed on 1009, not the smallest that
    works (measured with ``compact.exits.network._runs`` on sizes 64..512 and 1000..1029)."""
    from compact.exits.network import check_input_size

    class Halo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            torch._assert(x.shape[-1] % 64 == 0 or x.shape[-1] > 1000, "the blocks do not tile the map")
            return self.conv(x).mean((2, 3))

    model = Halo()
    model.pretrained_cfg = {"input_size": (3, 128, 128)}
    with pytest.raises(CompactError, match=r"; it takes its default size 3x128x128 \(--image-size 128\)$"):
        check_input_size(model, (3, 40, 40))
    del model.pretrained_cfg
    with pytest.raises(CompactError) as err:
        check_input_size(model, (3, 40, 40))
    assert str(err.value).endswith("(the blocks do not tile the map)")  # no false "smallest" hint


def test_forward_arguments_with_defaults_are_traced_at_their_defaults():
    """timm's Hiera: ``forward(x, mask=None)`` runs its classifier only ``if mask is None``. Traced with the
    mask as a graph input, the branch was skipped: the graph ended before the head, and attaching exits
    failed with an internal KeyError (a declared stage resolved to that last node)."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.ReLU())
                                          for i in range(4)])  # fmt: skip
            self.head = nn.Linear(8, 5)
            self.feature_info = [{"module": f"stages.{i}"} for i in range(4)]

        def forward(self, x, mask=None, scale: float = 1.0):
            x = self.stages(x) * scale
            if mask is None:
                x = self.head(x.mean((2, 3)))
            return x

    torch.manual_seed(0)
    model = Masked().eval()
    net = attach_exits(model, 3, input_size=(3, 8, 8)).eval()
    assert net.exit_nodes == ["stages.1", "stages.2"] and net.depths == [2, 3, 5]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.forward_exits(x)[-1], model(x))


def test_a_declared_stage_that_is_the_final_node_is_left_out():
    class Staged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.ReLU())
                                          for i in range(4)])  # fmt: skip
            self.feature_info = [{"module": f"stages.{i}"} for i in range(4)]

        def forward(self, x):
            return self.stages(x)  # the last stage's output is the model's output

    net = attach_exits(Staged(), 3, input_size=(3, 8, 8))  # was an internal KeyError ('stages.3.1')
    assert net.exit_nodes == ["stages.0", "stages.1"] and net.depths == [1, 2, 4]  # stages.3 is the output


def test_transformer_blocks_are_found_and_their_tokens_get_heads():
    """ViT's blocks are discovered like residual blocks; their (N, L, C) tokens get heads over C (192). Built
    for 32 px inputs (``img_size``, as for CIFAR): 4 x 4 patches of 8 px plus the class token."""
    model = create_model("timm:vit_tiny_patch16_224", num_classes=5, img_size=32)
    net = attach_exits(model, 3, input_size=(3, 32, 32)).eval()
    assert net.exit_nodes == ["blocks.3", "blocks.7"] and net.depths == [17, 33, 50]
    assert [(h.layout, h.in_channels) for h in net.heads] == [("nlc", 192), ("nlc", 192)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net.features(x)["blocks.3"].shape == (2, 5, 192)
        outs = net.forward_exits(x)
        assert torch.equal(outs[-1], model(x)) and all(o.shape == (2, 5) for o in outs)
    with pytest.raises(CompactError, match="cannot build timm:resnet18 .*unexpected keyword argument 'img_size'"):
        create_model("timm:resnet18", img_size=32)
    with pytest.raises(CompactError, match=r"img_size must lie in \[8, 2048\], got 4096"):
        create_model("timm:vit_tiny_patch16_224", img_size=4096)


class _UnknownStage(nn.Module):
    """A stage of a class compact does not know (no block discovery), ending in a shape assertion."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.cin = cin

    def forward(self, x):
        torch._assert(x.shape[1] == self.cin, "stage width")  # as timm's patch embeddings check their input
        return torch.relu(self.conv(x))


class _StagedNet(nn.Module):
    """timm's idiom: unknown stage classes, stage ends declared in ``feature_info``."""

    def __init__(self, known_first: bool = False) -> None:
        super().__init__()
        from compact.models.cifar_resnet import BasicBlock

        self.first = BasicBlock(1, 1, 1, "A") if known_first else nn.Identity()  # a known block, only at the start
        self.stages = nn.Sequential(
            _UnknownStage(1, 4), _UnknownStage(4, 8), _UnknownStage(8, 12), _UnknownStage(12, 16)
        )
        self.fc = nn.Linear(16, 10)
        self.feature_info = [{"module": f"stages.{i}", "num_chs": c} for i, c in enumerate((4, 8, 12, 16))]

    def forward(self, x):
        return self.fc(self.stages(self.first(x)).mean((2, 3)))


def test_an_exit_does_not_compute_the_layers_after_it_for_a_later_shape_assertion():
    from compact.exits.standalone import extract_exit

    torch.manual_seed(0)
    model = _StagedNet().eval()
    net = attach_exits(model, nodes=["stages.0"], input_size=(1, 8, 8)).eval()
    exit0 = extract_exit(net, 0)
    # FX counts torch._assert as a side effect: the exit's trunk used to keep every later stage it checks
    head = n_params(net.heads[0])
    assert n_params(exit0) == n_params(model.stages[0]) + head == 4 * 9 + 4 + head
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(exit0(x), net.forward_exits(x)[0])
        assert torch.equal(net.forward_exits(x)[-1], model(x))


@pytest.mark.parametrize("known_first", [False, True])
def test_networks_of_unknown_blocks_place_exits_at_the_stage_ends_timm_declares(known_first):
    model = _StagedNet(known_first).eval()
    # without known blocks, or with known blocks only in the first half, the declared stage ends are the blocks
    assert [b.name for b in list_blocks(model)] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    net = attach_exits(model, 3, input_size=(1, 8, 8))
    first = 2 if known_first else 0  # the known block's two convolutions
    assert net.exit_nodes == ["stages.1", "stages.2"] and net.depths == [first + 2, first + 3, first + 5]


def test_a_model_without_known_blocks_or_declared_stages_is_refused_with_candidates():
    model = _StagedNet()
    del model.feature_info
    with pytest.raises(CompactError, match="found no known blocks in _StagedNet.*stages.0"):
        attach_exits(model, 3, input_size=(1, 8, 8))


def test_a_known_block_inside_a_module_fx_keeps_whole_is_not_offered():
    from timm.layers import register_notrace_module

    from compact.models.cifar_resnet import BasicBlock

    @register_notrace_module  # timm keeps such modules whole when tracing (as MobileViT's blocks)
    class _Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = BasicBlock(4, 4, 1, "A")

        def forward(self, x):
            return self.inner(x)

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.a = BasicBlock(4, 4, 1, "A")
            self.opaque = _Opaque()
            self.b = BasicBlock(4, 4, 1, "A")
            self.c = BasicBlock(4, 4, 1, "A")
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.c(self.b(self.opaque(self.a(self.stem(x))))).mean((2, 3)))

    # 'opaque.inner' has no node of its own: offering it made torchvision's extractor fail with its own message
    assert [b.name for b in list_blocks(_Net())] == ["a", "b", "c"]
