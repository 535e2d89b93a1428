"""ImageNet-style class-per-folder trees (``imagefolder:PATH`` with ``train/`` and ``val/``), read from disk
by a standard DataLoader with worker processes.

Training images get a random resized crop and a horizontal flip; validation images are resized to
``size / 0.875`` and centre-cropped (the usual ImageNet evaluation). The order of epoch ``e`` depends only
on ``(seed, e)``, as for the in-memory loader; the augmentation draws from worker seeds derived from the
same generator (``workers > 0``) or from the global RNG, which checkpoints save (``workers = 0``), so resumed
runs see the same batches either way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from compact.errors import CompactError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SPLITS = ("train", "val")


#: PIL modes of one 16-bit channel: PIL's own conversion to 8 bits clips them (every value above 255 turns
#: white), so compact maps their full range 0..65535 onto 0..255 itself
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: PIL modes of 32-bit integer or float pixels: the file does not say what range its values span, so no
#: conversion to 8 bits is right for all of them; such images are refused by name
UNRANGED_MODES = ("I", "F")


def to_eight_bit(image):
    """``image`` with a 16-bit channel scaled to 8 bits (``value >> 8``); other images unchanged."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image).astype(np.uint32)
    return Image.fromarray((pixels >> 8).astype(np.uint8), "L")


class _Convert:
    """PIL mode conversion (a class, not a lambda, so that worker processes can pickle it); 16-bit
    grayscale images are first scaled to 8 bits (:func:`to_eight_bit`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):
        return to_eight_bit(image).convert(self.mode)


def image_folder(
    root: str | Path,
    split: str,
    size: int,
    train: bool,
    in_chans: int = 3,
    augment: str = "imagenet",
    flip: bool = True,
):
    """A torchvision ``ImageFolder`` of ``root/split`` with compact's transforms (``augment``: see
    :class:`compact.data.DataOptions`; evaluation always resizes to ``size / 0.875`` and centre-crops)."""
    from torchvision import datasets, transforms

    path = Path(root) / split
    if not path.is_dir():
        raise CompactError(f"image folder {root} has no {split}/ directory (expected {'/ and '.join(SPLITS)}/)")
    flips = [transforms.RandomHorizontalFlip()] if flip else []
    if train and augment == "imagenet":
        geometry = [transforms.RandomResizedCrop(size), *flips]
    elif train and augment == "cifar":
        geometry = [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.RandomCrop(size, padding=max(1, size // 8)),
            *flips,
        ]
    elif train:
        geometry = [transforms.Resize(size), transforms.CenterCrop(size)]
    else:
        geometry = [transforms.Resize(int(round(size / 0.875))), transforms.CenterCrop(size)]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ([0.5] * in_chans, [0.5] * in_chans)
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise CompactError(f"image folders are read as 1 or 3 channels, not {in_chans}")
    tf = transforms.Compose([_Convert(mode), *geometry, transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        dataset = datasets.ImageFolder(str(path), transform=tf, loader=load_image)
    except FileNotFoundError as exc:
        raise CompactError(f"{path}: {exc} (an image folder needs one sub-folder of images per class)") from None
    skipped = check_images(dataset)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(
            f"warning: {path}: skipped {len(skipped)} file(s) that are not readable images ({shown})",
            file=sys.stderr,
        )
    if not dataset.samples:
        raise CompactError(f"{path} holds no readable images")
    return dataset


#: the most pixels an image may have (about 6300 x 6300); larger files are refused before they are decoded
MAX_PIXELS = 40_000_000


class BadImageError(CompactError):
    """An image file that cannot be decoded (truncated or not an image), found while loading a batch."""


def load_image(path: str):
    """Open and decode one image (the file is closed afterwards); a broken file raises naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadImageError(f"cannot read image {path}: {' '.join(str(exc).split())[:200]}") from None


def report_size(root: str | Path, dataset, size: int, given: bool) -> None:
    """Say on stderr at what size the images are used, and warn when that upsamples them."""
    from PIL import Image

    sides = []
    for file, _ in dataset.samples[:: max(1, len(dataset.samples) // 50)][:50]:  # a sample of the headers
        with Image.open(file) as image:
            sides.append(min(image.size))
    if not sides:
        return
    typical = sorted(sides)[len(sides) // 2]
    how = "--image-size" if given else "the default; set --image-size to change it"
    msg = f"image folder {root}: images about {typical} px on their short side, used at {size} px ({how})"
    print(msg, file=sys.stderr)
    if size > typical * 1.15:
        print(
            f"warning: {root}: {size} px upsamples images of about {typical} px; training costs "
            f"{(size / typical) ** 2:.1f}x more than at their own size (--image-size {typical})",
            file=sys.stderr,
        )


def check_images(dataset) -> list[str]:
    """Read the header of every image of ``dataset`` (an ``ImageFolder``) up front: files that are not
    images (or fail PIL's integrity check) are dropped from it and returned; an image larger than
    :data:`MAX_PIXELS` is refused. Decoding is left to loading, where a broken file names itself."""
    from PIL import Image

    bad: list[str] = []
    for file, _ in dataset.samples:
        if not os.path.isfile(file):  # a FIFO or a device named like an image would block reading
            bad.append(file)
            continue
        try:
            with Image.open(file) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise CompactError(
                        f"{file} is {width}x{height} pixels, more than compact decodes ({MAX_PIXELS:,}); "
                        "resize it or remove it from the image folder"
                    )
                if image.mode in UNRANGED_MODES:
                    kind = "32-bit integer" if image.mode == "I" else "floating-point"
                    raise CompactError(
                        f"{file} holds {kind} pixels (PIL mode {image.mode}), whose range the file does not "
                        "state; compact reads 8- and 16-bit images: convert it to one of those"
                    )
                image.verify()
        except CompactError:
            raise
        except Image.DecompressionBombError:
            raise CompactError(f"{file} declares more pixels than compact decodes ({MAX_PIXELS:,})") from None
        except Exception:
            bad.append(file)
    if bad:
        drop = set(bad)
        dataset.samples = [s for s in dataset.samples if s[0] not in drop]
        dataset.imgs = dataset.samples
        dataset.targets = [t for _, t in dataset.samples]
    return bad


class _MergedBatches:
    """Batches of indices from ``sampler``, ``batch_size`` at a time, with a last batch of fewer than
    ``min_last`` indices joined to the batch before it (a DataLoader ``batch_sampler``; the sampler's order,
    hence its use of the generator, is that of ``shuffle=True``)."""

    def __init__(self, sampler, batch_size: int, min_last: int) -> None:
        self.sampler, self.batch_size, self.min_last = sampler, batch_size, min_last

    def __len__(self) -> int:
        from compact.data.memory import batch_bounds

        return len(batch_bounds(len(self.sampler), self.batch_size, self.min_last))

    def __iter__(self) -> Iterator[list[int]]:
        from compact.data.memory import batch_bounds

        order = list(self.sampler)
        for start, end in batch_bounds(len(order), self.batch_size, self.min_last):
            yield order[start:end]


class FolderLoader:
    """A DataLoader over an image folder whose shuffling is seeded per epoch (call :meth:`set_epoch`)."""

    def __init__(
        self, dataset, batch_size: int, *, train: bool, workers: int, seed: int = 0, shard: tuple[int, int] = (0, 1)
    ) -> None:
        if batch_size <= 0:
            raise CompactError(f"batch size must be > 0, got {batch_size}")
        self.shard = shard
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.workers, self.seed, self.epoch = workers, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        from compact.data.memory import MIN_TRAIN_BATCH, batch_bounds

        rank, world = self.shard
        per_process = (len(self.dataset) + world - 1) // world
        local = max(1, self.batch_size // world)
        return len(batch_bounds(per_process, local, MIN_TRAIN_BATCH if self.train else 1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rank, world = self.shard
        sampler = None
        if world > 1:  # torch's DistributedSampler: a seeded per-epoch permutation, one share per process
            sampler = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=world, rank=rank, shuffle=self.train, seed=self.seed
            )
            sampler.set_epoch(self.epoch)
        from compact.data.memory import MIN_TRAIN_BATCH

        if sampler is None:  # the sampler DataLoader(shuffle=...) would make, drawing from g alike
            data = self.dataset
            sampler = torch.utils.data.RandomSampler(data, generator=g) if self.train else range(len(data))
        local = self.batch_size // world if world > 1 else self.batch_size
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_MergedBatches(sampler, local, MIN_TRAIN_BATCH if self.train else 1),
            num_workers=self.workers,
            generator=g,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        try:
            yield from loader
        except BadImageError as exc:  # from a worker process its message carries the worker's traceback
            raise BadImageError(str(exc).strip().splitlines()[-1].split("BadImageError: ", 1)[-1]) from None
