"""Distributed training (torch.distributed, gloo on the CPU): two processes equal one process on the
concatenated batch for MW-BP, Joint and standard BP; torchrun runs the command line end to end.

The equality test uses a network without BatchNorm: on the CPU BatchNorm statistics are per process (PyTorch's
SyncBatchNorm needs CUDA), which is the one documented difference from a single process."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from compact.exits import attach_exits
from compact.methods import SGDConfig, create_method

from _helpers import needs_fmnist

STEPS, BATCH = 3, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(method: str):
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip
    net = attach_exits(backbone, nodes=["1", "3"], head="gap-fc", input_size=(1, 8, 8)).double().train()
    m = create_method(method, net, SGDConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(BATCH, 1, 8, 8, generator=g).double(), torch.randint(0, 5, (BATCH,), generator=g))
            for _ in range(STEPS)]  # fmt: skip
    return net, m, data


def _worker(rank: int, world: int, port: int, method: str, out: str) -> None:
    from compact.engine.distributed import average_gradients, from_env

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    d = from_env(torch.device("cpu"))
    net, m, data = _setup(method)
    m.grad_sync = functools.partial(average_gradients, d=d)
    for x, y in data:
        m.step(x.tensor_split(world)[rank], y.tensor_split(world)[rank])
    torch.save(net.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("method", ["mwbp", "joint", "standard"])
def test_two_processes_equal_one_process_on_the_concatenated_batch(method, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), method, str(tmp_path)), nprocs=2, join=True)
    net, m, data = _setup(method)
    for x, y in data:
        m.step(x, y)
    expected = net.state_dict()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k in expected:
            assert torch.allclose(got[k], expected[k], rtol=0, atol=1e-12), (method, rank, k)
    before = _setup(method)[0].state_dict()
    assert any(not torch.equal(before[k], expected[k]) for k in expected)  # the steps did change the weights


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "compact"]
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@needs_fmnist
def test_torchrun_trains_mwbp_end_to_end(tmp_path):
    from compact.data import DataOptions, load_data
    from compact.engine import evaluate, open_run

    run = tmp_path / "run"
    common = ["--model", "cifar_resnet20", "--exits", "2", "--subset", "64", "--test-subset", "50",
              "--epochs", "1", "--no-progress"]  # fmt: skip
    done = _torchrun(["train-mwbp", *common, "--batch-size", "32", "--out", str(run)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 logs
    net, _ = open_run(run).network()
    history = open_run(run).history()
    # the test error the two processes reduced equals a single-process evaluation of the saved network
    data = load_data(DataOptions(subset=64, test_subset=50))
    _, test_loader = data.loaders(32, 0, 32)
    assert evaluate(net, test_loader, torch.device("cpu"))[1] == history[-1]["test_error_pct"]

    bad = _torchrun(["train-mwbp", *common, "--batch-size", "33", "--out", str(tmp_path / "bad")], tmp_path)
    assert bad.returncode != 0 and "batch size 33 is not divisible by the 2 processes" in bad.stderr


@needs_fmnist
def test_two_nodes_on_loopback_train_and_only_global_rank_0_writes(tmp_path):
    """Two torchrun launchers with --nnodes 2 (one process each) meet over TCP on 127.0.0.1, as two machines
    would: each process has LOCAL_RANK 0, only RANK 0 may write. Each "node" has its own working folder
    and a relative --out, so anything the second node wrote would show up in its folder."""
    from compact.engine import open_run

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--model", "cifar_resnet20", "--exits", "2", "--subset", "64", "--test-subset", "32", "--epochs", "1",
            "--batch-size", "32", "--no-progress", "--out", "run"]  # fmt: skip
    nodes = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "compact", "train-mwbp", *args]  # fmt: skip
        nodes.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert outputs[0][0].count("epoch 1/1") == 1 and "epoch 1/1" not in outputs[1][0]
    assert "2 processes (gloo)" in outputs[0][0]
    assert list((tmp_path / "node1").iterdir()) == []  # the second machine wrote nothing
    run = open_run(tmp_path / "node0" / "run")
    assert run.config.batch_size == 32 and len(run.history()) == 1


class _Stop(Exception):
    pass


@needs_fmnist
def test_a_run_resumes_under_torchrun_from_its_checkpoint(tmp_path):
    from compact.engine import TrainConfig, open_run, train

    run = tmp_path / "run"
    cfg = TrainConfig(model="cifar_resnet20", method="mwbp", exits=2, subset=64, test_subset=32, batch_size=32,
                      epochs=2, lr_milestones=[0.9])  # fmt: skip

    def stop(record):
        raise _Stop

    with pytest.raises(_Stop):
        train(cfg, run, progress=False, log=None, on_epoch_end=stop)
    first = open_run(run).history()
    done = _torchrun(["train", "--resume", str(run), "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout and done.stdout.count("resuming") == 1
    history = open_run(run).history()
    assert [r["epoch"] for r in history] == [1, 2] and history[0] == first[0]
    assert (run / "model.safetensors").is_file()


def _dying_worker(rank: int, world: int, port: int, out: str) -> None:
    from compact.engine.distributed import average_gradients, from_env
    from compact.errors import CompactError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      COMPACT_DIST_TIMEOUT="20")  # fmt: skip
    d = from_env(torch.device("cpu"))
    # both past set-up first: a peer lost while gloo still connects makes torch abort (SIGABRT), outside
    # compact's code; what is tested is the error in training's all-reduce
    torch.distributed.barrier()
    if rank == 1:
        os._exit(0)  # a process that dies without a word
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    start = time.monotonic()
    try:
        average_gradients([p], d)
        message = "no error"
    except CompactError as exc:
        message = str(exc)
    with open(os.path.join(out, "rank0.txt"), "w") as f:
        f.write(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)  # skip the process group's teardown with a lost peer (torch's, which may abort)


def test_a_dead_process_stops_the_others_with_a_clear_error(tmp_path):
    context = mp.spawn(_dying_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    while not context.join():
        pass
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert "process 0: lost the other processes during a gradient all-reduce" in message
    assert float(seconds) < 60


@needs_fmnist
def test_torchrun_prunes_and_fine_tunes(tmp_path):
    from compact.engine import TrainConfig, train

    source = tmp_path / "source"
    cfg = TrainConfig(model="cifar_resnet20", subset=64, test_subset=32, batch_size=32, epochs=1)
    train(cfg, source, progress=False, log=None)
    out = tmp_path / "pruned"
    args = ["prune", "--method", "l1", "--from", str(source), "--macs-ratio", "0.5", "--epochs", "1",
            "--batch-size", "32", "--no-progress", "--out", str(out)]  # fmt: skip
    done = _torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "prune.json").read_text())
    assert abs(report["target_deviation"]) <= 0.03 and (out / "pruned.safetensors").is_file()
