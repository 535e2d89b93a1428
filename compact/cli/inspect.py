"""`compact models`, `methods`, `recipes`, `configs`, `exits`: what compact offers and where exits go."""

from __future__ import annotations

import json
import sys

from compact.cli._common import _key_value, add_model_args, build_net, check_image_size
from compact.errors import CompactError


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


# -- compact recipes, compact configs ---------------------------------------------------------------
def _add_recipes(sub) -> None:
    p = sub.add_parser(
        "recipes", help="list (and validate) the comparison recipes that ship with compact, or validate your own"
    )
    p.add_argument("files", nargs="*", metavar="RECIPE", help="recipe files to validate (default: the shipped ones)")


def _cmd_recipes(args) -> int:
    from compact._resources import shipped
    from compact.recipes import load_recipe

    if args.files:
        for file in args.files:
            recipe = load_recipe(file)  # everything checked that compact run checks before its first entry
            print(f"{file}: valid; recipe {recipe.name}, {len(recipe.entries)} entries, {len(recipe.seeds)} seed(s)")
        return 0
    for name, path in shipped("recipe").items():
        recipe = load_recipe(path)  # validated: a broken shipped recipe fails here, not hours into a run
        print(f"{name:<18} {len(recipe.entries):>2} entries, {len(recipe.seeds)} seed(s)  {recipe.description}")
    return 0


def _add_configs(sub) -> None:
    sub.add_parser("configs", help="list the training configurations that ship with compact (--config NAME)")


def _cmd_configs(args) -> int:
    from compact._resources import shipped
    from compact.engine.config import TrainConfig, read_yaml

    for name, path in shipped("config").items():
        values = read_yaml(path)
        TrainConfig.from_dict({"model": "cifar_resnet20", **values}, str(path))  # validated, as recipes are
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


# -- compact exits ----------------------------------------------------------------------------------
def _add_exits(sub) -> None:
    p = sub.add_parser("exits", help="show where exits go: node, depth, parameters and loss weight of each output")
    add_model_args(p)
    p.add_argument("--model-arg", dest="model_kwargs", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="extra model constructor argument, e.g. shortcut=B")  # fmt: skip
    p.add_argument(
        "--data",
        default=None,
        help="size the input like this dataset (fashion-mnist, cifar10, cifar100, imagefolder:PATH); "
        "--input-size wins when both are given",
    )
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="square input side: the --data set's images resized to it, or 3-channel inputs without "
                   "--data (not with --input-size)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cmd_exits(args) -> int:
    args.input_size = _exits_input_size(args)
    net, weighting = build_net(args)
    rows = net.describe()
    for row, g in zip(rows, weighting.gammas(), strict=True):
        row["gamma"] = round(g, 6)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}: {net.num_outputs} outputs, head {net.head_type}, {weighting}")
    node = max([30, *(len(str(r["node"])) for r in rows)]) + 2  # long timm node names must not touch the layer
    print(f"{'output':>6}  {'node':<{node}}{'layer':>6}{'params':>14}{'gamma':>8}  feature")
    for r in rows:
        feature = r["feature"] or "logits"
        print(f"{r['output']:>6}  {r['node']:<{node}}{r['depth']:>6}{r['params']:>14,}{r['gamma']:>8.3f}  {feature}")
    return 0


def _exits_input_size(args) -> tuple[int, int, int]:
    """The (C, H, W) that ``compact exits`` traces: ``--input-size``, else ``--data``'s images (at
    ``--image-size`` when given), else 3 channels at ``--image-size`` or 32 px."""
    from compact.data.datasets import FOLDER_SIZE, NATIVE_SIZES

    side = args.image_size
    if side is not None and args.input_size is not None:
        raise CompactError("--image-size and --input-size both set the input; give one of them")
    check_image_size(side)
    if args.input_size is not None:
        return tuple(args.input_size)
    c, h = 3, 32
    if args.data is not None:
        from compact.data import check_dataset_name

        name = check_dataset_name(args.data, "--data")
        c, h, _ = NATIVE_SIZES.get(name, (3, FOLDER_SIZE, FOLDER_SIZE))
    return (c, side or h, side or h)


COMMANDS = {
    "models": (_add_models, _cmd_models),
    "methods": (_add_methods, _cmd_methods),
    "recipes": (_add_recipes, _cmd_recipes),
    "configs": (_add_configs, _cmd_configs),
    "exits": (_add_exits, _cmd_exits),
}
