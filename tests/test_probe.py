"""Probe heads (paper footnote 3): only the heads learn; the trunk, BatchNorm statistics included, is
bit-identical afterwards; the probed exits classify far better than chance."""

from __future__ import annotations

import pytest
import torch

from compact.cli import main
from compact.data import find_fashion_mnist, load_data
from compact.engine import TrainConfig, build_network, open_run, train
from compact.engine.trainer import data_options
from compact.errors import CompactError

from _helpers import needs_fmnist

SOURCE = dict(
    model="cifar_resnet20",
    subset=768,
    test_subset=500,
    batch_size=32,
    eval_batch_size=500,
    lr=0.05,
    lr_milestones=[0.9],
)


@pytest.fixture(scope="module")
def trained_standard_run(tmp_path_factory):
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed")
    run = tmp_path_factory.mktemp("standard") / "run"
    train(TrainConfig(**SOURCE, method="standard", epochs=3), run, progress=False, log=None)
    return run


@needs_fmnist
def test_probe_trains_only_the_heads(trained_standard_run, capsys):
    run = trained_standard_run
    argv = ["probe", str(run), "--exits", "3", "--epochs", "4", "--lr-milestones", "0.9", "--no-progress"]
    assert main(argv) == 0
    probe = open_run(run / "probe")
    assert probe.config.method == "probe" and probe.config.init_from == str(run)

    source_net, _ = open_run(run).network()
    probed_net, _ = probe.network()
    src, new = source_net.backbone.state_dict(), probed_net.backbone.state_dict()
    assert src.keys() == new.keys() and all(torch.equal(src[k], new[k]) for k in src)  # weights and BN buffers

    # the heads did learn: they differ from the heads the same seed builds before training
    data = load_data(data_options(probe.config))
    fresh, _ = build_network(probe.config, data)
    for head, head0 in zip(probed_net.heads, fresh.heads, strict=True):
        assert not torch.equal(head.fc.weight, head0.fc.weight)

    history = probe.history()
    errors = history[-1]["test_error_pct"]
    assert len(errors) == 3 and max(errors) < 65, errors  # chance is 90%; measured 49.6, 41.8, 38.4
    # the final output is the trained network's own: the probe run reports the source's error for it
    assert errors[-1] == pytest.approx(open_run(run).history()[-1]["test_error_pct"][-1])
    assert "probe run:" in capsys.readouterr().out


@needs_fmnist
def test_probe_bad_input(trained_standard_run, tmp_path, capsys):
    run = trained_standard_run
    assert main(["probe", str(run), "--exit-blocks", "4,99", "--epochs", "1", "--out", str(tmp_path / "p")]) == 2
    assert "block positions [99] out of range" in capsys.readouterr().err
    assert main(["probe", str(run), "--epochs", "1", "--out", str(tmp_path / "p")]) == 2
    assert "say where the heads go" in capsys.readouterr().err

    empty = tmp_path / "unfinished"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["probe", str(empty), "--exits", "2", "--epochs", "1", "--out", str(tmp_path / "p")]) == 2
    assert "has neither a final model" in capsys.readouterr().err

    assert main(["export", str(run), "--exit", "final", "--out", str(tmp_path / "full.safetensors")]) == 0
    assert main(["probe", str(tmp_path / "full.safetensors"), "--exits", "2", "--epochs", "1"]) == 2
    assert "needs --out" in capsys.readouterr().err

    with pytest.raises(CompactError, match="method probe works on a trained network: set init_from"):
        TrainConfig(model="cifar_resnet20", method="probe")


def test_work_from_a_model_file_takes_its_input_size_classes_and_seed(tmp_path):
    from compact import attach_exits, create_model
    from compact.engine.probe import probe_config
    from compact.modelfile import ModelInfo, save_model
    from compact.prune.job import prune_config

    net = attach_exits(create_model("cifar_resnet20", num_classes=10, in_chans=1), 1, input_size=(1, 32, 32))
    info = ModelInfo("cifar_resnet20", 10, 1, [1, 32, 32], kind="multi-exit", head=net.head_type,
                     dataset="fashion-mnist", source={"seed": 4})  # fmt: skip
    save_model(net, tmp_path / "m.safetensors", info)
    for cfg in (
        probe_config(tmp_path / "m.safetensors", {"exits": 3}),
        prune_config(False, tmp_path / "m.safetensors", None, {}),
    ):
        # a network trained on Fashion-MNIST resized to 32 px is fed 32 px images again (it was refused)
        assert (cfg.model, cfg.image_size, cfg.in_chans, cfg.num_classes, cfg.seed) == ("cifar_resnet20", 32, 1, 10, 4)
        assert cfg.data == "fashion-mnist"
