"""The model file format: exits exported as smaller standalone models that reload in a fresh process and
predict exactly what the exit predicts inside the full network; pruned models; bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from compact import attach_exits, create_model
from compact.engine import export_output
from compact.errors import CompactError
from compact.exits.standalone import ExitModel, extract_exit
from compact.modelfile import ModelInfo, load_model, read_info, save_model

SIZE = (1, 28, 28)


def _net(arch: str = "cifar_resnet20", outputs: int = 3):
    torch.manual_seed(0)
    net = attach_exits(create_model(arch, num_classes=10, in_chans=1), outputs, input_size=SIZE)
    # non-trivial BatchNorm statistics, so that a lost buffer would show in the predictions
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.forward_exits(torch.randn(16, *SIZE))
    return net.eval()


def _info(net, kind="multi-exit") -> ModelInfo:
    return ModelInfo(
        "cifar_resnet20",
        10,
        1,
        list(SIZE),
        kind=kind,
        exit_nodes=list(net.exit_nodes),
        head=net.head_type,
        dataset="fashion-mnist",
        mean=[0.286],
        std=[0.353],
    )


def test_multi_exit_round_trip_is_exact(tmp_path):
    net = _net()
    save_model(net, tmp_path / "m.safetensors", _info(net))
    back, info = load_model(tmp_path / "m.safetensors")
    x = torch.randn(5, *SIZE)
    assert all(torch.equal(a, b) for a, b in zip(net.forward_exits(x), back.forward_exits(x), strict=True))
    assert info.params == sum(p.numel() for p in net.parameters()) and info.mean == [0.286]


@pytest.mark.parametrize("which", [0, 1, "final"])
def test_exported_exit_is_smaller_and_predicts_like_the_exit(tmp_path, which):
    net = _net()
    x = torch.randn(7, *SIZE)
    path = tmp_path / "exit.safetensors"
    info = export_output(net, _info(net), which, path)
    i = net.num_outputs - 1 if which == "final" else which
    expected = net.forward_exits(x)[i]

    model, _ = load_model(path)
    assert torch.equal(model(x), expected)
    counts = net.output_param_counts()
    # the standalone model holds exactly layers 0..L_i plus head i (the final output: no auxiliary head)
    assert info.params == sum(p.numel() for p in model.parameters()) == counts[i]
    if which != "final":
        assert isinstance(model, ExitModel) and info.params < counts[-1] / 3
        assert (info.source["output"], info.source["depth"]) == (i, net.depths[i])


def test_exported_exit_reloads_in_a_fresh_process(tmp_path):
    net = _net()
    x = torch.randn(4, *SIZE)
    export_output(net, _info(net), 1, tmp_path / "exit1.safetensors")
    torch.save(x, tmp_path / "x.pt")
    expected = net.forward_exits(x)[1]
    script = (
        "import sys, torch\n"
        "from compact.modelfile import load_model\n"
        "model, info = load_model(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    torch.save(model(x), sys.argv[3])\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "exit1.safetensors"),
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
        ],
        check=True,
        cwd=tmp_path,
    )
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), expected)


def test_pruned_model_is_stored_with_its_new_shapes(tmp_path):
    import torch_pruning as tp

    net = _net()
    model = extract_exit(net, -1)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *SIZE))
    graph.get_pruning_group(model.layer2[1].conv1, tp.prune_conv_out_channels, idxs=[0, 3, 5, 7, 9]).prune()
    assert model.layer2[1].conv1.out_channels == 27
    info = save_model(model, tmp_path / "p.safetensors", ModelInfo("cifar_resnet20", 10, 1, list(SIZE)))
    assert info.attrs == {
        "layer2.1.conv1": {"out_channels": 27},
        "layer2.1.bn1": {"num_features": 27},
        "layer2.1.conv2": {"in_channels": 27},
    }
    back, _ = load_model(tmp_path / "p.safetensors")
    x = torch.randn(3, *SIZE)
    assert back.layer2[1].conv1.weight.shape == (27, 32, 3, 3)
    assert torch.equal(back(x), model.eval()(x))


def test_a_network_that_reads_its_state_dict_version_round_trips(tmp_path):
    """torchvision's MNASNet refuses a state dict without version metadata, which safetensors does not keep:
    saving (its check reloads the file) and pruning it were internal errors."""
    torch.manual_seed(0)
    net = create_model("torchvision:mnasnet0_5", num_classes=10, in_chans=1).eval()
    save_model(net, tmp_path / "m.safetensors", ModelInfo("torchvision:mnasnet0_5", 10, 1, [1, 32, 32]))
    again, _ = load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_a_change_the_format_cannot_describe_is_refused(tmp_path):
    info = ModelInfo("cifar_resnet20", 10, 1, list(SIZE))
    extra = extract_exit(_net(), -1)
    extra.calibration = torch.nn.Linear(10, 10)  # a module the architecture does not build
    with pytest.raises(CompactError, match="weights do not match.*unexpected.*calibration"):
        save_model(extra, tmp_path / "x.safetensors", info)

    patched = extract_exit(_net(), -1)
    plain_forward = patched.forward
    patched.forward = lambda x: plain_forward(x) * 2  # behaviour that no attribute or tensor records
    with pytest.raises(CompactError, match="does not reproduce its outputs"):
        save_model(patched, tmp_path / "x.safetensors", info)
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_model_files(tmp_path):
    net = _net()
    path = tmp_path / "m.safetensors"
    save_model(net, path, _info(net))
    data = path.read_bytes()

    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompactError, match="corrupt or truncated|not a readable"):
        load_model(tmp_path / "trunc.safetensors")

    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(CompactError, match="not a readable compact model file"):
        load_model(tmp_path / "text.safetensors")

    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CompactError, match="without a compact model description"):
        read_info(tmp_path / "plain.safetensors")

    meta = json.loads(_info(net).to_json())
    meta["format_version"] = 99
    save_file({"w": torch.zeros(2)}, str(tmp_path / "future.safetensors"), metadata={"compact": json.dumps(meta)})
    with pytest.raises(CompactError, match="format version 99"):
        read_info(tmp_path / "future.safetensors")

    with pytest.raises(CompactError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_export_refuses_to_overwrite_and_bad_exit_index(tmp_path):
    net = _net()
    path = tmp_path / "e.safetensors"
    export_output(net, _info(net), 0, path)
    before = path.read_bytes()
    with pytest.raises(CompactError, match="exists; pass --overwrite"):
        export_output(net, _info(net), 1, path)
    with pytest.raises(CompactError, match=r"output index 5 does not exist; valid: 0\.\.2"):
        export_output(net, _info(net), 5, tmp_path / "f.safetensors")
    with pytest.raises(CompactError, match="not an output index"):
        export_output(net, _info(net), "deepest", tmp_path / "f.safetensors")
    assert path.read_bytes() == before


class _MaskedBlock(torch.nn.Module):
    """A residual block that multiplies by a mask its forward makes from constants (like Swin's attention
    masks): tracing makes it a ``_tensor_constant<N>`` buffer, numbered by how often the model was traced."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x)) * torch.linspace(0.5, 1.5, 28).view(1, 1, 1, 28)


def test_an_exit_whose_trunk_holds_trace_constants_exports_and_reloads(tmp_path):
    from compact.models._builder import MODEL_ARGS, MODELS, register_model

    class BasicBlock(_MaskedBlock):  # a block class compact discovers
        pass

    def build(num_classes: int = 10, in_chans: int = 1) -> torch.nn.Module:
        blocks = [BasicBlock(4) for _ in range(3)]
        head = torch.nn.Linear(4 * 28 * 28, num_classes)
        return torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3, padding=1), *blocks, torch.nn.Flatten(), head)

    register_model("test_masked")(build)
    try:
        torch.manual_seed(0)
        net = attach_exits(create_model("test_masked", num_classes=10, in_chans=1), 3, input_size=SIZE).eval()
        x = torch.randn(3, *SIZE)
        expected = [net.forward_exit(x, i) for i in range(2)]  # more traces: more constants on the backbone
        nodes, head = net.exit_nodes, net.head_type
        info = ModelInfo("test_masked", 10, 1, list(SIZE), kind="multi-exit", exit_nodes=nodes, head=head)
        for i in range(2):
            path = tmp_path / f"exit{i}.safetensors"
            export_output(net, info, i, path)
            model, _ = load_model(path)
            assert torch.allclose(model(x), expected[i], atol=1e-6)
    finally:
        MODELS._entries.pop("test_masked", None)
        MODEL_ARGS.pop("test_masked", None)


@pytest.mark.parametrize("which,index", [("0", 0), ("final", 2)])
def test_an_output_exported_as_onnx_predicts_like_the_output_and_carries_its_normalisation(tmp_path, which, index):
    import onnx
    import onnxruntime as ort

    from compact.cli import main

    net = _net()
    save_model(net, tmp_path / "m.safetensors", _info(net))
    out = tmp_path / "exit.onnx"
    assert main(["export", str(tmp_path / "m.safetensors"), "--exit", which, "--out", str(out)]) == 0
    x = torch.randn(6, *SIZE)
    expected = net.forward_exits(x)[index].detach().numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    assert got.shape == (6, 10) and abs(got - expected).max() < 1e-4
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props["compact.mean"] == [0.286] and props["compact.std"] == [0.353]
    assert props["compact.input_size"] == list(SIZE) and props["compact.output"] == index
    assert props["compact.depth"] == net.depths[index]
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_names_the_file_kinds_it_writes_and_eval_refuses_an_onnx_graph_by_name(tmp_path, capsys):
    from compact.cli import main

    net = _net()
    save_model(net, tmp_path / "m.safetensors", _info(net))
    assert main(["export", str(tmp_path / "m.safetensors"), "--exit", "0", "--out", str(tmp_path / "e.pt")]) == 2
    assert "name the file .safetensors" in capsys.readouterr().err and not (tmp_path / "e.pt").exists()
    assert main(["export", str(tmp_path / "m.safetensors"), "--exit", "0", "--out", str(tmp_path / "e.onnx")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "e.onnx")]) == 2
    assert "is an ONNX graph, not a compact model file" in capsys.readouterr().err


class _TracedNorm(nn.Module):
    """Channel LayerNorm on NCHW features whose width is a plain attribute the tracer bakes into the graph
    (timm's LayerNorm2d idiom): FX goes through it and keeps only its weights in the cut trunk."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.bias = nn.Parameter(torch.rand(width) - 0.5)

    def forward(self, x):
        y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (self.width,), self.weight, self.bias)
        return y.permute(0, 3, 1, 2)


class _NormNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 12, 3, padding=1)
        self.norm = _TracedNorm(12)
        self.blocks = nn.Sequential(*(nn.Conv2d(12, 12, 3, padding=1) for _ in range(3)))
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.norm(self.stem(x))).mean((2, 3)))


def _pruned_norm_net():
    """_NormNet with its stem and norm pruned to 8 channels (as a pruner would leave it)."""
    from compact.models import MODELS

    if "test_normnet" not in MODELS:
        MODELS.register("test_normnet")(_NormNet)
    torch.manual_seed(0)
    model = _NormNet()
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 10, 11])
    with torch.no_grad():
        stem = nn.Conv2d(1, 8, 3, padding=1)
        stem.weight.copy_(model.stem.weight[keep]), stem.bias.copy_(model.stem.bias[keep])
        model.stem = stem
        model.norm.width = 8
        model.norm.weight = nn.Parameter(model.norm.weight[keep].clone())
        model.norm.bias = nn.Parameter(model.norm.bias[keep].clone())
        first = nn.Conv2d(8, 12, 3, padding=1)
        first.weight.copy_(model.blocks[0].weight[:, keep]), first.bias.copy_(model.blocks[0].bias)
        model.blocks[0] = first
    return model.eval()


def test_a_pruned_network_whose_traced_graph_bakes_an_attribute_saves_reloads_and_exports(tmp_path):
    model = _pruned_norm_net()
    net = attach_exits(model, nodes=["blocks.0", "blocks.1"], input_size=SIZE).eval()
    info = ModelInfo("test_normnet", 10, 1, list(SIZE), kind="multi-exit", exit_nodes=list(net.exit_nodes),
                     head=net.head_type)  # fmt: skip
    # a rebuild traced the exits at the unpruned width (12) and only then resized the norm: saving failed
    save_model(net, tmp_path / "m.safetensors", info)
    back, stored = load_model(tmp_path / "m.safetensors")
    assert stored.attrs["backbone.norm"] == {"width": 8}
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        expected = net.forward_exits(x)
        assert all(torch.equal(a, b) for a, b in zip(expected, back.forward_exits(x), strict=True))
        for i in (0, 1):
            export_output(back, stored, i, tmp_path / f"exit{i}.safetensors")
            exit_model, exit_info = load_model(tmp_path / f"exit{i}.safetensors")
            # the trunk keeps the norm only as weights: its width travels through backbone_attrs
            assert exit_info.attrs["trunk.norm"] == {"width": 8}
            assert torch.equal(exit_model(x), expected[i])


def _rewrite(src, dst, tensors=None, desc=None):
    """Copy a model file with some tensors replaced (``tensors``: name -> tensor) or its description changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    state.update(tensors or {})
    d = json.loads(meta["compact"])
    d.update(desc or {})
    meta["compact"] = json.dumps(d)
    save_file(state, str(dst), metadata=meta)
    return dst


def test_crafted_tensors_that_contradict_their_layers_are_refused_by_name(tmp_path):
    """Found by mutating model files at random: tensors whose shapes or values the layers cannot hold used
    to reach torch (an internal error at the exit's trace or at inference); each is now a CompactError."""
    net = _net()
    full = tmp_path / "full.safetensors"
    save_model(net, full, _info(net))
    exit0 = tmp_path / "exit0.safetensors"
    export_output(net, _info(net), 0, exit0)
    state = load_model(exit0)[0].state_dict()
    bn = next(k for k in state if k.endswith("bn2.bias"))
    conv = next(k for k in state if k.endswith("conv1.weight") and state[k].dim() == 4 and state[k].shape[-1] == 3)
    w = state[conv]
    cases = {
        # BatchNorm bias one longer than num_features: shapes agree with no other tensor of the layer
        "bn-bias": ({bn: torch.zeros(state[bn].numel() + 1)}, {}, "sizes of layer .*bn2 contradict its weights"),
        # a 3x3 kernel stored as 3x1: the layer's kernel_size says 3x3
        "kernel": ({conv: w[..., :1].contiguous()}, {}, "sizes of layer .*conv1 contradict its weights"),
        "nan": ({conv: torch.full_like(w, float("nan"))}, {}, f"tensor {conv} holds NaN or infinite values"),
        "int": (
            {conv: w.to(torch.int64)},
            {},
            f"tensor {conv} holds torch.int64 values where the model holds torch.float32",
        ),
        "complex": ({conv: w.to(torch.complex64)}, {}, "holds torch.complex64 values"),
        # the description's version must be the integer 1, not a value that merely compares equal to it
        "version": ({}, {"format_version": True}, "format version True"),
    }
    for name, (tensors, desc, message) in cases.items():
        path = _rewrite(exit0, tmp_path / f"{name}.safetensors", tensors, desc)
        with pytest.raises(CompactError, match=message):
            load_model(path)
    # the same BatchNorm damage in the full network (no trace at load) is refused the same way
    key = "backbone." + bn.removeprefix("trunk.")
    path = _rewrite(full, tmp_path / "full-bn.safetensors", {key: torch.zeros(state[bn].numel() + 1)})
    with pytest.raises(CompactError, match="sizes of layer backbone.*bn2 contradict"):
        load_model(path)


def test_a_description_whose_parts_do_not_compose_is_refused_at_load_not_at_use(tmp_path):
    """Every layer agrees with its own tensors, yet the layers do not fit together: the file is refused
    when loaded, naming it, instead of failing later inside whatever command used it."""
    net = _net()
    backbone = net.backbone
    info = ModelInfo("cifar_resnet20", 10, 1, list(SIZE), dataset="fashion-mnist")
    for kind, model, prefix, message in (
        # tracing the exits meets the misfit
        ("multi-exit", net, "backbone.", r"expected input\[1, 8, 28, 28\] to have 16 channels"),
        # a plain network has no exits to trace: the trial run at load meets it
        (
            "full",
            backbone,
            "",
            r"the full cifar_resnet20 .*does not run on its input size \[1, 28, 28\] \(RuntimeError",
        ),
    ):
        path = tmp_path / f"{kind}.safetensors"
        save_model(model, path, _info(net) if kind == "multi-exit" else info)
        state = model.state_dict()
        # a pruning that halved layer1.0's first convolution and its BatchNorm but not the convolution after them
        conv, bn = f"{prefix}layer1.0.conv1", f"{prefix}layer1.0.bn1"
        tensors = {f"{conv}.weight": state[f"{conv}.weight"][:8].contiguous()}
        for k in ("weight", "bias", "running_mean", "running_var"):
            tensors[f"{bn}.{k}"] = state[f"{bn}.{k}"][:8].contiguous()
        attrs = {conv: {"out_channels": 8}, bn: {"num_features": 8}}
        bad = _rewrite(path, tmp_path / f"{kind}-halved.safetensors", tensors, {"attrs": attrs})
        with pytest.raises(CompactError, match=f"{kind}-halved.safetensors: .*{message}"):
            load_model(bad)
