"""compact: train shallow networks with multi-way backpropagation (MW-BP), export every exit as a model,
prune deeper baselines and compare them.

The notebook entry points::

    from compact import create_model, attach_exits, create_method
    net = attach_exits(create_model("cifar_resnet56"), 5)      # 4 auxiliary exits + final
    method = create_method("mwbp", net)                          # or standard, joint, relay, ...
    out = method.step(images, labels)                            # one iteration; out.losses per output
"""

from __future__ import annotations

from compact._lazy import lazy_getattr
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


__getattr__ = lazy_getattr("compact", _LAZY, globals())


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
