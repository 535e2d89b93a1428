"""Command line: a thin layer of subcommands over the library functions a notebook user calls.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>``
function that calls the library. Errors of the user's input (:class:`CompactError`) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from compact._version import __version__
from compact.errors import CompactError


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(t) for t in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if len(size) != 3 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W, got {text!r}")
    return size


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options that build a model and place its exits (shared by every command that builds one)."""
    g = p.add_argument_group("model and exits")
    g.add_argument("--model", required=True, help="cifar_resnet20/32/44/56/110, timm:<name> or torchvision:<name>")
    g.add_argument("--num-classes", type=int, default=10)
    g.add_argument("--input-size", type=_size, default=(3, 32, 32), metavar="C,H,W")
    g.add_argument("--exits", type=int, default=None, metavar="N",
                   help="number of outputs, final included, spread evenly over the blocks (paper Sec. 4.1.2)")
    g.add_argument("--exit-blocks", type=_int_list, default=None, metavar="B1,B2,..",
                   help="1-based block numbers to attach auxiliary exits after")
    g.add_argument("--exit-layers", type=_int_list, default=None, metavar="L1,L2,..",
                   help="depths in weighted layers where blocks end (e.g. 15,25,35,45 for cifar_resnet56)")
    g.add_argument("--exit-nodes", type=_str_list, default=None, metavar="N1,N2,..",
                   help="module or FX graph-node names, for models whose blocks are not discovered")
    g.add_argument("--head", default="bn-relu-gap-fc", help="head type: bn-relu-gap-fc, relu-gap-fc, gap-fc")
    g.add_argument("--nu", type=float, default=None, help="decay rate of the loss weights (Eq. 5; default 2)")
    g.add_argument("--schedule", default="constant", help="weighting schedule: constant, adaptive-1, adaptive-2")


def build_net(args: argparse.Namespace):
    """(MultiExitNet, LossWeighting) from the options of :func:`add_model_args`."""
    from compact.exits import LossWeighting, attach_exits
    from compact.models import create_model

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.input_size[0])
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


# -- compact models ---------------------------------------------------------------------------------
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list compact's models (timm:<name> and torchvision:<name> also work)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'cifar*'")


def _cmd_models(args) -> int:
    from compact.models import list_models

    for name in list_models(args.pattern):
        print(name)
    print("(also any timm model as timm:<name> and torchvision classifier as torchvision:<name>)", file=sys.stderr)
    return 0


# -- compact methods --------------------------------------------------------------------------------
def _add_methods(sub) -> None:
    sub.add_parser("methods", help="list the backpropagation methods and their options")


def _cmd_methods(args) -> int:
    from compact.methods import METHODS

    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{k}={v!r}" for k, v in cls.options.items())
        print(f"{name:<20} {doc}" + (f"  [options: {opts}]" if opts else ""))
    return 0


# -- compact exits ----------------------------------------------------------------------------------
def _add_exits(sub) -> None:
    p = sub.add_parser("exits", help="show where exits go: node, depth, parameters and loss weight of each output")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cmd_exits(args) -> int:
    net, weighting = build_net(args)
    rows = net.describe()
    for row, g in zip(rows, weighting.gammas()):
        row["gamma"] = round(g, 6)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}: {net.num_outputs} outputs, head {net.head_type}, {weighting}")
    print(f"{'output':>6}  {'node':<32}{'layer':>6}{'params':>12}{'gamma':>8}")
    for r in rows:
        print(f"{r['output']:>6}  {r['node']:<32}{r['depth']:>6}{r['params']:>12,}{r['gamma']:>8.3f}")
    return 0


COMMANDS = {"models": (_add_models, _cmd_models), "methods": (_add_methods, _cmd_methods),
            "exits": (_add_exits, _cmd_exits)}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compact",
        description="Train compact networks with multi-way backpropagation, export their exits, prune deeper "
        "baselines and compare them.",
    )
    parser.add_argument("--version", action="version", version=f"compact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except CompactError as exc:
        print(f"compact {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
