"""Export a multi-exit network as an early-exit cascade: one ONNX graph per segment plus a manifest.

The folder written by :func:`export_cascade`::

    manifest.json        order, tensor names, MACs of every segment and head, normalisation, classes, hashes
    segment0.onnx ...    segment i: cut i-1 tensors in, cut i tensors and exit i's logits out
    static0.onnx ...     every exit (and the full network, last) as one graph: the static references

Every segment's exit logits, run through ONNX Runtime, match the multi-exit network in PyTorch (scaled
difference below 1e-4, as the profiler checks); the numbers are stored in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compact._version import __version__
from compact.cascade.segments import PARITY_LIMIT, Segment, check_segments, run_segments, split
from compact.errors import CompactError

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "compact-cascade", 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _names(i: int, seg: Segment, last: bool) -> tuple[list[str], list[str]]:
    inputs = ["input"] if i == 0 else [f"cut{i - 1}_{k}" for k in range(seg.num_in)]
    outputs = [f"cut{i}_{k}" for k in range(seg.num_out)] + ["logits" if last else f"logits{i}"]
    return inputs, outputs


def _macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    from compact.profile import count

    c = count(module, inputs=tuple(t[:1] for t in inputs))
    return {"total": c.macs, "conv_linear": c.macs_conv_linear}


@torch.no_grad()
def export_cascade(net: nn.Module, info: Any, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the cascade of ``net`` (a trained :class:`~compact.exits.MultiExitNet`; ``info``: its
    :class:`~compact.modelfile.ModelInfo`) into the folder ``out``; returns the manifest.

    The folder is built beside ``out`` and renamed into place once every file and check succeeded, so a
    failed export leaves nothing behind; an existing ``out`` is replaced only with ``overwrite`` and only
    if it holds a cascade.
    """
    from compact.exits.standalone import extract_exit
    from compact.profile.deploy import fold_network
    from compact.profile.onnx_export import export_graph, ort_session

    out = Path(out)
    if out.exists() and not (overwrite and (out / MANIFEST).is_file()):
        hint = "pass --overwrite to replace it" if (out / MANIFEST).is_file() else "name a new folder"
        raise CompactError(f"{out} already exists ({hint})")
    size = [int(s) for s in info.input_size]
    # counted and timed as deployed: re-parameterizable layers folded (compact.profile.deploy)
    net, folded, fold_warnings = fold_network(net.eval().cpu(), size)
    cut = split(net, size)
    torch_diffs = check_segments(net, cut.segments, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
        expected = net.forward_exits(x)
        carry: tuple[torch.Tensor, ...] = (x,)
        segments = []
        last = len(cut.segments) - 1
        for i, seg in enumerate(cut.segments):
            in_names, out_names = _names(i, seg, i == last)
            path = export_graph(seg, carry, in_names, out_names, tmp / f"segment{i}.onnx")
            got = ort_session(path).run(out_names, {n: t.numpy() for n, t in zip(in_names, carry, strict=True)})
            outs = seg(*carry)
            if got[-1].shape != tuple(expected[i].shape):
                raise CompactError(
                    f"segment {i}: ONNX Runtime's exit logits have shape {got[-1].shape}, PyTorch's "
                    f"{tuple(expected[i].shape)} (the graph's outputs are not the segment's)"
                )
            diff = float(np.abs(got[-1] - expected[i].numpy()).max() / max(1.0, float(expected[i].abs().max())))
            if not diff < PARITY_LIMIT:
                raise CompactError(f"segment {i}: ONNX Runtime's exit logits differ from PyTorch by {diff:.2e}")
            body_in = carry
            feat = seg.body(*body_in)[-1]
            trunk = _macs(seg.body, body_in)
            head = _macs(seg.head, (feat,)) if seg.head is not None else {"total": 0, "conv_linear": 0}
            segments.append(
                {
                    "file": path.name,
                    "sha256": sha256(path),
                    "inputs": in_names,
                    "outputs": out_names,
                    "crossing": cut.crossing[i] if i < last else [],
                    "node": net.exit_nodes[i] if i < last else "final",
                    "depth": net.depths[i],
                    "macs": {"trunk": trunk, "head": head},
                    "parity_onnx": diff,
                    "parity_torch": torch_diffs[i],
                }
            )
            carry = tuple(outs[:-1])
        statics = []
        for i in range(net.num_outputs):
            model = extract_exit(net, i).eval()
            path = export_graph(model, (x,), ["input"], ["logits"], tmp / f"static{i}.onnx")
            statics.append({"file": path.name, "sha256": sha256(path), "output": i, "macs": _macs(model, (x,))})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "compact_version": __version__,
            "arch": info.arch,
            "dataset": info.dataset,
            "num_classes": int(info.num_classes),
            "classes": info.classes,
            "input_size": size,
            "mean": info.mean,
            "std": info.std,
            "source": {k: v for k, v in info.source.items() if isinstance(v, str | int | float | bool)},
            "macs_unit": "multiply-accumulates (fvcore flops) for one image",
            "segments": segments,
            "static": statics,
        }
        if folded:
            manifest["inference_form"] = folded
        if fold_warnings:
            manifest["warnings"] = fold_warnings
        _check_accounting(manifest, run_segments(cut.segments, x), expected)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def macs_add_up(manifest: dict[str, Any]) -> str | None:
    """None when the segments' trunk MACs add up to the full network's (no feature computed twice or
    skipped), as every export checks; else what does not add up. Reading a manifest checks it again, so
    that a changed figure in it is refused rather than printed."""
    trunk = sum(s["macs"]["trunk"]["total"] for s in manifest["segments"])
    full = manifest["static"][-1]["macs"]["total"]
    return None if trunk == full else f"the segments' MACs ({trunk:,}) do not add up to the full network's ({full:,})"


def _check_accounting(manifest: dict[str, Any], got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """The cascade's trunks add up to the full network's MACs, and it gives one output per exit."""
    wrong = macs_add_up(manifest)
    if wrong:
        raise CompactError(wrong)
    if len(got) != len(expected):
        raise CompactError("the cascade does not give one output per exit")
