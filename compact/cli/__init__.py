"""Command line: a thin layer of subcommands over the library functions a notebook user calls.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>``
function that calls the library; the modules of this package group them (``inspect``: what compact offers;
``train``: training, evaluation, export; ``probe``: heads on a frozen trunk; ``prune``: pruning baselines;
``profile``: counts and latency; ``recipes``: comparison runs and reports). Errors of the user's input
(:class:`CompactError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from compact._version import __version__
from compact.cli import inspect, probe, profile, prune, recipes, train
from compact.cli._common import add_model_args, build_net
from compact.errors import CompactError

#: subcommand name -> (function adding its parser, function running it), in help order
COMMANDS = {
    **inspect.COMMANDS,
    **train.COMMANDS,
    **probe.COMMANDS,
    **prune.COMMANDS,
    **profile.COMMANDS,
    **recipes.COMMANDS,
}


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


__all__ = ["COMMANDS", "add_model_args", "build_net", "get_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
