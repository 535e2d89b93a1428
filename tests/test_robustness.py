"""Trust: no code runs from any file, nothing is written outside the folder named, bounded reading of
hostile files, honest failures (interrupts, full disks, NaN results), and one file mode for a run."""

from __future__ import annotations

import gzip
import json
import math
import struct
import time
from pathlib import Path

import pytest
import torch

from compact.cli import main
from compact.errors import CompactError

from _helpers import fake_cifar10_py

TINY = ["--model", "cifar_resnet20", "--subset", "40", "--test-subset", "20", "--batch-size", "20", "--no-progress",
        "--data", "cifar10"]  # fmt: skip


def _train(tmp_path: Path, out: Path, *extra: str) -> int:
    if not (tmp_path / "cifar").exists():
        fake_cifar10_py(tmp_path / "cifar", n=20)
    return main(["train-mwbp", *TINY, "--data-dir", str(tmp_path / "cifar"), "--exits", "2", *extra, "--out", str(out)])


# -- model constructor arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "weights"]
)
@pytest.mark.parametrize("model", ["timm:resnet18", "torchvision:resnet18", "cifar_resnet20"])
def test_fetching_arguments_are_refused_for_every_family(model, key):
    from compact.models import create_model

    with pytest.raises(CompactError, match=f"'{key}' is refused"):
        create_model(model, **{key: True})


def test_models_are_never_built_with_pretrained_weights(tmp_path, monkeypatch):
    """Loading a timm model file calls timm with pretrained=False and only allow-listed arguments."""
    import timm

    from compact.modelfile import ModelInfo, load_model, save_model
    from compact.models import create_model

    calls = []
    real = timm.create_model

    def spy(name, **kwargs):
        calls.append(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    model = create_model("timm:resnet10t", num_classes=3, in_chans=1, drop_rate=0.1).eval()
    info = ModelInfo("timm:resnet10t", 3, 1, [1, 32, 32], model_kwargs={"drop_rate": 0.1})
    save_model(model, tmp_path / "m.safetensors", info)
    load_model(tmp_path / "m.safetensors")
    assert calls and all(c["pretrained"] is False for c in calls)
    assert all(set(c) == {"pretrained", "num_classes", "in_chans", "drop_rate"} for c in calls)


# -- model-file descriptions -------------------------------------------------------------------------------
def _exit_file(tmp_path: Path) -> Path:
    from compact.exits import attach_exits
    from compact.exits.standalone import build_exit_model  # noqa: F401  (the exit kind is what users export)
    from compact.modelfile import ModelInfo, save_model
    from compact.models import create_model

    net = attach_exits(create_model("cifar_resnet20", in_chans=1), num_outputs=2, input_size=(1, 16, 16)).eval()
    path = tmp_path / "net.safetensors"
    save_model(net, path, ModelInfo("cifar_resnet20", 10, 1, [1, 16, 16], kind="multi-exit",
                                    exit_nodes=net.exit_nodes, head=net.head_type))  # fmt: skip
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    desc = json.loads(meta["compact"])
    change(desc)
    meta["compact"] = json.dumps(desc)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    "module, attrs, message",
    [
        ("", {"forward": "print"}, "not a plain structural attribute"),
        ("", {"__class__": "Module"}, "not a plain structural attribute"),
        ("backbone", {"_forward_hooks": {}}, "not a plain structural attribute"),
        ("backbone", {"training": False}, "not a plain structural attribute"),
        ("backbone.fc", {"out_features": 10**12}, "not a valid value"),
        ("backbone.fc", {"out_features": "ten"}, "not a valid value"),
        ("backbone.conv1", {"kernel_size": [3, 3, 3]}, "not a valid value"),
        ("backbone.conv1", {"out_channels": 8}, "contradict its weights"),
        ("backbone.nowhere", {"out_channels": 8}, "which does not exist"),
    ],
)
def test_crafted_attributes_are_refused(tmp_path, module, attrs, message):
    from compact.modelfile import load_model

    bad = _rewrite(_exit_file(tmp_path), tmp_path / "bad.safetensors", lambda d: d.update(attrs={module: attrs}))
    with pytest.raises(CompactError, match=message):
        load_model(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_classes": 10**9}, "num_classes must be an integer in 1..100000"),
        ({"in_chans": 4096}, "in_chans must be an integer in 1..64"),
        ({"input_size": [1, 100000, 16]}, "H, W in 1..2048"),
        ({"input_size": [3, 16, 16]}, "input_size must be [in_chans, H, W]"),
        ({"exit_nodes": [1]}, "exit_nodes must be a list of node names"),
        ({"mean": [float("inf")]}, "mean must be a list of 1 finite numbers"),
        ({"model_kwargs": {"in_chans": 3}}, "set by compact itself"),
        ({"model_kwargs": {"pretrained": True}}, "'pretrained' is refused"),
        ({"source": {"seed": "zero"}}, "source.seed must be an integer"),
        ({"source": {"seed": 10**30}}, "source.seed must lie in 0..2147483647"),  # overflowed torch's generator
        ({"source": {"seed": -1}}, "source.seed must lie in 0..2147483647"),
    ],
)
def test_description_fields_are_typed_and_bounded(tmp_path, change, message):
    from compact.modelfile import load_model

    bad = _rewrite(_exit_file(tmp_path), tmp_path / "bad.safetensors", lambda d: d.update(change))
    with pytest.raises(CompactError, match=re_escape(message)):
        load_model(bad)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# -- bounded reading ---------------------------------------------------------------------------------------
def test_gzip_idx_declaring_gigabytes_is_refused_before_reading(tmp_path):
    from compact.data import read_idx

    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 10000, 10000)  # 6 TB of pixels declared
    with gzip.open(tmp_path / "bomb-idx3-ubyte.gz", "wb") as f:
        f.write(header + b"\0" * 1000)
    t = time.perf_counter()
    with pytest.raises(CompactError, match="more than the 512 MB compact reads"):
        read_idx(tmp_path / "bomb-idx3-ubyte.gz")
    assert time.perf_counter() - t < 1.0


def test_yaml_aliases_size_and_binary_are_refused(tmp_path):
    from compact._yaml import read_yaml_file

    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(CompactError, match=re_escape("aliases (*name) are not allowed")):
        read_yaml_file(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text("x: " + "y" * (2 << 20) + "\n")
    with pytest.raises(CompactError, match="larger than 1024 KB"):
        read_yaml_file(tmp_path / "big.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CompactError, match="not a text file"):
        read_yaml_file(tmp_path / "bin.yaml")
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(CompactError):
        read_yaml_file(tmp_path / "deep.yaml")
    (tmp_path / "ok.yaml").write_text("lr: 1e-3\nepochs: 2\n")  # a float without a decimal point is a float
    assert read_yaml_file(tmp_path / "ok.yaml") == {"lr": 0.001, "epochs": 2}


def _image_tree(root: Path, classes=("cat", "dog"), per_class=3, size=12) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folders_with_one_class_are_refused(tmp_path):
    from compact.data import DataOptions, load_data

    _image_tree(tmp_path, classes=("only",))
    with pytest.raises(CompactError, match="a classifier needs at least two"):
        load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))


def test_image_folders_skip_non_images_with_a_count(tmp_path, capsys):
    from compact.data import DataOptions, load_data

    _image_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.png").write_text("not an image")
    png = (tmp_path / "train" / "dog" / "0.png").read_bytes()
    (tmp_path / "train" / "dog" / "cut.png").write_bytes(png[: len(png) // 2])  # truncated: fails the check
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))
    assert data.train_size == 6
    err = capsys.readouterr().err
    assert "skipped 2 file(s) that are not readable images" in err and "notes.png" in err


def test_huge_images_are_refused_before_decoding(tmp_path):
    import zlib

    from compact.data import DataOptions, load_data

    _image_tree(tmp_path)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # valid PNG headers declaring 7000 x 7000 and 20000 x 20000 pixels, a few bytes of data
    for side in (7000, 20000):
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        idat = chunk(b"IDAT", zlib.compress(b"\0" * 100))
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")
        (tmp_path / "train" / "cat" / "huge.png").write_bytes(png)
        t = time.perf_counter()
        with pytest.raises(CompactError, match="huge.png .*than compact decodes"):
            load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))
        assert time.perf_counter() - t < 5


@pytest.mark.parametrize("workers", [0, 1])
def test_a_broken_image_found_while_loading_names_itself(tmp_path, workers):
    from compact.data import DataOptions, load_data
    from compact.data import folder as folder_module

    _image_tree(tmp_path)
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=workers))
    victim = tmp_path / "train" / "cat" / "1.png"
    victim.write_bytes(victim.read_bytes()[:60])  # broken after the up-front check
    train, _ = data.loaders(6, seed=0)
    train.set_epoch(0)
    with pytest.raises(folder_module.BadImageError) as exc:
        list(train)
    message = str(exc.value)
    assert message.startswith("cannot read image") and "1.png" in message and "\n" not in message


# -- output folders ----------------------------------------------------------------------------------------
def test_recipes_replace_only_folders_they_made(tmp_path):
    from compact.recipes.runner import claim

    out = tmp_path / "out"
    folder = out / "deep-l1" / "seed0"
    claim(out, folder, "deep-l1", 0)  # new: marked as the recipe's
    claim(out, folder, "deep-l1", 0)  # the same entry again: fine
    with pytest.raises(CompactError, match="belongs to another entry or seed"):
        claim(out, folder, "deep-l1", 1)
    foreign = out / "deep-fpgm" / "seed0"
    foreign.mkdir(parents=True)
    (foreign / "config.yaml").write_text("someone else's run\n")
    with pytest.raises(CompactError, match="holds files that compact run did not make"):
        claim(out, foreign, "deep-fpgm", 0)
    racing = out / "deep-sfp" / "seed0"  # another process is claiming it: its marker's temporary, its lock
    racing.mkdir(parents=True)
    (racing / ".entry.json.k3j4.tmp").write_text("")
    (racing / ".running.lock").write_text("{}")
    claim(out, racing, "deep-sfp", 0)
    assert (racing / "entry.json").is_file()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "linked").mkdir()
    (out / "linked" / "seed0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CompactError, match="leads outside the output folder"):
        claim(out, out / "linked" / "seed0", "linked", 0)
    assert (foreign / "config.yaml").read_text() == "someone else's run\n" and not any(outside.iterdir())


def test_links_inside_an_output_folder_are_refused_before_anything_is_written(tmp_path, capsys):
    """A run folder copied from someone else may hold a link (its exports/ pointing at another folder):
    resuming or re-making it wrote through the link, outside the folder the user named."""
    from compact._atomic import refuse_links
    from compact.recipes.runner import claim
    from compact.report import make_report

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = tmp_path / "run"
    assert _train(tmp_path, run, "--epochs", "1") == 0
    capsys.readouterr()
    (run / "exports").symlink_to(outside, target_is_directory=True)
    assert main(["train-mwbp", "--resume", str(run), "--epochs", "2"]) == 2
    assert f"{run / 'exports'} is a symbolic link" in capsys.readouterr().err
    with pytest.raises(CompactError, match="is a symbolic link"):
        refuse_links(run)
    refuse_links(outside)  # a folder without links, and a missing one, pass
    refuse_links(tmp_path / "missing")

    out = tmp_path / "out"
    folder = out / "mwbp" / "seed0"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(CompactError, match="model.safetensors is a symbolic link"):
        claim(out, folder, "mwbp", 0)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").symlink_to(outside / "report.md")
    with pytest.raises(CompactError, match="report.md is a symbolic link"):
        make_report(tmp_path / "no-run-needed", report)
    assert not any(outside.iterdir())
    # the folder the user names may itself be a link
    linked_run = tmp_path / "linked-run"
    linked_run.symlink_to(tmp_path / "fresh", target_is_directory=True)
    (tmp_path / "fresh").mkdir()
    assert _train(tmp_path, linked_run, "--epochs", "1") == 0


# -- runs: resume, failed starts, interrupts, file modes ---------------------------------------------------
def test_stale_temporaries_are_removed_on_resume_and_files_share_one_mode(tmp_path):
    out = tmp_path / "run"
    assert _train(tmp_path, out, "--epochs", "1") == 0
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert not stale.exists()
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir() if f.is_file()}
    assert len(set(modes.values())) == 1, modes
    assert "model.safetensors" in modes


def test_a_failed_start_is_not_a_run(tmp_path, monkeypatch, capsys):
    from compact.engine import trainer

    out = tmp_path / "run"

    def full_disk(path, state):
        raise OSError(28, "No space left on device", str(path))

    with monkeypatch.context() as m:  # the disk fills up before the first checkpoint is written
        m.setattr(trainer, "save_checkpoint", full_disk)
        assert _train(tmp_path, out, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"compact train-mwbp: error: No space left on device: {out / 'checkpoint.pt'}"]
    assert (out / "config.yaml").is_file() and not (out / "checkpoint.pt").exists()
    # a plain retry (no --overwrite) starts over: the folder held no completed epoch
    assert _train(tmp_path, out, "--epochs", "1") == 0


def test_ctrl_c_prints_one_line_that_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from compact.engine import trainer

    out = tmp_path / "run"
    real = trainer.train_epoch

    def interrupted(method, loader, device, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(method, loader, device, epoch, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer, "train_epoch", interrupted)
        assert _train(tmp_path, out, "--epochs", "2") == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"continue with: compact train --resume {out}" in err[0]
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_internal_errors_exit_1_with_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import compact.cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(compact.cli.COMMANDS, "methods", (compact.cli.COMMANDS["methods"][0], broken))
    assert main(["methods"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: ZeroDivisionError: a bug" in err[0] and "--debug" in err[0]
    assert main(["--debug", "methods"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_batch_too_large_for_memory_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from compact.engine import trainer

    monkeypatch.setattr(trainer, "available_memory", lambda device: 64 << 20)  # 64 MiB free
    assert _train(tmp_path, tmp_path / "run", "--epochs", "1", "--subset", "100", "--batch-size", "100") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch size 100 needs at least" in err[0] and "use a --batch-size well below" in err[0]
    assert not (tmp_path / "run").exists()
    # the estimate: outputs of every leaf module, checked against a hand count for a single convolution
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    assert trainer.activation_bytes(conv, (1, 8, 8)) == 2 * 4 * 8 * 8 * 4


def test_refused_checkpoints_never_suggest_weights_only_false(tmp_path):
    import os

    from compact.engine.checkpoint import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'MARKER'}",))

    torch.save({"format": "compact.checkpoint", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CompactError) as exc:
        load_checkpoint(tmp_path / "evil.pt")
    assert "holds objects other than tensors" in str(exc.value) and "weights_only" not in str(exc.value)
    assert not (tmp_path / "MARKER").exists()


# -- reports -----------------------------------------------------------------------------------------------
def test_report_marks_nan_errors_failed_and_keeps_them_off_the_front(tmp_path):
    from compact.report import make_report

    recipe = {
        "name": "r",
        "entries": [
            {"name": "good", "train": {"model": "cifar_resnet20", "method": "standard"}},
            {"name": "bad", "train": {"model": "cifar_resnet20", "method": "standard"}},
        ],
    }
    run = tmp_path / "run"
    (run).mkdir()
    (run / "recipe.json").write_text(json.dumps({"recipe": recipe, "settings": {}}))
    for name, err, macs in (("good", 12.5, 40_000_000), ("bad", float("nan"), 10_000_000)):
        folder = run / name / "seed0"
        (folder / "exports").mkdir(parents=True)
        (folder / "done.json").write_text("{}")
        row = {"output": 0, "node": "fc", "depth": 20, "params": 1000, "test_error_pct": err}
        (folder / "summary.json").write_text(json.dumps({"method": "standard", "outputs": [row]}))
        profile = {"params": 1000, "macs_conv_linear": macs, "macs": macs + 10, "latency_ms": {}}
        (folder / "exports" / "output0.profile.json").write_text(json.dumps(profile))
    result = make_report(run, tmp_path / "report")
    assert "FAILED: 1 model(s) have no valid test error" in result["markdown"]
    fronts = {axis: [p["model"] for p in data["front"]] for axis, data in result["plots"].items()}
    assert fronts["macs"] == ["good"]

    def no_nan(text):
        raise AssertionError(f"bare {text} in JSON")

    for name in ("table.json", "pareto.json", "exits.json"):
        json.loads((tmp_path / "report" / name).read_text(), parse_constant=no_nan)
    rows = json.loads((tmp_path / "report" / "table.json").read_text())
    bad = [r for r in (rows if isinstance(rows, list) else rows.get("models", [])) if r.get("entry") == "bad"]
    assert bad and bad[0]["test_error_pct"] is None and bad[0]["failed_seeds"] == [0]
    assert not any(isinstance(v, float) and math.isnan(v) for r in bad for v in r.values())


# -- the small JSON files a run writes -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, why",
    [
        (b"[1, 2]", "a JSON list, not an object"),
        (b"7", "a JSON int, not an object"),
        (b"{", "Expecting property name"),
        (b"\xff\xfe{}", "can't decode byte"),
        (b"[" * 100_000 + b"]" * 100_000, "recursion"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "integer string conversion"),
    ],
)
def test_a_damaged_json_file_is_named_with_what_is_wrong(tmp_path, content, why):
    from compact._jsonfile import read_json_object, try_read_json_object

    path = tmp_path / "done.json"
    path.write_bytes(content)
    with pytest.raises(CompactError) as err:
        read_json_object(path, "remove it")
    message = str(err.value)
    assert message.startswith(f"{path} is damaged (") and why in message and message.endswith("; remove it")
    assert "\n" not in message and len(message) < 400
    assert try_read_json_object(path) is None


def test_json_files_that_are_no_regular_file_or_too_large_are_not_read(tmp_path, monkeypatch):
    from compact import _jsonfile

    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CompactError, match="folder.json is damaged \\(not a regular file\\)"):
        _jsonfile.read_json_object(tmp_path / "folder.json")
    with pytest.raises(CompactError, match="missing.json cannot be read \\(No such file"):
        _jsonfile.read_json_object(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * 2000 + '"}')
    monkeypatch.setattr(_jsonfile, "SIZE_LIMIT", 1000)
    with pytest.raises(CompactError, match="big.json is damaged \\(2009 bytes, more than the 1000"):
        _jsonfile.read_json_object(big)
    assert _jsonfile.try_read_json_object(big) is None
