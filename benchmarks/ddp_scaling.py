"""Distributed data-parallel training on this machine: images/s with 1 and 2 processes (gloo, CPU) for
standard, Joint and MW-BP, and the communication volume per step of each method.

Each configuration trains cifar_resnet20 with 3 outputs on Fashion-MNIST batches of 128 (global) for
``--steps`` steps after ``--warmup`` steps; a process uses ``--threads`` threads (default: the cores divided by
the processes, so 1 and 2 processes use the same cores). The communication volume is counted where
compact averages gradients (compact.engine.distributed.average_gradients): bytes all-reduced per step.
MW-BP all-reduces once per loss, each time the gradients of layers 0..L_i and head i, so it moves more
bytes than Joint BP, which all-reduces every parameter once.

    python benchmarks/ddp_scaling.py [--steps 10] [--warmup 2]
    python benchmarks/ddp_scaling.py --quick     # MW-BP only, one step per process count (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch
import torch.multiprocessing as mp

METHODS = ("standard", "joint", "mwbp")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, method: str, steps: int, warmup: int, threads: int, queue) -> None:
    from compact._malloc import tune_cpu_allocator
    from compact.data import DataOptions, load_data
    from compact.engine.distributed import Dist, average_gradients, from_env
    from compact.exits import attach_exits
    from compact.methods import create_method
    from compact.models import create_model

    torch.set_num_threads(threads)
    tune_cpu_allocator()
    d = Dist()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        d = from_env(torch.device("cpu"))
    data = load_data(DataOptions(subset=128 * (steps + warmup), test_subset=1))
    loader, _ = data.loaders(128, 0, shard=(rank, world))
    torch.manual_seed(0)
    net = attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=data.input_size).train()
    m = create_method(method, net)
    sent = [0]

    def sync(params):
        sent[0] += sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        average_gradients(params, d)

    m.grad_sync = sync  # with one process: counts what would be sent, sends nothing
    batches = list(loader)
    for x, y in batches[:warmup]:
        m.step(x, y)
    if d.enabled:
        torch.distributed.barrier()
    sent[0] = 0
    start = time.perf_counter()
    for x, y in batches[warmup : warmup + steps]:
        m.step(x, y)
    if d.enabled:
        torch.distributed.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        queue.put({"seconds": elapsed, "bytes_per_step": sent[0] / steps})
    if d.enabled:
        torch.distributed.destroy_process_group()


def measure(method: str, world: int, steps: int, warmup: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _port()
    procs = [
        ctx.Process(target=_run, args=(r, world, port, method, steps, warmup, threads, queue)) for r in range(world)
    ]
    for p in procs:
        p.start()
    result = queue.get(timeout=1200)
    for p in procs:
        p.join()
    result["images_per_s"] = 128 * steps / result["seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true", help="one step per configuration: checks that it runs")
    args = ap.parse_args()
    methods = METHODS
    if args.quick:
        args.steps, args.warmup, methods = 1, 0, ("mwbp",)
    figures = {}
    for method in methods:
        for world in (1, 2):
            r = measure(method, world, args.steps, args.warmup, max(1, args.cores // world))
            figures[f"{method}/{world}"] = r
    print(
        f"cifar_resnet20, 3 outputs, Fashion-MNIST, global batch 128, {args.cores} cores shared by the processes, "
        f"{args.steps} timed steps"
    )
    print(f"{'method':<10}{'img/s 1 proc':>14}{'img/s 2 proc':>14}{'speed-up':>10}{'MB all-reduced/step':>22}")
    for method in methods:
        one, two = figures[f"{method}/1"], figures[f"{method}/2"]
        print(
            f"{method:<10}{one['images_per_s']:>14.0f}{two['images_per_s']:>14.0f}"
            f"{two['images_per_s'] / one['images_per_s']:>9.2f}x{two['bytes_per_step'] / 1e6:>22.2f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
