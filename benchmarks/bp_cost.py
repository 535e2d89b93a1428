"""Cost of the seven backpropagation methods on cifar_resnet56 with 5 losses (batch 128).

All methods are timed interleaved in one process (warm-up rounds, then timed rounds; the order rotates each
round), and the median ms/iteration is reported with its ratio to standard BP. The analytic floor of MW-BP
is ``forward + sum_i backward(layers 0..L_i)``: the measured shared-forward time plus, for every loss, the
share of the measured standard backward spent below exit ``i`` (timed with gradient hooks at the exits).

compact's glibc malloc tuning (compact/_malloc.py) is applied to every method unless --no-malloc-tuning.

Counted MACs of one iteration (the paper's Table 9, which counts forward MAdds of MW-BP's shared forward
against naive MW-BP's separate forwards): from fvcore's forward counts of each output's sub-model ``F_i``
(layers 0..L_i and head i; ``F_all`` the shared forward of every output), with the usual estimate that a
backward pass costs twice the forward of the layers it reaches (gradients of inputs and of weights):
standard ``3 F_K``; Joint ``3 F_all``; Relay ``F_all + sum_i 2 (segments i-c..i + head i)``; MW-BP and
reverse ``F_all + sum_i 2 F_i``; naive and naive-reverse ``sum_i 3 F_i``. Printed next to the measured times.

Peak memory (after the timing, one method at a time): on CUDA, ``torch.cuda.max_memory_allocated`` during
one iteration; on CPU, the peak resident set (VmHWM) of a fresh process during its first iteration, minus
its resident set before it (default malloc settings, so nothing is retained from other methods).

    python benchmarks/bp_cost.py [--rounds 7] [--warmup 2] [--batch 128] [--device cpu]
    python benchmarks/bp_cost.py --quick     # seconds: cifar_resnet20, 3 losses, batch 8, one round (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import torch

from compact._malloc import tune_cpu_allocator
from compact.exits import attach_exits
from compact.methods import METHODS, create_method, list_methods
from compact.models import create_model

#: every method that trains a network from scratch (probe needs a trained trunk), in the paper's order
PAPER_ORDER = ["standard", "joint", "relay", "mwbp", "reverse-mwbp", "naive-mwbp", "naive-reverse-mwbp"]
ORDER = [m for m in PAPER_ORDER if m in list_methods()] + sorted(
    m for m in list_methods() if m not in PAPER_ORDER and not METHODS.get(m).needs_trained_trunk
)
MODEL = ["cifar_resnet56"]  # set by --model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(method: str, device: str, num_outputs: int):
    torch.manual_seed(0)
    net = attach_exits(create_model(MODEL[0]), num_outputs).to(device).train()
    return net, create_method(method, net)


def counted_macs(num_outputs: int, batch: int, c: int = 1) -> dict:
    """MACs of one training iteration per method, counted (see the module docstring), for ``batch`` images."""
    from compact.exits.standalone import extract_exit
    from compact.profile import count

    torch.manual_seed(0)
    net = attach_exits(create_model(MODEL[0]), num_outputs).eval()
    size = (3, 32, 32)
    f = [count(extract_exit(net, i), size).macs for i in range(num_outputs)]  # F_i: trunk 0..L_i + head i
    heads = [count(h, tuple(net.features(torch.zeros(1, *size))[n].shape[1:])).macs
             for h, n in zip(net.heads, net.exit_nodes, strict=True)]  # fmt: skip
    trunk = [f[i] - (heads[i] if i < len(heads) else 0) for i in range(num_outputs)]  # layers 0..L_i alone
    segment = [trunk[0]] + [trunk[i] - trunk[i - 1] for i in range(1, num_outputs)]
    shared = trunk[-1] + sum(heads)
    head = heads + [0]
    relay = shared + sum(2 * (sum(segment[max(0, i - c) : i + 1]) + head[i]) for i in range(num_outputs))
    per_image = {
        "standard": 3 * f[-1],
        "joint": 3 * shared,
        "relay": relay,
        "mwbp": shared + sum(2 * fi for fi in f),
        "reverse-mwbp": shared + sum(2 * fi for fi in f),
        "naive-mwbp": sum(3 * fi for fi in f),
        "naive-reverse-mwbp": sum(3 * fi for fi in f),
    }
    return {
        "forward_shared": shared * batch,
        "forward_naive": sum(f) * batch,
        "iteration": {m: v * batch for m, v in per_image.items()},
    }


def floor_probe(net, x, y, device):
    """Shared-forward time, standard-backward time and the time backward needs to reach each exit."""
    crit = torch.nn.CrossEntropyLoss()
    reached = {}
    sync(device)
    t0 = time.perf_counter()
    feats = net._extractor("all")(x)
    outs = [h(feats[n]) for h, n in zip(net.heads, net.exit_nodes, strict=True)] + [feats[net.final_node]]
    sync(device)
    t_fwd = time.perf_counter() - t0
    loss = crit(outs[-1], y)
    start = [0.0]
    for i, name in enumerate(net.exit_nodes):
        feats[name].register_hook(lambda g, i=i: reached.__setitem__(i, time.perf_counter() - start[0]))
    net.zero_grad(set_to_none=True)
    sync(device)
    start[0] = time.perf_counter()
    loss.backward()
    sync(device)
    t_bwd = time.perf_counter() - start[0]
    return t_fwd, t_bwd, [reached[i] for i in range(len(net.exit_nodes))]


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_peak(method: str, batch: int, num_outputs: int, q) -> None:
    torch.set_num_threads(2)
    _, m = build(method, "cpu", num_outputs)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    base = _proc_status_kb("VmRSS")
    m.step(x, y)
    q.put((_proc_status_kb("VmHWM") - base) / 1024.0)


def peak_memory_mb(method: str, batch: int, device: str, num_outputs: int) -> float:
    """Extra memory one iteration needs (CUDA: allocator peak; CPU: peak resident set of a fresh process)."""
    if device.startswith("cuda"):
        _, m = build(method, device, num_outputs)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        m.step(x, y)  # first step allocates optimizer state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m.step(x, y)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("spawn")  # a fresh process: default malloc, nothing retained from other methods
    q = ctx.Queue()
    p = ctx.Process(target=_child_peak, args=(method, batch, num_outputs, q))
    p.start()
    value = q.get()
    p.join()
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (>= 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--outputs", type=int, default=5, help="number of losses, final included")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default malloc thresholds")
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that the benchmark runs")
    args = ap.parse_args()
    if args.quick:
        args.model, args.outputs, args.batch, args.rounds, args.warmup = "cifar_resnet20", 3, 8, 1, 0
        args.no_memory = True
    MODEL[0] = args.model
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()
    dev = args.device
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    methods = {name: build(name, dev, args.outputs)[1] for name in ORDER}
    probe_net, _ = build("standard", dev, args.outputs)
    times = {name: [] for name in ORDER}
    probes = []
    for r in range(args.warmup + args.rounds):
        order = ORDER[r % len(ORDER) :] + ORDER[: r % len(ORDER)]
        for name in order:
            sync(dev)
            t0 = time.perf_counter()
            methods[name].step(x, y)
            sync(dev)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        p = floor_probe(probe_net, x, y, dev)
        if r >= args.warmup:
            probes.append(p)
        print(f"round {r + 1}/{args.warmup + args.rounds}{' (warm-up)' if r < args.warmup else ''} done", flush=True)

    ms = {n: 1000 * statistics.median(t) for n, t in times.items()}
    spread = {n: (1000 * min(t), 1000 * max(t)) for n, t in times.items()}
    t_fwd = statistics.median(p[0] for p in probes)
    t_bwd = statistics.median(p[1] for p in probes)
    reach = [statistics.median(p[2][i] for p in probes) for i in range(args.outputs - 1)]
    floor_ms = 1000 * (t_fwd + sum(t_bwd - r for r in reach) + t_bwd)
    ratio = {n: ms[n] / ms["standard"] for n in ORDER}
    mem = {} if args.no_memory else {n: peak_memory_mb(n, args.batch, dev, args.outputs) for n in ORDER}
    macs = counted_macs(args.outputs, args.batch)
    it = macs["iteration"]

    print(
        f"\n{args.model}, {args.outputs} losses, batch {args.batch}, device {dev}, "
        f"threads {torch.get_num_threads()}, malloc tuning {'on' if tuned else 'off'}, "
        f"{args.rounds} timed rounds (median, min-max)"
    )
    print(f"{'method':<20}{'ms/iter':>10}{'min-max':>18}{'x standard':>12}{'peak MB':>10}{'GMACs/iter':>12}"
          f"{'x standard':>12}")  # fmt: skip
    for n in ORDER:
        lo, hi = spread[n]
        m = f"{mem[n]:.0f}" if n in mem else "-"
        counted = f"{it[n] / 1e9:>12.2f}{it[n] / it['standard']:>12.2f}" if n in it else f"{'-':>12}{'-':>12}"
        print(f"{n:<20}{ms[n]:>10.1f}{f'{lo:.0f}-{hi:.0f}':>18}{ratio[n]:>12.2f}{m:>10}{counted}")
    print(
        f"shared forward {1000 * t_fwd:.1f} ms, standard backward {1000 * t_bwd:.1f} ms, "
        f"backward reaches exits after {[round(1000 * r, 1) for r in reach]} ms"
    )
    print(
        f"MW-BP floor {floor_ms:.1f} ms ({floor_ms / ms['standard']:.2f}x standard); "
        f"MW-BP / floor = {ms['mwbp'] / floor_ms:.3f}; paper's estimate (K/2+1) = {(args.outputs - 1) / 2 + 1:.1f}x"
    )
    fwd_ratio = macs["forward_naive"] / macs["forward_shared"]
    naive = {n: round(ms[n] / ms[n.replace("naive-", "")], 3) for n in ORDER if n.startswith("naive-")}
    print(
        f"Table 9 (forward MACs, batch {args.batch}): shared {macs['forward_shared'] / 1e9:.2f}G, naive (a forward "
        f"per loss) {macs['forward_naive'] / 1e9:.2f}G = {fwd_ratio:.2f}x (paper, MwResNet-56-5 on CIFAR-10: "
        f"415.88M vs 125.75M MAdds = 3.31x, 51.78 vs 17.10 ms = 3.03x); a training iteration counts "
        f"{it['naive-mwbp'] / it['mwbp']:.2f}x and measures {ms['naive-mwbp'] / ms['mwbp']:.2f}x (naive / MW-BP)"
    )
    print(
        json.dumps(
            {
                "ms_per_iter": {n: round(ms[n], 2) for n in ORDER},
                "ratio_to_standard": {n: round(ratio[n], 3) for n in ORDER},
                "mwbp_floor_ratio": round(ms["mwbp"] / floor_ms, 3),
                "peak_mem_mb": {n: round(v, 1) for n, v in mem.items()},
                "counted_macs_per_iter": it,
                "counted_ratio_to_standard": {n: round(v / it["standard"], 3) for n, v in it.items()},
                "forward_macs": {"shared": macs["forward_shared"], "naive": macs["forward_naive"]},
                "naive_over_mwbp_measured": naive,
            }
        )
    )


if __name__ == "__main__":
    main()
