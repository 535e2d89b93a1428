"""`compact prune`: L1-norm (PFEC), FPGM and SFP pruning to a target MACs, with fine-tuning."""

from __future__ import annotations

import argparse

from compact.cli._common import check_output_dir
from compact.cli.train import _config_values, add_data_args, add_model_kwargs_arg, add_schedule_args


def _add_prune(sub) -> None:
    text = "prune a model to a target MACs (l1 = PFEC, fpgm, sfp) and fine-tune it"
    p = sub.add_parser(
        "prune",
        help=text,
        description=text + ". MACs are convolution + linear multiply-"
        "accumulates of one input, measured on the physically pruned model.",
    )
    p.add_argument("--method", required=True, help="l1, fpgm or sfp")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", default=None, help="a model name: prune at initialisation (sfp: train from scratch)")
    src.add_argument("--from", dest="source", default=None, metavar="RUN_OR_FILE", help="a trained run or model file")
    tgt = p.add_argument_group("target (one of)")
    tgt.add_argument("--macs-ratio", type=float, default=None, metavar="R", help="fraction of the MACs to keep")
    tgt.add_argument("--target-macs", default=None, metavar="M", help="e.g. 63M, 1.2G")
    tgt.add_argument("--match", default=None, metavar="FILE_OR_RUN", help="the MACs of another model (an exit, a run)")
    tgt.add_argument("--recipe", default=None, help="published L1 recipe: pfec-a or pfec-b (cifar_resnet56/110)")
    g = p.add_argument_group("allocation")
    g.add_argument("--allocation", default="uniform", help="uniform (same fraction per layer) or global")
    g.add_argument("--max-layer-ratio", type=float, default=0.9, help="at most this fraction of a layer (0.9)")
    g.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of N (8; 1 = off)")
    p.add_argument("--no-finetune", action="store_true", help="l1/fpgm: stop after pruning")
    add_model_kwargs_arg(p, " (with --model)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (a run folder plus the pruned model)")
    p.add_argument("--resume", action="store_true", help="continue the job in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a job found in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    add_data_args(p)
    add_schedule_args(
        p,
        epochs_default="40 for l1/fpgm (PFEC's fine-tuning), 400 for sfp (the paper's training)",
        lr_default="0.001 for l1/fpgm, 0.1 for sfp",
        milestones_default="none for l1/fpgm, 0.4,0.6 for sfp",
        title="fine-tuning (l1, fpgm) or training (sfp) schedule",
    )
    p.set_defaults(fixed_method=None)


def _cmd_prune(args) -> int:
    from compact.prune import PRUNERS, PruneSettings
    from compact.prune.job import Target, prune_config, prune_job

    check_output_dir(args.out, "--out")
    method = PRUNERS.get(args.method)  # unknown methods list the valid ones
    target = None
    if not args.resume:
        target = Target(macs=args.target_macs, ratio=args.macs_ratio, match=args.match, recipe=args.recipe)
    settings = PruneSettings(
        allocation=args.allocation,
        max_layer_ratio=args.max_layer_ratio,
        round_to=None if args.round_to == 1 else args.round_to,
    )
    cli = _config_values(args)
    cli.pop("method", None)
    cli.pop("model", None)  # --model is the source here, given separately
    cfg = prune_config(method.soft, args.source, args.model, cli)
    prune_job(
        args.method,
        cfg,
        target,
        settings,
        args.out,
        finetune=not args.no_finetune,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    return 0


COMMANDS = {"prune": (_add_prune, _cmd_prune)}
