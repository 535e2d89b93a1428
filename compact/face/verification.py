"""Face verification: embeddings of every output, the standard 10-fold accuracy, TAR at a FAR, and readers
for the LFW layout and the packed validation files face-recognition projects distribute.

Protocol (LFW's): the pairs are split into 10 folds in order; for each fold, the threshold on the cosine
similarity that maximises accuracy on the other 9 folds is applied to it; reported: the mean and standard
deviation of the 10 accuracies. Each image's embedding is the sum of the embeddings of the image and of its
horizontal flip, L2-normalised. TAR at FAR 1e-3: the share of same-identity pairs above the threshold that
lets through at most 0.1% of different-identity pairs (reported only with at least 1,000 of those).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compact.data.folder import MAX_PIXELS
from compact.errors import CompactError

FOLDS = 10
#: largest packed validation file read (the public LFW/CFP-FP/AgeDB-30 files are 50-300 MB)
PACKED_LIMIT = 2 << 30
#: most bytes the decoded images of one packed file may take (LFW's 12,000 at 112 px: 450 MB); a file of
#: millions of tiny images would otherwise ask for terabytes
DECODED_LIMIT = 8 << 30


# -- embeddings ---------------------------------------------------------------------------------------
def _classifier(model: nn.Module) -> nn.Module:
    from compact.face.margin import CosineClassifier

    found = [m for m in model.modules() if isinstance(m, CosineClassifier)]
    if len(found) != 1:
        raise CompactError(
            f"{type(model).__name__} has {len(found)} cosine classifiers; an embedding model ends with exactly "
            "one (mobilefacenet, or an exit with the 'embedding' head)"
        )
    return found[0]


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256, flip: bool = True) -> torch.Tensor:
    """L2-normalised embeddings (the input of the model's cosine classifier) of ``images``; with ``flip``,
    of the image plus its horizontal flip."""
    classifier = _classifier(model)
    captured: list[torch.Tensor] = []
    handle = classifier.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            captured.clear()
            model(x)
            e = captured[-1].float()
            if flip:
                captured.clear()
                model(x.flip(3))
                e = e + captured[-1].float()
            out.append(F.normalize(e, dim=1).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out)


# -- metrics ------------------------------------------------------------------------------------------
def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (between consecutive sorted scores) with the highest accuracy of ``score > t``."""
    order = np.argsort(scores)
    s, y = scores[order], same[order].astype(np.int64)
    # accuracy when the threshold sits below the i-th sorted score: different pairs below + same pairs above
    diff_below = np.concatenate([[0], np.cumsum(1 - y)])
    same_above = np.concatenate([[0], np.cumsum(y[::-1])])[::-1]
    correct = diff_below + same_above
    best = int(np.argmax(correct))
    candidates = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    return float(candidates[best])


def ten_fold_accuracy(scores: Sequence[float], same: Sequence[bool], folds: int = FOLDS) -> dict[str, Any]:
    """The verification accuracy of the 10-fold protocol (module docstring): mean, std and per fold."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise CompactError(f"{len(scores)} scores but {len(same)} same/different labels")
    if len(scores) < folds * 2:
        raise CompactError(f"10-fold verification needs at least {folds * 2} pairs, got {len(scores)}")
    if not np.isfinite(scores).all():
        raise CompactError("verification scores must be finite")
    parts = np.array_split(np.arange(len(scores)), folds)
    accuracies, thresholds = [], []
    for k, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        t = _best_threshold(scores[train], same[train])
        accuracies.append(float(((scores[test] > t) == same[test]).mean()))
        thresholds.append(t)
    return {
        "accuracy": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "folds": accuracies,
        "thresholds": thresholds,
        "pairs": int(len(scores)),
    }


def tar_at_far(scores: Sequence[float], same: Sequence[bool], far: float = 1e-3) -> float | None:
    """The true accept rate at the threshold whose false accept rate is at most ``far``; None when there
    are fewer than ``1 / far`` different-identity pairs (the rate could not be measured)."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    impostor = np.sort(scores[~same])[::-1]
    if len(impostor) < round(1 / far) or not same.any():
        return None
    allowed = int(np.floor(far * len(impostor)))  # impostor scores that may lie above the threshold
    threshold = impostor[allowed] if allowed < len(impostor) else -np.inf
    return float((scores[same] > threshold).mean())


def verify(model: nn.Module, images: torch.Tensor, pairs: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    """Verification figures of ``model`` on ``pairs`` (indices into ``images``, shape (P, 2))."""
    e = embed(model, images)
    scores = (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1).numpy()
    out = ten_fold_accuracy(scores, same)
    out["tar_at_far_1e-3"] = tar_at_far(scores, same)
    return out


# -- data ---------------------------------------------------------------------------------------------
class _BytesOnly(pickle.Unpickler):
    """Rebuilds only what the packed files hold (tuples, lists, bytes, bools, ints): any class or function
    a pickle names, which is how a pickle runs code, is refused."""

    def find_class(self, module: str, name: str):  # noqa: D401 (pickle's name)
        raise CompactError(f"refusing to load {module}.{name}: a packed validation file holds only bytes and booleans")


def read_packed(path: str | Path, size: int = 112) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A packed validation file (a pickle of ``(list of encoded images, list of same/different)``, as
    InsightFace distributes LFW, CFP-FP and AgeDB-30): (images as uint8 (N, 3, size, size), pairs (P, 2),
    same (P,)). Image ``2i`` and ``2i + 1`` form pair ``i``."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise CompactError(f"{path} {'is not a regular file' if path.exists() else 'does not exist'}")
    if path.stat().st_size > PACKED_LIMIT:
        raise CompactError(f"{path} is larger than {PACKED_LIMIT >> 20} MB; not a packed validation file")
    try:
        with open(path, "rb") as f:
            data = _BytesOnly(f, encoding="bytes").load()
    except CompactError:
        raise
    except Exception as exc:  # a truncated or foreign file: one line, never a traceback
        raise CompactError(f"{path} is not a packed validation file ({type(exc).__name__}: {exc})"[:300]) from None
    if not (isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], list | tuple)):
        raise CompactError(f"{path}: expected (images, same/different list)")
    blobs, issame = data
    if not all(isinstance(b, bytes | bytearray) for b in blobs) or not all(isinstance(v, bool | int) for v in issame):
        raise CompactError(f"{path}: the images must be encoded bytes and the labels booleans")
    if len(blobs) != 2 * len(issame):
        raise CompactError(f"{path}: {len(blobs)} images for {len(issame)} pairs (expected two images per pair)")
    if len(blobs) * 3 * size * size > DECODED_LIMIT:
        raise CompactError(
            f"{path}: {len(blobs):,} images take {len(blobs) * 3 * size * size / 2**30:.1f} GiB at {size} px, "
            f"more than compact decodes from one packed file ({DECODED_LIMIT >> 30} GiB)"
        )
    images = torch.empty(len(blobs), 3, size, size, dtype=torch.uint8)
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(bytes(blob))) as im:
                if im.width * im.height > MAX_PIXELS:  # read from the header, before anything is decoded
                    raise CompactError(f"{path}: image {i} is {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}")
                im = im.convert("RGB").resize((size, size))
                images[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        except CompactError:
            raise
        except Exception as exc:
            raise CompactError(f"{path}: image {i} does not decode ({type(exc).__name__})") from None
    pairs = np.arange(len(blobs)).reshape(-1, 2)
    return images, pairs, np.asarray([bool(v) for v in issame])


def read_lfw_pairs(root: str | Path, pairs_file: str | Path | None = None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """LFW's layout: ``pairs.txt`` (a header line, then ``name i j`` for a same pair or ``name1 i name2 j``
    for a different one) and images at ``root/name/name_%04d.jpg``. Returns (image paths, pairs as index
    pairs into them, same); a pair naming a missing image is an error naming it."""
    root = Path(root)
    pairs_file = Path(pairs_file) if pairs_file else root / "pairs.txt"
    if not pairs_file.is_file():
        raise CompactError(f"{pairs_file} does not exist (LFW's pairs.txt)")
    lines = pairs_file.read_text(errors="replace").splitlines()
    paths: list[Path] = []
    index: dict[Path, int] = {}
    pairs, same = [], []

    def image(name: str, number: str, line_no: int) -> int:
        if "/" in name or name.startswith(".") or not number.isdigit():
            raise CompactError(f"{pairs_file}:{line_no}: bad image reference {name!r} {number!r}")
        p = root / name / f"{name}_{int(number):04d}.jpg"
        if not p.is_file():
            raise CompactError(f"{pairs_file}:{line_no}: {p} does not exist")
        if p not in index:
            index[p] = len(paths)
            paths.append(p)
        return index[p]

    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 3:
            pairs.append((image(parts[0], parts[1], n), image(parts[0], parts[2], n)))
            same.append(True)
        elif len(parts) == 4:
            pairs.append((image(parts[0], parts[1], n), image(parts[2], parts[3], n)))
            same.append(False)
        else:
            raise CompactError(f"{pairs_file}:{n}: expected 'name i j' or 'name1 i name2 j', got {line.strip()!r}")
    if not pairs:
        raise CompactError(f"{pairs_file} lists no pairs")
    return paths, np.asarray(pairs, dtype=np.int64), np.asarray(same)


def load_pairs(
    path: str | Path, input_size: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Verification pairs from a packed file or an LFW folder, as the network's normalised float input
    (resized to ``input_size``, converted to its channels): (images, pairs, same)."""
    from PIL import Image

    path = Path(path)
    c, side = int(input_size[0]), int(input_size[-1])
    if path.is_dir():
        paths, pairs, same = read_lfw_pairs(path)
        images = torch.empty(len(paths), 3, side, side, dtype=torch.uint8)
        for i, p in enumerate(paths):
            try:
                with Image.open(p) as im:
                    if im.width * im.height > MAX_PIXELS:
                        raise CompactError(f"{p} is {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}")
                    images[i] = torch.from_numpy(np.asarray(im.convert("RGB").resize((side, side))).copy()).permute(
                        2, 0, 1
                    )
            except CompactError:
                raise
            except Exception as exc:
                raise CompactError(f"{p} does not decode as an image ({type(exc).__name__})") from None
    else:
        images, pairs, same = read_packed(path, size=side)
    x = images.float() / 255.0
    if c == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif c != 3:
        raise CompactError(f"verification images are RGB; the network takes {c} channels")
    if mean and std:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x, pairs, same


@torch.no_grad()
def verify_outputs(net: nn.Module, images: torch.Tensor, pairs: np.ndarray, same: np.ndarray) -> list[dict[str, Any]]:
    """Verification figures of every output of a multi-exit embedding network, from one shared forward per
    batch (the embedding of output ``i`` is the input of its cosine classifier)."""
    from compact.face.margin import CosineClassifier

    heads = [next((m for m in h.modules() if isinstance(m, CosineClassifier)), None) for h in net.heads]
    final = [m for m in net.backbone.modules() if isinstance(m, CosineClassifier)]
    if any(h is None for h in heads) or len(final) != 1:
        raise CompactError("verification needs a cosine classifier at every output (mobilefacenet, embedding heads)")
    classifiers = [*heads, final[0]]
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    sums: list[list[torch.Tensor]] = [[] for _ in classifiers]
    try:
        for start in range(0, len(images), 256):
            x = images[start : start + 256].to(device)
            total = [0.0] * len(classifiers)
            for view in (x, x.flip(3)):
                captured: dict[int, torch.Tensor] = {}
                hooks = [c.register_forward_hook(lambda _m, a, _o, i=i, d=captured: d.__setitem__(i, a[0].float()))
                         for i, c in enumerate(classifiers)]  # fmt: skip
                try:
                    net.forward_exits(view)
                finally:
                    for h in hooks:
                        h.remove()
                total = [t + captured[i] for i, t in enumerate(total)]
            for i, t in enumerate(total):
                sums[i].append(F.normalize(t, dim=1).cpu())
    finally:
        net.train(was_training)
    out = []
    for i, chunks in enumerate(sums):
        e = torch.cat(chunks)
        scores = (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1).numpy()
        result = ten_fold_accuracy(scores, same)
        result["tar_at_far_1e-3"] = tar_at_far(scores, same)
        result["output"] = i
        out.append(result)
    return out
