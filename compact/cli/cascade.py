"""`compact cascade`: early-exit inference of a multi-exit network, swept over thresholds and measured."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from compact.cli._common import check_output_dir, check_output_file
from compact.errors import CompactError


def _add_cascade(sub) -> None:
    text = "run a multi-exit network as an early-exit ONNX cascade over a sweep of thresholds"
    p = sub.add_parser(
        "cascade",
        help=text,
        description=text + ": per threshold the test error, the share of images leaving at each exit, the exact "
        "mean MACs per image and the measured latency (ONNX Runtime), beside the static exits.",
    )
    p.add_argument("target", metavar="RUN_OR_DIR", help="a run folder, a multi-exit model file, or a cascade folder")
    p.add_argument("--thresholds", default="0.5:0.999:50", metavar="SPEC",
                   help="LOW:HIGH:N evenly spaced, or a list such as 0.6,0.9,0.99 (default 0.5:0.999:50)")  # fmt: skip
    p.add_argument("--rule", default="maxprob", choices=("maxprob", "margin", "entropy"),
                   help="confidence compared with the threshold (default maxprob: the largest softmax "
                   "probability)")  # fmt: skip
    p.add_argument("--temperature", action="store_true",
                   help="fit one softmax temperature per exit on the held-out images first")  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-error", type=float, default=None, metavar="PCT",
                   help="choose the cheapest threshold with at most this error %% on held-out training "
                   "images")  # fmt: skip
    g.add_argument("--budget-macs", default=None, metavar="MACS",
                   help="choose the most accurate threshold within this mean MACs per image (e.g. 20M)")  # fmt: skip
    p.add_argument("--val-images", type=int, default=5000,
                   help="held-out training images (after the run's subset) for --target-error, --budget-macs and "
                   "--temperature (default 5000)")  # fmt: skip
    p.add_argument(
        "--export", default=None, metavar="DIR", help="keep the exported cascade in DIR (from a run or file)"
    )
    p.add_argument("--data", default=None, help="dataset (default: the one the network was trained on)")
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--test-subset", type=int, default=None, help="use this many test images (default all)")
    p.add_argument("--batch", type=int, default=64, help="the batch size timed besides batch 1 (default 64)")
    p.add_argument("--latency-images", type=int, default=256, help="test images timed per threshold (0: no timing)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median over them)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--out", default=None, metavar="DIR", help="write cascade.md, cascade.csv, cascade.json and plots")
    p.add_argument("--json", default=None, metavar="PATH", help="write the study (JSON) to PATH")


def _cmd_cascade(args) -> int:
    from compact.cascade.export import MANIFEST
    from compact.cascade.sweep import parse_thresholds
    from compact.prune.base import parse_macs

    thresholds = parse_thresholds(args.thresholds)
    budget = parse_macs(args.budget_macs) if args.budget_macs is not None else None
    if args.target_error is not None and not 0 <= args.target_error <= 100:
        raise CompactError(f"--target-error is a percentage in [0, 100], got {args.target_error}")
    for name, value, low in (("--val-images", args.val_images, 1), ("--batch", args.batch, 1),
                             ("--latency-images", args.latency_images, 0), ("--rounds", args.rounds, 1)):  # fmt: skip
        if value < low or value > 1_000_000:
            raise CompactError(f"{name} must be an integer in {low}..1000000, got {value}")
    if args.test_subset is not None and args.test_subset <= 0:
        raise CompactError(f"--test-subset must be > 0, got {args.test_subset}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise CompactError(f"--threads must be in 1..1024, got {args.threads}")
    if args.out:
        check_output_dir(args.out, "--out")
    if args.json:
        check_output_file(args.json, "--json")
    target = Path(args.target)
    if not target.exists():
        raise CompactError(f"{target} does not exist")
    if target.is_dir() and (target / MANIFEST).is_file():
        if args.export:
            raise CompactError("--export applies to a run or model file; the target is already a cascade folder")
        return _study(target, args, thresholds, budget)
    if args.export:
        check_output_dir(args.export, "--export")
        _export(target, Path(args.export))
        return _study(Path(args.export), args, thresholds, budget)
    with tempfile.TemporaryDirectory(prefix="compact-cascade-") as tmp:
        _export(target, Path(tmp) / "cascade")
        return _study(Path(tmp) / "cascade", args, thresholds, budget)


def _export(target: Path, out: Path, overwrite: bool = False) -> dict:
    from compact.cascade.data import note_subset
    from compact.cascade.export import export_cascade
    from compact.cli.train import _load_target

    net, info, _, cfg = _load_target(target, "cpu")
    note_subset(info, cfg)
    if not getattr(net, "exit_nodes", None):
        what = "has one output (trained without exits)" if info.kind == "multi-exit" else "is a single-output model"
        raise CompactError(
            f"{target} {what}; a cascade needs auxiliary exits (train with --exits N, or give a network trained "
            "without them heads with compact probe)"
        )
    manifest = export_cascade(net, info, out, overwrite=overwrite)
    print(f"exported the cascade of {target} ({len(manifest['segments'])} segments) to {out}", file=sys.stderr)
    return manifest


def _study(folder: Path, args, thresholds: list[float], budget) -> int:
    from compact._atomic import write_text
    from compact.cascade.data import study_data
    from compact.cascade.runtime import Cascade
    from compact.cascade.sweep import study
    from compact.report.cascade import cascade_csv, cascade_markdown, draw_cascade

    cascade = Cascade(folder, threads=args.threads)
    test, val, name = study_data(
        cascade.manifest, data=args.data, data_dir=args.data_dir, test_subset=args.test_subset,
        val_images=args.val_images,
    )  # fmt: skip
    result = study(
        cascade,
        test,
        thresholds,
        rule=args.rule,
        validation=val,
        temperature=args.temperature,
        target_error=args.target_error,
        budget_macs=budget,
        latency_images=args.latency_images,
        batch=args.batch,
        rounds=args.rounds,
    )
    result["dataset"] = name
    result["source"] = str(args.target)
    text = cascade_markdown(result, f"Early-exit cascade of {args.target}")
    print(text, end="")
    if args.json:
        write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "cascade.md", text)
        write_text(out / "cascade.csv", cascade_csv(result))
        write_text(out / "cascade.json", json.dumps(result, indent=2) + "\n")
        draw_cascade(result, out / "cascade", f"early-exit cascade of {args.target}")
        print(f"written to {out}: cascade.md, cascade.csv, cascade.json, cascade_*.png/svg")
    return 0


COMMANDS = {"cascade": (_add_cascade, _cmd_cascade)}
