"""Shared test helpers."""

from __future__ import annotations

import os

import pytest
import torch

from compact.data import fashion_mnist as fm

#: where the exactness tests run: the CPU, or a GPU when benchmarks/gpu_check.py sets COMPACT_TEST_DEVICE=cuda
DEVICE = torch.device(os.environ.get("COMPACT_TEST_DEVICE", "cpu"))

needs_fmnist = pytest.mark.skipif(
    fm.find_fashion_mnist() is None, reason=f"Fashion-MNIST not installed ({fm.INSTALL_HINT})"
)


def fake_cifar10_py(root, n=20, seed=0):
    """A CIFAR-10 folder in torchvision's layout with ``n`` random images per batch; returns the batches."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch))
    names = {b"label_names": [c.encode() for c in "abcdefghij"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(names))
    return batches
