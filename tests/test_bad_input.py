"""Hostile and careless input, as a stranger would try it: every bad input ends in one line on stderr and exit
status 2 (no traceback), runs no code from any file, and writes or changes nothing in existing folders.

A small trained run on stand-in CIFAR-10 data (no download, no Debian package) is made once; each case gets
a fresh copy of the workspace, and the tree is compared byte for byte before and after the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from compact.cli import main

from _helpers import fake_cifar10_py

DATA = ["--data", "cifar10", "--data-dir", "{ws}/cifar"]
TINY = ["--model", "cifar_resnet20", "--subset", "40", "--test-subset", "20", "--batch-size", "20", "--epochs", "1",
        "--no-progress", *DATA]  # fmt: skip


# -- the workspace: data, a trained run, its exported exit, crafted files -------------------------------
class Payload:
    """Unpickling this runs code: it creates the marker file. Nothing in compact may ever unpickle it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_model(src: Path, dst: Path, change) -> None:
    """Copy a compact model file with its JSON description changed by ``change(dict)``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    desc = json.loads(meta["compact"])
    change(desc)
    meta["compact"] = json.dumps(desc)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    fake_cifar10_py(ws / "cifar", n=20)
    argv = [a.format(ws=ws) for a in ["train-mwbp", *TINY, "--exits", "3", "--out", str(ws / "run")]]
    assert main(argv) == 0
    assert main(["export", str(ws / "run"), "--exit", "0", "--out", str(ws / "exit0.safetensors")]) == 0
    (ws / "afile").write_text("not a folder\n")
    (ws / "emptydir").mkdir()
    (ws / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=False)]
    (ws / "bomb.yaml").write_text("\n".join(bomb) + "\nmodel: cifar_resnet20\n")
    (ws / "pyobj.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {ws}/MARKER']\n")
    # a file:// "pretrained" checkpoint whose unpickling would run code
    torch.save({"state_dict": Payload(str(ws / "MARKER"))}, ws / "payload.pth")
    attack = {"pretrained": True, "pretrained_cfg_overlay": {"url": f"file://{ws}/payload.pth"}}
    _rewrite_model(ws / "run" / "model.safetensors", ws / "attack.safetensors", lambda d: d.update(model_kwargs=attack))
    _rewrite_model(ws / "exit0.safetensors", ws / "attrs.safetensors", lambda d: d.update(attrs={"": {"forward": "x"}}))
    _rewrite_model(
        ws / "exit0.safetensors",
        ws / "huge.safetensors",
        lambda d: d.update(attrs={"head.fc": {"out_features": 10**12}}),
    )
    _rewrite_model(ws / "exit0.safetensors", ws / "classes.safetensors", lambda d: d.update(num_classes=10**9))
    _rewrite_model(ws / "exit0.safetensors", ws / "types.safetensors", lambda d: d.update(input_size="big"))
    (ws / "random.safetensors").write_bytes(os.urandom(300))
    # a run whose checkpoint was tampered with: wrong types, a pickle that runs code, garbage
    for name, content in {
        "ckpt-types": {"format": "compact.checkpoint", "format_version": 1, "epoch": "one", "history": []},
        "ckpt-pickle": {"format": "compact.checkpoint", "format_version": 1, "payload": Payload(str(ws / "MARKER"))},
    }.items():
        shutil.copytree(ws / "run", ws / name)
        (ws / name / "model.safetensors").unlink()
        torch.save(content, ws / name / "checkpoint.pt")
    shutil.copytree(ws / "run", ws / "ckpt-garbage")
    (ws / "ckpt-garbage" / "model.safetensors").unlink()
    (ws / "ckpt-garbage" / "checkpoint.pt").write_bytes(os.urandom(2000))
    # resuming runs whose config.yaml was cut short or overwritten with random bytes
    for name, text in {"cut": "model: cifar_resnet20\nmethod: mwbp\nexits: 3\n", "noise": None}.items():
        shutil.copytree(ws / "run", ws / name)
        (ws / name / "model.safetensors").unlink()
        cfg = ws / name / "config.yaml"
        cfg.write_text(text) if text else cfg.write_bytes(os.urandom(500))
    # a run config that asks for pretrained weights (through config.yaml, as a hostile run folder would)
    shutil.copytree(ws / "run", ws / "pretrained-run")
    cfg = yaml.safe_load((ws / "pretrained-run" / "config.yaml").read_text())
    cfg["model_kwargs"] = attack
    (ws / "pretrained-run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (ws / "pretrained-run" / "model.safetensors").unlink()
    # recipes
    recipe = {
        "name": "r",
        "data": {"name": "cifar10", "data_dir": str(ws / "cifar"), "subset": 40, "test_subset": 20},
        "entries": [{"name": "a", "train": {"model": "cifar_resnet20", "method": "mwbp", "exits": 3}}],
    }
    for name, change in {
        "escape": lambda r: r.update(name="../../escaped"),
        "dotdot": lambda r: r["entries"][0].update(name=".."),
        "badmatch": lambda r: r["entries"].append(
            {"name": "p", "prune": {"from": "a", "method": "l1", "match": "a:zz"}}
        ),
        "rounds": lambda r: r.update(profile={"rounds": 0}),
        "kwargs": lambda r: r["entries"][0]["train"].update(model_kwargs=attack),
    }.items():
        r = json.loads(json.dumps(recipe))
        change(r)
        (ws / f"recipe-{name}.yaml").write_text(yaml.safe_dump(r))
    (ws / "recipe-bomb.yaml").write_text((ws / "bomb.yaml").read_text().replace("model:", "name:"))
    (ws / "notarun").mkdir()
    (ws / "notarun" / "keep.txt").write_text("mine\n")
    # a recipe run whose summary lost its keys
    (ws / "rr" / "a" / "seed0").mkdir(parents=True)
    (ws / "rr" / "recipe.json").write_text(json.dumps({"recipe": recipe, "settings": {}}))
    (ws / "rr" / "a" / "seed0" / "done.json").write_text("{}")
    (ws / "rr" / "a" / "seed0" / "summary.json").write_text('{"model": "x"}')
    return ws


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content and its mode."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = f"dir {oct(path.stat().st_mode)}"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {oct(path.stat().st_mode)}"
    return out


# (argv, text the one-line message must contain); "{ws}" is the workspace
CASES = [
    # model constructor arguments: allow-list, nothing fetched
    (["train", *TINY, "--model-arg", "bogus=1", "--out", "{ws}/new"], "unknown argument 'bogus'"),
    (["train", *TINY, "--model-arg", "pretrained=true", "--out", "{ws}/new"], "'pretrained' is refused"),
    (["train", *TINY, "--model-arg", "num_classes=3", "--out", "{ws}/new"], "set by compact itself"),
    (["train", *TINY, "--model-arg", "shortcut=C", "--out", "{ws}/new"], "shortcut must be one of 'A', 'B'"),
    (["train", *TINY, "--model", "timm:hf-hub:x/y", "--out", "{ws}/new"], "unknown timm model"),
    (["train", *TINY, "--model", "timm:resnet*", "--out", "{ws}/new"], "unknown timm model"),
    (["train", *TINY, "--model", "timm:resnet18", "--model-arg", "act_layer=x", "--out", "{ws}/new"], "act_layer"),
    (
        ["train", *TINY, "--model", "torchvision:resnet18", "--model-arg", "weights=DEFAULT", "--out", "{ws}/new"],
        "'weights' is refused",
    ),  # fmt: skip
    # options
    (["train", *TINY, "--device", "cuda:abc", "--out", "{ws}/new"], "device must be auto, cpu, cuda or cuda:N"),
    (["train", *TINY, "--out", "{ws}/afile/run"], "a parent of it is a file"),
    (["train", *TINY, "--out", "{ws}/afile"], "is a file"),
    (["train", *TINY, "--config", "{ws}/binary.yaml", "--out", "{ws}/new"], "not a text file"),
    (["train", *TINY, "--config", "{ws}/bomb.yaml", "--out", "{ws}/new"], "aliases (*name) are not allowed"),
    (["train", *TINY, "--config", "{ws}/pyobj.yaml", "--out", "{ws}/new"], "not valid YAML for compact"),
    (["train", *TINY, "--config", "{ws}/emptydir", "--out", "{ws}/new"], "is a folder, not a file"),
    (["train", *TINY, "--config", "{ws}/missing.yaml", "--out", "{ws}/new"], "does not exist"),
    (
        ["train", *TINY, "--method-option", "c=!!python/object/apply:os.system [ls]", "--out", "{ws}/new"],
        "not valid YAML for compact",
    ),  # fmt: skip
    (["train", *TINY, "--method-option", "c=2020-01-01", "--out", "{ws}/new"], "got date"),
    (["train", *TINY, "--lr", "nan", "--out", "{ws}/new"], "lr must be a number in (0, 10000]"),
    (["train", *TINY, "--num-classes", "1000000000", "--out", "{ws}/new"], "num_classes"),
    (["train", *TINY, "--image-size", "100000", "--out", "{ws}/new"], "image_size must be an integer in 8..2048"),
    (["train", *TINY, "--subset", "-5", "--out", "{ws}/new"], "subset must be an integer >= 1"),
    (["train", *TINY, "--exit-nodes", "nowhere", "--out", "{ws}/new"], "nowhere"),
    (["train", *TINY, "--data", "imagefolder:{ws}/nothing", "--out", "{ws}/new"], "does not exist"),
    (["train", *TINY, "--init-from", "{ws}/attack.safetensors", "--out", "{ws}/new"], "'pretrained' is refused"),
    # resuming damaged runs
    (["train", "--resume", "{ws}/cut"], "does not match the configuration its checkpoint was trained with"),
    (["train", "--resume", "{ws}/noise"], "not a text file"),
    (["train", "--resume", "{ws}/ckpt-types"], "is damaged"),
    (["train", "--resume", "{ws}/ckpt-pickle"], "holds objects other than tensors"),
    (["train", "--resume", "{ws}/nothing"], "does not exist"),
    (["train", "--resume", "{ws}/pretrained-run"], "'pretrained' is refused"),
    # model files and runs
    (["eval", "{ws}/attack.safetensors", *DATA], "'pretrained' is refused"),
    (["eval", "{ws}/pretrained-run", *DATA], "'pretrained' is refused"),
    (["export", "{ws}/attack.safetensors", "--exit", "0", "--out", "{ws}/x.safetensors"], "'pretrained' is refused"),
    (["profile", "{ws}/attack.safetensors", "--no-store", "--no-latency"], "'pretrained' is refused"),
    (["probe", "{ws}/attack.safetensors", "--exits", "2", "--out", "{ws}/new", *DATA], "'pretrained' is refused"),
    (["eval", "{ws}/attrs.safetensors", *DATA], "not a plain structural attribute"),
    (["eval", "{ws}/huge.safetensors", *DATA], "not a valid value"),
    (["eval", "{ws}/classes.safetensors", *DATA], "num_classes must be an integer in 1..100000"),
    (["eval", "{ws}/types.safetensors", *DATA], "input_size must be [C, H, W]"),
    (["eval", "{ws}/random.safetensors", *DATA], "not a readable compact model file"),
    (["eval", "{ws}/ckpt-garbage", *DATA], "is corrupt or truncated"),
    (["eval", "{ws}/ckpt-types", *DATA], "is damaged"),
    (["eval", "{ws}/ckpt-pickle", *DATA], "holds objects other than tensors"),
    (["export", "{ws}/run", "--exit", "0", "--out", "{ws}/emptydir"], "is a folder; give a file name"),
    (["export", "{ws}/run", "--exit", "9", "--out", "{ws}/x.safetensors"], "does not exist"),
    (["export", "{ws}/run", "--exit", "abc", "--out", "{ws}/x.safetensors"], "abc"),
    # profiling
    (["profile", "{ws}/exit0.safetensors", "--batch", ","], "expected one or more positive integers"),
    (["profile", "{ws}/exit0.safetensors", "--batch", "0"], "expected one or more positive integers"),
    (["profile", "{ws}/exit0.safetensors", "--json", "{ws}/emptydir"], "is a folder; give a file name"),
    (["profile", "{ws}/exit0.safetensors", "--rounds", "0"], "--rounds must be an integer in 1..10000, got 0"),
    (["profile", "{ws}/missing.safetensors"], "does not exist"),
    # pruning
    (
        ["prune", "--method", "l1", "--from", "{ws}/run", "--target-macs", "1e400", "--out", "{ws}/new"],
        "MACs target must lie in",
    ),  # fmt: skip
    (["prune", "--method", "l1", "--from", "{ws}/run", "--target-macs", "abc", "--out", "{ws}/new"], "cannot read"),
    (["prune", "--method", "l1", "--from", "{ws}/run", "--macs-ratio", "1.5", "--out", "{ws}/new"], "(0, 1)"),
    (["prune", "--method", "taylor", "--from", "{ws}/run", "--macs-ratio", "0.5", "--out", "{ws}/new"], "taylor"),
    (["prune", "--method", "l1", "--from", "{ws}/nothing", "--macs-ratio", "0.5", "--out", "{ws}/new"], "nothing"),
    (
        [
            "prune",
            "--method",
            "l1",
            "--from",
            "{ws}/run",
            "--macs-ratio",
            "0.5",
            "--round-to",
            "0",
            "--out",
            "{ws}/new",
        ],
        "round_to must be an integer",
    ),  # fmt: skip
    (
        ["prune", "--method", "l1", "--from", "{ws}/attack.safetensors", "--macs-ratio", "0.5", "--out", "{ws}/new"],
        "'pretrained' is refused",
    ),  # fmt: skip
    (
        ["prune", "--method", "l1", "--from", "{ws}/run", "--match", "{ws}/attack.safetensors", "--out", "{ws}/new"],
        "'pretrained' is refused",
    ),  # fmt: skip
    (["prune", "--method", "l1", "--from", "{ws}/run", "--macs-ratio", "0.5", "--out", "{ws}/afile"], "is a file"),
    (["probe", "{ws}/run", "--exits", "2", "--out", "{ws}/afile/x", *DATA], "a parent of it is a file"),
    # recipes and reports
    (["run", "{ws}/recipe-escape.yaml"], "'name' must be a plain name"),
    (["run", "{ws}/recipe-dotdot.yaml", "--out", "{ws}/new"], "entries[0].name must be a plain name"),
    (["run", "{ws}/recipe-badmatch.yaml", "--out", "{ws}/new"], "match 'a:zz': a has outputs 0..2"),
    (["run", "{ws}/recipe-rounds.yaml", "--out", "{ws}/new"], "rounds must be an integer in 1..10000"),
    (["run", "{ws}/recipe-kwargs.yaml", "--out", "{ws}/new"], "'pretrained' is refused"),
    (["run", "{ws}/recipe-bomb.yaml", "--out", "{ws}/new"], "aliases (*name) are not allowed"),
    (["run", "{ws}/recipe-rounds.yaml", "--out", "{ws}/notarun"], "rounds must be"),
    (["run", "demo", "--out", "{ws}/notarun"], "is not empty and holds no compact run"),
    (["run", "demo", "--out", "{ws}/new", "--data", "mnist"], "unknown dataset 'mnist'"),
    (["run", "{ws}/missing.yaml", "--out", "{ws}/new"], "does not exist"),
    (["report", "{ws}/rr", "--out", "{ws}/afile"], "is a file; give a folder"),
    (["report", "{ws}/notarun"], "not the output folder of compact run"),
    (["report", "{ws}/rr"], "summary.json is damaged"),
    # inspection
    (["exits", "--model", "cifar_resnet20", "--input-size", "3,99999,32"], "H, W in 1..2048"),
    (["exits", "--model", "cifar_resnet20", "--image-size", "0"], "--image-size must lie in 8..2048, got 0"),
    (["exits", "--model", "cifar_resnet20", "--image-size", "64", "--input-size", "3,32,32"], "give one of them"),
    # networks that cannot take the input size: named before any training, with the smallest size that works
    (
        ["exits", "--model", "timm:convnext_atto", "--data", "fashion-mnist", "--exits", "3"],
        "the smallest square input it takes is 1x32x32 (--image-size 32)",
    ),  # fmt: skip
    (
        [
            "train-mwbp",
            *TINY,
            "--model",
            "timm:convnext_atto",
            "--image-size",
            "16",
            "--exits",
            "3",
            "--out",
            "{ws}/new",
        ],
        "the smallest square input it takes is 3x32x32",
    ),  # fmt: skip
    (["train", *TINY, "--augment", "mixup", "--out", "{ws}/new"], "invalid choice: 'mixup'"),
    (["train", *TINY, "--in-chans", "2", "--out", "{ws}/new"], "invalid choice: 2"),
    (["train", *TINY, "--image-size", "4", "--out", "{ws}/new"], "image_size must be an integer in 8..2048"),
    (["run", "demo", "--image-size", "5000", "--out", "{ws}/new"], "--image-size must lie in 8..2048"),
    (["exits", "--model", "cifar_resnet20", "--exit-nodes", "nowhere"], "nowhere"),
    (["exits", "--model", "cifar_resnet20", "--exits", "3", "--model-arg", "pretrained=1"], "'pretrained' is refused"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, tmp_path, argv, message, capsys, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    monkeypatch.chdir(tmp_path)  # a default output folder (runs/<name>) would land here
    before = _tree(tmp_path)
    argv = [a.format(ws=ws) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors: one line too
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.format(ws=ws) in lines[0], lines[0]
    assert not (ws / "MARKER").exists(), "code from a file ran"
    assert _tree(tmp_path) == before, "a bad input wrote or changed files"
