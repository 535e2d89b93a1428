"""One GPU check: what compact claims about CUDA, run on the GPU in a few minutes, with a table at the end.

On a machine with CUDA:

1. the exactness tests on the GPU (``COMPACT_TEST_DEVICE=cuda``): every method against the hand-written
   float64 reference, the live-parameter mechanism, MW-BP under autocast against its bf16 and fp16
   references, Joint/standard against plain PyTorch AMP;
2. one epoch of the training engine on Fashion-MNIST (``--images`` training images) for every method at
   every precision the GPU runs (fp32, bf16 where supported, fp16 with loss scaling): images/s, peak memory,
   MW-BP / standard time per image;
3. ``torchrun --nproc_per_node 1`` of a smoke MW-BP run (the NCCL backend);
4. the GPU-resident data path: an in-memory loader moved to the GPU gives the batches (order, crops, flips)
   of the same loader on the CPU.

It exits non-zero if any part fails. Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--images 10000]
    python benchmarks/gpu_check.py --quick     # without CUDA (the test suite): reports that there is none

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_methods_exact.py", "tests/test_live.py", "tests/test_precision.py"]


def exactness() -> dict:
    env = {**os.environ, "COMPACT_TEST_DEVICE": "cuda"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    last = (out.stdout.strip().splitlines() or ["no output"])[-1]
    return {"ok": out.returncode == 0, "summary": last, "seconds": round(time.perf_counter() - t, 1)}


def engine_epochs(images: int) -> dict:
    from compact.data import DataOptions, load_data
    from compact.engine import train_epoch
    from compact.engine.trainer import resolve_precision
    from compact.exits import attach_exits
    from compact.methods import METHODS, create_method, list_methods
    from compact.models import create_model

    device = torch.device("cuda")
    data = load_data(DataOptions(subset=images, test_subset=256))
    loader, _ = data.loaders(128, seed=0)
    precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    rows = {}
    for precision in precisions:
        for name in [m for m in list_methods() if not METHODS.get(m).needs_trained_trunk]:
            torch.manual_seed(0)
            net = attach_exits(create_model("cifar_resnet56", num_classes=10, in_chans=1), 5,
                               input_size=data.input_size).to(device)  # fmt: skip
            method = create_method(name, net)
            method.set_precision(*resolve_precision(precision, device))
            train_epoch(method, loader, device, epoch=0)  # warm-up (cuDNN autotuning, allocator)
            torch.cuda.reset_peak_memory_stats()
            rec = train_epoch(method, loader, device, epoch=1)
            rows[f"{name} {precision}"] = {
                "images_per_s": round(rec["train_images_per_s"], 1),
                "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "skipped_updates": method.skipped_updates,
                "final_train_loss": rec["train_loss"][-1],
            }
    for precision in precisions:
        std, mw = rows[f"standard {precision}"], rows[f"mwbp {precision}"]
        rows[f"mwbp/standard {precision}"] = round(std["images_per_s"] / mw["images_per_s"], 3)
    return rows


def loader_check() -> dict:
    from compact.data import DataOptions, load_data

    data = load_data(DataOptions(subset=512, test_subset=64))
    cpu, _ = data.loaders(128, seed=3)
    gpu, _ = data.loaders(128, seed=3)
    gpu.to("cuda")
    worst = 0.0
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        worst = max(worst, (xc - xg.cpu()).abs().max().item())
        if not torch.equal(yc, yg.cpu()):
            return {"ok": False, "note": "labels differ"}
    return {"ok": worst < 1e-6, "max_abs_difference": worst}


def torchrun_smoke() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "compact",
               "train-mwbp", "--model", "cifar_resnet20", "--exits", "3", "--smoke", "--device", "cuda", "--out",
               f"{tmp}/run"]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        ok = out.returncode == 0 and (Path(tmp) / "run" / "model.safetensors").is_file()
        tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
        return {"ok": ok, "returncode": out.returncode, "stderr_tail": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000, help="training images per engine epoch")
    ap.add_argument("--quick", action="store_true", help="for the test suite: only checks for CUDA")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this on a machine with a GPU)")
        print(json.dumps({"cuda": False}))
        return 0
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    figures: dict = {"cuda": True, "device": name, "torch": torch.__version__}
    figures["exactness"] = exactness()
    print(f"exactness tests on CUDA: {'ok' if figures['exactness']['ok'] else 'FAILED'} "
          f"({figures['exactness']['summary']}, {figures['exactness']['seconds']} s)")  # fmt: skip
    if not args.quick:
        figures["engine"] = engine_epochs(args.images)
        print(f"\n{'method precision':<30}{'img/s':>10}{'peak MB':>10}{'skipped':>9}")
        for key, row in figures["engine"].items():
            if isinstance(row, dict):
                print(f"{key:<30}{row['images_per_s']:>10.0f}{row['peak_mem_mb']:>10.0f}{row['skipped_updates']:>9}")
        for key, ratio in figures["engine"].items():
            if not isinstance(ratio, dict):
                print(f"{key}: {ratio:.2f}x")
    figures["loader"] = loader_check()
    print(f"in-memory data on the GPU gives the CPU's batches: {'ok' if figures['loader']['ok'] else 'FAILED'}")
    figures["torchrun"] = torchrun_smoke()
    print(f"torchrun --nproc_per_node 1 (NCCL): {'ok' if figures['torchrun']['ok'] else 'FAILED'}")
    print(json.dumps(figures))
    return 0 if all(figures[k]["ok"] for k in ("exactness", "loader", "torchrun")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
