"""`compact profile`: parameters, MACs, ONNX export and parity, latency; one JSON profile per model."""

from __future__ import annotations

import json
import sys

from compact.cli._common import _int_list, _key_value, _size, check_output_file
from compact.errors import CompactError


def _add_profile(sub) -> None:
    text = "profile models: parameters, MACs (fvcore), ONNX export + parity, latency (ONNX Runtime, PyTorch)"
    p = sub.add_parser("profile", help=text, description=text + ". Several models are timed interleaved.")
    p.add_argument(
        "targets",
        nargs="+",
        metavar="MODEL_OR_RUN",
        help="model files (.safetensors), run folders, or architecture names (cifar_resnet56, timm:resnet18: "
        "freshly initialised, built with --input-size, --num-classes, --model-arg)",
    )
    g = p.add_argument_group("architectures given by name")
    g.add_argument("--input-size", type=_size, default=(3, 32, 32), metavar="C,H,W", help="default 3,32,32")
    g.add_argument("--num-classes", type=int, default=10, help="default 10")
    g.add_argument("--model-arg", dest="model_kwargs", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="extra model constructor argument, e.g. shortcut=B")  # fmt: skip
    p.add_argument("--exit", default=None, metavar="K", help="for runs / multi-exit files: output index or 'final'")
    p.add_argument("--onnx", action="store_true", help="export to ONNX, check, compare, and time ONNX Runtime")
    p.add_argument("--batch", type=_int_list, default=[1], metavar="B1,B2", help="batch sizes to time (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads for PyTorch and ONNX Runtime")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (median and p10-p90 over them)")
    p.add_argument("--repeats", type=int, default=5, help="calls per round")
    p.add_argument("--no-latency", action="store_true", help="counts (and ONNX checks) only")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the profiles (a list) to PATH")
    p.add_argument("--no-store", action="store_true", help="do not write profiles next to the models")


def _cmd_profile(args) -> int:
    from compact.profile.profiler import profile_models, write_profile

    for name, value in (("--rounds", args.rounds), ("--repeats", args.repeats)):
        if not 1 <= value <= 10_000:  # as a recipe's profile settings
            raise CompactError(f"{name} must be an integer in 1..10000, got {value}")
    if max(args.batch) > 4096:
        raise CompactError(f"--batch sizes must lie in 1..4096, got {max(args.batch)}")
    if args.threads is not None and not 1 <= args.threads <= 1024:  # 100000 crashed inside ONNX Runtime
        raise CompactError(f"--threads must be in 1..1024, got {args.threads}")
    if args.json:
        check_output_file(args.json, "--json")
    targets = [_target(t, args) for t in args.targets]
    profiles = profile_models(
        targets,
        onnx=args.onnx,
        batches=args.batch,
        threads=args.threads,
        rounds=args.rounds,
        repeats=args.repeats,
        latency=not args.no_latency,
    )
    for t, prof in zip(targets, profiles, strict=True):
        if not args.no_store and t.profile_path is not None:
            write_profile(prof, t.profile_path)
    if args.json:
        from compact._atomic import write_text

        write_text(args.json, json.dumps(profiles, indent=2) + "\n")
    _print(profiles, args.batch)
    return 0


def _target(text: str, args):
    """A model file or run folder when ``text`` exists, else a registered architecture name."""
    from pathlib import Path

    from compact.profile.profiler import architecture_target, load_target

    path = Path(text)
    if path.exists() or path.suffix == ".safetensors" or "/" in text.replace("timm:", "", 1):
        return load_target(path, args.exit)
    if args.exit is not None:
        raise CompactError(f"--exit applies to runs and multi-exit files, not to the architecture {text!r}")
    return architecture_target(text, args.input_size, args.num_classes, dict(args.model_kwargs))


def _print(profiles: list[dict], batches: list[int]) -> None:
    cols = [
        (rt, b)
        for rt in ("onnxruntime", "pytorch")
        for b in batches
        if any(rt in p.get("latency_ms", {}) for p in profiles)
    ]
    heads = ["params", "MACs", "conv+lin MACs"]
    heads += [("ort" if rt == "onnxruntime" else "torch") + f" b{b} ms" for rt, b in cols]
    rows = []
    for p in profiles:
        cells = [f"{p['params']:,}", f"{p['macs']:,}", f"{p['macs_conv_linear']:,}"]
        for rt, b in cols:
            t = p.get("latency_ms", {}).get(rt, {}).get(str(b))
            cells.append("-" if t is None else "{median:.2f} ({p10:.2f}-{p90:.2f})".format(**t))
        rows.append((p["model"], cells))
    # every column as wide as its widest cell, two spaces apart (billions of MACs must not run together)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) + 2 for i, h in enumerate(heads)]
    width = max([34, *(len(p["model"]) + 2 for p in profiles)])
    print(f"{'model':<{width}}" + "".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for name, cells in rows:
        print(f"{name:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    for p in profiles:
        if p["skipped_ops"]:
            skipped = ", ".join(f"{k} x{v}" for k, v in sorted(p["skipped_ops"].items()))
            print(f"{p['model']}: fvcore skipped (not in MACs): {skipped}")
        if p.get("inference_form"):
            f = p["inference_form"]
            print(
                f"{p['model']}: profiled in its inference form: {f['folded_layers']} layer(s) folded "
                f"({f['params_as_trained']:,} parameters as trained; outputs equal within {f['max_relative_diff']:.1e})"
            )
        for warning in p.get("warnings", []):
            print(f"warning: {p['model']}: {warning}", file=sys.stderr)
        if "onnx" in p:
            print(f"{p['model']}: ONNX opset {p['onnx']['opset']}, parity max |diff| {p['onnx']['parity_max_abs']:.1e}")
    if profiles and "latency_ms" in profiles[0]:
        s = profiles[0]["settings"]
        print(
            f"latency: median (p10-p90) of {s['rounds']} interleaved rounds x {s['repeats']} calls, "
            f"{s['threads']} threads" + (", ONNX Runtime CPU provider, ORT_ENABLE_ALL" if s["onnxruntime"] else "")
        )


COMMANDS = {"profile": (_add_profile, _cmd_profile)}
