"""ImageNet-style class-per-folder trees (``imagefolder:PATH`` with ``train/`` and ``val/``), read from disk
by a standard DataLoader with worker processes.

Training images get a random resized crop and a horizontal flip; validation images are resized to
``size / 0.875`` and centre-cropped (the usual ImageNet evaluation). The order of epoch ``e`` depends only
on ``(seed, e)``, as for the in-memory loader; the augmentation draws from worker seeds derived from the
same generator (``workers > 0``) or from the global RNG, which checkpoints save (``workers = 0``), so resumed
runs see the same batches either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from compact.errors import CompactError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SPLITS = ("train", "val")


class _Convert:
    """PIL mode conversion (a class, not a lambda, so that worker processes can pickle it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):
        return image.convert(self.mode)


def image_folder(root: str | Path, split: str, size: int, train: bool, in_chans: int = 3):
    """A torchvision ``ImageFolder`` of ``root/split`` with compact's transforms."""
    from torchvision import datasets, transforms

    path = Path(root) / split
    if not path.is_dir():
        raise CompactError(f"image folder {root} has no {split}/ directory (expected {'/ and '.join(SPLITS)}/)")
    if train:
        geometry = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(int(round(size / 0.875))), transforms.CenterCrop(size)]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ([0.5] * in_chans, [0.5] * in_chans)
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise CompactError(f"image folders are read as 1 or 3 channels, not {in_chans}")
    tf = transforms.Compose([_Convert(mode), *geometry, transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        return datasets.ImageFolder(str(path), transform=tf)
    except FileNotFoundError as exc:
        raise CompactError(f"{path}: {exc} (an image folder needs one sub-folder of images per class)") from exc


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
        rank, world = self.shard
        per_process = (len(self.dataset) + world - 1) // world
        local = max(1, self.batch_size // world)
        return (per_process + local - 1) // local

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rank, world = self.shard
        sampler = None
        if world > 1:  # torch's DistributedSampler: a seeded per-epoch permutation, one share per process
            sampler = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=world, rank=rank, shuffle=self.train, seed=self.seed
            )
            sampler.set_epoch(self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size // world if world > 1 else self.batch_size,
            sampler=sampler,
            shuffle=self.train and sampler is None,
            num_workers=self.workers,
            generator=g,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader
