"""`compact run RECIPE` and `compact report DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from compact.cli._common import check_image_size, check_output_dir
from compact.errors import CompactError


def _add_run(sub) -> None:
    text = "run a comparison recipe: train, probe, prune, fine-tune and profile every entry (resumable)"
    p = sub.add_parser("run", help=text, description=text)
    p.add_argument("recipe", help="a recipe file, or the name of a shipped one (compact recipes lists them)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/<recipe name>)")
    p.add_argument("--smoke", action="store_true", help="a few batches per entry, to check that the recipe runs")
    p.add_argument("--data", default=None, help="override the recipe's dataset (e.g. imagefolder:PATH)")
    p.add_argument("--data-dir", default=None, help="override where the dataset files are")
    p.add_argument("--download", action="store_true",
                   help="download the dataset into --data-dir when it is missing (online users)")  # fmt: skip
    p.add_argument("--image-size", type=int, default=None, help="override the recipe's image side (pixels)")
    p.add_argument(
        "--entries",
        default=None,
        metavar="A,B",
        help="run only these entries (and the entries they need), e.g. to get one comparison first in a long recipe",
    )
    p.add_argument("--seeds", default=None, metavar="S,T", help="run only these of the recipe's seeds")
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="the output folder of another compact run: a trained entry whose configuration (seed included) "
        "equals one of its finished runs is copied from there instead of trained again (repeatable; the report "
        "names what was reused)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise CompactError(f"{flag} takes names separated by commas (e.g. mwbp,standard), got {text!r}")
    return names


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in _names(text, "--seeds"))
    except ValueError:
        raise CompactError(f"--seeds takes whole numbers separated by commas (e.g. 0,1), got {text!r}") from None


def _cmd_run(args) -> int:
    from compact.recipes import RunSettings, load_recipe, pending_jobs, run_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out or Path("runs") / recipe.name)  # the name is a plain path component (validated)
    check_output_dir(str(out), "--out")
    if args.data is not None:
        from compact.data import check_dataset_name

        check_dataset_name(args.data, "--data")
    check_image_size(args.image_size)
    if args.download and not args.data_dir:
        raise CompactError("--download needs --data-dir DIR: name the folder the dataset is downloaded into")
    settings = RunSettings(
        download=args.download,
        smoke=args.smoke,
        data=args.data,
        data_dir=args.data_dir,
        progress=args.progress,
        image_size=args.image_size,
        entries=None if args.entries is None else _names(args.entries, "--entries"),
        seeds=None if args.seeds is None else _seeds(args.seeds),
        reuse=tuple(args.reuse),
    )
    run_recipe(recipe, out, settings, log=lambda m: print(m, flush=True))
    unfinished = pending_jobs(out, recipe, args.smoke, settings)
    left = pending_jobs(out, recipe, args.smoke)
    if unfinished:
        print(f"{len(unfinished)} job(s) of this run are not finished (another compact run holds them, or they "
              f"need one it holds), e.g. {unfinished[0]}; run the same command again once it is done")  # fmt: skip
    elif left:
        print(f"the selected entries of {recipe.name} are done in {out}; {len(left)} job(s) remain (run without "
              f"--entries/--seeds to finish); a report of what is done: compact report {out} --partial")  # fmt: skip
    else:
        print(f"all entries of {recipe.name} are done in {out}; make the report with: compact report {out}")
    return 0


def _add_report(sub) -> None:
    text = "tables (Markdown, CSV, JSON) and Pareto plots (PNG, SVG) from a recipe run's stored results"
    p = sub.add_parser("report", help=text, description=text + ". Nothing is re-measured.")
    p.add_argument("run", metavar="DIR", help="the output folder of compact run")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default DIR/report)")
    p.add_argument("--partial", action="store_true", help="report a run whose entries are not all done (marked)")


def _cmd_report(args) -> int:
    from compact.report import make_report

    run = Path(args.run)
    if args.out:
        check_output_dir(args.out, "--out")
    if not (run / "recipe.json").is_file():
        raise CompactError(f"{run} is not the output folder of compact run (no recipe.json)")
    result = make_report(run, Path(args.out) if args.out else run / "report", partial=args.partial)
    print(result["markdown"])
    print(f"report written to {result['dir']}: " + ", ".join(sorted(result["files"])))
    return 0


COMMANDS = {"run": (_add_run, _cmd_run), "report": (_add_report, _cmd_report)}
