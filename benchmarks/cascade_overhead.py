"""The cost of cutting a network into an early-exit cascade: the cascade run to the end (threshold 1, every
image through every segment and head, decisions included) against the single full-network ONNX graph.

MwResNet-56-5 shape (cifar_resnet56, 5 outputs, 3x32x32) by default. Weights are a fresh initialisation
with BatchNorm statistics of random inputs: latency does not depend on training. ONNX Runtime, CPU
provider, ORT_ENABLE_ALL; batch 1 (images one by one) and batch 64, over the same images; the candidates
are timed interleaved (compact.profile's harness), median and p10-p90 over rounds, in ms per image.
Also timed: the segments alone without the exit decisions (what the cut itself costs), and the full graph
with ONNX Runtime's default session settings. A cascade's sessions do not spin-wait between runs (spinning
threads of several sessions take the cores from each other), and its full-graph reference uses the same
settings; a single session with spinning threads is faster at batch 1, which the "ORT defaults" row shows.
The "1 thread" row is the cascade with one ONNX Runtime thread: no pool to wake for every layer, which on a
small CPU makes it the fastest way to run images one at a time (`compact cascade --threads 1`).

    python benchmarks/cascade_overhead.py [--rounds 15] [--images 256] [--threads 2]
    python benchmarks/cascade_overhead.py --quick     # cifar_resnet20, 3 outputs, one round (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from compact import attach_exits, create_model
from compact.cascade import Cascade, export_cascade
from compact.modelfile import ModelInfo
from compact.profile.latency import time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--outputs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="cifar_resnet20, 3 outputs, one round: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.model, args.outputs, args.rounds, args.images = "cifar_resnet20", 3, 1, 16
    size = [3, 32, 32]
    torch.manual_seed(0)
    net = attach_exits(create_model(args.model, num_classes=10), args.outputs, input_size=size)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.forward_exits(torch.randn(16, *size))
    net.eval()
    info = ModelInfo(arch=args.model, num_classes=10, in_chans=3, input_size=size, kind="multi-exit",
                     exit_nodes=list(net.exit_nodes), head=net.head_type)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        export_cascade(net, info, Path(tmp) / "c")
        cascade = Cascade(Path(tmp) / "c", threads=args.threads)
        one_thread = Cascade(Path(tmp) / "c", threads=1)
        x = np.random.default_rng(0).standard_normal((args.images, *size)).astype(np.float32)
        last = cascade.num_exits - 1
        seg = cascade.manifest["segments"]

        def segments_only(b: int) -> None:
            for start in range(0, len(x), b):
                carry = [x[start : start + b]]
                for i, s in enumerate(seg):
                    carry = cascade.sessions[i].run(s["outputs"], dict(zip(s["inputs"], carry, strict=True)))[:-1]

        from compact.profile.onnx_export import ort_session

        default = ort_session(Path(tmp) / "c" / cascade.manifest["static"][last]["file"], args.threads)
        runners = {}
        for b in (1, 64):
            runners[f"full graph, ORT defaults|{b}"] = lambda b=b: [
                default.run(["logits"], {"input": x[s : s + b]}) for s in range(0, len(x), b)
            ]
            runners[f"full graph|{b}"] = lambda b=b: [
                cascade.run_static(last, x[s : s + b]) for s in range(0, len(x), b)
            ]
            runners[f"cascade t=1|{b}"] = lambda b=b: cascade.predict(x, 1.0, batch_size=b)
            runners[f"cascade t=1, 1 thread|{b}"] = lambda b=b: one_thread.predict(x, 1.0, batch_size=b)
            runners[f"segments only|{b}"] = lambda b=b: segments_only(b)
        timings = time_interleaved(runners, rounds=args.rounds, repeats=1, warmup=1)
    figures: dict[str, dict] = {}
    for key, t in timings.items():
        name, b = key.rsplit("|", 1)
        n = len(x)
        figures.setdefault(name, {})[b] = {
            "median": round(t.median_ms / n, 5),
            "p10": round(t.p10_ms / n, 5),
            "p90": round(t.p90_ms / n, 5),
        }
    print(f"{args.model}, {args.outputs} outputs, {size}, {len(x)} images, {args.rounds} interleaved rounds, "
          f"ONNX Runtime CPU, threads {args.threads or 'default'}; ms per image, median (p10-p90)")  # fmt: skip
    print(f"{'':26}{'batch 1':>28}{'batch 64':>28}")
    for name, by_b in figures.items():
        cells = "".join(f"{v['median']:>12.4f} ({v['p10']:.4f}-{v['p90']:.4f})" for v in by_b.values())
        print(f"{name:26}{cells}")
    spin = {
        b: round(figures["cascade t=1"][b]["median"] / figures["full graph, ORT defaults"][b]["median"] - 1, 4)
        for b in ("1", "64")
    }
    overhead = {
        b: round(figures["cascade t=1"][b]["median"] / figures["full graph"][b]["median"] - 1, 4) for b in ("1", "64")
    }
    cut = {
        b: round(figures["segments only"][b]["median"] / figures["full graph"][b]["median"] - 1, 4) for b in ("1", "64")
    }
    reference = figures["full graph, ORT defaults"]
    single = {
        b: round(figures["cascade t=1, 1 thread"][b]["median"] / reference[b]["median"] - 1, 4) for b in ("1", "64")
    }
    macs = cascade.exit_macs("total")[-1] / cascade.static_macs("total")[-1] - 1
    print(f"cascade run to the end vs full graph: {100 * overhead['1']:+.1f}% at batch 1, "
          f"{100 * overhead['64']:+.1f}% at batch 64 (segments alone: {100 * cut['1']:+.1f}% / "
          f"{100 * cut['64']:+.1f}%); MACs {100 * macs:+.2f}% (the heads); against the full graph with ORT's "
          f"default (spinning) session: {100 * spin['1']:+.1f}% / {100 * spin['64']:+.1f}%; the cascade with 1 "
          f"thread against that session: {100 * single['1']:+.1f}% / {100 * single['64']:+.1f}%")  # fmt: skip
    print(json.dumps({"ms_per_image": figures, "overhead": overhead, "cut_overhead": cut, "macs_overhead": macs,
                      "overhead_vs_default_session": spin, "one_thread_vs_default_session": single}))  # fmt: skip


if __name__ == "__main__":
    main()
