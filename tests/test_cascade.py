"""Early-exit cascade: segments, ONNX parity, exact MACs, the runtime's exit rule, sweeps and bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from compact import attach_exits, create_model
from compact.cascade import Cascade, decide, export_cascade, fit_temperatures, parse_thresholds, split
from compact.cascade.runtime import confidence
from compact.cascade.sweep import check_decisions, measure_latency, operating_point, static_rows, sweep_rows
from compact.cli import main
from compact.errors import CompactError
from compact.modelfile import ModelInfo

from _helpers import needs_fmnist

SIZE = (1, 16, 16)


def _info(net: nn.Module, arch: str = "cifar_resnet20", size=SIZE) -> ModelInfo:
    return ModelInfo(arch=arch, num_classes=10, in_chans=size[0], input_size=list(size), kind="multi-exit",
                     exit_nodes=list(net.exit_nodes), head=net.head_type)  # fmt: skip


def _trained_like(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that eval mode differs from a fresh network."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.forward_exits(torch.randn(8, *SIZE))
    return net.eval()


@pytest.fixture(scope="module")
def resnet_cascade(tmp_path_factory):
    torch.manual_seed(0)
    net = _trained_like(attach_exits(create_model("cifar_resnet20", num_classes=10, in_chans=1), 3, input_size=SIZE))
    folder = tmp_path_factory.mktemp("cascade") / "c"
    export_cascade(net, _info(net), folder)
    return net, folder


class SkipNet(nn.Module):
    """Two blocks and a head that reads the input again: the input must cross both cuts."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # 16*16*4*9 = 9,216 MACs
        self.block1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU())  # 16*16*4*36 = 36,864
        self.block2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.ReLU())  # 8*8*8*36
        self.fc = nn.Linear(9, 10)  # 90

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.cat([h.mean((2, 3)), x.mean((1, 2, 3))[:, None]], 1)[:, :9])


def test_segments_cut_a_resnet_at_its_exits_and_match_every_exit(resnet_cascade):
    net, folder = resnet_cascade
    cut = split(net)
    assert len(cut.segments) == 3 and [len(c) for c in cut.crossing] == [1, 1]
    x = torch.randn(5, *SIZE)
    want = net.forward_exits(x)
    cascade = Cascade(folder)
    got = cascade.run_all(x.numpy())
    for a, b in zip(got, want, strict=True):
        b = b.detach()
        assert np.abs(a - b.numpy()).max() / max(1.0, float(b.abs().max())) < 1e-4
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all(s["parity_onnx"] < 1e-4 and s["parity_torch"] < 1e-4 for s in manifest["segments"])


def test_threshold_zero_leaves_at_exit_zero_and_one_reaches_the_full_network(resnet_cascade):
    net, folder = resnet_cascade
    cascade = Cascade(folder)
    x = torch.randn(12, *SIZE)
    pred, used = cascade.predict(x.numpy(), 0.0)
    assert (used == 0).all() and (pred == net.forward_exit(x, 0).argmax(1).numpy()).all()
    pred, used = cascade.predict(x.numpy(), 1.0)
    assert (used == 2).all() and (pred == net(x).argmax(1).numpy()).all()
    full = cascade.run_static(2, x.numpy())
    assert np.abs(full - net(x).detach().numpy()).max() < 1e-4 * max(1.0, float(np.abs(full).max()))


def test_batched_and_one_by_one_predictions_agree_with_the_decisions_from_logits(resnet_cascade):
    _, folder = resnet_cascade
    cascade = Cascade(folder)
    x = np.random.default_rng(0).standard_normal((40, *SIZE)).astype(np.float32)
    logits = cascade.run_all(x)
    for rule in ("maxprob", "margin", "entropy"):
        # thresholds at quantiles of exit 0's confidence, so that the samples really split between exits
        t = float(np.quantile(confidence(logits[0], rule), 0.5))
        batched = cascade.predict(x, t, rule)
        single = cascade.predict(x, t, rule, batch_size=1)
        odd = cascade.predict(x, t, rule, batch_size=7)
        want = decide(logits, t, rule)
        for got in (batched, single, odd):
            assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
        assert 0 < (batched[1] == 0).sum() < len(x)
    assert check_decisions(cascade, x, logits, [0.0, 0.3, 0.9, 1.0]) == 0


def test_macs_of_segments_and_heads_by_hand(tmp_path):
    torch.manual_seed(0)
    net = attach_exits(SkipNet(), nodes=["block1"], input_size=SIZE).eval()
    cut = split(net)
    assert len(cut.crossing[0]) == 2  # the block's output and the input, read again by the final layer
    export_cascade(net, _info(net, "skipnet"), tmp_path / "c")
    cascade = Cascade(tmp_path / "c")
    seg = cascade.manifest["segments"]
    assert seg[0]["macs"]["trunk"]["conv_linear"] == 16 * 16 * 4 * 9 + 16 * 16 * 4 * 36
    assert seg[0]["macs"]["head"]["conv_linear"] == 4 * 10  # bn-relu-gap-fc on 4 channels
    assert seg[1]["macs"]["trunk"]["conv_linear"] == 8 * 8 * 8 * 36 + 9 * 10
    assert cascade.exit_macs("conv_linear") == [9216 + 36864 + 40, 9216 + 36864 + 40 + 18432 + 90]
    x = torch.randn(6, *SIZE)
    for a, b in zip(cascade.run_all(x.numpy()), net.forward_exits(x), strict=True):
        assert np.allclose(a, b.detach().numpy(), atol=1e-5)
    # the mean MACs of a sweep row are the cost of each sample's exit, averaged
    logits = cascade.run_all(x.numpy())
    t = float(np.median(confidence(logits[0])))
    row = sweep_rows(cascade, logits, np.zeros(6, dtype=np.int64), [t])[0]
    _, used = decide(logits, t)
    assert row["mean_macs_conv_linear"] == pytest.approx(np.mean([cascade.exit_macs("conv_linear")[u] for u in used]))


class _TokenBlock(nn.Module):
    """Tokens (N, L, C) and the feature size [H, W] in, both out, as MViTv2's blocks hand them on."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: list) -> tuple[torch.Tensor, list]:
        h, w = size
        y = self.conv(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
        return x + y.flatten(2).transpose(1, 2), [h, w]


class SizedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.block1, self.block2 = _TokenBlock(4), _TokenBlock(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        tokens, size = self.block1(x.flatten(2).transpose(1, 2), [x.shape[-2], x.shape[-1]])
        tokens, size = self.block2(tokens, size)
        return self.fc(tokens.mean(1))


def test_sizes_that_cross_a_cut_are_baked_into_the_segments_that_read_them(tmp_path):
    """The feature size crosses the cut beside the tokens; the ONNX exporter drops outputs that are not
    tensors, so the segment's exit logits used to take the tokens' name (an internal error on comparing)."""
    torch.manual_seed(0)
    net = attach_exits(SizedNet(), nodes=["block1"], input_size=SIZE).eval()
    assert split(net).crossing == [["getitem", "getitem_1", "add"]]  # both sides of the size, and the tokens
    assert split(net, SIZE).crossing == [["add"]]  # the size baked in as constants
    export_cascade(net, _info(net, "sizednet"), tmp_path / "c")
    cascade = Cascade(tmp_path / "c")
    assert cascade.manifest["segments"][1]["inputs"] == ["cut0_0"]  # the tokens only
    x = torch.randn(5, *SIZE)
    with torch.no_grad():
        for a, b in zip(cascade.run_all(x.numpy()), net.forward_exits(x), strict=True):
            assert np.allclose(a, b.numpy(), atol=1e-5)


class _ChunkNet(nn.Module):
    """A tuple of tensors (a chunk) made before the exit and read after it: it crosses the cut whole."""

    def __init__(self) -> None:
        super().__init__()
        self.b1, self.b2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(x)
        parts = y.chunk(2, dim=1)
        z = self.b2(y)
        return self.fc(torch.cat([z[:, :2] + parts[0], z[:, 2:] + parts[1]], 1).mean((2, 3)))


def test_a_cut_that_passes_a_tuple_of_tensors_is_refused_never_baked_in():
    net = attach_exits(_ChunkNet(), nodes=["b2"], input_size=SIZE).eval()
    assert split(net).crossing == [["chunk", "b2"]]
    with pytest.raises(CompactError, match="a cut passes chunk, a tuple holding tensors.*--exit-nodes"):
        split(net, SIZE)


class _BatchNet(nn.Module):
    """PiT's and CoaT's idiom: ``B`` read from the input's shape at the start, used in a reshape after the
    exit; ``rows`` (4 B) crosses too, and ``square`` (B * B) only where ``squared`` is set."""

    def __init__(self, squared: bool = False) -> None:
        super().__init__()
        self.b1, self.b2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        self.squared = squared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        rows = b * 4
        square = b * b
        y = self.b2(self.b1(x))
        z = y.reshape(rows, -1).reshape(b, 4, -1).mean(1)
        if self.squared:
            z = z + z.new_zeros(square).view(b, b).sum(1, keepdim=True)
        return self.fc(z.reshape(b, 16, 16).mean(2).repeat(1, 4))


def test_ints_that_follow_the_batch_size_are_rebuilt_after_the_cut(tmp_path):
    """An int computed from the batch size crosses the cut beside the tensors (timm's PiT and CoaT): the
    cascade used to refuse it, since an ONNX segment returns tensors only. Each later segment now rebuilds it
    from a crossing tensor's first dimension, so one file serves every batch size."""
    torch.manual_seed(0)
    net = attach_exits(_BatchNet(), nodes=["b1"], input_size=SIZE).eval()
    assert split(net).crossing == [["getitem", "mul", "b1"]]  # B and 4 B pass along unless rebuilt
    assert split(net, SIZE).crossing == [["b1"]]
    export_cascade(net, _info(net, "batchnet"), tmp_path / "c")
    cascade = Cascade(tmp_path / "c")
    assert cascade.manifest["segments"][1]["inputs"] == ["cut0_0"]
    for batch in (1, 3, 7):  # the export traced batch 4; baked-in ints would break every other batch
        x = torch.randn(batch, *SIZE)
        with torch.no_grad():
            for a, b in zip(cascade.run_all(x.numpy()), net.forward_exits(x), strict=True):
                assert np.allclose(a, b.numpy(), atol=1e-5)
    pred, used = cascade.predict(torch.randn(5, *SIZE).numpy(), 1.0)
    assert used.tolist() == [1] * 5 and pred.shape == (5,)


def test_an_int_that_is_not_affine_in_the_batch_size_is_refused_by_name():
    net = attach_exits(_BatchNet(squared=True), nodes=["b1"], input_size=SIZE).eval()
    with pytest.raises(CompactError, match=r"passes mul_1, an int that changes with the batch size \(1, 4, 9 at batch"):
        split(net, SIZE)


def test_a_vit_whose_forward_takes_defaulted_arguments_is_cut_at_its_blocks(tmp_path):
    """timm's ViT forward takes attn_mask and is_causal; traced at their defaults they are placeholders
    (with a guard on is_causal), and the cascade used to refuse it as a network of three inputs."""
    size = (3, 32, 32)
    torch.manual_seed(0)
    net = attach_exits(create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32), 3, input_size=size)
    net.eval()
    export_cascade(net, _info(net, "timm:vit_tiny_patch16_224", size), tmp_path / "c")
    cascade = Cascade(tmp_path / "c")
    assert [s["inputs"] for s in cascade.manifest["segments"]] == [["input"], ["cut0_0"], ["cut1_0"]]
    x = torch.randn(3, *size)
    with torch.no_grad():
        for a, b in zip(cascade.run_all(x.numpy()), net.forward_exits(x), strict=True):
            assert np.allclose(a, b.numpy(), atol=1e-5)


def test_confidence_rules_and_thresholds_by_hand():
    z = np.log(np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    assert confidence(z, "maxprob") == pytest.approx([0.7, 1 / 3])
    assert confidence(z, "margin") == pytest.approx([0.5, 0.0], abs=1e-12)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert confidence(z, "entropy") == pytest.approx([1 - h / math.log(3), 0.0], abs=1e-12)
    assert decide([z, z], 0.7)[1].tolist() == [1, 1]  # strict: 0.7 is not above 0.7
    assert decide([z, z], 0.69)[1].tolist() == [0, 1]
    assert parse_thresholds("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_thresholds("0.9, 0.5") == [0.9, 0.5]


def test_temperatures_recover_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 5)) * 3
    p = np.exp(z / 2.0)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    (t,) = fit_temperatures([z], labels)
    assert t == pytest.approx(2.0, rel=0.1)


def test_operating_point_and_its_errors():
    rows = [{"threshold": 0.5, "error_pct": 12.0, "mean_macs": 10.0}, {"threshold": 0.9, "error_pct": 9.0,
            "mean_macs": 20.0}, {"threshold": 1.0, "error_pct": 8.5, "mean_macs": 30.0}]  # fmt: skip
    assert operating_point(rows, target_error=10.0)["threshold"] == 0.9
    assert operating_point(rows, budget_macs=25)["threshold"] == 0.9
    with pytest.raises(CompactError, match=r"no threshold reaches 5.0% error.*closest is threshold 1.0 at 8.5%"):
        operating_point(rows, target_error=5.0)
    with pytest.raises(CompactError, match="the cheapest is threshold 0.5"):
        operating_point(rows, budget_macs=5)


def test_latency_is_measured_by_the_profilers_harness(resnet_cascade, monkeypatch):
    import compact.profile.latency as latency

    _, folder = resnet_cascade
    cascade = Cascade(folder)
    seen = {}
    real = latency.time_interleaved

    def spy(candidates, **kw):
        seen.update(candidates)
        return real(candidates, **kw)

    monkeypatch.setattr(latency, "time_interleaved", spy)
    x = np.random.default_rng(0).standard_normal((8, *SIZE)).astype(np.float32)
    lat = measure_latency(cascade, x, [0.0, 1.0], batch=4, rounds=2)
    assert set(seen) == {f"{k}|{b}" for k in ("t=0.0", "t=1.0", "static 0", "static 1", "static 2") for b in (1, 4)}
    assert all(v > 0 for d in lat.values() for v in d.values())


def test_held_out_images_never_overlap_training_or_test_images():
    import torch as t

    from compact.data.datasets import DataOptions, _in_memory
    from compact.data.memory import ArrayDataset

    def tagged(n, offset):  # every image carries its own id in its first two pixels
        ids = t.arange(offset, offset + n)
        images = t.zeros(n, 1, 4, 4, dtype=t.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
        return ArrayDataset(images, t.zeros(n, dtype=t.int64), 2, "tagged")

    data = _in_memory(
        "tagged",
        tagged(300, 0),
        tagged(100, 1000),
        DataOptions(subset=200, seed=3, augment="none", flip=False),
        0,
        None,
    )

    def ids(loader):  # undo the normalisation and read the ids back
        out = []
        for x, _ in loader:
            px = (x[:, 0, 0, :2] * t.tensor(data.std[0]) + t.tensor(data.mean[0])) * 255
            out += (px[:, 0].round() * 256 + px[:, 1].round()).long().tolist()
        return set(out)

    train, test = data.loaders(50, seed=3)
    held = ids(data.held_out_loader(500, 64))
    assert len(held) == 100 and not held & ids(train) and not held & ids(test) and max(held) < 300
    full = _in_memory("tagged", tagged(300, 0), tagged(100, 1000), DataOptions(seed=3), 0, None)
    assert full.held_out_loader(10) is None


def test_cascade_bad_input(resnet_cascade, tmp_path, capsys):
    import shutil

    _, folder = resnet_cascade
    for bad in ("1.5", "-0.1:0.9:3", "a:b:c", "0.9:0.1:5", "0:1:0", "", "nan"):
        with pytest.raises(CompactError):
            parse_thresholds(bad)
    # the specific reasons reach the user (they were replaced by the generic format message)
    with pytest.raises(CompactError, match="LOW must not exceed HIGH"):
        parse_thresholds("0.9:0.1:5")
    with pytest.raises(CompactError, match=r"the count must be in 1\.\.1000, got 100000"):
        parse_thresholds("0.5:0.9:100000")
    cascade = Cascade(folder)
    with pytest.raises(CompactError, match=r"confidence in \[0, 1\]"):
        cascade.predict(np.zeros((1, *SIZE), np.float32), 2.0)
    with pytest.raises(CompactError, match="takes"):
        cascade.predict(np.zeros((1, 3, 16, 16), np.float32), 0.5)
    with pytest.raises(CompactError, match="unknown exit rule"):
        cascade.predict(np.zeros((1, *SIZE), np.float32), 0.5, rule="max")
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    with open(changed / "segment1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CompactError, match="does not match the manifest"):
        Cascade(changed)
    (changed / "segment1.onnx").unlink()
    with pytest.raises(CompactError, match="segment1.onnx is missing"):
        Cascade(changed)
    escaping = tmp_path / "escaping"
    shutil.copytree(folder, escaping)
    m = json.loads((escaping / "manifest.json").read_text())
    m["segments"][0]["file"] = "../c/segment0.onnx"
    (escaping / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CompactError, match="plain .onnx name"):
        Cascade(escaping)
    for key, value, message in (
        ("source", "x", "source must be a mapping"),
        ("dataset", 3, "dataset must be a name"),
        # Cascade.normalize divides by them: a name or a zero used to pass the manifest check
        ("mean", ["input"], r"mean must be null or one finite number per input channel \(1\)"),
        ("std", [0.0], r"std must be null or one finite number > 0 per input channel \(1\)"),
        ("classes", {"a": 1}, "classes must be null or 10 names"),
    ):
        m = json.loads((folder / "manifest.json").read_text())
        m[key] = value  # found by mutating every manifest field: an internal error (AttributeError)
        (escaping / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(CompactError, match=message):
            Cascade(escaping)
    # a segment's MAC count changed by hand: the trunks no longer add up to the full network, as every
    # export checks, so reading refuses it instead of printing the changed figure
    m = json.loads((folder / "manifest.json").read_text())
    m["segments"][0]["macs"]["trunk"]["total"] -= 1000
    (escaping / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CompactError, match=r"manifest.json: the segments' MACs \([0-9,]+\) do not add up"):
        Cascade(escaping)
    (escaping / "manifest.json").write_text("{not json")
    assert main(["cascade", str(escaping), "--latency-images", "0"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["cascade", str(folder), "--thresholds", "0.2:1.2:3"]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err
    assert main(["cascade", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _replace_segment(folder, tmp_path, name, model):
    """A copy of the cascade ``folder`` whose segment 0 is the ONNX ``model``, its hash updated in the
    manifest (a crafted folder: whoever wrote the graph wrote the manifest too)."""
    import shutil

    from compact.cascade.export import sha256

    copy = tmp_path / name
    shutil.copytree(folder, copy)
    (copy / "segment0.onnx").write_bytes(model.SerializeToString())
    m = json.loads((copy / "manifest.json").read_text())
    m["segments"][0]["sha256"] = sha256(copy / "segment0.onnx")
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def test_crafted_segments_with_matching_hashes_are_clear_errors(resnet_cascade, tmp_path, capsys):
    """ONNX Runtime's own failures were internal errors: a graph whose external data points outside its
    folder (ONNX Runtime refuses to read it), and one that loads but does not compute the manifest's shapes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _, folder = resnet_cascade
    m = json.loads((folder / "manifest.json").read_text())
    inputs, outputs = m["segments"][0]["inputs"], m["segments"][0]["outputs"]
    x = helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, None)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]

    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/hostname")
    nodes = [helper.make_node("Add", [inputs[0], "w"], [outputs[0]]), helper.make_node("Identity", ["w"], [outputs[1]])]
    escaping = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [weight]))
    bad = _replace_segment(folder, tmp_path, "external", escaping)
    assert main(["cascade", str(bad), "--latency-images", "0", "--test-subset", "8"]) == 2
    err = capsys.readouterr().err
    assert "ONNX Runtime cannot load" in err and "segment0.onnx" in err and "internal error" not in err

    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    nodes = [helper.make_node("Identity", [inputs[0]], [outputs[0]]),
             helper.make_node("ReduceMean", [inputs[0], "axes"], [outputs[1]], keepdims=0)]  # fmt: skip
    wrong = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, [axes]), opset_imports=[onnx.helper.make_opsetid("", 18)]
    )
    bad = _replace_segment(folder, tmp_path, "shapes", wrong)
    with pytest.raises(
        CompactError, match=r"segment0.onnx: on 2 images it returns shapes \[\(2, 1, 16, 16\), \(2,\)\]"
    ):
        Cascade(bad)


def test_a_network_without_exits_is_refused(tmp_path, capsys):
    from compact.modelfile import save_model

    net = attach_exits(create_model("cifar_resnet20", num_classes=10, in_chans=1), 1, input_size=SIZE)
    with pytest.raises(CompactError, match="needs a network with auxiliary exits"):
        split(net)
    info = ModelInfo(arch="cifar_resnet20", num_classes=10, in_chans=1, input_size=list(SIZE))
    save_model(net.backbone, tmp_path / "plain.safetensors", info)
    assert main(["export", str(tmp_path / "plain.safetensors"), "--cascade", "--out", str(tmp_path / "c")]) == 2
    assert "single-output model" in capsys.readouterr().err
    assert main(["cascade", str(tmp_path / "plain.safetensors")]) == 2
    assert "single-output model" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    save_model(
        net, tmp_path / "one.safetensors", replace(info, kind="multi-exit", head=net.head_type)
    )  # as a run without exits
    assert main(["cascade", str(tmp_path / "one.safetensors")]) == 2
    assert "has one output (trained without exits); a cascade needs auxiliary exits" in capsys.readouterr().err


@needs_fmnist
def test_cascade_command_on_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-mwbp", "--model", "cifar_resnet20", "--exits", "3", "--subset", "200", "--test-subset",
                 "100", "--batch-size", "50", "--epochs", "1", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(run), "--cascade", "--out", str(tmp_path / "c")]) == 0
    assert main(["export", str(run), "--cascade", "--out", str(tmp_path / "c")]) == 2
    assert "already exists" in capsys.readouterr().err
    argv = ["cascade", str(tmp_path / "c"), "--thresholds", "0,0.5,1", "--latency-images", "16", "--rounds", "2",
            "--batch", "8", "--val-images", "300", "--target-error", "100", "--test-subset", "100",
            "--out", str(tmp_path / "rep")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| threshold | error % |" in out and "Operating point" in out
    result = json.loads((tmp_path / "rep" / "cascade.json").read_text())
    assert result["test_images"] == 100 and result["validation_images"] == 300
    first, last = result["rows"][0], result["rows"][-1]
    static = {s["output"]: s for s in result["static"]}
    assert first["exit_share"] == [1.0, 0.0, 0.0] and first["error_pct"] == static[0]["error_pct"]
    assert last["exit_share"] == [0.0, 0.0, 1.0] and last["error_pct"] == static[2]["error_pct"]
    assert last["mean_macs"] == result["exit_macs"][-1] and first["mean_macs"] == result["exit_macs"][0]
    assert result["operating_point"]["threshold"] == 0.0  # 100% error is reached by the cheapest threshold
    assert all(r["latency_ms_per_image"]["1"] > 0 and r["latency_ms_per_image"]["8"] > 0 for r in result["rows"])
    assert (tmp_path / "rep" / "cascade_macs.png").is_file() and (tmp_path / "rep" / "cascade_latency_b1.svg").is_file()
    # the same figures straight from the run (exported to a temporary folder)
    assert main(["cascade", str(run), "--thresholds", "0,1", "--latency-images", "0", "--test-subset", "100", "--json",
                 str(tmp_path / "r.json")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "r.json").read_text())
    assert [r["error_pct"] for r in again["rows"]] == [first["error_pct"], last["error_pct"]]
    # a run whose model file predates the recorded subset: the run's config says where held-out images start
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = run / "model.safetensors"
    with safe_open(str(model), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(iter(meta))
    info = json.loads(meta[key])
    del info["source"]["subset"]
    save_file(tensors, str(model), metadata={key: json.dumps(info)})
    assert main(["cascade", str(run), "--target-error", "100", "--val-images", "50", "--latency-images", "0",
                 "--thresholds", "0,1", "--test-subset", "100", "--json", str(tmp_path / "old.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "old.json").read_text())["validation_images"] == 50
    assert main(["cascade", str(tmp_path / "c"), "--target-error", "0", "--latency-images", "0", "--thresholds",
                 "0,1", "--test-subset", "100", "--val-images", "300"]) == 2  # fmt: skip
    assert "no threshold reaches 0.0% error" in capsys.readouterr().err


def test_choosing_a_threshold_needs_held_out_images(resnet_cascade):
    from compact.cascade import study

    _, folder = resnet_cascade
    x = np.zeros((4, *SIZE), np.float32)
    with pytest.raises(CompactError, match="needs held-out validation images"):
        study(Cascade(folder), (x, np.zeros(4, np.int64)), [0.5], target_error=5.0, validation=None)


def test_static_rows_name_the_final_output():
    logits = [np.eye(3)[[0, 1, 2]], np.eye(3)[[0, 0, 0]]]

    class Fake:
        def static_macs(self, kind):
            return [1, 2]

    rows = static_rows(Fake(), logits, np.array([0, 1, 2]))
    assert [r["name"] for r in rows] == ["exit 0", "final"] and [r["error_pct"] for r in rows] == [
        0.0,
        pytest.approx(200 / 3, abs=1e-4),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"of": "standard"}, "must name a trained or probed entry with exits"),
        ({"of": "deep-l1"}, "must name a trained or probed entry with exits"),
        ({"of": "nowhere"}, "refers to unknown entry 'nowhere'"),
        ({"of": "mwbp", "thresholds": "0.5:1.5:3"}, r"outside \[0, 1\]"),
        ({"of": "mwbp", "thresholds": "many"}, "is not LOW:HIGH:N"),
        ({"of": "mwbp", "rule": "vote"}, "rule must be one of maxprob, margin, entropy"),
        ({"of": "mwbp", "batch": 0}, "batch must be an integer in 1..4096"),
        ({"of": "mwbp", "speed": 1}, "unknown key"),
        ({}, "cascade needs 'of'"),
        ({"of": "mwbp", "claim": True}, "is a cascade entry"),
    ],
)
def test_recipe_cascade_entries_are_checked(spec, message):
    from compact.recipes.schema import load_recipe, parse_recipe

    raw = dict(load_recipe("demo").source)
    raw["entries"] = [e for e in raw["entries"] if "cascade" not in e] + [{"name": "c", "cascade": spec}]
    if spec.pop("claim", False):
        raw["claims"] = [{"kind": "final", "mwbp": "mwbp", "against": ["c"]}]
    with pytest.raises(CompactError, match=message):
        parse_recipe(raw, "demo.yaml")
