"""Is one training process with N threads or N one-thread processes side by side the faster way to use a CPU?

``compact run`` lets several processes share one output folder (each job locked by one of them), so a long
recipe can run as N shares at once, each with ``OMP_NUM_THREADS=1``. This measures whether that pays here:
training steps (forward, backward, SGD update) of one network on synthetic batches, in

- **one process** with ``torch.set_num_threads(N)``;
- **N processes** with one thread each, started together.

Every process builds the network, warms up, waits for a common start time, then steps for ``--seconds`` and
counts its images; the figure is the images per second of all processes together. Rounds alternate the two
layouts (the order flips every round) and the median over rounds is reported, with the ratio.

    python benchmarks/thread_split.py [--model cifar_resnet20] [--batch 128] [--seconds 20] [--rounds 3]
    python benchmarks/thread_split.py --quick     # batch 8, 1 s, one round (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import sys, time, torch
from compact.models import create_model
model, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start, seconds = float(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = create_model(model, num_classes=10, in_chans=1)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
for _ in range(3):
    step()
late = max(0.0, time.time() - start)
time.sleep(max(0.0, start - time.time()))
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step()
    steps += 1
print(steps * batch / (time.perf_counter() - t0), late)
"""


def layout(model: str, batch: int, processes: int, threads: int, seconds: float, slack: float) -> float:
    """Images per second of ``processes`` processes with ``threads`` threads each, all stepping together."""
    start = time.time() + slack
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, model, str(batch), str(threads), str(start), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    rates, late = [], []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"worker failed (exit {p.returncode})")
        rate, behind = out.split()[-2:]
        rates.append(float(rate))
        late.append(float(behind))
    if max(late) > 0:
        print(f"note: a worker was ready {max(late):.1f} s after the common start (raise --slack)", file=sys.stderr)
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="N: the cores to fill")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed stepping per process and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slack", type=float, default=15.0, help="seconds for the processes to start and warm up")
    ap.add_argument("--quick", action="store_true", help="batch 8, 1 s, one round: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seconds, args.rounds, args.slack = 8, 1.0, 1, 5.0
    n = max(1, args.threads)
    layouts = {f"1 process x {n} threads": (1, n), f"{n} processes x 1 thread": (n, 1)}
    samples: dict[str, list[float]] = {k: [] for k in layouts}
    for r in range(args.rounds):
        for name in list(layouts) if r % 2 == 0 else list(layouts)[::-1]:
            samples[name].append(layout(args.model, args.batch, *layouts[name], args.seconds, args.slack))
    print(
        f"{args.model}, training steps on synthetic 1x28x28 batches of {args.batch}, {n} cores; "
        f"median of {args.rounds} rounds of {args.seconds:g} s"
    )
    figures = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    for name, ips in figures.items():
        print(f"{name:<28}{ips:>9.0f} img/s  (rounds: {', '.join(f'{v:.0f}' for v in samples[name])})")
    one, split = figures.values()
    ratio = split / one
    print(f"{n} one-thread processes / one {n}-thread process: {ratio:.2f}x the images per second")
    print(json.dumps({"images_per_s": figures, "split_over_threads": round(ratio, 3), "model": args.model,
                      "batch": args.batch, "cores": n}))  # fmt: skip


if __name__ == "__main__":
    main()
