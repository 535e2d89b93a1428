"""Face recognition: MobileFaceNet counts, margin losses by hand, the 10-fold protocol and TAR@FAR on made-up
scores, the safe packed-file reader, LFW pairs, and MW-BP on MobileFaceNet with margin exits."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch

from compact import attach_exits, create_method, create_model
from compact.errors import CompactError
from compact.face import MarginLoss, read_lfw_pairs, read_packed, tar_at_far, ten_fold_accuracy, verify
from compact.models.mobilefacenet import MobileFaceNet
from compact.profile import conv_linear_macs

from _helpers import needs_fmnist


def test_mobilefacenet_matches_the_published_counts():
    """Chen et al. 2018, Table 2: 0.99M parameters, 221M MAdds for 112x112 (the classifier excluded)."""
    net = create_model("mobilefacenet", num_classes=10).eval()
    classifier = net.classifier.weight.numel()
    params = sum(p.numel() for p in net.parameters()) - classifier
    assert abs(params / 0.99e6 - 1) < 0.02, params
    macs = conv_linear_macs(net, (3, 112, 112)) - classifier
    assert abs(macs / 221e6 - 1) < 0.01, macs


def test_arcface_and_cosface_margins_by_hand():
    cos = torch.tensor([[0.5, 0.2], [math.cos(math.radians(170)), 0.1]])
    y = torch.tensor([0, 0])
    arc = MarginLoss("arcface", scale=10.0, margin=0.5).adjusted(cos, y)
    theta = math.acos(0.5)
    assert arc[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.5), abs=1e-5)
    assert arc[0, 1].item() == pytest.approx(10 * 0.2, abs=1e-6)  # other classes: scaled, no margin
    # theta + m > pi: the fallback keeps the logit decreasing in theta
    c = math.cos(math.radians(170))
    assert arc[1, 0].item() == pytest.approx(10 * (c - math.sin(math.pi - 0.5) * 0.5), abs=1e-5)
    cosface = MarginLoss("cosface", scale=10.0, margin=0.35).adjusted(cos, y)
    assert cosface[0, 0].item() == pytest.approx(10 * (0.5 - 0.35), abs=1e-5)
    loss = MarginLoss("cosface", scale=10.0, margin=0.35)(cos, y)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(cosface, y).item())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sphereface"}, "unknown margin loss"),
        ({"kind": "arcface", "margin": 2.0}, r"arcface margin must be in \[0, 1.571\)"),
        ({"kind": "cosface", "margin": -0.1}, r"cosface margin must be in \[0, 1\)"),
        ({"kind": "arcface", "scale": 0}, "scale must be in"),
    ],
)
def test_margin_out_of_range(kwargs, message):
    with pytest.raises(CompactError, match=message):
        MarginLoss(**kwargs)


def test_ten_fold_accuracy_on_made_up_scores():
    """200 pairs in 10 folds of 20; in every fold exactly 2 same-identity pairs score like impostors: every
    fold's accuracy is 18/20 whatever threshold between the two groups is chosen."""
    same = np.tile([True] * 10 + [False] * 10, 10)
    scores = np.where(same, 0.8, 0.1)
    for k in range(10):
        scores[20 * k : 20 * k + 2] = 0.05  # two same pairs below every impostor
    result = ten_fold_accuracy(scores, same)
    assert result["accuracy"] == pytest.approx(0.9) and result["std"] == pytest.approx(0.0)
    assert all(0.1 < t < 0.8 for t in result["thresholds"])
    perfect = ten_fold_accuracy(np.where(same, 1.0, -1.0), same)
    assert perfect["accuracy"] == 1.0
    with pytest.raises(CompactError, match="at least 20 pairs"):
        ten_fold_accuracy([0.1] * 5, [True] * 5)


def test_tar_at_far():
    rng = np.random.default_rng(0)
    impostor = rng.uniform(0, 1, 2000)
    genuine = np.linspace(0.99, 1.0, 50).tolist() + [0.5] * 50
    scores = np.concatenate([impostor, genuine])
    same = np.array([False] * 2000 + [True] * 100)
    # FAR 1e-3 of 2000 impostors: at most 2 above the threshold, i.e. the threshold is the 3rd highest impostor
    threshold = np.sort(impostor)[::-1][2]
    assert tar_at_far(scores, same) == pytest.approx(float((np.array(genuine) > threshold).mean()))
    assert tar_at_far(scores[1500:], same[1500:]) is None  # 500 impostors cannot measure a 1e-3 rate


def _jpeg(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_packed_files_are_read_without_running_code(tmp_path):
    good = tmp_path / "lfw.bin"
    good.write_bytes(pickle.dumps(([_jpeg("red"), _jpeg("blue"), _jpeg("red"), _jpeg("red")], [False, True])))
    images, pairs, same = read_packed(good, size=32)
    assert images.shape == (4, 3, 32, 32) and pairs.tolist() == [[0, 1], [2, 3]] and same.tolist() == [False, True]
    assert images[0, 0].float().mean() > 200 and images[1, 2].float().mean() > 200  # red, then blue

    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([Payload()], [True])))
    with pytest.raises(CompactError, match="refusing to load"):
        read_packed(evil)
    assert not marker.exists()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(pickle.dumps(([_jpeg("red")] * 3, [True, False])))
    with pytest.raises(CompactError, match="3 images for 2 pairs"):
        read_packed(bad)
    (tmp_path / "junk.bin").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CompactError, match="not a packed validation file"):
        read_packed(tmp_path / "junk.bin")


def test_packed_files_too_large_to_decode_are_refused_before_decoding(tmp_path, monkeypatch):
    """A packed file of a 2 GB limit could hold 50 million 40-byte images (1.9 TB decoded at 112 px: an
    internal allocation error), or one image whose header declares 49 million pixels (decoded in full)."""
    from PIL import Image

    import compact.face.verification as verification

    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, format="PNG")  # 49M pixels in a 48 kB file
    bomb = tmp_path / "bomb.bin"
    bomb.write_bytes(pickle.dumps(([_jpeg("red"), buf.getvalue()], [True])))
    with pytest.raises(CompactError, match=r"bomb.bin: image 1 is 7000x7000 pixels, more than 40,000,000"):
        read_packed(bomb)
    many = tmp_path / "many.bin"
    many.write_bytes(pickle.dumps(([_jpeg("red")] * 8, [True] * 4)))
    monkeypatch.setattr(verification, "DECODED_LIMIT", 3 * 112 * 112 * 7)  # room for 7 images of 112 px
    with pytest.raises(CompactError, match=r"many.bin: 8 images take 0\.0 GiB at 112 px, more than compact decodes"):
        read_packed(many)
    assert read_packed(many, size=32)[0].shape == (8, 3, 32, 32)


def test_lfw_pairs_and_missing_images(tmp_path):
    from PIL import Image

    for name, n in (("Ann_A", 2), ("Bob_B", 1)):
        (tmp_path / name).mkdir()
        for i in range(1, n + 1):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{name}_{i:04d}.jpg")
    (tmp_path / "pairs.txt").write_text("1\t2\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n")
    paths, pairs, same = read_lfw_pairs(tmp_path)
    assert [p.name for p in paths] == ["Ann_A_0001.jpg", "Ann_A_0002.jpg", "Bob_B_0001.jpg"]
    assert pairs.tolist() == [[0, 1], [0, 2]] and same.tolist() == [True, False]
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn_A\t1\t3\n")
    with pytest.raises(CompactError, match=r"pairs.txt:2: .*Ann_A_0003.jpg does not exist"):
        read_lfw_pairs(tmp_path)


def _face_net(num_classes=6):
    torch.manual_seed(0)
    net = MobileFaceNet(num_classes=num_classes, input_size=32)
    return attach_exits(net, 3, head="embedding", input_size=(3, 32, 32))


def test_mwbp_trains_mobilefacenet_with_margin_exits():
    net = _face_net().train()
    method = create_method("mwbp", net)
    method.criterion = MarginLoss("arcface", scale=16.0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 6, (8,))
    before = [p.detach().clone() for p in net.parameters()]
    out = method.step(x, y)
    assert len(out.losses) == 3 and all(math.isfinite(v) for v in out.losses)
    assert all(o.abs().max() <= 1.0 + 1e-5 for o in out.logits)  # cosine logits
    assert sum(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)) > 10


def test_verification_of_every_exit_and_its_errors():
    from compact.exits.standalone import extract_exit

    net = _face_net().eval()
    images = torch.randn(40, 3, 32, 32)
    pairs = np.arange(40).reshape(-1, 2)
    same = np.array([True, False] * 10)
    for i in range(net.num_outputs):
        result = verify(extract_exit(net, i), images, pairs, same)
        assert 0.0 <= result["accuracy"] <= 1.0 and len(result["folds"]) == 10
        assert result["tar_at_far_1e-3"] is None  # 10 impostor pairs cannot measure it
    with pytest.raises(CompactError, match="has 0 cosine classifiers"):
        verify(create_model("cifar_resnet20"), images, pairs, same)


def test_the_cosine_classifiers_backward_is_autograds_and_reads_the_current_weights():
    from compact.face.margin import _NormalizedLinear
    from compact.methods import live_parameters

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1).requires_grad_(True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_NormalizedLinear.apply, (x, w))
    # under MW-BP's live parameters, a later backward uses the weights as updated since the forward
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    batch = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    with live_parameters([w], batch):
        out = _NormalizedLinear.apply(batch, w)
    with torch.no_grad():
        w.mul_(-2.0).add_(1.0)
    (got,) = torch.autograd.grad(out.sum(), [batch])
    want = torch.ones(5, 3, dtype=torch.float64) @ torch.nn.functional.normalize(w.detach(), dim=1)
    assert torch.allclose(got, want)


@needs_fmnist
def test_training_command_trains_margin_exits_and_refuses_what_cannot(tmp_path, capsys):
    """MW-BP with ArcFace on every output of MobileFaceNet (32 px inputs), through compact train-mwbp."""
    from compact.cli import main

    common = ["train-mwbp", "--exits", "3", "--subset", "64", "--test-subset", "32", "--epochs", "1",
              "--batch-size", "32", "--image-size", "32", "--no-progress"]  # fmt: skip
    face = ["--model", "mobilefacenet", "--model-arg", "input_size=32", "--loss", "arcface", "--loss-scale", "16"]
    rng = np.random.default_rng(0)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(40)]
    (tmp_path / "val.bin").write_bytes(pickle.dumps(([_jpeg(c) for c in colors], [bool(i % 2) for i in range(20)])))
    val = ["--val-pairs", str(tmp_path / "val.bin")]
    assert main([*common, *face, "--head", "embedding", *val, "--out", str(tmp_path / "run")]) == 0
    assert "verification accuracy (10-fold, 20 pairs) per output:" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(record["verification_pct"]) == 3 and all(0 <= v <= 100 for v in record["verification_pct"])
    assert main(["eval", str(tmp_path / "run"), "--test-subset", "32", "--pairs", str(tmp_path / "val.bin"),
                 "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)["outputs"]
    assert [r["output"] for r in rows] == [0, 1, 2] and all("verification_pct" in r for r in rows)
    # an exported exit is an embedding model too
    assert main(["export", str(tmp_path / "run"), "--exit", "0", "--out", str(tmp_path / "exit0.safetensors")]) == 0
    assert main(["eval", str(tmp_path / "exit0.safetensors"), "--test-subset", "32", "--pairs",
                 str(tmp_path / "val.bin")]) == 0  # fmt: skip
    assert "verif. %" in capsys.readouterr().out
    assert main([*common, *face, "--out", str(tmp_path / "plain-heads")]) == 2
    assert "embedding runs need --head embedding" in capsys.readouterr().err
    assert main([*common, "--model", "cifar_resnet20", "--loss", "cosface", "--head", "embedding", "--out",
                 str(tmp_path / "r20")]) == 2  # fmt: skip
    assert "has none (use mobilefacenet)" in capsys.readouterr().err
    assert main([*common, "--model", "cifar_resnet20", "--loss-margin", "0.3", "--out", str(tmp_path / "ce")]) == 2
    assert "given only with loss arcface or cosface" in capsys.readouterr().err
    # verification of a network without embeddings (plain classification exits) is refused, not guessed
    assert main([*common, "--model", "cifar_resnet20", "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "plain"), "--test-subset", "32", "--pairs", str(tmp_path / "val.bin")]) == 2
    assert "verification needs a cosine classifier at every output" in capsys.readouterr().err


def test_face_exits_profile_with_onnx_and_mobilefacenet_prunes():
    import warnings

    from compact.exits.standalone import extract_exit
    from compact.face import embed
    from compact.profile.profiler import Target, profile_models
    from compact.prune import PRUNERS, PruneSettings, prune_layers, search_ratios

    net = _face_net(num_classes=8).eval()
    target = Target("exit0", extract_exit(net, 0).eval(), [3, 32, 32], None, {})
    (prof,) = profile_models([target], onnx=True, batches=[1], rounds=1, repeats=1)
    assert prof["onnx"]["parity_max_abs"] < 1e-4 and prof["macs_conv_linear"] > 0
    model, size = MobileFaceNet(num_classes=8, input_size=32).eval(), (3, 32, 32)
    base = conv_linear_macs(model, size)
    settings = PruneSettings(round_to=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning notes the classifier's bare weight, which it leaves alone
        result = search_ratios(model, size, PRUNERS.get("l1"), base // 2, settings)
        prune_layers(model, size, PRUNERS.get("l1"), result.ratios, settings)
    assert abs(conv_linear_macs(model, size) / base - 0.5) < 0.05
    assert model.classifier.weight.shape == (8, 128) and embed(model, torch.randn(4, *size)).shape == (4, 128)
