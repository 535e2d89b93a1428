"""Cost and effect of the three pruning methods on cifar_resnet56 at 50% of its MACs.

For l1 (PFEC), fpgm and sfp with uniform allocation, and l1 with global allocation (uneven widths), with
channel counts rounded to multiples of 8 and not rounded: the time to find
the per-layer ratios and prune (for SFP: one epoch-end zeroing step and the final removal), the measured
conv+linear MACs and parameters, and ONNX Runtime latency (CPU provider, ORT_ENABLE_ALL) at batch 1 and 64.
All pruned models and the unpruned one are timed in one interleaved session (compact.profile), median and
p10-p90 over rounds. Weights are a fresh initialisation with BatchNorm statistics of random inputs: pruning
time, MACs, parameters and latency do not depend on training.

    python benchmarks/prune_cost.py [--rounds 15] [--repeats 5] [--threads 2]
    python benchmarks/prune_cost.py --quick     # cifar_resnet20, l1 only, one round (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from compact.models import create_model
from compact.profile import conv_linear_macs
from compact.profile.profiler import Target, profile_models
from compact.prune import PRUNERS, PruneSettings, SoftFilterPruning, prune_layers, search_ratios

SIZE = [3, 32, 32]


def prune(model, method: str, round_to: int | None, allocation: str = "uniform"):
    settings = PruneSettings(round_to=round_to, allocation=allocation)
    spec = PRUNERS.get(method)
    t0 = time.perf_counter()
    result = search_ratios(model, SIZE, spec, conv_linear_macs(model, SIZE) // 2, settings)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    pruned = copy.deepcopy(model)
    if spec.soft:
        soft = SoftFilterPruning(result.ratios, SIZE, round_to)
        soft.zero(pruned)
        soft.finalize(pruned)
    else:
        prune_layers(pruned, SIZE, spec, result.ratios, settings)
    return pruned.eval(), t_search, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--quick", action="store_true", help="cifar_resnet20, l1 only, one round: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.model, args.rounds, args.repeats = "cifar_resnet20", 1, 1
    torch.manual_seed(0)
    base = create_model(args.model)
    with torch.no_grad():  # BatchNorm statistics of real-looking activations (outputs of a sane magnitude)
        base.train()
        for _ in range(5):
            base(torch.randn(64, *SIZE))
    base.eval()
    targets = [Target("unpruned", base, SIZE, None, {})]
    cost = {}
    variants = [(m, "uniform") for m in ("l1", "fpgm", "sfp")] + [("l1", "global")]
    for method, allocation in variants[:1] if args.quick else variants:
        for round_to in (8,) if args.quick else (8, None):
            name = f"{method}{' global' if allocation == 'global' else ''} round-to {round_to or 1}"
            model, t_search, t_prune = prune(base, method, round_to, allocation)
            cost[name] = {"search_s": round(t_search, 2), "prune_s": round(t_prune, 2)}
            targets.append(Target(name, model, SIZE, None, {}))
    profiles = profile_models(
        targets,
        onnx=True,
        batches=(1, 64),
        threads=args.threads,
        rounds=args.rounds,
        repeats=args.repeats,
        runtimes=("onnxruntime",),
    )
    full = profiles[0]
    print(
        f"{args.model}, 3x32x32, target 50% of {full['macs_conv_linear']:,} conv+linear MACs; "
        f"ONNX Runtime CPU, {full['settings']['threads']} threads, median (p10-p90) ms of {args.rounds} rounds"
    )
    print(f"{'model':<24}{'search s':>9}{'prune s':>8}{'MACs':>13}{'params':>10}{'batch 1 ms':>22}{'batch 64 ms':>24}")
    rows = {}
    for prof in profiles:
        lat = prof["latency_ms"]["onnxruntime"]
        c = cost.get(prof["model"], {"search_s": 0.0, "prune_s": 0.0})
        b1, b64 = lat["1"], lat["64"]
        print(
            f"{prof['model']:<24}{c['search_s']:>9.2f}{c['prune_s']:>8.2f}{prof['macs_conv_linear']:>13,}"
            f"{prof['params']:>10,}{'{median:.3f} ({p10:.3f}-{p90:.3f})'.format(**b1):>22}"
            f"{'{median:.2f} ({p10:.2f}-{p90:.2f})'.format(**b64):>24}"
        )
        rows[prof["model"]] = {
            **c,
            "macs_conv_linear": prof["macs_conv_linear"],
            "params": prof["params"],
            "ort_ms_b1": b1,
            "ort_ms_b64": b64,
        }
    for name, r in rows.items():
        if name != "unpruned":
            r["speedup_b1"] = round(rows["unpruned"]["ort_ms_b1"]["median"] / r["ort_ms_b1"]["median"], 3)
            r["speedup_b64"] = round(rows["unpruned"]["ort_ms_b64"]["median"] / r["ort_ms_b64"]["median"], 3)
    print(
        "speed-up over unpruned (batch 1 / 64): "
        + ", ".join(f"{n} {r['speedup_b1']:.2f}x/{r['speedup_b64']:.2f}x" for n, r in rows.items() if n != "unpruned")
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
