"""Reading a run folder back: its configuration, metrics and trained network, and exporting its outputs
as standalone model files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from compact.engine.checkpoint import load_checkpoint
from compact.engine.config import TrainConfig, read_yaml
from compact.engine.files import CHECKPOINT, CONFIG, MODEL
from compact.engine.metrics import read_history
from compact.errors import CompactError
from compact.exits import MultiExitNet
from compact.exits.standalone import exit_index, extract_exit
from compact.modelfile import ModelInfo, load_model, rebuild, save_model


@dataclass
class Run:
    """A run folder written by :func:`compact.engine.train`."""

    path: Path
    config: TrainConfig

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.path / "metrics.jsonl")

    def trained_outputs(self, num_outputs: int) -> list[bool]:
        from compact.methods import METHODS

        cls = METHODS.get(self.config.method)
        return [cls.trains_output(i, num_outputs) for i in range(num_outputs)]

    def network(self, device: str | torch.device = "cpu") -> tuple[MultiExitNet, ModelInfo]:
        """The trained network: the final model file if the run finished, else its last checkpoint."""
        if (self.path / MODEL).is_file():
            return load_model(self.path / MODEL, device)
        if not (self.path / CHECKPOINT).is_file():
            raise CompactError(f"run {self.path} has neither a final model ({MODEL}) nor a checkpoint yet")
        state = load_checkpoint(self.path / CHECKPOINT)
        try:
            info = ModelInfo(**state["model_info"])
        except (KeyError, TypeError) as exc:
            raise CompactError(f"checkpoint {self.path / CHECKPOINT} has no usable model description") from exc
        try:
            net = rebuild(info, state["model"], self.path / CHECKPOINT)
        except RuntimeError as exc:
            raise CompactError(f"checkpoint {self.path / CHECKPOINT} does not fit its own description: {exc}") from exc
        info.source["epochs"] = int(state["epoch"])
        return net.to(device).eval(), info


def open_run(path: str | Path) -> Run:
    """The run in ``path``; a folder without a run's ``config.yaml`` is an error."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        what = "does not exist" if not path.exists() else f"is not a run folder (no {CONFIG})"
        raise CompactError(f"{path} {what}")
    return Run(path, TrainConfig.from_dict(read_yaml(path / CONFIG), str(path / CONFIG)))


def export_output_onnx(
    net: MultiExitNet, info: ModelInfo, which: int | str, path: str | Path, overwrite: bool = False
) -> tuple[ModelInfo, float]:
    """Write output ``which`` of ``net`` as an ONNX graph (input ``input``, output ``logits``, dynamic
    batch) and return its description and its ONNX Runtime parity (as :func:`compact.profile.onnx_export.parity`
    measures it; a parity above 1e-4 is an error and nothing is written).

    The graph takes normalised images, as the model file does; the normalisation, input size, class names
    and where the output sits go into the graph's metadata (keys ``compact.*``, values JSON).
    """
    import json

    from compact.profile.onnx_export import export_onnx, ort_session, parity

    path = Path(path)
    i, sub_info = _output_info(net, info, which, path, overwrite)
    final = i == net.num_outputs - 1
    module = extract_exit(net, i).eval()
    sub_info.params = sum(p.numel() for p in module.parameters())
    metadata = {
        f"compact.{key}": json.dumps(value)
        for key, value in (
            ("arch", info.arch),
            ("output", i),
            ("depth", net.depths[i]),
            ("exit_node", None if final else net.exit_nodes[i]),
            ("input_size", list(info.input_size)),
            ("mean", info.mean),
            ("std", info.std),
            ("classes", info.classes),
            ("dataset", info.dataset),
        )
    }
    tmp = path.with_name(f".{path.name}.checking")
    try:
        export_onnx(module, info.input_size, tmp, metadata=metadata)
        diff = parity(module, ort_session(tmp, threads=1), info.input_size)
        if not diff < 1e-4:
            raise CompactError(
                f"the ONNX graph of output {i} differs from PyTorch by {diff:.1e} (limit 1e-4); not written"
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return sub_info, diff


def export_output(
    net: MultiExitNet, info: ModelInfo, which: int | str, path: str | Path, overwrite: bool = False
) -> ModelInfo:
    """Write output ``which`` (an index, or ``"final"``) of ``net`` as a standalone model file.

    An auxiliary exit becomes the backbone cut after the exit plus its head (kind ``exit``); the final
    output becomes the backbone without any head (kind ``full``).
    """
    path = Path(path)
    i, sub_info = _output_info(net, info, which, path, overwrite)
    return save_model(extract_exit(net, i), path, sub_info)


def _output_info(
    net: MultiExitNet, info: ModelInfo, which: int | str, path: Path, overwrite: bool
) -> tuple[int, ModelInfo]:
    """The index of output ``which`` and the description of it as a standalone model (an auxiliary exit:
    kind ``exit``; the final output: kind ``full``), after refusing to replace ``path`` unless asked."""
    if path.exists() and not overwrite:
        raise CompactError(f"{path} exists; pass --overwrite to replace it")
    i = exit_index(net, which)
    final = i == net.num_outputs - 1
    return i, replace(
        info,
        kind="full" if final else "exit",
        exit_nodes=[] if final else [net.exit_nodes[i]],
        head=None if final else net.head_type,
        attrs={},
        source={**info.source, "output": i, "depth": net.depths[i]},
    )
