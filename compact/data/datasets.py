"""The dataset registry: a name (``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``) to
train and test loaders, the number of classes, the input size and the normalisation.

Small datasets are held in memory as uint8 tensors (:class:`~compact.data.memory.InMemoryLoader`); image
folders are read by a DataLoader with workers (:class:`~compact.data.folder.FolderLoader`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compact._numbers import MAX_SEED
from compact._registry import Registry
from compact.data.memory import ArrayDataset, InMemoryLoader
from compact.errors import CompactError

DATASETS: Registry[Callable[..., Data]] = Registry("dataset")
PREFIXED = ("imagefolder:PATH",)
#: augmentations (see DataOptions)
AUGMENTS = ("cifar", "imagenet", "none")
#: the input size of each in-memory dataset as stored (C, H, W), known without loading it
NATIVE_SIZES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
#: the crop side of image folders when no image_size is given
FOLDER_SIZE = 224
#: the largest image side compact resizes to (larger inputs are refused before anything is allocated)
MAX_IMAGE_SIZE = 2048


@dataclass
class DataOptions:
    """Where to find a dataset and how much of it to use.

    ``subset`` / ``test_subset``: use that many images, drawn by a permutation seeded with ``seed``.
    ``image_size``: side of the square inputs; in-memory datasets are resized to it once when loaded
    (default: their own size), image folders are cropped to it (default 224).
    ``augment``: ``cifar`` (zero-padded random crop: CIFAR 4 px, Fashion-MNIST 2 px, scaled with
    ``image_size``; image folders 1/8 of the side), ``imagenet`` (random
    resized crop, scale 0.08-1, aspect 3/4-4/3) or ``none``; default ``cifar`` for in-memory datasets,
    ``imagenet`` for image folders. ``flip``: random horizontal flips when augmenting (wrong for digits or
    text). ``in_chans``: 1 (grayscale) or 3 (RGB); default the dataset's own (image folders: 3).
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    image_size: int | None = None
    workers: int = 2
    augment: str | None = None
    flip: bool = True
    in_chans: int | None = None

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for key in ("subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value <= 0):
                raise CompactError(f"{key} must be a positive number of images, got {value!r}")
        if self.image_size is not None and (not is_int(self.image_size) or not 8 <= self.image_size <= MAX_IMAGE_SIZE):
            raise CompactError(f"image_size must be an integer in 8..{MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.augment is not None and self.augment not in AUGMENTS:
            raise CompactError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if not isinstance(self.flip, bool):
            raise CompactError(f"flip must be true or false, got {self.flip!r}")
        if self.in_chans is not None and self.in_chans not in (1, 3):
            raise CompactError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {self.in_chans!r}")
        if not is_int(self.workers) or not 0 <= self.workers <= 256:
            raise CompactError(f"workers must be an integer in 0..256, got {self.workers!r}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise CompactError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.download, bool):
            raise CompactError(f"download must be true or false, got {self.download!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise CompactError(f"data_dir must be a path, got {self.data_dir!r}")


@dataclass
class Data:
    """A dataset ready for training: sizes, normalisation and a way to make loaders."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    train_size: int
    test_size: int
    classes: list[str] | None = None
    _make: Callable[..., tuple] = field(default=None, repr=False)
    _held_out: Callable[[int, int], object] | None = field(default=None, repr=False)

    def loaders(
        self, batch_size: int, seed: int, eval_batch_size: int | None = None, shard: tuple[int, int] = (0, 1)
    ) -> tuple:
        """(train loader, test loader); both have ``set_epoch(e)`` and yield normalised (x, y) batches.

        ``shard=(rank, world)``: this process's share of every (global) batch, for distributed training.
        """
        if batch_size <= 0:
            raise CompactError(f"batch size must be > 0, got {batch_size}")
        return self._make(batch_size, eval_batch_size or max(batch_size, 256), seed, shard)

    def held_out_loader(self, n: int, batch_size: int = 256):
        """An evaluation loader of up to ``n`` training-set images that the training subset left out
        (the next ones of the same seeded permutation), or None when training used every image."""
        if n <= 0:
            raise CompactError(f"the number of held-out images must be > 0, got {n}")
        return self._held_out(n, batch_size) if self._held_out is not None else None


def note_large_subsets(name: str, opts: DataOptions, train_images: int, test_images: int) -> None:
    """Say on stderr when a subset asks for more images than its split has (all of them are used; runs
    record the numbers used in their summaries, which reports state as the budget)."""
    for key, split, n in (("subset", "training", train_images), ("test_subset", "test", test_images)):
        asked = getattr(opts, key)
        if asked and asked > n:
            print(f"note: {key} {asked:,} is more than the {n:,} {split} images of {name}: using all {n:,}",
                  file=sys.stderr)  # fmt: skip


def _in_memory(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    opts: DataOptions,
    pad: int,
    classes: list[str] | None,
) -> Data:
    if opts.in_chans is not None and opts.in_chans != train.input_size[0]:
        train, test = train.with_channels(opts.in_chans), test.with_channels(opts.in_chans)
    native = train.input_size[-1]
    if opts.image_size is not None and opts.image_size != native:
        train, test = train.resized(opts.image_size), test.resized(opts.image_size)
        pad = max(1, round(pad * opts.image_size / native))
    note_large_subsets(name, opts, len(train), len(test))
    mean, std = train.mean_std()  # of the whole training set, before any subset
    held_out = None
    if opts.subset and opts.subset < len(train):
        full, used = train, opts.subset

        def held_out(n: int, batch_size: int) -> InMemoryLoader:
            idx = full.permutation(opts.seed)[used : used + n]
            ds = ArrayDataset(full.images[idx], full.labels[idx], full.num_classes, f"{full.name}[held out]")
            return InMemoryLoader(ds, batch_size, train=False, mean=mean, std=std, seed=opts.seed)

        train = train.subset(opts.subset, opts.seed)
    if opts.test_subset:
        test = test.subset(opts.test_subset, opts.seed)
    augment = opts.augment or "cifar"

    def make(batch_size: int, eval_batch_size: int, seed: int, shard: tuple[int, int]):
        common = {"mean": mean, "std": std, "seed": seed, "shard": shard}
        return (
            InMemoryLoader(train, batch_size, train=True, augment=augment, pad=pad, flip=opts.flip, **common),
            InMemoryLoader(test, eval_batch_size, train=False, **common),
        )

    return Data(name, train.num_classes, train.input_size, mean, std, len(train), len(test), classes, make, held_out)


@DATASETS.register("fashion-mnist")
def fashion_mnist(opts: DataOptions) -> Data:
    """Fashion-MNIST, 28x28 grayscale; default augmentation: 2-pixel padded random crop and horizontal flip."""
    from compact.data.fashion_mnist import CLASSES, load_fashion_mnist

    train, test = load_fashion_mnist(opts.data_dir, opts.download)
    return _in_memory("fashion-mnist", train, test, opts, pad=2, classes=list(CLASSES))


def _cifar(name: str) -> Callable[[DataOptions], Data]:
    def load(opts: DataOptions) -> Data:
        from compact.data.cifar import load_cifar

        train, test, classes = load_cifar(name, opts.data_dir, opts.download)
        return _in_memory(name, train, test, opts, pad=4, classes=classes)

    load.__doc__ = f"{name.upper()}, 32x32 RGB; default augmentation: 4-pixel padded random crop and horizontal flip."
    return load


DATASETS.register("cifar10")(_cifar("cifar10"))
DATASETS.register("cifar100")(_cifar("cifar100"))


def _image_folder(root: str, opts: DataOptions, in_chans: int) -> Data:
    import torch

    from compact.data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, image_folder, report_size

    if not Path(root).is_dir():
        raise CompactError(f"image folder {root!r} does not exist")
    size = opts.image_size or FOLDER_SIZE
    in_chans = opts.in_chans or in_chans
    augment = opts.augment or "imagenet"
    train = image_folder(root, "train", size, train=True, in_chans=in_chans, augment=augment, flip=opts.flip)
    test = image_folder(root, "val", size, train=False, in_chans=in_chans)
    report_size(root, train, size, given=opts.image_size is not None)
    if len(train.classes) < 2:
        raise CompactError(
            f"{root}/train has {len(train.classes)} class folder(s) ({', '.join(train.classes)}); a classifier needs "
            "at least two (one sub-folder of images per class)"
        )
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_val = sorted(set(test.classes) - set(train.classes))

        def listed(names: list[str]) -> str:
            return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"

        raise CompactError(
            f"{root}: train/ and val/ have different classes (only in train/: {listed(only_train)}; only in "
            f"val/: {listed(only_val)}); every class needs a folder in both"
        )

    def permutation(ds) -> list[int]:
        return torch.randperm(len(ds), generator=torch.Generator().manual_seed(opts.seed)).tolist()

    def subset(ds, n):
        if not n or n >= len(ds):
            return ds
        return torch.utils.data.Subset(ds, permutation(ds)[:n])

    note_large_subsets(root, opts, len(train), len(test))
    train_ds, test_ds = subset(train, opts.subset), subset(test, opts.test_subset)
    held_out = None
    if opts.subset and opts.subset < len(train):

        def held_out(n: int, batch_size: int) -> FolderLoader:
            plain = image_folder(root, "train", size, train=False, in_chans=in_chans)
            ds = torch.utils.data.Subset(plain, permutation(plain)[opts.subset : opts.subset + n])
            return FolderLoader(ds, batch_size, train=False, workers=workers, seed=opts.seed, shard=(0, 1))

    workers = opts.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cpus:
        print(f"note: {workers} DataLoader workers asked for, this machine has {cpus} CPU(s): using {cpus}",
              file=sys.stderr)  # fmt: skip
        workers = cpus

    def make(batch_size: int, eval_batch_size: int, seed: int, shard: tuple[int, int]):
        common = {"workers": workers, "seed": seed, "shard": shard}
        return (
            FolderLoader(train_ds, batch_size, train=True, **common),
            FolderLoader(test_ds, eval_batch_size, train=False, **common),
        )

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ([0.5] * in_chans, [0.5] * in_chans)
    return Data(
        f"imagefolder:{root}",
        len(train.classes),
        (in_chans, size, size),
        mean,
        std,
        len(train_ds),
        len(test_ds),
        list(train.classes),
        make,
        held_out,
    )


def load_data(opts: DataOptions, in_chans: int = 3) -> Data:
    """Resolve ``opts.name`` to a :class:`Data`; ``in_chans`` applies to image folders only."""
    name = opts.name
    if isinstance(name, str) and name.startswith("imagefolder:"):
        root = name.partition(":")[2]
        if not root:
            raise CompactError("imagefolder needs a path: imagefolder:PATH (with train/ and val/ inside)")
        return _image_folder(root, opts, in_chans)
    if name not in DATASETS:
        valid = [*DATASETS.names(), *PREFIXED]
        raise CompactError(f"unknown dataset {name!r}; valid datasets: {', '.join(valid)}")
    return DATASETS.get(name)(opts)


def list_datasets() -> list[str]:
    return [*DATASETS.names(), *PREFIXED]


def check_dataset_name(name: object, where: str = "dataset") -> str:
    """``name`` if it names a dataset :func:`load_data` knows (without loading it), else a clear error."""
    if isinstance(name, str) and (name in DATASETS or (name.startswith("imagefolder:") and len(name) > 12)):
        return name
    raise CompactError(f"{where}: unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
