"""`compact probe`: heads trained on the frozen trunk of a trained network (paper footnote 3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from compact.cli._common import add_placement_args, check_output_dir
from compact.cli.train import S, _load_target, _print_outputs, add_data_args, add_schedule_args
from compact.engine.config import PLACEMENT_KEYS
from compact.engine.probe import PROBE_EPOCHS, probe_config
from compact.errors import CompactError


def _add_probe(sub) -> None:
    text = "train heads at given exits of a trained network whose layers stay frozen (paper footnote 3)"
    p = sub.add_parser(
        "probe",
        help=text,
        description=text + ". The result is a run folder like any other: "
        "per-exit test errors in metrics.jsonl/csv and summary.json.",
    )
    p.add_argument("source", metavar="RUN_OR_FILE", help="the trained run, or its full/multi-exit model file")
    g = p.add_argument_group("where the heads go (one of)")
    add_placement_args(g, S)
    g.add_argument(
        "--exits-like",
        default=None,
        metavar="RUN_OR_FILE",
        help="the exit positions of another network (e.g. the MW-BP run being compared)",
    )
    p.add_argument("--head", default=S, help="head type (default: the source run's, else bn-relu-gap-fc)")
    p.add_argument("--out", default=None, metavar="RUN", help="probe run folder (default: SOURCE/probe for a run)")
    p.add_argument("--resume", action="store_true", help="continue the probe run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a probe run found in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    add_data_args(p)
    add_schedule_args(p, epochs_default=PROBE_EPOCHS)


def _cmd_probe(args) -> int:
    from compact.engine import TrainConfig, train

    source = Path(args.source)
    if not source.exists():
        raise CompactError(f"{source} does not exist")
    cli = {k: v for k, v in vars(args).items() if k in TrainConfig.keys()}
    if args.exits_like:
        if any(k in cli for k in PLACEMENT_KEYS):
            raise CompactError("give --exits-like or one of --exits/--exit-blocks/--exit-layers/--exit-nodes, not both")
        _, like, _, _ = _load_target(Path(args.exits_like), "cpu")
        if not like.exit_nodes:
            raise CompactError(f"{args.exits_like} has no auxiliary exits to copy")
        cli["exit_nodes"] = list(like.exit_nodes)
    if not any(k in cli for k in PLACEMENT_KEYS):
        raise CompactError(
            "say where the heads go: --exits N, --exit-blocks, --exit-layers, --exit-nodes or --exits-like"
        )
    out = Path(args.out) if args.out else (source / "probe" if source.is_dir() else None)
    if out is None:
        raise CompactError("probing a model file needs --out RUN")
    check_output_dir(str(out), "--out")
    cfg = probe_config(source, cli)  # model and data from the source, heads and schedule from the options
    summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=args.progress)
    _print_outputs(summary["outputs"])
    print(f"probe run: {out}")
    return 0


COMMANDS = {"probe": (_add_probe, _cmd_probe)}
