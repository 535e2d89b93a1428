"""Argument types and the model/exit options shared by subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from compact._yaml import load_yaml_text, plain_value
from compact.errors import CompactError


def _int_list(text: str) -> list[int]:
    """Comma-separated positive integers (at least one)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected one or more positive integers such as 1,64, got {text!r}")
    return values


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:  # 2 -> int, 0.5 -> float, true -> bool, else str
        return key.strip(), plain_value(load_yaml_text(value, f"the value of {key.strip()}"), key.strip())
    except CompactError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(t) for t in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if len(size) != 3 or min(size) <= 0 or size[0] > 64 or max(size[1:]) > 2048:
        raise argparse.ArgumentTypeError(f"expected C,H,W with C in 1..64 and H, W in 1..2048, got {text!r}")
    return size


def check_image_size(side: int | None, option: str = "--image-size") -> None:
    """Refuse a square image side outside 8..MAX_IMAGE_SIZE (None: not given, nothing to check)."""
    from compact.data.datasets import MAX_IMAGE_SIZE

    if side is not None and not 8 <= side <= MAX_IMAGE_SIZE:
        raise CompactError(f"{option} must lie in 8..{MAX_IMAGE_SIZE}, got {side}")


def check_output_file(path: str, option: str) -> None:
    """A file the command will write: not a folder, and its folder not a file."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise CompactError(f"{option} {path} is a folder; give a file name")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise CompactError(f"{option} {path}: a parent of it is a file, not a folder")


def check_output_dir(path: str, option: str) -> None:
    """A folder the command will write into: not a file, no parent of it a file, and no symbolic link
    inside it (:func:`compact._atomic.refuse_links`)."""
    from pathlib import Path

    from compact._atomic import refuse_links

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CompactError(f"{option} {path} is a file; give a folder")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise CompactError(f"{option} {path}: a parent of it is a file, not a folder")
    refuse_links(p)


def add_placement_args(g, default) -> None:
    """The four ways to place exits (use one): a count, block numbers, layer depths, or node names."""
    g.add_argument(
        "--exits",
        type=int,
        default=default,
        metavar="N",
        help="number of outputs, final included, spread evenly over the blocks (paper Sec. 4.1.2)",
    )
    g.add_argument(
        "--exit-blocks",
        type=_int_list,
        default=default,
        metavar="B1,B2,..",
        help="1-based block numbers to attach auxiliary exits after",
    )
    g.add_argument(
        "--exit-layers",
        type=_int_list,
        default=default,
        metavar="L1,L2,..",
        help="depths in weighted layers where blocks end (e.g. 15,25,35,45 for cifar_resnet56)",
    )
    g.add_argument("--exit-nodes", type=_str_list, default=default, metavar="N1,N2,..",
                   help="module or FX graph-node names, for models whose blocks are not discovered")  # fmt: skip


def add_model_args(p: argparse.ArgumentParser, training: bool = False) -> None:
    """Options that build a model and place its exits (shared by every command that builds one).

    With ``training``, options left out do not appear in the namespace (so that a ``--config`` file or
    a resumed run's configuration supplies them) and the input size comes from the dataset.
    """
    d = (lambda _v: argparse.SUPPRESS) if training else (lambda v: v)
    g = p.add_argument_group("model and exits")
    g.add_argument(
        "--model",
        required=not training,
        default=d(None),
        help="one of compact's models (compact models lists them), timm:<name> or torchvision:<name>",
    )
    g.add_argument(
        "--num-classes",
        type=int,
        default=d(10 if not training else None),
        help="default: the dataset's" if training else None,
    )
    if not training:
        g.add_argument("--input-size", type=_size, default=None, metavar="C,H,W", help="default 3,32,32")
    add_placement_args(g, d(None))
    g.add_argument(
        "--head",
        default=d("bn-relu-gap-fc"),
        help="head type: bn-relu-gap-fc, relu-gap-fc, gap-fc, embedding (margin losses)",
    )
    g.add_argument("--nu", type=float, default=d(None), help="decay rate of the loss weights (Eq. 5; default 2)")
    g.add_argument("--schedule", default=d("constant"), help="weighting schedule: constant, adaptive-1, adaptive-2")


def build_net(args: argparse.Namespace):
    """(MultiExitNet, LossWeighting) from the options of :func:`add_model_args`."""
    from compact.exits import LossWeighting, attach_exits
    from compact.models import create_model
    from compact.models.arguments import check_kwargs_mapping

    kwargs = check_kwargs_mapping(dict(getattr(args, "model_kwargs", None) or []), f"--model-arg of {args.model}")
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.input_size[0], **kwargs)
    placement = {
        "num_outputs": args.exits,
        "blocks": args.exit_blocks,
        "layers": args.exit_layers,
        "nodes": args.exit_nodes,
    }
    chosen = {k: v for k, v in placement.items() if v is not None}
    if len(chosen) > 1:
        raise CompactError("give only one of --exits, --exit-blocks, --exit-layers, --exit-nodes")
    if not chosen:
        chosen = {"num_outputs": 1}
    net = attach_exits(model, **chosen, head=args.head, input_size=args.input_size)
    return net, LossWeighting(net.depths, nu=args.nu, schedule=args.schedule)
