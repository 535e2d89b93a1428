"""Fashion-MNIST from Debian's package, the IDX reader, and batched augmentation."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch
from _helpers import needs_fmnist

from compact.data import ArrayDataset, InMemoryLoader, load_fashion_mnist, random_crop_flip, read_idx
from compact.data import fashion_mnist as fm
from compact.errors import CompactError



@needs_fmnist
def test_fashion_mnist_from_debian_package():
    train, test = load_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # published: balanced classes
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    sub = train.subset(300, seed=1)
    assert len(sub) == 300 and torch.equal(sub.labels, train.subset(300, seed=1).labels)


def _write_idx(path, array: torch.Tensor, truncate: int = 0):
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    data = header + array.numpy().tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def test_idx_roundtrip_and_corrupt_files(tmp_path):
    x = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    _write_idx(tmp_path / "ok.gz", x)
    assert torch.equal(read_idx(tmp_path / "ok.gz"), x)
    _write_idx(tmp_path / "short.gz", x, truncate=7)
    with pytest.raises(CompactError, match="short.gz is truncated or corrupt"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CompactError, match="junk.gz"):
        read_idx(tmp_path / "junk.gz")


def test_missing_dataset_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(CompactError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_random_crop_matches_per_image_reference():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=False, generator=g)
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        assert torch.equal(out[b], padded[b, :, oy[b] : oy[b] + 4, ox[b] : ox[b] + 4])


def test_loader_is_deterministic_per_epoch():
    ds = ArrayDataset(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (50,)), 3, "toy")
    mk = lambda: InMemoryLoader(ds, 16, train=True, mean=[0.5], std=[0.25], pad=2, flip=True, seed=3)  # noqa: E731
    a, b = mk(), mk()
    a.set_epoch(4)
    b.set_epoch(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in a) == 50 and len(a) == 4
    with pytest.raises(CompactError, match="batch size"):
        InMemoryLoader(ds, 0, train=True, mean=[0.5], std=[0.25])
