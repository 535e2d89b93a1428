"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from a local folder, read without running code from it.

Two layouts are read, directly in ``data_dir`` or below it:

- torchvision's (``cifar-10-batches-py``, ``cifar-100-python``): Python pickles of dicts of numpy arrays.
  They are read with an unpickler that only rebuilds numpy arrays, strings and containers; any other
  global in the file (a pickle that would call a function) is refused.
- the binary version (``cifar-10-batches-bin``, ``cifar-100-binary``): fixed-size records.

With ``download=True`` (online users) torchvision downloads the python version into ``data_dir`` first.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compact.data.memory import ArrayDataset
from compact.errors import CompactError


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class _Cifar:
    name: str
    num_classes: int
    py: _Layout
    binary: _Layout
    label_key: bytes  # in the python version
    label_bytes: int  # in the binary version: CIFAR-100 stores (coarse, fine)
    meta_file: str
    meta_key: bytes


CIFAR10 = _Cifar(
    "cifar10",
    10,
    _Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)),
    _Layout("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",)),
    b"labels",
    1,
    "batches.meta",
    b"label_names",
)
CIFAR100 = _Cifar(
    "cifar100",
    100,
    _Layout("cifar-100-python", ("train",), ("test",)),
    _Layout("cifar-100-binary", ("train.bin",), ("test.bin",)),
    b"fine_labels",
    2,
    "meta",
    b"fine_label_names",
)

# the only globals a CIFAR pickle needs: numpy's array (and scalar) reconstruction, which build data only
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")


def safe_unpickle(path: Path) -> object:
    """Unpickle ``path`` allowing nothing but numpy arrays, strings, numbers and containers."""
    if not path.is_file():  # a FIFO or a device would block reading
        raise CompactError(f"{path} is not a regular file (a CIFAR batch was expected)")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise CompactError(f"{path} is larger than any CIFAR file ({MAX_PICKLE_BYTES >> 20} MB at most)")
    try:
        data = path.read_bytes()
        return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except MemoryError:
        raise CompactError(f"cannot read {path}: it asks for more memory than a CIFAR batch needs") from None
    except Exception as exc:  # the unpickler raises many types for crafted bytes; none may escape raw
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CompactError(f"cannot read {path}: {first} (corrupt, truncated or not a CIFAR batch)") from None


#: the largest CIFAR pickle read (a batch of torchvision's layout is about 31 MB, CIFAR-100's train 155 MB)
MAX_PICKLE_BYTES = 256 << 20


def _locate(spec: _Cifar, data_dir: Path) -> tuple[str, Path] | None:
    for kind, layout in (("py", spec.py), ("binary", spec.binary)):
        for d in (data_dir / layout.folder, data_dir):
            if all((d / f).is_file() for f in layout.train + layout.test):
                return kind, d
    return None


def _array(value: object) -> np.ndarray | None:
    """``value`` as a numpy array, or None when it is not array-like (ragged lists, huge Python ints)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return None if array.dtype.kind == "O" else array


def _read_py(spec: _Cifar, path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or spec.label_key not in batch:
        raise CompactError(f"{path} is not a {spec.name} batch (no {b'data'!r} / {spec.label_key!r} entries)")
    images = _array(batch[b"data"])
    labels = _array(batch[spec.label_key])
    if images is None or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise CompactError(f"{path}: {b'data'!r} must be a uint8 array of shape (N, 3072) for {spec.name}")
    # integers only: a float label would be truncated, a string parsed, a bool taken for 0/1 -- all silently
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        found = "not an array" if labels is None else f"{labels.dtype} of shape {labels.shape}"
        raise CompactError(
            f"{path}: {spec.label_key!r} must list one integer label per image ({len(images)}), found {found}"
        )
    return images.reshape(-1, 3, 32, 32), labels


def _read_binary(spec: _Cifar, path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = spec.label_bytes + 3072
    if raw.size == 0 or raw.size % record:
        raise CompactError(f"{path} is truncated or corrupt: {raw.size} bytes is not a multiple of {record}")
    raw = raw.reshape(-1, record)
    return raw[:, spec.label_bytes :].reshape(-1, 3, 32, 32), raw[:, spec.label_bytes - 1]


def _class_names(spec: _Cifar, kind: str, directory: Path) -> list[str] | None:
    meta = directory / spec.meta_file
    if kind != "py" or not meta.is_file():
        return None
    names = safe_unpickle(meta)
    if not isinstance(names, dict) or spec.meta_key not in names:
        return None
    listed = names[spec.meta_key]
    try:
        decoded = [n.decode() if isinstance(n, bytes) else n for n in listed]
    except (TypeError, UnicodeDecodeError):
        decoded = None
    if (
        not isinstance(listed, list)
        or decoded is None
        or len(decoded) != spec.num_classes
        or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in decoded)
    ):
        raise CompactError(
            f"{meta}: {spec.meta_key.decode()} must list {spec.num_classes} class names (corrupt, or not {spec.name}'s)"
        )
    return decoded


def load_cifar(
    name: str, data_dir: str | Path | None, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset, list[str] | None]:
    """(train, test, class names or None) of ``cifar10`` or ``cifar100`` as uint8 (N, 3, 32, 32) datasets."""
    spec = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    if data_dir is None:
        raise CompactError(f"{name} needs --data-dir (a folder holding {spec.py.folder} or {spec.binary.folder})")
    root = Path(data_dir)
    found = _locate(spec, root)
    if found is None and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
        found = _locate(spec, root)
    if found is None:
        raise CompactError(
            f"{name} not found in {root}: expected {spec.py.folder}/ (torchvision's layout) or "
            f"{spec.binary.folder}/ with {', '.join(spec.py.train + spec.py.test)}; pass --download when online"
        )
    kind, directory = found
    layout, read = (spec.py, _read_py) if kind == "py" else (spec.binary, _read_binary)
    splits = []
    for split, files in (("train", layout.train), ("test", layout.test)):
        parts = [read(spec, directory / f) for f in files]
        for f, (_, part) in zip(files, parts, strict=True):  # compared as stored: a cast could wrap a uint64
            if part.size and (part.min() < 0 or part.max() >= spec.num_classes):
                raise CompactError(f"{name} {split} labels in {directory / f} are outside 0..{spec.num_classes - 1}")
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]).copy())
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
        splits.append(ArrayDataset(images, labels, spec.num_classes, f"{name}/{split}"))
    return splits[0], splits[1], _class_names(spec, kind, directory)
