"""Early-exit inference: a multi-exit network cut into ONNX segments that stops at the first confident exit.

::

    from compact.cascade import Cascade, export_cascade
    export_cascade(net, info, "cascade/")                 # segment*.onnx, static*.onnx, manifest.json
    cascade = Cascade("cascade/")
    pred, exit_used = cascade.predict(x, threshold=0.9)   # x: float32 (N, C, H, W), normalised
"""

from __future__ import annotations

from compact._lazy import lazy_getattr

_LAZY = {
    "Cascade": "compact.cascade.runtime",
    "confidence": "compact.cascade.runtime",
    "decide": "compact.cascade.runtime",
    "fit_temperatures": "compact.cascade.runtime",
    "read_manifest": "compact.cascade.runtime",
    "export_cascade": "compact.cascade.export",
    "split": "compact.cascade.segments",
    "parse_thresholds": "compact.cascade.sweep",
    "study": "compact.cascade.sweep",
}

__getattr__ = lazy_getattr("compact.cascade", _LAZY, globals())

__all__ = sorted(_LAZY)
