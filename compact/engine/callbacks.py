"""The training engine's callback interface, and the callbacks the engine itself uses.

A :class:`Callback` sees a run at fixed points: its start, each epoch's start, each parameter update of the
method (MW-BP makes one per loss), each batch's end, the end of each epoch's training (before evaluation),
each epoch's end (after its checkpoint) and the end of training (before the final model file). A callback
with a ``state_key`` has its ``state_dict`` stored in every checkpoint under that key, so a resumed run
continues it exactly.

The engine's own behaviour beyond the loop is written as callbacks: the non-finite guard
(:class:`NonFiniteGuard`), the progress bar, the epoch lines and the metrics files. Pruning methods add
theirs (soft filter pruning: :mod:`compact.prune.sfp`) without the engine knowing them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compact.errors import CompactError


class TrainingDiverged(CompactError):
    """A loss, a weight or a statistic became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunContext:
    """What callbacks may look at: the network, the method, the configuration and where the run lives."""

    net: Any  # MultiExitNet
    method: Any  # BPMethod
    cfg: Any  # TrainConfig
    out: Path
    device: torch.device
    is_main: bool = True
    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # 0-based batch in progress
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchStats:
    """Running per-output sums of the epoch so far (for progress displays)."""

    loss_sum: list[float]
    wrong: list[int]
    seen: int
    computed: list[bool]


class Callback:
    """Override the hooks you need; every hook does nothing by default."""

    #: key of this callback's state in checkpoints; None for stateless callbacks
    state_key: str | None = None

    def on_train_start(self, ctx: RunContext, history: list[dict[str, Any]]) -> None:
        """After the network and data are ready (``history``: the epochs done before a resume)."""

    def on_epoch_start(self, ctx: RunContext, batches: int) -> None:
        """Before the first batch of epoch ``ctx.epoch`` (``batches`` in it)."""

    def after_update(self, ctx: RunContext, update: int, params: Sequence[nn.Parameter]) -> None:
        """After the method's optimizer ``update`` stepped ``params`` (batch ``ctx.batch``)."""

    def on_batch_end(self, ctx: RunContext, stats: BatchStats) -> None:
        """After a training batch."""

    def after_train_epoch(self, ctx: RunContext) -> None:
        """After the epoch's last batch, before the network is evaluated and checkpointed."""

    def on_epoch_end(self, ctx: RunContext, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint is written (``record``: its metrics)."""

    def on_train_end(self, ctx: RunContext) -> None:
        """After the last epoch, before the final model file is written."""

    def close(self) -> None:
        """Always called when training stops, normally or not."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore the state of a checkpoint (``state_key`` callbacks)."""


def _describe_update(method: Any, update: int) -> str:
    if len(method.optimizers) > 1:
        return f"the update of output {update}'s loss"
    return "the update"


class NonFiniteGuard(Callback):
    """Stops training when a weight (after any update) or a BatchNorm statistic (at the end of each epoch's
    training) is NaN or infinite, naming the output, update, epoch and batch; the last checkpoint, written
    before, is kept. The check is one reduction over the updated parameters per update."""

    @staticmethod
    def _bad(tensors: Sequence[torch.Tensor]) -> list[int]:
        tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
        if not tensors:
            return []
        peaks = torch.stack([t.detach().abs().amax().float() for t in tensors])
        if bool(torch.isfinite(peaks).all()):
            return []
        return [i for i, ok in enumerate(torch.isfinite(peaks).tolist()) if not ok]

    def after_update(self, ctx: RunContext, update: int, params: Sequence[nn.Parameter]) -> None:
        bad = self._bad(list(params))
        if bad:
            names = {id(p): n for n, p in ctx.net.named_parameters()}
            first = names.get(id(params[bad[0]]), "?")
            raise TrainingDiverged(
                f"{len(bad)} weight tensor(s) became NaN or infinite (first: {first}) after "
                f"{_describe_update(ctx.method, update)} in epoch {ctx.epoch + 1}, batch {ctx.batch + 1}"
            )

    def after_train_epoch(self, ctx: RunContext) -> None:
        named = list(ctx.net.state_dict().items())
        bad = self._bad([t for _, t in named])
        if bad:
            first = [n for n, t in named if t.is_floating_point() and t.numel()][bad[0]]
            raise TrainingDiverged(
                f"{len(bad)} weight or statistics tensor(s) became NaN or infinite (first: {first}) during "
                f"epoch {ctx.epoch + 1}"
            )


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr with the running loss and training error of every output."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def on_epoch_start(self, ctx: RunContext, batches: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        desc = f"epoch {ctx.epoch + 1}/{ctx.cfg.epochs}"
        self.bar = tqdm(total=batches, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    def on_batch_end(self, ctx: RunContext, stats: BatchStats) -> None:
        if self.bar is None:
            return
        k = len(stats.wrong)
        errs = "/".join(f"{100 * stats.wrong[i] / stats.seen:.1f}" for i in range(k) if stats.computed[i])
        self.bar.set_postfix_str(f"loss {stats.loss_sum[-1] / stats.seen:.3f} err% {errs}", refresh=False)
        self.bar.update()

    def after_train_epoch(self, ctx: RunContext) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """The line logged after each epoch: lr, train and test error of every output, time, throughput."""
    fmt = lambda xs: "/".join("-" if x is None else f"{x:.2f}" for x in xs)  # noqa: E731
    return (
        f"epoch {r['epoch']}/{epochs}  lr {r['lr']:g}  train err% {fmt(r['train_error_pct'])}  "
        f"test err% {fmt(r['test_error_pct'])}  ({r['epoch_time_s']:.1f} s, {r['train_images_per_s']:.0f} img/s, "
        f"data wait {100 * r['data_wait_share']:.1f}%)"
    )


class EpochLog(Callback):
    """One line per epoch through ``log`` (flushed, so that it reaches a log file as it happens)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def on_epoch_end(self, ctx: RunContext, record: dict[str, Any]) -> None:
        self.log(epoch_line(record, ctx.cfg.epochs))


class MetricsFiles(Callback):
    """``metrics.jsonl`` / ``metrics.csv`` (and TensorBoard) rewritten from the history after each epoch."""

    def __init__(self) -> None:
        self.metrics = None

    def on_train_start(self, ctx: RunContext, history: list[dict[str, Any]]) -> None:
        from compact.engine.metrics import MetricsLog

        self.metrics = MetricsLog(ctx.out, ctx.net.num_outputs, first_epoch=len(history))
        # files agree with the checkpoint even if the last run stopped between them; TensorBoard has it already
        self.metrics.write(history, tensorboard=False)
        self.history = history

    def on_epoch_end(self, ctx: RunContext, record: dict[str, Any]) -> None:
        self.metrics.write(self.history)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


class EpochHook(Callback):
    """Calls ``fn(record)`` after each epoch (the ``on_epoch_end`` argument of :func:`compact.engine.train`)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, ctx: RunContext, record: dict[str, Any]) -> None:
        self.fn(record)


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
