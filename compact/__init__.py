"""compact: train shallow networks with multi-way backpropagation (MW-BP), export every exit as a model,
prune deeper baselines and compare them.

The notebook entry points::

    from compact import create_model, attach_exits, create_method
    net = attach_exits(create_model("cifar_resnet56"), 5)      # 4 auxiliary exits + final
    method = create_method("mwbp", net)                          # or standard, joint, relay, ...
    out = method.step(images, labels)                            # one iteration; out.losses per output
"""

from __future__ import annotations

import importlib
from typing import Any

from compact._version import __version__
from compact.errors import CompactError

#: name -> module, imported on first use (``compact --help`` and ``--version`` do not load torch)
_LAZY = {
    "LossWeighting": "compact.exits",
    "MultiExitNet": "compact.exits",
    "attach_exits": "compact.exits",
    "SGDConfig": "compact.methods",
    "create_method": "compact.methods",
    "list_methods": "compact.methods",
    "create_model": "compact.models",
    "list_models": "compact.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compact' has no attribute {name!r}")


__all__ = [
    "CompactError",
    "LossWeighting",
    "MultiExitNet",
    "SGDConfig",
    "__version__",
    "attach_exits",
    "create_method",
    "create_model",
    "list_methods",
    "list_models",
]
