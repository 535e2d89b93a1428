"""One pruning job, as `compact prune` runs it: source model -> target MACs -> pruned model -> fine-tuning
(or SFP training) with the engine -> pruned model file and a report.

The output folder is a run folder (config, metrics, checkpoints of the fine-tuning or SFP training) plus

    plan.json            what was asked and resolved (method, target, per-layer ratios), written first
    pruned-init.safetensors   the pruned model before fine-tuning (l1 / fpgm)
    pruned.safetensors   the final pruned model (no heads), in compact's model file format
    prune.json           the report: MACs and parameters before/after, test errors, settings, timings
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from compact._atomic import refuse_links, write_text
from compact._jsonfile import read_json_object
from compact._numbers import is_count
from compact.engine.distributed import barrier, from_env
from compact.errors import CompactError
from compact.profile import conv_linear_macs, count
from compact.profile.deploy import deployed_macs, foldable_layers
from compact.prune.base import PRUNERS, PruneSettings, parse_macs, prune_layers, search_ratios
from compact.prune.pfec import pfec_ratios

PLAN, REPORT, PRUNED_INIT, PRUNED = "plan.json", "prune.json", "pruned-init.safetensors", "pruned.safetensors"
#: PFEC's retraining of pruned CIFAR ResNets (the default fine-tuning of l1 / fpgm): 40 epochs, lr 0.001
FINETUNE = {"epochs": 40, "lr": 0.001, "lr_milestones": []}
#: what the fine-tuning takes over from a trained source run
INHERITED = (
    "model",
    "model_kwargs",
    "num_classes",
    "data",
    "data_dir",
    "subset",
    "test_subset",
    "image_size",
    "augment",
    "flip",
    "in_chans",
    "seed",
    "batch_size",
    "eval_batch_size",
    "eval_every",
)


def prune_config(soft: bool, source: str | Path | None, model: str | None, overrides: dict[str, Any]):
    """The training configuration of a pruning job: the source's model and data (``source``: a run or model
    file) or a model name trained from initialisation, PFEC's fine-tuning schedule (SFP: the paper's
    training schedule), then ``overrides``."""
    from compact.engine import TrainConfig, open_run
    from compact.modelfile import read_info, training_settings

    base: dict[str, Any] = {} if soft else dict(FINETUNE)
    if source is not None:
        path = Path(source)
        if path.is_dir():
            stored = open_run(path).config.to_dict()
            base.update({k: stored[k] for k in INHERITED})
        elif path.is_file():
            info = read_info(path)
            base.update(training_settings(info))
        else:
            raise CompactError(f"--from {source} does not exist")
        base["init_from"] = str(path)
    elif model:
        base["model"] = model
    else:
        raise CompactError("a pruning job needs a source (--from RUN_OR_FILE) or a model name (--model)")
    return TrainConfig.from_dict({**base, **overrides, "method": "standard"}, "options")


@dataclass
class Target:
    """Exactly one of: ``macs`` (absolute), ``ratio`` (fraction of the source's MACs kept), ``match`` (a model
    file or run whose MACs to match), ``recipe`` (a published PFEC recipe with fixed ratios)."""

    macs: int | str | None = None
    ratio: float | None = None
    match: str | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("macs", "ratio", "match", "recipe") if getattr(self, k) is not None]
        if len(given) != 1:
            raise CompactError("give exactly one target: --target-macs, --macs-ratio, --match or --recipe")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise CompactError(f"--macs-ratio is the fraction of MACs kept and must be in (0, 1), got {self.ratio}")
        if self.macs is not None:
            self.macs = parse_macs(self.macs)


def _deployed_macs_of(path: Path) -> int:
    """Conv+linear MACs, as deployed, of what a --match names: a model file's module, or a run's final
    network (no heads); a re-parameterizable network is counted folded, as its profile counts it."""
    from compact.profile.deploy import inference_form
    from compact.profile.profiler import load_target

    t = load_target(path)
    module = inference_form(t.module, t.input_size, t.exit_backbone)[0]
    return conv_linear_macs(module, t.input_size)


def resolve_target(target: Target, source: nn.Module, input_size) -> int | None:
    """Target conv+linear MACs (None for a recipe), counted as deployed (a re-parameterizable network folded)."""
    if target.recipe:
        return None
    if target.macs is not None:
        return int(target.macs)
    if target.ratio is not None:
        return int(round(target.ratio * deployed_macs(source, input_size)))
    path = Path(target.match)
    if not path.exists():
        raise CompactError(f"--match {target.match} does not exist")
    return _deployed_macs_of(path)


#: how prune.json's counts see a re-parameterizable network
FOLDED = "folded for inference (re-parameterizable layers merged, as deployed)"


def _deployed(model: nn.Module, input_size, log) -> tuple[nn.Module, str]:
    """``model`` as deployed (:func:`compact.profile.deploy.as_deployed`, folded once) and how its MACs are
    therefore counted; logs why a foldable network could not fold. ``model``'s train/eval mode is kept."""
    from compact.profile.deploy import inference_form

    if not foldable_layers(model):
        return model, "as trained (nothing to fold)"
    was_training = model.training
    deployed, note, warnings = inference_form(model, input_size)
    model.train(was_training)
    for w in warnings:
        log(f"warning: {type(model).__name__}: {w}")
    return deployed, (FOLDED if note else "as trained (folding failed)")


def _error(model: nn.Module, test_loader, device) -> float:
    from compact.engine import evaluate

    return evaluate(model.to(device), test_loader, device)[1][-1]


def prune_job(
    method: str,
    cfg,  # TrainConfig of the fine-tuning (or SFP training); cfg.init_from is the source, or cfg.model alone
    target: Target,
    settings: PruneSettings,
    out: str | Path,
    *,
    finetune: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log=print,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prune ``cfg``'s model to ``target`` with ``method`` and fine-tune it; returns the report.

    ``search``: keyword arguments of :func:`search_ratios` (``tolerance``, ``steps``, ``refine``).
    """
    from compact.data import load_data
    from compact.engine import train
    from compact.engine.files import RUN_FILES
    from compact.engine.trainer import build_network, data_options, resolve_device
    from compact.modelfile import ModelInfo, save_model

    spec = PRUNERS.get(method)
    out = Path(out)
    refuse_links(out)
    if resume:
        return _finish_resumed(out, progress, log)
    if target.recipe and method != "l1":
        raise CompactError(f"the published recipes ({target.recipe}) are L1-norm (PFEC) recipes; use --method l1")
    if spec.soft and settings.allocation != "uniform":
        raise CompactError("sfp prunes every layer at the same rate (He et al. 2018): use --allocation uniform")
    present = [f for f in (*RUN_FILES, PLAN, PRUNED_INIT, PRUNED, REPORT) if (out / f).exists()]
    if present and not overwrite:
        raise CompactError(f"{out} holds a pruning job ({', '.join(present)}); pass --resume or --overwrite")

    device = resolve_device(cfg.device)
    d = from_env(device)  # under torchrun every process prunes alike (deterministic); rank 0 writes
    data = load_data(data_options(cfg))
    net, _ = build_network(replace(cfg, exits=None, exit_blocks=None, exit_layers=None, exit_nodes=None), data)
    source = net.backbone.eval()
    size = list(data.input_size)
    _, test_loader = data.loaders(cfg.batch_size, cfg.seed, cfg.eval_batch_size)
    deployed_source, counted_as = _deployed(source, size, log)
    before = count(deployed_source, size)
    goal = resolve_target(target, source, size)

    t0 = time.perf_counter()
    if target.recipe:
        ratios, probes = pfec_ratios(source, cfg.model, target.recipe), None
        settings = replace(settings, round_to=None)  # the recipe's channel counts are int(n * (1 - ratio))
    else:
        found = search_ratios(source, size, spec, goal, settings, **(search or {}))
        ratios, probes = found.ratios, found.probes
    search_s = time.perf_counter() - t0
    how = "the published recipe" if target.recipe else f"{probes} prune-and-measure probes"
    log(
        f"{method}: pruning {len(ratios)} layers of {cfg.model} towards {goal or before.macs_conv_linear:,} MACs "
        f"({search_s:.1f} s, {how}, to find the ratios)"
        + ("; MACs are counted with the re-parameterizable layers folded, as deployed" if counted_as == FOLDED else "")
    )

    report: dict[str, Any] = {
        "method": method,
        "recipe": target.recipe,
        "source": cfg.init_from or f"{cfg.model} (initialisation)",
        "settings": asdict(settings),
        "target_macs": goal,
        "ratios": ratios,
        "search_s": round(search_s, 2),
        "search_probes": None if target.recipe else probes,
        "before": {"params": before.params, "macs": before.macs, "macs_conv_linear": before.macs_conv_linear},
        "counted_as": counted_as,
        "test_error_pct": {"source": _error(source, test_loader, device) if cfg.init_from else None},
        "finetune": finetune,
    }
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    info = ModelInfo(
        arch=cfg.model,
        num_classes=data.num_classes,
        in_chans=size[0],
        input_size=size,
        model_kwargs=dict(cfg.model_kwargs),
        mean=data.mean,
        std=data.std,
        classes=data.classes,
        dataset=data.name,
        source={"pruned_by": method, "seed": cfg.seed},
    )
    if spec.soft:
        # SFP: train (from the source) while zeroing filters every epoch; the engine removes them at the end
        run_cfg = replace(cfg, method="standard", soft_prune={"ratios": ratios, "round_to": settings.round_to})
        report["test_error_pct"]["pruned"] = None
    else:
        pruned = prune_layers(copy.deepcopy(source), size, spec, ratios, settings)
        report["test_error_pct"]["pruned"] = _error(pruned, test_loader, device)
        if d.is_main:
            save_model(pruned.cpu(), out / PRUNED_INIT, replace(info, source={**info.source, "finetuned": False}))
        barrier(d)
        run_cfg = replace(cfg, method="standard", init_from=str(out / PRUNED_INIT))
    if d.is_main:
        write_text(out / PLAN, json.dumps({"report": report, "config": run_cfg.to_dict()}, indent=2) + "\n")
    if not finetune and not spec.soft:
        if not d.is_main:
            return {}
        # the job's model is always pruned.safetensors (here: the pruned model, not fine-tuned)
        shutil.copyfile(out / PRUNED_INIT, out / f".{PRUNED}.tmp")
        os.replace(out / f".{PRUNED}.tmp", out / PRUNED)
        return _write_report(out, report, out / PRUNED, test_loader, device, log)
    train(run_cfg, out, overwrite=True, progress=progress, log=log, callbacks=_callbacks(run_cfg))
    return _finish_run(out, report, log) if d.is_main else {}


def _callbacks(cfg) -> list:
    """What the engine needs besides plain training: soft filter pruning for an SFP job."""
    from compact.prune.sfp import SoftFilterPruning

    return [SoftFilterPruning.from_config(cfg.soft_prune)] if cfg.soft_prune else []


def _finish_run(out: Path, report: dict[str, Any], log) -> dict[str, Any]:
    """Export the trained run's network (without heads) as the pruned model and write the report."""
    from compact.data import load_data
    from compact.engine import export_output, open_run
    from compact.engine.trainer import data_options, resolve_device

    run = open_run(out)
    net, info = run.network()
    export_output(net, info, "final", out / PRUNED, overwrite=True)
    cfg = run.config
    data = load_data(data_options(cfg))
    _, test_loader = data.loaders(cfg.batch_size, cfg.seed, cfg.eval_batch_size)
    return _write_report(out, report, out / PRUNED, test_loader, resolve_device(cfg.device), log)


def _write_report(out: Path, report: dict[str, Any], model_path: Path, test_loader, device, log) -> dict[str, Any]:
    from compact.modelfile import load_model

    model, info = load_model(model_path)
    deployed, counted_as = _deployed(model, info.input_size, log)
    after = count(deployed, info.input_size)
    if report.get("counted_as") == FOLDED and counted_as != FOLDED:
        report["counted_as_after"] = "as trained: the pruned network no longer folds"
    b = report["before"]
    report["after"] = {"params": after.params, "macs": after.macs, "macs_conv_linear": after.macs_conv_linear}
    report["reduction"] = {k: round(1 - report["after"][k] / b[k], 4) for k in ("params", "macs", "macs_conv_linear")}
    if report["target_macs"]:
        report["target_deviation"] = round(after.macs_conv_linear / report["target_macs"] - 1, 4)
    report["test_error_pct"]["final"] = _error(model, test_loader, device)
    report["model"] = str(model_path)
    report["torch_pruning"] = _tp_version()
    write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    log(
        f"pruned model: {model_path} ({after.params:,} params, {after.macs_conv_linear:,} conv+linear MACs, "
        f"-{100 * report['reduction']['macs_conv_linear']:.1f}%), test error {report['test_error_pct']['final']:.2f}%"
    )
    return report


def _finish_resumed(out: Path, progress, log) -> dict[str, Any]:
    from compact.engine import open_run, train

    if not (out / PLAN).is_file():
        raise CompactError(f"{out} holds no pruning job to resume (no {PLAN})")
    remedy = f"start the job again (compact prune --overwrite; in a recipe run, remove {out})"
    plan = read_json_object(out / PLAN, remedy)
    if not isinstance(plan.get("report"), dict) or not isinstance(plan.get("config"), dict):
        raise CompactError(f"{out / PLAN} is damaged (its report or config is missing); {remedy}")
    _check_plan_report(plan["report"], out / PLAN, remedy)
    cfg = open_run(out).config if (out / "config.yaml").is_file() else None
    if cfg is None:
        from compact.engine import TrainConfig

        cfg = TrainConfig.from_dict(plan["config"], str(out / PLAN))
        train(cfg, out, overwrite=True, progress=progress, log=log, callbacks=_callbacks(cfg))
    else:
        train(cfg, out, resume=True, progress=progress, log=log, callbacks=_callbacks(cfg))
    return _finish_run(out, plan["report"], log)


def _check_plan_report(report: dict[str, Any], path: Path, remedy: str) -> None:
    """The fields of a stored plan's report that finishing the job computes with: the counts before pruning
    (positive integers: the reductions divide by them), the target (null or a positive integer), the
    errors measured so far (a mapping) and how MACs were counted."""

    before = report.get("before")
    target = report.get("target_macs")
    if not (
        isinstance(before, dict)
        and all(is_count(before.get(k), 1) for k in ("params", "macs", "macs_conv_linear"))
        and (target is None or is_count(target, 1))
        and isinstance(report.get("test_error_pct"), dict)
        and isinstance(report.get("counted_as", ""), str)
    ):
        raise CompactError(
            f"{path} is damaged (its report needs positive counts before pruning, a target, the errors so far); "
            f"{remedy}"
        )


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


__all__ = ["FINETUNE", "Target", "prune_config", "prune_job", "resolve_target"]
