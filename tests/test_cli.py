"""The command line: subcommands listed, exits plan printed, bad input gives one line and status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from compact import __version__
from compact.cli import main

from _helpers import needs_fmnist


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "methods", "exits", "train", "train-mwbp", "eval", "export", "probe"):
        assert cmd in out


def test_version_agrees_with_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"compact {__version__}"
    assert version("compact") == __version__


def test_methods_and_models(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == sorted(
        ["standard", "joint", "relay", "mwbp", "reverse-mwbp", "naive-mwbp", "naive-reverse-mwbp", "probe"]
    )
    assert main(["models", "cifar_resnet*"]) == 0
    assert capsys.readouterr().out.split() == [f"cifar_resnet{d}" for d in (110, 20, 32, 44, 56)]
    assert main(["models"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"cifar_wrn28_10", "cifar_resnext29_8x64d", "cifar_densenet_bc100", "mobilefacenet"} <= set(listed)


def test_exits_json_for_resnet56(capsys):
    assert main(["exits", "--model", "cifar_resnet56", "--exit-layers", "15,25,35,45", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in rows] == [15, 25, 35, 45, 56]
    assert [r["params"] for r in rows][-1] == 853018
    assert [r["gamma"] for r in rows] == pytest.approx([1 / 9, 25 / 81, 49 / 81, 1, 1], abs=1e-6)
    assert [r["feature"] for r in rows] == ["nchw"] * 4 + [None]


@pytest.mark.parametrize(
    "extra, size",
    [([], (3, 32, 32)), (["--image-size", "40"], (3, 40, 40)), (["--data", "fashion-mnist"], (1, 28, 28)),
     (["--data", "fashion-mnist", "--image-size", "36"], (1, 36, 36)),
     (["--data", "fashion-mnist", "--input-size", "3,24,24"], (3, 24, 24))],
)  # fmt: skip
def test_exits_traces_the_input_size_asked_for(extra, size, monkeypatch, capsys):
    # --image-size without --data used to be ignored silently (32 px traced)
    import compact.cli.inspect as inspect_cli

    seen = []
    real = inspect_cli.build_net
    monkeypatch.setattr(inspect_cli, "build_net", lambda args: seen.append(tuple(args.input_size)) or real(args))
    assert main(["exits", "--model", "cifar_resnet20", "--exits", "2", *extra]) == 0
    assert seen == [size]


def test_exits_table_keeps_long_node_names_apart_from_the_layer(capsys):
    nodes = "features.denseblock3.denselayer16,features.denseblock4.denselayer16"  # 33 characters each
    argv = ["exits", "--model", "torchvision:densenet121", "--input-size", "3,64,64", "--exit-nodes", nodes]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[:3] for r in rows[:2]] == [["0", "features.denseblock3.denselayer16", "71"],
                                         ["1", "features.denseblock4.denselayer16", "120"]]  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        (["exits", "--model", "resnet57", "--exits", "3"], "unknown model 'resnet57'"),
        (["exits", "--model", "cifar_resnet20", "--exits", "12"], "only 9 blocks"),
        (["exits", "--model", "cifar_resnet20", "--exit-blocks", "4,2"], "strictly increasing"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--nu", "-1"], "nu must be"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--head", "x"], "valid head types"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--schedule", "x"], "adaptive-2"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--exit-blocks", "2"], "only one of"),
        # arguments compact sets itself were a TypeError (internal error) in exits and profile
        (["exits", "--model", "cifar_resnet20", "--model-arg", "num_classes=3"], "'num_classes' is set by compact"),
        (["exits", "--model", "timm:resnet18", "--model-arg", "in_chans=1"], "'in_chans' is set by compact"),
        (["profile", "cifar_resnet20", "--no-latency", "--model-arg", "num_classes=3"], "'num_classes' is set by"),
        (["profile", "cifar_resnet20", "--no-latency", "--threads", "100000"], "--threads must be in 1..1024"),
        (["profile", "cifar_resnet20", "--rounds", "100001"], "--rounds must be an integer in 1..10000"),
        (["train", "--model", "cifar_resnet20", "--out", "never-made", "--workers", "100000"], "workers must be an"),
        # a run of 10^30 epochs started and would never have ended
        (
            ["train", "--model", "cifar_resnet20", "--out", "never-made", "--epochs", str(10**30)],
            "epochs must be an integer in 1..100000, got 1",
        ),
        (
            ["train", "--model", "cifar_resnet20", "--out", "never-made", "--seed", str(2**64)],
            "seed must be an integer in 0..2147483647",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_error_quoting_a_huge_value_stays_short(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "seeds": list(range(100_000))}, default_flow_style=True))
    assert main(["recipes", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "seeds must be a list of 1..100 distinct integers" in err and "characters left out" in err
    assert err.count("\n") == 1 and len(err) < 4200


def test_a_configuration_file_cannot_ask_to_download(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\ndata: cifar10\ndata_dir: /somewhere\ndownload: true\n")
    argv = ["train", "--model", "cifar_resnet20", "--config", str(config), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "a configuration file cannot ask to download; pass --download" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_python_dash_m_compact():
    out = subprocess.run([sys.executable, "-m", "compact", "methods"], capture_output=True, text=True, check=True)
    assert "mwbp" in out.stdout


TINY = ["--model", "cifar_resnet20", "--subset", "64", "--test-subset", "32", "--batch-size", "32", "--no-progress"]


@needs_fmnist
def test_train_mwbp_eval_export_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 1\nlr: 0.05\nexits: 2\nweight-decay: 0.0001\nseed: 3\n")
    run = tmp_path / "run"
    argv = ["train-mwbp", *TINY, "--config", str(config), "--exits", "3", "--out", str(run)]
    assert main(argv) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    # YAML sets defaults, the command line overrides them, the paper's values fill the rest
    assert (stored["method"], stored["exits"], stored["lr"], stored["weight_decay"]) == ("mwbp", 3, 0.05, 1e-4)
    assert (stored["seed"], stored["momentum"], stored["nesterov"], stored["lr_milestones"]) == (
        3,
        0.9,
        True,
        [0.4, 0.6],
    )
    capsys.readouterr()

    assert main(["eval", str(run), "--test-subset", "32", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    # the same 32 test images (same seed): eval agrees with the training run's last evaluation
    assert [o["test_error_pct"] for o in evaluated["outputs"]] == [o["test_error_pct"] for o in summary["outputs"]]

    assert main(["export", str(run), "--exit", "0", "--out", str(tmp_path / "exit0.safetensors")]) == 0
    assert "exit 0 at layer1.2 (layer 7), 14,394 parameters" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "exit0.safetensors"), "--test-subset", "32", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)["outputs"]
    assert [o["test_error_pct"] for o in exported] == [summary["outputs"][0]["test_error_pct"]]

    # resuming a finished run changes nothing and says so through the same summary
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "epochs must be an integer in 1..100000, got 0"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--lr", "0"], "lr must be a number in (0, 10000], got 0.0"),
        (["--lr", "1e308"], "lr must be a number in (0, 10000], got 1e+308"),
        (["--momentum", "5"], "momentum must be a number in [0, 1), got 5.0"),
        (["--lr-decay", "10"], "lr_decay (the factor at each milestone) must be in (0, 1], got 10.0"),
        (["--data", "mnist"], "unknown dataset 'mnist'"),
        (["--method", "sgd"], "unknown backpropagation method 'sgd'"),
        (["--method-option", "c"], "expected KEY=VALUE"),
    ],
)
def test_train_bad_input(tmp_path, extra, message, capsys):
    argv = ["train", *TINY, "--exits", "2", *extra, "--out", str(tmp_path / "run")]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@needs_fmnist
def test_train_smoke_is_one_batch_and_configs_list(tmp_path, capsys):
    from compact.engine.config import SMOKE

    out = tmp_path / "run"
    argv = ["train-mwbp", "--model", "cifar_resnet20", "--exits", "2", "--smoke", "--epochs", "50"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert "smoke run" in capsys.readouterr().out
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: cfg[k] for k in SMOKE} == SMOKE  # --smoke wins over the options given with it
    assert SMOKE["subset"] == SMOKE["batch_size"] and SMOKE["test_subset"] <= SMOKE["eval_batch_size"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # header and one epoch
    assert main(["train", "--resume", str(out), "--smoke"]) == 2
    assert "--smoke checks a setup in a new run" in capsys.readouterr().err
    assert main(["configs"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["paper-cifar", "paper-face", "paper-imagenet-resnet"]


def test_train_needs_out_or_resume_and_mwbp_needs_exits(tmp_path, capsys):
    assert main(["train", *TINY]) == 2
    assert "give either --out RUN" in capsys.readouterr().err
    assert main(["train-mwbp", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "method mwbp trains several outputs but this run has only the final one" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("model: cifar_resnet20\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "unknown option(s) learning_rate" in capsys.readouterr().err


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from compact.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['prune', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'fvcore', 'onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "lr 0.001 for l1/fpgm" in out.stdout or "0.001 for l1/fpgm" in out.stdout  # prune --help: real defaults
