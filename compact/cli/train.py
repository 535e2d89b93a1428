"""`compact train`, `compact train-mwbp`, `compact eval`, `compact export`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from compact.cli._common import _key_value, add_model_args, check_output_dir, check_output_file
from compact.errors import CompactError

S = argparse.SUPPRESS


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the data comes from (shared by training, evaluation and later pruning/probing)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help="fashion-mnist (default), cifar10, cifar100 or imagefolder:PATH")
    g.add_argument("--data-dir", default=S, help="folder holding the dataset files (see the README)")
    g.add_argument("--download", action="store_true", default=S, help="download the dataset when online")
    g.add_argument("--test-subset", type=int, default=S, metavar="N", help="evaluate on N test images only")
    g.add_argument("--workers", type=int, default=S, help="DataLoader workers for image folders (default 2)")
    g.add_argument("--device", default=S, help="auto (default: CUDA when available), cpu, cuda, cuda:N")
    g.add_argument("--augment", default=S, choices=["cifar", "imagenet", "none"],
                   help="training augmentation: cifar (padded random crop; default for Fashion-MNIST and CIFAR), "
                   "imagenet (random resized crop; default for image folders) or none")  # fmt: skip
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=S,
                   help="random horizontal flips in training (default on; --no-flip for digits, text)")  # fmt: skip
    g.add_argument("--in-chans", type=int, default=S, choices=[1, 3],
                   help="1 (grayscale) or 3 (RGB) input channels (default: the dataset's; folders: 3)")  # fmt: skip


def add_model_kwargs_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--model-arg KEY=VALUE`` (repeatable): extra model constructor arguments."""
    p.add_argument("--model-arg", dest="model_kwargs", type=_key_value, action="append", default=S,
                   metavar="KEY=VALUE", help=f"extra model constructor argument{note}, e.g. shortcut=B")  # fmt: skip


def add_schedule_args(
    p: argparse.ArgumentParser,
    epochs_default: int | str = 400,
    lr_default: str = "0.1",
    milestones_default: str = "0.4,0.6",
    title: str = "schedule (defaults: the paper's)",
) -> None:
    """Training-set size and the SGD schedule (left-out options come from the config or the defaults, which
    the help texts show as the command really applies them)."""
    g = p.add_argument_group(title)
    g.add_argument("--subset", type=int, default=S, metavar="N", help="train on N images (seeded choice)")
    g.add_argument("--image-size", type=int, default=S, metavar="PX",
                   help="input side: in-memory datasets are resized to it (default: their own, 28 or 32), image "
                   "folders cropped to it (default 224)")  # fmt: skip
    g.add_argument("--epochs", type=int, default=S, help=f"default {epochs_default}")
    g.add_argument("--batch-size", type=int, default=S, help="default 128")
    g.add_argument("--eval-batch-size", type=int, default=S, help="default 512")
    g.add_argument("--eval-every", type=int, default=S, metavar="N",
                   help="evaluate every N epochs and after the last (default 1; curves get N-epoch steps)")  # fmt: skip
    g.add_argument("--lr", type=float, default=S, help=f"initial learning rate (default {lr_default})")
    g.add_argument(
        "--lr-milestones",
        type=_float_list,
        default=S,
        metavar="F1,F2",
        help=f"fractions of the epochs at which lr is multiplied by --lr-decay (default {milestones_default})",
    )
    g.add_argument("--lr-decay", type=float, default=S, help="default 0.1")
    g.add_argument("--precision", default=S, choices=["fp32", "bf16", "fp16", "auto"],
                   help="training precision: autocast in bf16 or fp16 (fp16: loss scaling, CUDA only; MW-BP stays "
                   "exact), auto = bf16 on GPUs that have it; default fp32")  # fmt: skip
    g.add_argument("--loss", default=S, choices=["ce", "arcface", "cosface"],
                   help="ce (default) or a margin softmax for embeddings (faces: mobilefacenet, --head "
                   "embedding)")  # fmt: skip
    g.add_argument("--loss-scale", type=float, default=S, help="margin softmax scale s (default 64)")
    g.add_argument("--loss-margin", type=float, default=S, help="margin m (default arcface 0.5 rad, cosface 0.35)")
    g.add_argument("--val-pairs", default=S, metavar="PATH",
                   help="face verification pairs (packed .bin file or LFW folder) checked at every "
                   "evaluation")  # fmt: skip
    g.add_argument("--channels-last", action="store_true", default=S,
                   help="model and batches in channels-last memory format (2-D convolutional networks)")  # fmt: skip
    g.add_argument("--momentum", type=float, default=S, help="default 0.9")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=S, help="default on")
    g.add_argument("--weight-decay", type=float, default=S, help="default 5e-4")
    g.add_argument("--seed", type=int, default=S, help="default 0")


def _add_training(sub, name: str, help_text: str, fixed_method: str | None) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="file of option: value defaults (keys as below), or a shipped one's name (compact configs)",
    )
    p.add_argument("--out", default=None, metavar="RUN", help="run folder to create")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run found in --out")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="one epoch of one batch of 16 small images, to check that a setup runs (measures nothing)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    if fixed_method is None:
        p.add_argument(
            "--method", default=S, help="standard, joint, relay, mwbp, reverse-mwbp, naive-mwbp, naive-reverse-mwbp"
        )
    p.add_argument(
        "--method-option",
        dest="method_options",
        type=_key_value,
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="method option, e.g. c=2 (relay) or lr_scaling=authors (MW-BP)",
    )
    add_model_args(p, training=True)
    add_model_kwargs_arg(p)
    p.add_argument(
        "--init-from",
        default=S,
        metavar="RUN_OR_FILE",
        help="start from the backbone weights of a trained run or model file (heads start fresh)",
    )
    add_data_args(p)
    add_schedule_args(p)
    p.set_defaults(fixed_method=fixed_method)


def _add_train(sub) -> None:
    _add_training(sub, "train", "train a network (with exits if asked) by any backpropagation method", None)


def _add_train_mwbp(sub) -> None:
    _add_training(sub, "train-mwbp", "train a network with auxiliary exits by multi-way backpropagation", "mwbp")


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    from compact.engine import TrainConfig

    values = {k: v for k, v in vars(args).items() if k in TrainConfig.keys()}
    for key in ("method_options", "model_kwargs"):
        if key in values:
            values[key] = dict(values[key])
    if args.fixed_method:
        values["method"] = args.fixed_method
    return values


def _cmd_train(args) -> int:
    from compact.engine import TrainConfig, open_run, resolve_config, train
    from compact.engine.config import SMOKE, SMOKE_IMAGE_SIZE

    if (args.out is None) == (args.resume is None):
        raise CompactError("give either --out RUN (a new run) or --resume RUN (continue one)")
    check_output_dir(args.out or args.resume, "--out" if args.out else "--resume")
    cli = _config_values(args)
    if args.smoke:
        if args.resume:
            raise CompactError("--smoke checks a setup in a new run; drop --resume")
        cli.update(SMOKE)  # over the options given and the config file
    if args.resume:
        if args.config or args.overwrite:
            raise CompactError("--resume continues a run with its stored configuration; drop --config/--overwrite")
        stored = open_run(args.resume).config.to_dict()
        cfg = TrainConfig.from_dict({**stored, **cli}, "options")
        out = args.resume
    else:
        cfg = resolve_config(cli, args.config)
        out = args.out
    if args.smoke and cfg.data.startswith("imagefolder:") and cfg.image_size is None:
        cfg = dataclasses.replace(cfg, image_size=SMOKE_IMAGE_SIZE)  # small images, unless a size was given
    summary = train(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=args.progress)
    if not summary:  # a process other than rank 0 of a distributed run: rank 0 reports
        return 0
    _print_outputs(summary["outputs"])
    if args.smoke:
        print("smoke run: the setup works end to end; its numbers mean nothing")
    print(f"run folder: {out} (model.safetensors, metrics.csv)")
    print(f"export an exit with: compact export {out} --exit 0 --out FILE")
    return 0


def _print_outputs(rows: list[dict]) -> None:
    verify = any("verification_pct" in r for r in rows)
    extra = f"{'verif. %':>14}{'TAR@1e-3 %':>12}" if verify else ""
    node = max([26, *(len(str(r["node"])) for r in rows)]) + 2  # long timm node names must not touch the layer
    print(f"{'output':>6}  {'node':<{node}}{'layer':>6}{'params':>14}{'test err %':>12}{extra}")
    for r in rows:
        err = "-" if r.get("test_error_pct") is None else f"{r['test_error_pct']:.2f}"
        cells = ""
        if verify:
            tar = "-" if r.get("tar_at_far_1e-3_pct") is None else f"{r['tar_at_far_1e-3_pct']:.2f}"
            cells = f"{r['verification_pct']:>8.2f} ±{r['verification_std']:>4.2f}{tar:>12}"
        print(f"{r['output']:>6}  {r['node']:<{node}}{r['depth']:>6}{r['params']:>14,}{err:>12}{cells}")


# -- compact eval -----------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test error of every output of a run, or of a model file")
    p.add_argument("target", metavar="RUN_OR_FILE", help="a run folder or a .safetensors model file")
    add_data_args(p)  # default: the dataset it was trained on, whole test set (--test-subset N: the run's seed)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--pairs", default=None, metavar="PATH",
                   help="also verify face pairs (packed .bin file or LFW folder): 10-fold accuracy and TAR@FAR 1e-3 "
                   "of every output of an embedding network")  # fmt: skip


def _load_target(path: Path, device):
    """(module, model info, trained flags, run config or None) of a run folder or a model file."""
    from compact.engine import open_run
    from compact.modelfile import load_model

    if path.is_dir():
        run = open_run(path)
        net, info = run.network(device)
        return net, info, run.trained_outputs(net.num_outputs), run.config
    model, info = load_model(path, device)
    n = model.num_outputs if hasattr(model, "num_outputs") else 1
    return model, info, [True] * n, None


def _cmd_eval(args) -> int:
    from compact.data import DataOptions, load_data
    from compact.engine import evaluate
    from compact.engine.trainer import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    model, info, trained, cfg = _load_target(Path(args.target), device)
    name = getattr(args, "data", None) or (cfg.data if cfg else info.dataset)
    if not name:
        raise CompactError(f"{args.target} does not say which dataset it was trained on; pass --data")
    data_dir = getattr(args, "data_dir", None) or (cfg.data_dir if cfg else None)
    opts = DataOptions(
        name=name,
        data_dir=data_dir,
        download=getattr(args, "download", False),
        test_subset=getattr(args, "test_subset", None),
        image_size=info.input_size[-1],
        in_chans=info.in_chans,
        seed=cfg.seed if cfg else int(info.source.get("seed", 0)),
        workers=getattr(args, "workers", 2),
    )
    data = load_data(opts)
    if data.num_classes != info.num_classes or list(data.input_size) != list(info.input_size):
        raise CompactError(
            f"{args.target} takes {tuple(info.input_size)} inputs with {info.num_classes} classes; {data.name} "
            f"gives {tuple(data.input_size)} with {data.num_classes}"
        )
    _, test_loader = data.loaders(args.batch_size, 0, args.batch_size)
    losses, errors = evaluate(model, test_loader, device, trained)
    rows = _rows(model, info, errors)
    if args.pairs:
        _add_verification(model, info, rows, args.pairs)
    if args.json:
        print(
            json.dumps(
                {"target": args.target, "data": data.name, "test_images": data.test_size, "outputs": rows}, indent=2
            )
        )
    else:
        print(f"{args.target}: {data.name}, {data.test_size} test images")
        _print_outputs(rows)
    return 0


def _add_verification(model, info, rows: list[dict], pairs_path: str) -> None:
    """Verification figures of every output of ``model`` into ``rows``."""
    from compact.face.verification import load_pairs, verify, verify_outputs

    images, pairs, same = load_pairs(pairs_path, info.input_size, info.mean, info.std)
    if hasattr(model, "exit_nodes"):
        results = verify_outputs(model, images, pairs, same)
    else:
        results = [verify(model, images, pairs, same)]
    for row, r in zip(rows, results, strict=True):
        row["verification_pct"] = round(100 * r["accuracy"], 3)
        row["verification_std"] = round(100 * r["std"], 3)
        tar = r["tar_at_far_1e-3"]
        row["tar_at_far_1e-3_pct"] = None if tar is None else round(100 * tar, 3)
    print(f"face verification on {len(same)} pairs of {pairs_path} (10-fold; image + flip embeddings)", file=sys.stderr)


def _rows(model, info, errors: list[float | None]) -> list[dict]:
    if hasattr(model, "describe"):
        rows = model.describe()
    else:
        node = info.exit_nodes[0] if info.exit_nodes else "(final)"
        depth = info.source.get("depth", "-")
        rows = [
            {
                "output": info.source.get("output", 0),
                "node": node,
                "depth": depth,
                "params": sum(p.numel() for p in model.parameters()),
            }
        ]
    for row, err in zip(rows, errors, strict=True):
        row["test_error_pct"] = err
    return rows


# -- compact export ---------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write one output of a trained run as a standalone model file, or the whole network as an "
        "early-exit ONNX cascade",
    )
    p.add_argument("target", metavar="RUN_OR_FILE", help="a run folder or a multi-exit .safetensors model file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--exit",
        dest="which",
        metavar="K",
        help="output index (0 = shallowest exit; negative counts from the end) or 'final'",
    )
    what.add_argument(
        "--cascade",
        action="store_true",
        help="write the network cut at its exits as ONNX segments plus manifest.json into the folder --out "
        "(run it with compact cascade)",
    )
    p.add_argument("--out", required=True, metavar="FILE_OR_DIR", help="file to write: .safetensors (a "
                   "compact model file) or .onnx (an ONNX graph, checked against PyTorch); with --cascade "
                   "the folder")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace FILE (or the cascade folder) if it exists")


def _cmd_export(args) -> int:
    from compact.engine import export_output
    from compact.engine.run import export_output_onnx

    if args.cascade:
        from compact.cli.cascade import _export

        check_output_dir(args.out, "--out")
        m = _export(Path(args.target), Path(args.out), overwrite=args.overwrite)
        for s in m["segments"]:
            macs = s["macs"]["trunk"]["total"] + s["macs"]["head"]["total"]
            print(f"{s['file']}: {s['node']} (layer {s['depth']}), {macs:,} MACs, parity {s['parity_onnx']:.1e}")
        return 0
    check_output_file(args.out, "--out")
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".safetensors", ".onnx"):
        raise CompactError(
            f"--out {args.out!r}: name the file .safetensors (a compact model file: eval, profile, prune, "
            "probe take it) or .onnx (an ONNX graph for deployment)"
        )
    net, info, _, _ = _load_target(Path(args.target), "cpu")
    if not hasattr(net, "exit_nodes"):
        raise CompactError(
            f"{args.target} is a single-output model ({info.kind}); export takes a run or multi-exit file"
        )
    parity = ""
    if suffix == ".onnx":
        written, diff = export_output_onnx(net, info, args.which, args.out, overwrite=args.overwrite)
        parity = f"; ONNX Runtime parity {diff:.1e}"
    else:
        written = export_output(net, info, args.which, args.out, overwrite=args.overwrite)
    total = sum(p.numel() for p in net.backbone.parameters())
    what = f"exit {written.source['output']} at {written.exit_nodes[0]}" if written.kind == "exit" else "final output"
    print(
        f"wrote {args.out}: {what} (layer {written.source['depth']}), {written.params:,} parameters "
        f"({100 * written.params / total:.1f}% of the backbone's {total:,}){parity}"
    )
    return 0


COMMANDS = {
    "train": (_add_train, _cmd_train),
    "train-mwbp": (_add_train_mwbp, _cmd_train),
    "eval": (_add_eval, _cmd_eval),
    "export": (_add_export, _cmd_export),
}
