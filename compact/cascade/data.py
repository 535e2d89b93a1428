"""The images a cascade study runs on: the test set and, when the training subset left some out, held-out
training images for choosing a threshold (never the test set)."""

from __future__ import annotations

from typing import Any

import numpy as np

from compact.errors import CompactError


def note_subset(info: Any, cfg: Any) -> None:
    """Record in ``info.source`` the training subset and seed of the run ``cfg`` (where the held-out
    training images start), unless the model file already records them (files made before it did)."""
    if cfg is not None and cfg.subset:
        info.source.setdefault("subset", cfg.subset)
        info.source.setdefault("seed", cfg.seed)


def _arrays(loader) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.float().numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def study_data(
    manifest: dict[str, Any],
    *,
    data: str | None = None,
    data_dir: str | None = None,
    test_subset: int | None = None,
    val_images: int = 5000,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None, str]:
    """(test images and labels, held-out images and labels or None, dataset name), normalised as the
    network was trained. The held-out images are the training images after the run's seeded subset."""
    from compact.data import DataOptions, load_data

    name = data or manifest.get("dataset")
    if not name:
        raise CompactError("the cascade does not say which dataset it was trained on; pass --data")
    source = manifest.get("source") or {}
    size = manifest["input_size"]
    subset = source.get("subset")
    opts = DataOptions(
        name=name,
        data_dir=data_dir,
        subset=subset if isinstance(subset, int) and subset > 0 else None,
        test_subset=test_subset,
        seed=int(source.get("seed", 0)) if isinstance(source.get("seed", 0), int) else 0,
        image_size=int(size[-1]),
        in_chans=int(size[0]),
        workers=0,
    )
    ds = load_data(opts, in_chans=int(size[0]))
    if ds.num_classes != manifest["num_classes"] or list(ds.input_size) != list(size):
        raise CompactError(
            f"the cascade takes {tuple(size)} inputs with {manifest['num_classes']} classes; {ds.name} gives "
            f"{tuple(ds.input_size)} with {ds.num_classes}"
        )
    _, test_loader = ds.loaders(256, seed=opts.seed, eval_batch_size=512)
    test = _arrays(test_loader)
    held = ds.held_out_loader(val_images, 512)
    val = _arrays(held) if held is not None else None
    if val is not None and len(val[0]) == 0:
        val = None
    return test, val, ds.name
