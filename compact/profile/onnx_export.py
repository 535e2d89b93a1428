"""ONNX export with a checker pass and a parity check against ONNX Runtime.

Exporter choice: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset
``OPSET`` (17). torch 2.14's default, the dynamo exporter, needs the extra ``onnxscript`` package and
re-traces the model with torch.export; the TorchScript exporter handles every model compact makes (FX
graph modules of exported exits included) with the dependencies compact already has. The batch axis is
dynamic, so one file serves every batch size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compact._atomic import atomic_path
from compact.errors import CompactError

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def export_onnx(
    model: nn.Module, input_size: Sequence[int], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path`` with a dynamic batch axis and check it (full check)."""
    return export_graph(model, (torch.zeros(2, *input_size),), [INPUT], [OUTPUT], path, metadata)


def export_graph(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | Path,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` called on example ``inputs`` (batch first) with the given tensor names and a dynamic
    batch axis on each, then run onnx's full checker; the file appears only when both succeed. ``metadata``
    goes into the graph's ``metadata_props`` (what a deployment needs beside the graph: normalisation,
    classes)."""
    import onnx

    path = Path(path)
    model = model.eval().cpu()
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notes

        def export(module: nn.Module) -> None:
            torch.onnx.export(
                module,
                tuple(inputs),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
            )

        try:
            export(model)
        except Exception as exc:  # the exporter raises various types; the message names the operator
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            traced = _fx_traced(model) if len(inputs) == 1 else None
            try:
                if traced is None:
                    raise exc
                export(traced)
            except Exception:
                raise CompactError(f"ONNX cannot export {type(model).__name__}: {first}") from exc
        try:
            proto = onnx.load(str(tmp))
            if metadata:
                onnx.helper.set_model_props(proto, dict(metadata))
                onnx.save(proto, str(tmp))
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:
            raise CompactError(f"the ONNX export of {type(model).__name__} fails onnx's checker: {exc}") from exc
    return path


class _LastNode(nn.Module):
    """A traced network (a feature extractor of its last graph node) that returns that node's tensor."""

    def __init__(self, extractor: nn.Module, node: str) -> None:
        super().__init__()
        self.extractor = extractor
        self.node = node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)[self.node]


def _fx_traced(model: nn.Module) -> nn.Module | None:
    """``model`` traced by torch.fx, as compact traces networks for their exits, or None when it cannot be.

    The TorchScript exporter traces an eager module with its Python arguments as they are passed between
    submodules; some arguments it cannot take (timm's EVA-02 passes ``is_causal`` to each block, which the
    exporter turns into a tensor that ``scaled_dot_product_attention`` refuses). An FX graph holds such
    defaults as constants, so it exports where the eager module does not; callers check the ONNX graph's
    parity against the eager module."""
    from torch import fx

    from compact.exits._fx import feature_extractor, graph_node_names

    if isinstance(model, fx.GraphModule):
        return None
    try:
        node = graph_node_names(model)[-1]
        return _LastNode(feature_extractor(model, [node]), node).eval()
    except (CompactError, IndexError):
        return None


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session with all graph optimisations (``ORT_ENABLE_ALL``). ``spinning=False``
    lets its worker threads sleep as soon as a run ends (ONNX Runtime's threads otherwise spin-wait for the
    next run; several sessions that run one after another, like a cascade's segments, would then take the
    cores from each other)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CompactError("onnxruntime is not installed: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except MemoryError:
        raise
    except Exception as exc:  # ONNX Runtime's own classes (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile...)
        text = " ".join(str(exc).split())[:500]
        raise CompactError(f"ONNX Runtime cannot load {path}: {text}") from None


@torch.no_grad()
def parity(model: nn.Module, session, input_size: Sequence[int], batch: int = 4, seed: int = 0) -> float:
    """Max absolute difference between PyTorch's and ONNX Runtime's outputs on random inputs, divided by
    the largest output magnitude when that exceeds 1 (float32 rounding grows with the magnitude: an
    untrained deep network can have logits in the thousands)."""
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    expected = model.eval().cpu()(x).numpy()
    got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    if got.shape != expected.shape:
        raise CompactError(f"ONNX Runtime gives shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
