"""The training engine: epochs of any backpropagation method, evaluation of every exit, checkpoints,
exact resume, metrics and the final model file.

A run folder holds::

    config.yaml         the resolved configuration (what `--resume` continues)
    metrics.jsonl/.csv  one record per epoch (see compact.engine.metrics)
    checkpoint.pt       the state after the last completed epoch (see compact.engine.checkpoint)
    model.safetensors   the trained multi-exit network (compact.modelfile), written at the end
    summary.json        per-output depth, parameters and final test error
    tensorboard/        scalars, when the tensorboard package is installed

The order and augmentation of the batches of epoch ``e`` depend only on ``(seed, e)`` and the global RNG
is checkpointed, so on CPU an interrupted and resumed run ends with the same metrics as an uninterrupted
one.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compact._atomic import refuse_links, write_text
from compact._malloc import tune_cpu_allocator
from compact.data import Data, DataOptions, load_data
from compact.engine.callbacks import (
    BatchStats,
    Callback,
    EpochHook,
    EpochLog,
    MetricsFiles,
    NonFiniteGuard,
    ProgressBar,
    RunContext,
    TrainingDiverged,
)
from compact.engine.checkpoint import check_identity, load_checkpoint, save_checkpoint
from compact.engine.config import TrainConfig, read_yaml
from compact.engine.distributed import (
    Dist,
    average_buffers,
    average_gradients,
    barrier,
    check_batch,
    from_env,
    sum_across,
)
from compact.engine.files import CHECKPOINT, CONFIG, MODEL, RUN_FILES, SUMMARY
from compact.errors import CompactError
from compact.exits import LossWeighting, MultiExitNet, attach_exits
from compact.methods import BPMethod, SGDConfig, create_method
from compact.modelfile import ModelInfo, save_model, structure_attrs

# options that may differ when a run is resumed (where the data lives, how fast it is read)
RESUMABLE_CHANGES = (
    "data_dir",
    "download",
    "workers",
    "device",
    "eval_batch_size",
    "eval_every",
    "channels_last",
    "val_pairs",
)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a GPU that is not
    there, is a :class:`CompactError`."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,3})?", name):
        raise CompactError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CompactError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CompactError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype or None for float32, loss scaler for float16) of a ``precision`` on ``device``."""
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if name == "auto":
        name = "bf16" if bf16_ok else "fp32"
    if name == "fp32":
        return None, None
    if name == "bf16":
        if cuda and not bf16_ok:
            raise CompactError(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision fp16 or fp32"
            )
        return torch.bfloat16, None
    if not cuda:
        raise CompactError("--precision fp16 needs a CUDA device (autocast on the CPU runs bfloat16): use bf16 or fp32")
    return torch.float16, torch.amp.GradScaler("cuda")


def margin_criterion(cfg: TrainConfig, net: MultiExitNet) -> nn.Module:
    """The margin-softmax loss of an embedding run; every output must end in a cosine classifier."""
    from compact.face.margin import CosineClassifier, MarginLoss

    final = [m for m in net.backbone.modules() if isinstance(m, CosineClassifier)]
    if not final:
        raise CompactError(
            f"loss {cfg.loss} trains embeddings through a cosine classifier; {cfg.model} has none (use mobilefacenet)"
        )
    plain = [i for i, h in enumerate(net.heads) if not any(isinstance(m, CosineClassifier) for m in h.modules())]
    if plain:
        raise CompactError(
            f"loss {cfg.loss}: exits {plain} have {cfg.head} heads; embedding runs need --head embedding"
        )
    return MarginLoss(cfg.loss, cfg.loss_scale, cfg.loss_margin)


def use_channels_last(net: nn.Module) -> None:
    """Put ``net`` in channels-last memory format; a network without 2-D convolutions cannot use it."""
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        raise CompactError(f"--channels-last is for 2-D convolutional networks; {type(net).__name__} has no Conv2d")
    if any(isinstance(m, nn.Conv1d | nn.Conv3d) for m in net.modules()):
        raise CompactError("--channels-last needs every convolution to be 2-D (this network has 1-D or 3-D ones)")
    net.to(memory_format=torch.channels_last)


def data_options(cfg: TrainConfig) -> DataOptions:
    return DataOptions(
        name=cfg.data,
        data_dir=cfg.data_dir,
        download=cfg.download,
        subset=cfg.subset,
        test_subset=cfg.test_subset,
        seed=cfg.seed,
        image_size=cfg.image_size,
        workers=cfg.workers,
        augment=cfg.augment,
        flip=cfg.flip,
        in_chans=cfg.in_chans,
    )


def build_network(cfg: TrainConfig, data: Data) -> tuple[MultiExitNet, LossWeighting]:
    """The configured model with its exits, for ``data``'s classes and input size, seeded by ``cfg.seed``.

    With ``cfg.init_from`` the backbone is the source's (its structure, pruned or not, and its weights);
    the heads are new.
    """
    from compact.models import create_model

    num_classes = cfg.num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise CompactError(f"num_classes is {cfg.num_classes} but {data.name} has {data.num_classes} classes")
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model, info = source_backbone(cfg.init_from)
        if info.arch != cfg.model:
            raise CompactError(f"init_from {cfg.init_from} holds a {info.arch}, but this run's model is {cfg.model}")
        if info.num_classes != num_classes or list(info.input_size) != list(data.input_size):
            raise CompactError(
                f"init_from {cfg.init_from} takes {tuple(info.input_size)} inputs with {info.num_classes} classes; "
                f"{data.name} has {tuple(data.input_size)} with {data.num_classes}"
            )
        model.train()
    else:
        model = create_model(cfg.model, num_classes=num_classes, in_chans=data.input_size[0], **cfg.model_kwargs)
    net = attach_exits(model, **cfg.placement, head=cfg.head, input_size=data.input_size)
    return net, LossWeighting(net.depths, nu=cfg.nu, schedule=cfg.schedule)


def available_memory(device: torch.device) -> int | None:
    """Bytes the training step may use: free GPU memory, or the kernel's MemAvailable on Linux (None when
    unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@torch.no_grad()
def activation_bytes(net: torch.nn.Module, input_size) -> int:
    """Bytes of the outputs of every leaf module for one input: what a training step keeps for backward,
    per image (a lower bound; saved inputs of some operations come on top)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = net.training
    try:
        net.eval()
        forward = getattr(net, "forward_exits", None) or net
        forward(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return total


def check_memory(net: torch.nn.Module, input_size, batch_size: int, device: torch.device) -> None:
    """Refuse a batch size whose activations alone exceed the memory available, before training starts
    (an allocation that large would otherwise fail mid-step, or bring in the kernel's OOM killer)."""
    free = available_memory(device)
    if free is None:
        return
    need = activation_bytes(net, input_size) * batch_size
    if need > free:
        fits = max(1, int(batch_size * free / need))
        raise CompactError(
            f"batch size {batch_size} needs at least {need / 2**30:.1f} GiB for the activations of "
            f"{tuple(input_size)} inputs, but {free / 2**30:.1f} GiB is available on {device}; use a --batch-size "
            f"well below {fits}"
        )


def identity(cfg: TrainConfig, net: MultiExitNet, data: Data) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed into this network and method."""
    return {
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "num_classes": data.num_classes,
        "input_size": list(data.input_size),
        "exit_nodes": net.exit_nodes,
        "head": net.head_type,
        "method": cfg.method,
    }


def source_backbone(source: str | Path) -> tuple[torch.nn.Module, Any]:
    """The backbone (structure and weights, on the CPU) of a run folder or a full / multi-exit model file,
    with the source's model description."""
    from compact.engine.run import open_run
    from compact.modelfile import load_model

    path = Path(source)
    if not path.exists():
        raise CompactError(f"{source} does not exist (it defines the network this run starts from)")
    module, info = open_run(path).network() if path.is_dir() else load_model(path)
    if info.kind == "exit":
        raise CompactError(
            f"{source} is a single exit ({info.exit_nodes[0]}); starting from it needs the whole network"
        )
    return (module.backbone if isinstance(module, MultiExitNet) else module), info


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader, device: torch.device, outputs: list[bool] | None = None, d: Dist | None = None
) -> tuple[list[float | None], list[float | None]]:
    """(mean cross-entropy, top-1 error %) of every output of ``model`` on ``loader``.

    A :class:`MultiExitNet` is evaluated at every output (one shared forward per batch), any other
    module at its single output. Entries are ``None`` where ``outputs`` (one flag per output) is False.
    Logits that are NaN or infinite (weights that overflow: a diverged training) raise
    :class:`TrainingDiverged` naming the output, rather than an error rate computed from them.
    """
    was_training = model.training
    model.eval()
    forward = getattr(model, "forward_exits", None) or (lambda x: [model(x)])
    loss_sum: list[float] = []
    wrong: list[int] = []
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits_all = forward(x)
        if not loss_sum:
            loss_sum, wrong = [0.0] * len(logits_all), [0] * len(logits_all)
        for i, logits in enumerate(logits_all):
            if (outputs is None or outputs[i]) and not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits)).any(1).sum())
                raise TrainingDiverged(
                    f"output {i} gives NaN or infinite logits for {bad} of a batch of {len(y)} test images (its "
                    "weights overflow: the training diverged)"
                )
            loss_sum[i] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            wrong[i] += (logits.argmax(1) != y).sum().item()
        seen += len(y)
    model.train(was_training)
    if d is not None and d.enabled:  # every process evaluated its share of each batch
        k = len(loss_sum)
        totals = sum_across([*loss_sum, *wrong, seen], d)
        loss_sum, wrong, seen = totals[:k], totals[k : 2 * k], int(totals[-1])
    if seen == 0:
        raise CompactError("the test set is empty")
    k = len(loss_sum)
    outputs = outputs or [True] * k
    losses = [loss_sum[i] / seen if outputs[i] else None for i in range(k)]
    errors = [100.0 * wrong[i] / seen if outputs[i] else None for i in range(k)]
    return losses, errors


def train_epoch(
    method: BPMethod,
    loader,
    device: torch.device,
    epoch: int,
    d: Dist | None = None,
    callbacks: Sequence[Callback] = (),
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """One epoch of ``method`` over ``loader``: per-output train loss and error, throughput, data wait
    (summed over processes when distributed). ``callbacks`` see each update and batch (``ctx`` is the run
    they belong to; one is made when not given)."""
    net = method.net
    net.train()
    loader.set_epoch(epoch)
    k = net.num_outputs
    ctx = ctx or RunContext(net, method, None, Path("."), device)
    ctx.epoch, ctx.batch = epoch, 0
    stats = BatchStats([0.0] * k, [0] * k, 0, [False] * k)
    wait = 0.0
    channels_last = bool(getattr(ctx.cfg, "channels_last", False))
    for cb in callbacks:
        cb.on_epoch_start(ctx, len(loader))

    def after_update(update: int, params) -> None:
        for cb in callbacks:
            cb.after_update(ctx, update, params)

    previous, method.after_update = method.after_update, after_update
    start = time.perf_counter()
    batches = iter(loader)
    try:
        for b in range(len(loader)):
            ctx.batch = b
            t = time.perf_counter()
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            wait += time.perf_counter() - t
            try:
                out = method.train_step(x, y)
            except ValueError as exc:
                if "Expected more than 1 value per channel" not in str(exc):
                    raise
                raise CompactError(
                    f"a training batch of {len(y)} image(s) reaches a BatchNorm layer over a 1x1 feature map, which "
                    "cannot normalise a single value per channel; use a --batch-size of at least 2 per process"
                ) from None
            for i, (loss, logits) in enumerate(zip(out.losses, out.logits, strict=True)):
                if loss is None:
                    continue
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"the loss of output {i} became {loss} in epoch {epoch + 1}, batch {b + 1}")
                stats.computed[i] = True
                stats.loss_sum[i] += loss * len(y)
                stats.wrong[i] += (logits.argmax(1) != y).sum().item()
            stats.seen += len(y)
            for cb in callbacks:
                cb.on_batch_end(ctx, stats)
    finally:
        method.after_update = previous
    elapsed = time.perf_counter() - start
    loss_sum, wrong, seen, computed = stats.loss_sum, stats.wrong, stats.seen, stats.computed
    if d is not None and d.enabled:
        totals = sum_across([*loss_sum, *wrong, seen, *map(float, computed)], d)
        loss_sum, wrong, seen = totals[:k], totals[k : 2 * k], int(totals[2 * k])
        computed = [c > 0 for c in totals[2 * k + 1 :]]
    return {
        "train_loss": [loss_sum[i] / seen if computed[i] else None for i in range(k)],
        "train_error_pct": [100.0 * wrong[i] / seen if computed[i] else None for i in range(k)],
        "train_time_s": elapsed,
        "train_images_per_s": seen / elapsed,
        "data_wait_share": wait / elapsed,
    }


def _echo(message: str) -> None:
    print(message, flush=True)  # flushed: epoch lines must reach a log file as they happen


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the ``.NAME.*.tmp`` files an atomic write left when its process was killed mid-write."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)


def _started_only(out: Path) -> bool:
    """A folder where a run was started but never completed an epoch (no checkpoint, no model, no metric
    line): it holds no results, so a plain retry may replace it."""
    if (out / CHECKPOINT).exists() or (out / MODEL).exists() or (out / SUMMARY).exists():
        return False
    metrics = out / "metrics.jsonl"
    return not metrics.exists() or not metrics.read_text(errors="replace").strip()


def _prepare_folder(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CompactError(f"output folder {out} exists and is not a folder")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise CompactError(f"cannot create the run folder {out}: a parent of it is a file")
    refuse_links(out)
    present = [f for f in RUN_FILES if (out / f).exists()]
    if resume:
        if not (out / CONFIG).is_file():
            raise CompactError(f"{out} holds no run to resume (no {CONFIG})")
        remove_stale_temporaries(out)
        return
    if present and _started_only(out):
        present = []  # a failed start is not a run
    if present and not overwrite:
        raise CompactError(
            f"{out} holds another run ({', '.join(present)}); pass --resume to continue it or --overwrite to replace it"
        )


def _clear_run(out: Path) -> None:
    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)
    remove_stale_temporaries(out)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def check_checkpoint_config(out: Path, cfg: TrainConfig, stored: dict[str, Any]) -> None:
    """Refuse to resume when the run's configuration differs from the one its checkpoint was trained with
    (a ``config.yaml`` edited or cut short would otherwise continue on other data or another schedule)."""
    try:
        trained = TrainConfig.from_dict(stored, f"the configuration stored in {out / CHECKPOINT}").to_dict()
    except CompactError as exc:
        raise CompactError(f"checkpoint {out / CHECKPOINT} is damaged: {exc}") from None
    diffs = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and trained[k] != v]
    if diffs:
        detail = ", ".join(f"{k} ({trained[k]!r} in the checkpoint, {getattr(cfg, k)!r} now)" for k in diffs[:6])
        raise CompactError(
            f"cannot resume {out}: its {CONFIG} does not match the configuration its checkpoint was trained with "
            f"({detail}); restore {CONFIG} or start a new run"
        )


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    stored = TrainConfig.from_dict(read_yaml(out / CONFIG), str(out / CONFIG)).to_dict()
    diffs = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and stored[k] != v]
    if diffs:
        detail = ", ".join(f"{k} ({stored[k]!r} -> {getattr(cfg, k)!r})" for k in diffs)
        raise CompactError(f"cannot resume {out} with a different configuration: {detail}")


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = _echo,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out`` and return the run's summary.

    ``resume`` continues the run in ``out`` from its last checkpoint (``cfg`` must equal its stored
    configuration, except for where and how fast data is read); ``overwrite`` replaces a run found in
    ``out``. ``progress``: a progress bar on stderr (default: when stderr is a terminal). ``on_epoch_end``
    is called with each epoch's record after its checkpoint is written. ``callbacks`` (see
    :mod:`compact.engine.callbacks`) run after the engine's own; a configuration with ``soft_prune`` needs
    the callback that implements it (``compact prune`` passes it).
    """
    out = Path(out)
    if cfg.soft_prune and not any(cb.state_key == "soft_prune" for cb in callbacks):
        raise CompactError(
            "this run prunes filters softly (SFP, soft_prune in its configuration): run or continue it with "
            "compact prune (--resume), which adds the pruning to the training"
        )
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # refused before anything is written
    d = from_env(device)  # torchrun: one process per rank; only rank 0 writes files, logs and progress
    check_batch(cfg.batch_size, d)
    log = (log if d.is_main else None) or (lambda _msg: None)
    progress = (sys.stderr.isatty() if progress is None else progress) and d.is_main
    if d.is_main:
        _prepare_folder(out, resume, overwrite)
    state: dict[str, Any] | None = None
    if resume:
        _check_resume_config(out, cfg)
        if (out / CHECKPOINT).is_file():  # before any data is loaded: a damaged run is refused at once
            state = load_checkpoint(out / CHECKPOINT)
            check_checkpoint_config(out, cfg, state["config"])
    if device.type == "cpu":
        tune_cpu_allocator()  # reuse freed feature-map memory instead of page-faulting it back every step
        # subnormal floats (below 1.2e-38) cost x86 CPUs up to 100x per operation: the BatchNorm running
        # variances and momentum buffers of filters that SFP keeps at zero decay into that range, and an SFP
        # fine-tuning epoch took 650-1000 s instead of 130 s; flushing them to zero changes nothing else
        torch.set_flush_denormal(True)
    data = load_data(data_options(cfg))
    net, weighting = build_network(cfg, data)
    check_memory(net, data.input_size, max(1, min(cfg.batch_size, data.train_size) // d.world), device)
    net.to(device)
    sgd = SGDConfig(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    method = create_method(cfg.method, net, sgd, weighting, **cfg.method_options)
    method.set_precision(*precision)
    pairs = None
    if cfg.loss != "ce":
        method.criterion = margin_criterion(cfg, net)
        if cfg.val_pairs:
            from compact.face.verification import load_pairs

            pairs = load_pairs(cfg.val_pairs, data.input_size, data.mean, data.std)
    if cfg.channels_last:
        use_channels_last(net)
    if d.enabled:
        method.grad_sync = functools.partial(average_gradients, d=d)
    train_loader, test_loader = data.loaders(cfg.batch_size, cfg.seed, cfg.eval_batch_size, shard=(d.rank, d.world))
    if device.type == "cuda":  # in-memory data lives on the GPU, batched and augmented there
        train_loader, test_loader = (ld.to(device) if hasattr(ld, "to") else ld for ld in (train_loader, test_loader))
    ident = identity(cfg, net, data)
    info = model_info(cfg, net, data, out)
    info.attrs = structure_attrs(net, info)  # a pruned source differs from a fresh build
    ctx = RunContext(net, method, cfg, out, device, is_main=d.is_main, extra={"input_size": data.input_size})
    engine = [NonFiniteGuard(), ProgressBar(progress)]
    if d.is_main:
        engine += [MetricsFiles(), EpochLog(log)]
    if on_epoch_end is not None:
        engine.append(EpochHook(on_epoch_end))
    callbacks = [*engine, *callbacks]

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        check_identity(out / CHECKPOINT, state["identity"], ident)
        try:
            net.load_state_dict(state["model"])
            method.load_state_dict(state["method"])
            stored = _callback_states(state)
            for cb in callbacks:
                if cb.state_key is not None:
                    cb.load_state_dict(stored.get(cb.state_key) or {})
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CompactError(f"checkpoint {out / CHECKPOINT} does not fit this network: {first}") from None
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        history, start_epoch = list(state["history"]), int(state["epoch"])
        log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
    elif not resume and d.is_main:
        _clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, cfg.to_yaml())
    barrier(d)

    log(
        f"{cfg.model} on {data.name} ({data.train_size} train / {data.test_size} test images), "
        f"{net.num_outputs} outputs at layers {net.depths}, method {cfg.method}, device {device}"
        + (f", {d.world} processes ({torch.distributed.get_backend()})" if d.world > 1 else "")
    )
    trained = [method.trains_output(i, net.num_outputs) for i in range(net.num_outputs)]
    milestones = cfg.milestone_epochs()
    try:
        for cb in callbacks:
            cb.on_train_start(ctx, history)
        for epoch in range(start_epoch, cfg.epochs):
            method.set_lr(cfg.lr_at(epoch))
            for _ in range(milestones.count(epoch)):
                method.on_lr_decay()
            try:
                record = train_epoch(method, train_loader, device, epoch, d, callbacks, ctx)
                t = time.perf_counter()
                average_buffers(net, d)  # one set of BatchNorm statistics for evaluation and the checkpoint
                for cb in callbacks:
                    cb.after_train_epoch(ctx)  # SFP zeroes filters here; the guard checks every tensor
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    test_loss, test_err = evaluate(net, test_loader, device, trained, d)
                else:  # --eval-every N: no evaluation this epoch
                    test_loss = test_err = [None] * net.num_outputs
            except TrainingDiverged as exc:
                kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was written"
                raise TrainingDiverged(f"{exc}; training stopped, {kept} in {out}; try a lower --lr") from None
            verification = None
            if pairs is not None and test_err[0] is not None and d.is_main:
                from compact.face.verification import verify_outputs

                verification = [round(100 * r["accuracy"], 3) for r in verify_outputs(net, *pairs)]
                log(f"verification accuracy (10-fold, {len(pairs[1])} pairs) per output: "
                    + "/".join(f"{v:.2f}" for v in verification) + "%")  # fmt: skip
            record = {
                "epoch": epoch + 1,
                "lr": method.lr,
                "nu": weighting.nu,
                "gammas": weighting.gammas(),
                **record,
                "test_loss": test_loss,
                "test_error_pct": test_err,
                **({"verification_pct": verification} if verification is not None else {}),
                "epoch_time_s": record["train_time_s"] + time.perf_counter() - t,
            }
            history.append(record)
            if not d.is_main:
                continue
            rng = {"torch": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            save_checkpoint(
                out / CHECKPOINT,
                {
                    "epoch": epoch + 1,
                    "identity": ident,
                    "config": cfg.to_dict(),
                    "model_info": asdict(info),
                    "model": net.state_dict(),
                    "method": method.state_dict(),
                    "rng": rng,
                    "history": history,
                    "callbacks": {cb.state_key: cb.state_dict() for cb in callbacks if cb.state_key is not None},
                },
            )
            for cb in callbacks:
                cb.on_epoch_end(ctx, record)
        for cb in callbacks:
            cb.on_train_end(ctx)  # SFP removes the filters zeroed last
    finally:
        for cb in callbacks:
            cb.close()
    net.__dict__["_extractors"].clear()  # a callback may have changed the network's structure
    summary = _finish(cfg, out, net, info, history, (data.train_size, data.test_size)) if d.is_main else {}
    barrier(d)
    return summary


def _callback_states(state: dict[str, Any]) -> dict[str, Any]:
    """Callback states of a checkpoint (checkpoints before callbacks stored soft pruning on its own)."""
    stored = dict(state.get("callbacks") or {})
    if "soft_prune" not in stored and state.get("soft_prune") is not None:
        stored["soft_prune"] = state["soft_prune"]
    return stored


def model_info(cfg: TrainConfig, net: MultiExitNet, data: Data, out: Path) -> ModelInfo:
    """The description under which the run's network is stored (checkpoint and final model file)."""
    return ModelInfo(
        arch=cfg.model,
        num_classes=data.num_classes,
        in_chans=data.input_size[0],
        input_size=list(data.input_size),
        kind="multi-exit",
        exit_nodes=list(net.exit_nodes),
        head=net.head_type,
        model_kwargs=dict(cfg.model_kwargs),
        mean=data.mean,
        std=data.std,
        classes=data.classes,
        dataset=data.name,
        source={"run": str(out), "method": cfg.method, "seed": cfg.seed, "subset": cfg.subset},
    )


def _finish(
    cfg: TrainConfig, out: Path, net: MultiExitNet, info: ModelInfo, history: list[dict], images: tuple[int, int]
) -> dict[str, Any]:
    """Save the final model and write ``summary.json``; ``images`` = the (training, test) images the run
    used, which reports state as its budget (a subset asked for may exceed the data set)."""
    info.source["epochs"] = len(history)
    save_model(net, out / MODEL, info)
    rows = net.describe()
    for row, err in zip(rows, history[-1]["test_error_pct"], strict=True):
        row["test_error_pct"] = err
    summary = {
        "model": cfg.model,
        "method": cfg.method,
        "data": info.dataset,
        "epochs": len(history),
        "train_images": images[0],
        "test_images": images[1],
        "train_time_s": sum(r["epoch_time_s"] for r in history),
        "outputs": rows,
    }
    write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary
