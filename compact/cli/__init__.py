"""Command line: a thin layer of subcommands over the library functions a notebook user calls.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>``
function that calls the library; the modules of this package group them (``inspect``: what compact offers;
``train``: training, evaluation, export; ``probe``: heads on a frozen trunk; ``prune``: pruning baselines;
``profile``: counts and latency; ``cascade``: early-exit inference; ``recipes``: comparison runs and
reports). Errors of the user's input
(:class:`CompactError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from compact._version import __version__
from compact.cli import cascade, inspect, probe, profile, prune, recipes, train
from compact.cli._common import add_model_args, build_net
from compact.errors import CompactError

#: subcommand name -> (function adding its parser, function running it), in help order
COMMANDS = {
    **inspect.COMMANDS,
    **train.COMMANDS,
    **probe.COMMANDS,
    **prune.COMMANDS,
    **profile.COMMANDS,
    **cascade.COMMANDS,
    **recipes.COMMANDS,
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``compact CMD: error: ...`` and where to find the valid options."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def get_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="compact",
        description="Train compact networks with multi-way backpropagation, export their exits, prune deeper "
        "baselines and compare them.",
    )
    parser.add_argument("--version", action="version", version=f"compact {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the Python traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


#: environment variable that, set to anything but "" or "0", shows tracebacks like --debug
DEBUG_ENV = "COMPACT_DEBUG"


#: the longest error message printed: a message quoting a huge value from a crafted file is cut in the middle
MAX_MESSAGE = 4000


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_MESSAGE:
        cut = len(text) - MAX_MESSAGE
        text = f"{text[: MAX_MESSAGE - 1000]} [... {cut:,} characters left out ...] {text[-1000:]}"
    return text


def _interrupted(args: argparse.Namespace) -> str:
    """What a user needs after Ctrl-C: what was kept and the command that continues."""
    cmd = args.command
    if cmd in ("train", "train-mwbp") and (args.out or args.resume):
        run = args.resume or args.out
        return f"the last completed epoch's checkpoint is kept in {run}; continue with: compact train --resume {run}"
    if cmd == "prune":
        return f"the last checkpoint is kept in {args.out}; continue with the same command and --resume"
    if cmd == "probe":
        return "the last checkpoint is kept; continue with the same command and --resume"
    if cmd == "run":
        return "finished entries and the last checkpoint are kept; continue with the same command"
    return "nothing was written"


def _out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures (CPU: a RuntimeError from its allocator; CUDA: OutOfMemoryError)."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status: 0 done, 2 bad input (one line on stderr), 1 an internal
    error (one line; the traceback with ``--debug`` or ``COMPACT_DEBUG=1``), 130 interrupted."""
    args = get_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    where = f"compact {args.command}"
    try:
        return COMMANDS[args.command][1](args)
    except CompactError as exc:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{where}: interrupted; {_interrupted(args)}", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: out of memory (try a smaller --batch-size or model)", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no: read-only, full, missing, not a folder
        if debug:
            traceback.print_exc()
        what = exc.strerror or _one_line(exc)
        name = f": {exc.filename}" if exc.filename else ""
        print(f"{where}: error: {what}{name}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if _out_of_memory(exc):
            what = _one_line(exc)[:200]
            print(f"{where}: error: out of memory ({what}); try a smaller --batch-size", file=sys.stderr)
            return 2
        print(
            f"{where}: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
            f"(please report it; --debug or {DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


__all__ = ["COMMANDS", "add_model_args", "build_net", "get_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
