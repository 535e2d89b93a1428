"""Fashion-MNIST (Xiao et al. 2017; MIT licence): 60,000 train / 10,000 test 28x28 grayscale images.

Looked for in ``data_dir`` when one is given (the four IDX files, gzip-compressed or not, directly in it or
in torchvision's ``FashionMNIST/raw`` layout; an explicit folder is never passed over for another copy),
else in Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``); with
``download=True`` (online users), torchvision downloads into ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path

from compact.data.idx import read_idx
from compact.data.memory import ArrayDataset
from compact.errors import CompactError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    if data_dir is None:
        return [SYSTEM_DIR]
    d = Path(data_dir)
    return [d, d / "fashion-mnist", d / "FashionMNIST" / "raw"]


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The first directory holding all four Fashion-MNIST files, or None."""
    stems = [s for images, labels, _ in _FILES.values() for s in (images, labels)]
    for d in _candidate_dirs(data_dir):
        if all(_find(d, s) for s in stems):
            return d
    return None


def load_fashion_mnist(data_dir: str | Path | None = None, download: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) as in-memory uint8 datasets of shape (N, 1, 28, 28)."""
    directory = find_fashion_mnist(data_dir)
    if directory is None and download:
        if data_dir is None:
            raise CompactError("downloading Fashion-MNIST needs a --data-dir to download into")
        import torchvision

        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(data_dir), train=train, download=True)
        directory = find_fashion_mnist(data_dir)
    if directory is None:
        looked = ", ".join(str(d) for d in _candidate_dirs(data_dir))
        if data_dir is not None:
            raise CompactError(
                f"Fashion-MNIST not found in --data-dir {data_dir} (looked in {looked}); put the four IDX files "
                "there, pass --download when online, or leave --data-dir out to use Debian's copy"
            )
        raise CompactError(
            f"Fashion-MNIST not found (looked in {looked}). Install it with: {INSTALL_HINT} "
            "(Debian), or put the four IDX files in --data-dir, or pass --download when online"
        )
    out = []
    for split, (images_stem, labels_stem, n) in _FILES.items():
        images = read_idx(_find(directory, images_stem))
        labels = read_idx(_find(directory, labels_stem))
        if images.shape != (n, 28, 28) or labels.shape != (n,):
            raise CompactError(
                f"Fashion-MNIST {split} files in {directory} have shapes {tuple(images.shape)} and "
                f"{tuple(labels.shape)}; expected ({n}, 28, 28) and ({n},)"
            )
        if int(labels.max()) >= len(CLASSES):
            raise CompactError(f"Fashion-MNIST {split} labels in {directory} exceed {len(CLASSES) - 1}")
        out.append(ArrayDataset(images.unsqueeze(1), labels.long(), len(CLASSES), f"fashion-mnist/{split}"))
    return out[0], out[1]


__all__ = ["CLASSES", "find_fashion_mnist", "load_fashion_mnist"]
