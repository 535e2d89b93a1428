"""Data-parallel training with torch.distributed (launched by ``torchrun``), for every BP method.

DistributedDataParallel's reducer expects one backward per forward; MW-BP runs one backward and one update
per loss on a shared forward. compact therefore does not wrap the model: after each backward, before the
update that follows it, the gradients of exactly the parameters that update touches are averaged across
processes (one all-reduce per update). Every process holds the whole batch's share ``B / world`` of each
global batch, so with equal shares the averaged gradient is the gradient of the mean loss over the global
batch, and the parameters stay identical on every process: a W-process run equals a 1-process run on the
concatenated batch.

BatchNorm: batch statistics are computed per process, on its share of the batch (as DDP does without
SyncBatchNorm, which PyTorch runs on CUDA only), so with BatchNorm a W-process run differs from the
1-process run on the concatenated batch by those statistics; networks without BatchNorm match it exactly
(tested). Running statistics are averaged across processes after every epoch (:func:`average_buffers`), so
all processes evaluate, and rank 0 saves, the same network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from compact.errors import CompactError

#: seconds a process waits for the others in a collective before giving up (a dead rank)
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("COMPACT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
    return Dist(rank, world)


def check_batch(batch_size: int, d: Dist) -> int:
    """Each process's share of a global batch; the world size must divide the batch."""
    if batch_size % d.world:
        raise CompactError(
            f"batch size {batch_size} is not divisible by the {d.world} processes; choose a multiple of {d.world}"
        )
    return batch_size // d.world


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average the gradients of ``params`` across processes in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not d.enabled:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    try:
        dist.all_reduce(flat)
    except RuntimeError as exc:
        raise CompactError(f"process {d.rank}: lost the other processes during a gradient all-reduce ({exc})") from exc
    flat /= d.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def average_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across processes, so that every process
    evaluates, and rank 0 saves, the same network. DDP instead copies rank 0's buffers; the average is the
    better estimate of the statistics of the whole data."""
    if not d.enabled:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def sum_across(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum of ``values`` over processes (metrics: loss sums, error counts)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    try:
        dist.all_reduce(t)
    except RuntimeError as exc:
        raise CompactError(f"process {d.rank}: lost the other processes while reducing metrics ({exc})") from exc
    return t.tolist()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
