"""End-to-end check of the face path on the data this machine has: NOT a face benchmark.

No face data set can be fetched here, so Fashion-MNIST stands in: its 10 classes are the "identities",
MobileFaceNet (32x32 inputs, 1 channel) with 3 outputs and embedding exit heads is trained by MW-BP with
ArcFace on every output, and verification pairs (half same class, half different, seeded) are drawn from the
*test* split and written as a packed validation file, which the engine verifies at every evaluation
(10-fold accuracy of every output, image + flip embeddings). Chance is 50%. What it shows: the whole path
(margin exits, MW-BP, packed pairs, per-output verification) runs and learns embeddings that verify above
chance; with 10 identities seen in training it says nothing about unseen faces.

    python benchmarks/face_verification.py [--images 10000] [--epochs 5] [--pairs 3000]
    python benchmarks/face_verification.py --quick     # 256 images, 1 epoch, 200 pairs (tests)

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np


def packed_pairs(n_pairs: int, path: Path, seed: int = 0) -> None:
    """Pairs of Fashion-MNIST test images (half of one class, half of two classes) as a packed file."""
    from PIL import Image

    from compact.data.fashion_mnist import load_fashion_mnist

    _, test = load_fashion_mnist(None, False)
    rng = np.random.default_rng(seed)
    labels = test.labels.numpy()
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    blobs, same = [], []
    for i in range(n_pairs):
        a = int(rng.integers(len(labels)))
        if i % 2 == 0:
            b = int(rng.choice(by_class[labels[a]]))
        else:
            b = int(rng.choice(np.flatnonzero(labels != labels[a])))
        for k in (a, b):
            buf = io.BytesIO()
            Image.fromarray(test.images[k, 0].numpy()).convert("RGB").save(buf, format="PNG")
            blobs.append(buf.getvalue())
        same.append(bool(labels[a] == labels[b]))
    path.write_bytes(pickle.dumps((blobs, same)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--quick", action="store_true", help="256 images, 1 epoch, 200 pairs: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs, args.pairs = 256, 1, 200

    from compact.engine import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "fmnist-pairs.bin"
        packed_pairs(args.pairs, pairs)
        cfg = TrainConfig.from_dict(
            {
                "model": "mobilefacenet",
                "model_kwargs": {"input_size": 32},
                "image_size": 32,
                "method": "mwbp",
                "exits": 3,
                "head": "embedding",
                "loss": "arcface",
                "loss_scale": 16.0,
                "loss_margin": 0.3,
                "val_pairs": str(pairs),
                "subset": args.images,
                "test_subset": 1000,
                "epochs": args.epochs,
                "batch_size": 128,
                "lr": 0.1,
                "weight_decay": 4e-5,
            },
            "face check",
        )
        t = time.perf_counter()
        train(cfg, Path(tmp) / "run", progress=False, log=print)
        seconds = time.perf_counter() - t
        history = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    print(
        f"\nMW-BP MobileFaceNet-3 (ArcFace s=16, m=0.3) on {args.images} Fashion-MNIST images, {args.epochs} "
        f"epoch(s), {seconds:.0f} s; verification of {args.pairs} test pairs (chance 50%) per output, last epoch: "
        + " / ".join(f"{v:.2f}%" for v in last["verification_pct"])
    )
    print(
        json.dumps(
            {
                "images": args.images,
                "epochs": args.epochs,
                "pairs": args.pairs,
                "seconds": round(seconds, 1),
                "verification_pct": last["verification_pct"],
                "test_error_pct": last["test_error_pct"],
                "per_epoch": [r["verification_pct"] for r in history],
            }
        )
    )


if __name__ == "__main__":
    main()
