"""Training throughput of standard BP and MW-BP on Fashion-MNIST with the training engine.

Both methods train the same network (cifar_resnet20, 3 outputs; standard BP ignores the heads) through
``compact.engine.train_epoch`` on the same in-memory loader (uint8 tensors, batched crop and flip), so the
figures include everything a real epoch does except evaluation, which is timed separately. Rounds of
``--batches`` batches alternate between the methods (the order flips every round) after one warm-up round
each; the median over rounds is reported.

Reported per method: training images/s, the share of step time spent waiting for the loader, and the
estimated time of one full epoch (60,000 training images plus the evaluation of all outputs on the 10,000
test images, scaled from the measured evaluation of ``--eval-images``).

Then every precision and memory format this machine can run (fp32 and bf16 autocast everywhere, fp16 with
loss scaling on CUDA; contiguous and channels-last), for both methods, in the same alternating rounds:
images/s and the ratio to fp32 contiguous.

    python benchmarks/train_throughput.py [--batches 20] [--rounds 5] [--batch 128] [--device cpu]
    python benchmarks/train_throughput.py --quick     # batch 16, 2 batches, one round (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from compact.data import DataOptions, load_data
from compact.engine import evaluate, train_epoch
from compact.engine.callbacks import RunContext
from compact.engine.trainer import resolve_device, resolve_precision, use_channels_last
from compact.exits import attach_exits
from compact.methods import create_method
from compact.models import create_model

METHODS = ("standard", "mwbp")
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--exits", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=20, help="batches per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="batch 16, 2 batches, one round: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.batches, args.rounds, args.eval_images = 16, 2, 1, 32
    device = resolve_device(args.device)
    if device.type == "cpu":
        from compact._malloc import tune_cpu_allocator

        tune_cpu_allocator()

    data = load_data(DataOptions(subset=args.batch * args.batches, test_subset=args.eval_images))
    train_loader, test_loader = data.loaders(args.batch, seed=0, eval_batch_size=512)
    methods = {}
    for name in METHODS:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, in_chans=1)
        net = attach_exits(model, args.exits, input_size=data.input_size).to(device)
        methods[name] = create_method(name, net)

    samples = {m: [] for m in METHODS}
    for r in range(args.rounds + 1):
        for name in METHODS if r % 2 == 0 else METHODS[::-1]:
            rec = train_epoch(methods[name], train_loader, device, epoch=r)
            if r > 0:  # round 0 is the warm-up
                samples[name].append(rec)

    eval_s = {}
    for name in METHODS:
        t = time.perf_counter()
        evaluate(methods[name].net, test_loader, device)
        eval_s[name] = (time.perf_counter() - t) * TEST_IMAGES / args.eval_images

    print(
        f"{args.model}, {args.exits} outputs, Fashion-MNIST 28x28, batch {args.batch}, device {device}, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} rounds of {args.batches} batches"
    )
    print(f"{'method':<10}{'img/s':>8}{'p10-p90 img/s':>16}{'data wait':>11}{'epoch (est.)':>14}")
    figures = {}
    for name in METHODS:
        ips = sorted(s["train_images_per_s"] for s in samples[name])
        wait = statistics.median(s["data_wait_share"] for s in samples[name])
        median = statistics.median(ips)
        epoch = TRAIN_IMAGES / median + eval_s[name]
        p10, p90 = ips[int(0.1 * (len(ips) - 1))], ips[int(round(0.9 * (len(ips) - 1)))]
        figures[name] = {
            "images_per_s": round(median, 1),
            "p10": round(p10, 1),
            "p90": round(p90, 1),
            "data_wait_share": round(wait, 4),
            "eval_s": round(eval_s[name], 1),
            "epoch_estimate_s": round(epoch, 1),
        }
        print(f"{name:<10}{median:>8.0f}{f'{p10:.0f}-{p90:.0f}':>16}{100 * wait:>10.1f}%{epoch:>13.0f}s")
    ratio = figures["standard"]["images_per_s"] / figures["mwbp"]["images_per_s"]
    print(f"MW-BP time per image / standard BP: {ratio:.2f}x")
    figures["variants"] = variants(args, data, train_loader, device)
    figures.update(
        model=args.model, exits=args.exits, batch=args.batch, device=str(device), mwbp_over_standard=round(ratio, 3)
    )
    print(json.dumps(figures))


def variants(args, data, loader, device) -> dict:
    """images/s of each method under every precision and memory format available here."""
    from pathlib import Path
    from types import SimpleNamespace

    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    runs, contexts = {}, {}
    for precision in precisions:
        for fmt in ("contiguous", "channels_last"):
            for name in METHODS:
                torch.manual_seed(0)
                net = attach_exits(create_model(args.model, num_classes=10, in_chans=1), args.exits,
                                   input_size=data.input_size).to(device)  # fmt: skip
                if fmt == "channels_last":
                    use_channels_last(net)
                method = create_method(name, net)
                method.set_precision(*resolve_precision(precision, device))
                key = f"{name} {precision} {fmt}"
                runs[key] = method
                cfg = SimpleNamespace(channels_last=fmt == "channels_last", epochs=1)
                contexts[key] = RunContext(net, method, cfg, Path("."), device)
    samples = {k: [] for k in runs}
    keys = list(runs)
    for r in range(args.rounds + 1):
        for key in keys if r % 2 == 0 else keys[::-1]:
            rec = train_epoch(runs[key], loader, device, epoch=r, ctx=contexts[key])
            if r > 0:
                samples[key].append(rec["train_images_per_s"])
    out = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    print(f"\n{'variant':<34}{'img/s':>8}{'x fp32 contiguous':>19}")
    for key, ips in out.items():
        base = out[f"{key.split()[0]} fp32 contiguous"]
        print(f"{key:<34}{ips:>8.0f}{ips / base:>19.2f}")
    return out


if __name__ == "__main__":
    main()
