"""Small datasets held in memory as uint8 tensors, with augmentation done on whole batches.

Decoding and per-image Python transforms dominate the step time of small CPU models; here a batch is one
index into a uint8 tensor, one float conversion and a few batched tensor operations (random crop with zero
padding, horizontal flip, normalisation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from compact.errors import CompactError


@dataclass
class ArrayDataset:
    """``images``: uint8 (N, C, H, W); ``labels``: int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise CompactError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor")
        if len(self.images) != len(self.labels):
            raise CompactError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, n: int, seed: int = 0) -> ArrayDataset:
        """``n`` examples drawn without replacement by a seeded permutation (the same ``seed``, the same subset)."""
        if n <= 0:
            raise CompactError(f"subset size must be > 0, got {n}")
        if n >= len(self):
            return self
        idx = self.permutation(seed)[:n]
        return ArrayDataset(self.images[idx], self.labels[idx], self.num_classes, f"{self.name}[{n}]")

    def permutation(self, seed: int) -> torch.Tensor:
        """The seeded permutation of the indices that :meth:`subset` takes its first ``n`` from."""
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))

    def with_channels(self, channels: int) -> ArrayDataset:
        """The images as ``channels`` (1: ITU-R 601 luma of RGB; 3: grayscale repeated)."""
        c = self.images.shape[1]
        if channels == c:
            return self
        if (c, channels) == (1, 3):
            images = self.images.expand(-1, 3, -1, -1).contiguous()
        elif (c, channels) == (3, 1):
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (self.images.float() * luma).sum(1, keepdim=True).round().clamp_(0, 255).to(torch.uint8)
        else:
            raise CompactError(f"{self.name}: cannot turn {c} channels into {channels}")
        return ArrayDataset(images, self.labels, self.num_classes, self.name)

    def resized(self, size: int, chunk: int = 4096) -> ArrayDataset:
        """Every image resized to ``size`` x ``size`` (bilinear, antialiased when shrinking), kept as uint8."""
        n, c = self.images.shape[:2]
        if (size * size * c * n) > (8 << 30):
            raise CompactError(f"{self.name}: {n} images of {c}x{size}x{size} would take over 8 GB in memory")
        out = torch.empty(n, c, size, size, dtype=torch.uint8)
        for start in range(0, n, chunk):
            x = self.images[start : start + chunk].float()
            y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
        return ArrayDataset(out, self.labels, self.num_classes, self.name)

    def mean_std(self) -> tuple[list[float], list[float]]:
        x = self.images.float() / 255.0
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def random_resized_crop(
    x: torch.Tensor, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Per-image random resized crop of a batch (ImageNet-style augmentation), resampled bilinearly back to
    the batch's size: each image gets a crop of ``scale`` of its area and aspect ``ratio``, at a random
    place, through one batched affine resampling."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=generator)
    log_r = torch.empty(b).uniform_(torch.tensor(ratio[0]).log().item(), torch.tensor(ratio[1]).log().item(),
                                    generator=generator)  # fmt: skip
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # fraction of the width
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    theta = theta.to(x.device)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size, and random horizontal flips. The
    random numbers come from ``generator`` (on the CPU), whatever device ``x`` is on: the same batches on
    every device."""
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def batch_bounds(n: int, batch_size: int, min_last: int = 1) -> list[tuple[int, int]]:
    """``(start, end)`` of each batch of ``n`` items taken ``batch_size`` at a time; a last batch of fewer
    than ``min_last`` items joins the batch before it (training: BatchNorm cannot normalise a feature map of
    one value per channel, so a lone last image would fail any network that pools to 1x1 before one)."""
    bounds = [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_last:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


#: the fewest images a training batch may hold per process (see :func:`batch_bounds`)
MIN_TRAIN_BATCH = 2


class InMemoryLoader:
    """Iterates (float images, labels) batches of an :class:`ArrayDataset`.

    The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run sees the
    same batches as an uninterrupted one; call :meth:`set_epoch` before iterating. In training, a last batch
    of fewer than two images per process joins the batch before it (:func:`batch_bounds`). ``shard=(rank, world)``:
    each of ``world`` processes gets its contiguous share of every batch (``batch_size`` is the global
    batch), so together they see exactly the batches of a single process.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        *,
        train: bool,
        mean: list[float],
        std: list[float],
        augment: str = "cifar",
        pad: int = 0,
        flip: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size <= 0:
            raise CompactError(f"batch size must be > 0, got {batch_size}")
        self.shard = shard
        self.data, self.batch_size, self.train = data, batch_size, train
        self.pad, self.flip, self.seed = pad, flip, seed
        self.augment = augment
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def to(self, device: torch.device | str) -> InMemoryLoader:
        """Keep the images (uint8) on ``device`` and batch, augment and normalise them there: no host round
        trip per batch on a GPU. The order and augmentation stay those of the CPU (seeded on the CPU)."""
        device = torch.device(device)
        if self.data.images.device != device:
            self.data = ArrayDataset(self.data.images.to(device), self.data.labels.to(device), self.data.num_classes,
                                     self.data.name)  # fmt: skip
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def _bounds(self) -> list[tuple[int, int]]:
        least = MIN_TRAIN_BATCH * self.shard[1] if self.train else 1
        return batch_bounds(len(self.data), self.batch_size, least)

    def __len__(self) -> int:
        return len(self._bounds())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        order = order.to(self.data.images.device)
        for start, end in self._bounds():
            idx = order[start:end]
            x = self.data.images[idx].float().div_(255.0)
            if self.train and self.augment == "imagenet":
                x = random_crop_flip(random_resized_crop(x, g), 0, self.flip, g)
            elif self.train and self.augment == "cifar" and (self.pad or self.flip):
                x = random_crop_flip(x, self.pad, self.flip, g)
            elif self.train and self.augment == "none":
                pass
            y = self.data.labels[idx]
            rank, world = self.shard
            if world > 1:  # every process augments the global batch alike and keeps its share
                x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            yield (x - self.mean) / self.std, y
