"""Running an exported cascade with ONNX Runtime: each sample stops at the first exit confident enough.

Exit rule: exit ``i`` answers for a sample when its confidence is strictly above the threshold; the final
output answers for every sample that reaches it. Confidences (all in [0, 1]):

- ``maxprob``: the largest softmax probability (threshold 0 leaves every sample at exit 0, threshold 1
  takes every sample to the final output);
- ``margin``: the largest probability minus the second largest;
- ``entropy``: 1 - H(p) / log(C), 1 for a one-hot distribution, 0 for a uniform one.

With temperatures (one per exit, :func:`fit_temperatures` on held-out images), the softmax is taken of
``logits / T_i``; the prediction (the arg max) does not change, only when a sample leaves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compact._numbers import is_count, is_finite_list
from compact.cascade.export import FORMAT, FORMAT_VERSION, MANIFEST, macs_add_up, sha256
from compact.errors import CompactError

RULES = ("maxprob", "margin", "entropy")
#: largest manifest read (a cascade of a few hundred exits is far below)
MANIFEST_LIMIT = 1 << 20


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def run_session(session: Any, outputs: list[str], feed: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    """``session.run``, with ONNX Runtime's failures (a graph that does not compute on these inputs) turned
    into a :class:`CompactError` naming the graph's file."""
    try:
        return session.run(outputs, feed)
    except MemoryError:
        raise
    except Exception as exc:  # ONNX Runtime's own error classes
        raise CompactError(f"{name}: ONNX Runtime failed running it: {_text(exc)}") from None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidence(logits: np.ndarray, rule: str = "maxprob", temperature: float = 1.0) -> np.ndarray:
    """Per-sample confidence in [0, 1] of ``logits`` (N, C) under ``rule`` (see the module docstring)."""
    if rule not in RULES:
        raise CompactError(f"unknown exit rule {rule!r}; valid: {', '.join(RULES)}")
    if rule == "maxprob":  # max softmax = 1 / sum(exp(z - max z)): no division of every probability
        z = logits.astype(np.float64)
        if temperature != 1.0:
            z /= temperature
        z -= z.max(axis=1, keepdims=True)
        return 1.0 / np.exp(z).sum(axis=1)
    p = softmax(logits, temperature)
    if rule == "margin":
        if p.shape[1] < 2:
            return p[:, 0]
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    c = p.shape[1]
    if c < 2:
        return np.ones(len(p))
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    return np.clip(1.0 - h / math.log(c), 0.0, 1.0)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise CompactError(f"a threshold is a confidence in [0, 1], got {threshold!r}")
    return float(threshold)


def decide(
    logits: Sequence[np.ndarray], threshold: float, rule: str = "maxprob", temperatures: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, exit used) per sample from the logits of every exit (final last): what the cascade
    decides, computed from stored outputs (the sweep uses it; :meth:`Cascade.predict` runs the real thing)."""
    threshold = check_threshold(threshold)
    temps = _temperatures(temperatures, len(logits))
    n = len(logits[0])
    pred = np.empty(n, dtype=np.int64)
    used = np.full(n, len(logits) - 1, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    for i, z in enumerate(logits):
        leave = open_.copy() if i == len(logits) - 1 else open_ & (confidence(z, rule, temps[i]) > threshold)
        pred[leave] = z[leave].argmax(axis=1)
        used[leave] = i
        open_ &= ~leave
    return pred, used


def _temperatures(temperatures: Sequence[float] | None, n: int) -> list[float]:
    if temperatures is None:
        return [1.0] * n
    temps = [float(t) for t in temperatures]
    if len(temps) != n or not all(math.isfinite(t) and t > 0 for t in temps):
        raise CompactError(f"temperatures must be {n} positive numbers (one per exit), got {list(temperatures)}")
    return temps


def fit_temperatures(logits: Sequence[np.ndarray], labels: np.ndarray) -> list[float]:
    """Per exit, the temperature in [0.05, 20] minimising the negative log-likelihood of ``labels``
    (golden-section search over log T; the NLL is convex in 1/T)."""
    labels = np.asarray(labels, dtype=np.int64)

    def nll(z: np.ndarray, log_t: float) -> float:
        p = softmax(z, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None)).mean())

    temps = []
    phi = (math.sqrt(5) - 1) / 2
    for z in logits:
        lo, hi = math.log(0.05), math.log(20.0)
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        fa, fb = nll(z, a), nll(z, b)
        for _ in range(60):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - phi * (hi - lo)
                fa = nll(z, a)
            else:
                lo, a, fa = a, b, fb
                b = lo + phi * (hi - lo)
                fb = nll(z, b)
        temps.append(round(math.exp((lo + hi) / 2), 6))
    return temps


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a cascade folder, checked: format, fields, file names inside the folder, and each
    ONNX file's SHA-256 (a changed or missing segment is an error, before anything runs)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CompactError(f"{folder} is not a cascade folder (no {MANIFEST}); make one with compact export --cascade")
    if path.stat().st_size > MANIFEST_LIMIT:
        raise CompactError(f"{path} is larger than {MANIFEST_LIMIT} bytes; not a cascade manifest")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CompactError(f"{path} is not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CompactError(f"{path} is not a compact cascade manifest")
    if not is_count(m.get("format_version")) or m["format_version"] != FORMAT_VERSION:
        raise CompactError(
            f"{path} has cascade format version {m.get('format_version')!r}; this compact reads {FORMAT_VERSION}"
        )
    segments, statics = m.get("segments"), m.get("static")
    if not isinstance(segments, list) or len(segments) < 2 or not isinstance(statics, list):
        raise CompactError(f"{path}: a cascade needs at least two segments and the static references")
    size = m.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and 0 < s <= 4096 for s in size)):
        raise CompactError(f"{path}: input_size must be [C, H, W], got {size!r}")
    if not isinstance(m.get("num_classes"), int) or not 1 <= m["num_classes"] <= 100_000:
        raise CompactError(f"{path}: num_classes must be an integer in 1..100000")
    if not isinstance(m.get("source", {}), dict):
        got = f"{m['source']!r:.60}"
        raise CompactError(f"{path}: source must be a mapping (the run the cascade was cut from), got {got}")
    for key in ("arch", "dataset"):
        if not isinstance(m.get(key), str | None):
            raise CompactError(f"{path}: {key} must be a name, got {m[key]!r:.60}")
    for key, positive in (("mean", False), ("std", True)):  # Cascade.normalize divides by them
        v = m.get(key)
        if v is not None and not is_finite_list(v, size[0], positive):
            more = " > 0" if positive else ""
            raise CompactError(
                f"{path}: {key} must be null or one finite number{more} per input channel ({size[0]}), got {v!r:.60}"
            )
    classes = m.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and len(classes) == m["num_classes"] and all(isinstance(c, str) for c in classes)
    ):
        raise CompactError(f"{path}: classes must be null or {m['num_classes']} names, got {classes!r:.60}")
    for what, items in (("segment", segments), ("static", statics)):
        for i, s in enumerate(items):
            if not isinstance(s, dict):
                raise CompactError(f"{path}: {what} {i} must be a mapping")
            _check_file(folder, s, f"{path}: {what} {i}")
            macs = s.get("macs")
            parts = [macs.get("trunk"), macs.get("head")] if what == "segment" and isinstance(macs, dict) else [macs]
            for part in parts:
                if not (isinstance(part, dict) and all(isinstance(part.get(k), int) and part[k] >= 0
                                                       for k in ("total", "conv_linear"))):  # fmt: skip
                    raise CompactError(f"{path}: {what} {i} has no valid MAC counts")
            if what == "segment":
                for key in ("inputs", "outputs"):
                    names = s.get(key)
                    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
                        raise CompactError(f"{path}: segment {i} needs a list of {key} names")
    if len(statics) != len(segments):
        raise CompactError(f"{path}: {len(segments)} segments but {len(statics)} static references")
    wrong = macs_add_up(m)
    if wrong:
        raise CompactError(f"{path}: {wrong}")
    return m


def _check_file(folder: Path, entry: dict[str, Any], at: str) -> None:
    name = entry.get("file")
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".onnx"):
        raise CompactError(f"{at}: file must be a plain .onnx name inside the folder, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise CompactError(f"{at}: {path} is missing")
    if entry.get("sha256") != sha256(path):
        raise CompactError(f"{at}: {path} does not match the manifest (changed since the export; export again)")


class Cascade:
    """An exported cascade (:func:`~compact.cascade.export.export_cascade`) under ONNX Runtime.

    Inputs are float32 arrays (N, C, H, W), normalised as in training (``mean``/``std`` of the manifest;
    :meth:`normalize` does it for uint8 images).
    """

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        from compact.profile.onnx_export import ort_session

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        # every session without spin-waiting threads: the segments run one after another (and the static
        # references are timed with the same settings, so that the comparison is like for like)
        self.sessions = [
            ort_session(self.folder / s["file"], threads, spinning=False) for s in self.manifest["segments"]
        ]
        self.static_sessions = [
            ort_session(self.folder / s["file"], threads, spinning=False) for s in self.manifest["static"]
        ]
        for sess, s in zip(self.sessions, self.manifest["segments"], strict=True):
            have = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
            if have != (s["inputs"], s["outputs"]):
                raise CompactError(f"{self.folder / s['file']}: its tensors {have} are not the manifest's")
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Run two blank images through every graph: each must return (2, classes) logits and carry batch-2
        features, so that a graph which does not compute what the manifest says fails here, by name."""
        classes = self.manifest["num_classes"]
        carry = [np.zeros((2, *self.input_size), np.float32)]
        for i, s in enumerate(self.manifest["segments"]):
            outs = self._segment(i, carry)
            if any(o.ndim == 0 or o.shape[0] != 2 for o in outs) or outs[-1].shape != (2, classes):
                got = [tuple(o.shape) for o in outs]
                raise CompactError(
                    f"{self.folder / s['file']}: on 2 images it returns shapes {got}; the manifest's cascade needs "
                    f"features of 2 images and (2, {classes}) logits"
                )
            carry = outs[:-1]
        for i, s in enumerate(self.manifest["static"]):
            got = self.run_static(i, np.zeros((2, *self.input_size), np.float32)).shape
            if got != (2, classes):
                raise CompactError(f"{self.folder / s['file']}: returns logits of shape {got}, not (2, {classes})")

    @property
    def num_exits(self) -> int:
        return len(self.sessions)

    @property
    def input_size(self) -> list[int]:
        return list(self.manifest["input_size"])

    def exit_macs(self, kind: str = "total") -> list[int]:
        """MACs per image of a sample that leaves at exit ``i``: segments 0..i and the heads 0..i it ran."""
        out, acc = [], 0
        for s in self.manifest["segments"]:
            acc += s["macs"]["trunk"][kind] + s["macs"]["head"][kind]
            out.append(acc)
        return out

    def static_macs(self, kind: str = "total") -> list[int]:
        return [s["macs"][kind] for s in self.manifest["static"]]

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) images to the network's float32 input."""
        mean, std = self.manifest.get("mean"), self.manifest.get("std")
        x = images.astype(np.float32) / 255.0
        if mean and std:
            x = (x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)) / np.asarray(std, np.float32).reshape(
                1, -1, 1, 1
            )
        return x

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or list(x.shape[1:]) != self.input_size:
            raise CompactError(f"the cascade takes (N, {', '.join(map(str, self.input_size))}) inputs, got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _segment(self, i: int, carry: list[np.ndarray]) -> list[np.ndarray]:
        s = self.manifest["segments"][i]
        return run_session(self.sessions[i], s["outputs"], dict(zip(s["inputs"], carry, strict=True)), s["file"])

    def run_all(self, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """Logits of every exit (final last) for every sample: the cascade run to the end."""
        x = self._check_input(x)
        chunks: list[list[np.ndarray]] = [[] for _ in self.sessions]
        for start in range(0, len(x), batch_size):
            carry = [x[start : start + batch_size]]
            for i in range(self.num_exits):
                outs = self._segment(i, carry)
                chunks[i].append(outs[-1])
                carry = outs[:-1]
        return [np.concatenate(c) for c in chunks]

    def predict(
        self,
        x: np.ndarray,
        threshold: float,
        rule: str = "maxprob",
        temperatures: Sequence[float] | None = None,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, exit used) per sample. Samples are taken ``batch_size`` at a time (default: all at
        once); within a batch, only the samples no exit has answered go on to the next segment, so the
        batch shrinks as it goes. ``batch_size=1`` is the one-image path. Both give the same predictions
        (up to ONNX Runtime's rounding, which may differ between batch sizes for a sample whose
        confidence sits on the threshold)."""
        threshold = check_threshold(threshold)
        temps = _temperatures(temperatures, self.num_exits)
        if rule not in RULES:
            raise CompactError(f"unknown exit rule {rule!r}; valid: {', '.join(RULES)}")
        x = self._check_input(x)
        n = len(x)
        step = n if batch_size is None else int(batch_size)
        if step < 1:
            raise CompactError(f"batch size must be >= 1, got {batch_size}")
        pred = np.empty(n, dtype=np.int64)
        used = np.empty(n, dtype=np.int64)
        if n == 0:
            return pred, used
        if step == 1:
            self._predict_one_by_one(x, threshold, rule, temps, pred, used)
            return pred, used
        last = self.num_exits - 1
        for start in range(0, n, step):
            idx = np.arange(start, min(n, start + step))
            carry = [x[idx]]
            for i in range(self.num_exits):
                outs = self._segment(i, carry)
                z = outs[-1]
                if i == last:
                    pred[idx], used[idx] = z.argmax(axis=1), i
                    break
                leave = confidence(z, rule, temps[i]) > threshold
                if leave.any():
                    pred[idx[leave]], used[idx[leave]] = z[leave].argmax(axis=1), i
                    if leave.all():
                        break
                    keep = ~leave
                    idx, carry = idx[keep], [c[keep] for c in outs[:-1]]
                else:
                    carry = outs[:-1]
        return pred, used

    def _predict_one_by_one(self, x, threshold, rule, temps, pred, used) -> None:
        """The batch-1 path: one image at a time, stopping at its first confident exit."""
        last = self.num_exits - 1
        plan = [(sess, s["outputs"], s["inputs"]) for sess, s in zip(self.sessions, self.manifest["segments"],
                                                                      strict=True)]  # fmt: skip
        try:
            for j in range(len(x)):
                carry = [x[j : j + 1]]
                for i, (sess, outputs, inputs) in enumerate(plan):
                    outs = sess.run(outputs, dict(zip(inputs, carry, strict=True)))
                    z = outs[-1]
                    if i == last or confidence(z, rule, temps[i])[0] > threshold:
                        pred[j], used[j] = int(z[0].argmax()), i
                        break
                    carry = outs[:-1]
        except (CompactError, MemoryError):
            raise
        except Exception as exc:  # ONNX Runtime's own error classes
            raise CompactError(f"{self.folder}: ONNX Runtime failed running the cascade: {_text(exc)}") from None

    def run_static(self, i: int, x: np.ndarray) -> np.ndarray:
        """Logits of output ``i`` computed by its own single graph (the static reference)."""
        feed = {"input": self._check_input(x)}
        return run_session(self.static_sessions[i], ["logits"], feed, self.manifest["static"][i]["file"])[0]
