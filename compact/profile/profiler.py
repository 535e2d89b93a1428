"""The profile of one or several models: parameters, MACs, ONNX export + parity, latency by runtime and batch.

:func:`load_target` turns a model file or a run folder (optionally one exit of it) into a module;
:func:`profile_models` measures several of them in one interleaved session and returns one JSON-ready
profile per model, which :func:`write_profile` stores next to the model (``<file>.profile.json``) or in the
run (``profile.json`` / ``profile-exit<k>.json``), so that reports never re-measure.
"""

from __future__ import annotations

import copy
import json
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compact._atomic import write_text
from compact.errors import CompactError
from compact.profile.counting import count
from compact.profile.deploy import foldable_layers, inference_form
from compact.profile.latency import SETTLE_MS, time_interleaved
from compact.profile.onnx_export import OPSET, export_onnx, ort_session, parity

RUNTIMES = ("onnxruntime", "pytorch")
PARITY_LIMIT = 1e-4


@dataclass
class Target:
    """A module to profile, where it came from, and where its profile belongs."""

    name: str
    module: nn.Module
    input_size: list[int]
    profile_path: Path | None  # None: a model built by name, whose profile is not stored anywhere
    description: dict[str, Any]
    #: for an exit model: makes an eager backbone of its architecture and sizes, to fold it for inference
    exit_backbone: Callable[[], nn.Module] | None = None


def display_name(path: Path) -> str:
    """How a model file or run is named in tables: its path relative to the working folder when it lies
    inside it (so that several ``exports/output1.safetensors`` can be told apart), else the full path."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def architecture_target(
    name: str, input_size: Sequence[int], num_classes: int = 10, model_kwargs: dict[str, Any] | None = None
) -> Target:
    """A freshly initialised registered architecture (``cifar_resnet56``, ``timm:resnet18``, ...) to profile;
    counts and latency do not depend on training (BatchNorm keeps its initial statistics)."""
    from compact.models import create_model
    from compact.models.arguments import check_kwargs_mapping

    kwargs = check_kwargs_mapping(model_kwargs or {}, f"model argument of {name}")
    torch.manual_seed(0)
    module = create_model(name, num_classes=num_classes, in_chans=int(input_size[0]), **kwargs)
    desc = {"source": "initialisation", "arch": name, "kind": "full", "dataset": None}
    return Target(name, module.eval(), list(input_size), None, desc)


def load_target(path: str | Path, exit: str | None = None) -> Target:
    """A model file or run folder; ``exit`` picks one output (index or ``final``) of a multi-exit network."""
    from compact.engine import open_run
    from compact.exits import MultiExitNet
    from compact.exits.standalone import exit_index, extract_exit
    from compact.modelfile import load_model

    path = Path(path)
    if path.is_dir():
        module, info = open_run(path).network()
    elif path.is_file():
        module, info = load_model(path)
    else:
        raise CompactError(f"{path} does not exist")
    desc = {"source": str(path), "arch": info.arch, "kind": info.kind, "dataset": info.dataset}
    exit_backbone = None
    if isinstance(module, MultiExitNet):
        i = exit_index(module, exit if exit is not None else "final")
        desc.update(output=i, depth=module.depths[i], node=([*module.exit_nodes, "final"])[i])
        if i < module.num_outputs - 1:
            exit_backbone = _copy_to_fold(module.backbone)
        module = extract_exit(module, i)
        suffix = "" if exit is None else f"-exit{i}"
    elif exit is not None:
        raise CompactError(f"{path} is a single {info.kind} model; --exit applies to runs and multi-exit files")
    else:
        suffix = ""
    if info.kind == "exit":
        exit_backbone = lambda m=module: _eager_backbone(info, m)  # noqa: E731
    if path.is_dir():
        profile_path = path / f"profile{suffix}.json"
    else:
        profile_path = path.with_name(path.name.removesuffix(".safetensors") + f"{suffix}.profile.json")
    name = display_name(path) + (f"[exit {exit}]" if exit is not None else "")
    return Target(name, module.eval().cpu(), list(info.input_size), profile_path, desc, exit_backbone)


def _copy_to_fold(backbone: nn.Module) -> Callable[[], nn.Module]:
    """What makes the eager backbone to fold an exit of a multi-exit network: a copy of ``backbone`` when it
    has foldable layers (folding loads weights into it), else ``backbone`` itself (nothing is folded)."""
    return lambda: copy.deepcopy(backbone) if foldable_layers(backbone) else backbone


def _eager_backbone(info: Any, exit_model: nn.Module) -> nn.Module:
    """A fresh backbone of a stored exit model's architecture, resized to its trunk's weights (pruned) and
    given its layers' stored attributes."""
    from compact.modelfile import _conform
    from compact.models import create_model

    backbone = create_model(info.arch, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_kwargs)
    shapes = {k: tuple(v.shape) for k, v in exit_model.trunk.state_dict().items()}
    _conform(backbone, shapes, exit_model.backbone_attrs)
    return backbone


def profile_models(
    targets: Sequence[Target],
    *,
    onnx: bool = False,
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    rounds: int = 15,
    repeats: int = 5,
    latency: bool = True,
    runtimes: Sequence[str] = RUNTIMES,
) -> list[dict[str, Any]]:
    """Profiles of ``targets``; latency of every model x runtime x batch is measured interleaved
    (ONNX Runtime only with ``onnx``)."""
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise CompactError(f"unknown runtime(s) {sorted(unknown)}; valid: {', '.join(RUNTIMES)}")
    if any(b <= 0 for b in batches):
        raise CompactError(f"batch sizes must be > 0, got {list(batches)}")
    if threads is not None:
        if threads <= 0:
            raise CompactError(f"threads must be > 0, got {threads}")
        torch.set_num_threads(threads)
    profiles: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, t in enumerate(targets):
            module, folded, fold_warnings = inference_form(t.module, t.input_size, t.exit_backbone)
            c = count(module, t.input_size)
            prof: dict[str, Any] = {
                "model": t.name,
                **t.description,
                "input_size": t.input_size,
                "params": c.params,
                "macs": c.macs,
                "macs_conv_linear": c.macs_conv_linear,
                "macs_unit": "multiply-accumulates (fvcore flops)",
                "macs_by_operator": c.by_operator,
                "skipped_ops": c.skipped_ops,
            }
            if folded:
                prof["inference_form"] = folded
            if fold_warnings:
                prof["warnings"] = list(fold_warnings)
            session = None
            if onnx:
                onnx_path = export_onnx(module, t.input_size, Path(tmp) / f"m{k}.onnx")
                session = ort_session(onnx_path, threads)
                diff = parity(module, session, t.input_size)
                if not _depends_on_input(module, t.input_size):
                    prof.setdefault("warnings", []).append(
                        "its output does not depend on its input (e.g. a feature map shrunk to nothing, or zeroed "
                        "weights): ONNX parity compares constants and proves little"
                    )
                if diff >= PARITY_LIMIT:
                    raise CompactError(
                        f"{t.name}: ONNX Runtime differs from PyTorch by {diff:.2e} (limit {PARITY_LIMIT})"
                    )
                prof["onnx"] = {
                    "exporter": "torch.onnx TorchScript (dynamo=False)",
                    "opset": OPSET,
                    "checker": "full_check",
                    "dynamic_batch": True,
                    "parity_max_abs": diff,
                    "parity_note": "max |onnxruntime - pytorch| / max(1, max |pytorch|), random inputs",
                    "file_bytes": onnx_path.stat().st_size,
                }
            for b in batches:
                x = torch.randn(b, *t.input_size, generator=torch.Generator().manual_seed(b))
                if "pytorch" in runtimes:
                    runners[f"{k}|pytorch|{b}"] = _torch_runner(module, x)
                if session is not None and "onnxruntime" in runtimes:
                    feed = {"input": x.numpy().astype(np.float32)}
                    runners[f"{k}|onnxruntime|{b}"] = lambda s=session, f=feed: s.run(None, f)
            profiles.append(prof)
        if latency and runners:
            # one interleaved session per runtime: ONNX Runtime's spinning workers would otherwise slow the
            # PyTorch calls that follow them (see compact.profile.latency)
            for runtime in runtimes:
                phase = {key: fn for key, fn in runners.items() if key.split("|")[1] == runtime}
                if not phase:
                    continue
                for key, timing in time_interleaved(phase, rounds=rounds, repeats=repeats).items():
                    k, _, b = key.split("|")
                    profiles[int(k)].setdefault("latency_ms", {}).setdefault(runtime, {})[b] = timing.to_dict()
    settings = {
        "threads": torch.get_num_threads(),
        "batches": list(batches),
        "rounds": rounds,
        "repeats": repeats,
        "onnxruntime": {"provider": "CPUExecutionProvider", "graph_optimization_level": "ORT_ENABLE_ALL"}
        if onnx
        else None,
        "interleaved": [t.name for t in targets],
        "timing": f"each runtime in its own interleaved session; {SETTLE_MS:g} ms pause and one untimed call before "
        "each timed block",
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "torch": torch.__version__,
    }
    for prof in profiles:
        prof["settings"] = settings
    return profiles


@torch.no_grad()
def _depends_on_input(module: nn.Module, input_size: Sequence[int]) -> bool:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, *input_size, generator=g), torch.randn(2, *input_size, generator=g)
    return not torch.equal(module(a), module(b))


def _torch_runner(module: nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            module(x)

    return run


def write_profile(profile: dict[str, Any], path: str | Path) -> None:
    write_text(Path(path), json.dumps(profile, indent=2) + "\n")
