"""compact: train shallow networks with multi-way backpropagation (MW-BP), export every exit as a model,
prune deeper baselines and compare them.

The notebook entry points::

    from compact import create_model, attach_exits, create_method
    net = attach_exits(create_model("cifar_resnet56"), 5)      # 4 auxiliary exits + final
    method = create_method("mwbp", net)                          # or standard, joint, relay, ...
    out = method.step(images, labels)                            # one iteration; out.losses per output
"""

from compact._version import __version__
from compact.errors import CompactError
from compact.exits import LossWeighting, MultiExitNet, attach_exits
from compact.methods import SGDConfig, create_method, list_methods
from compact.models import create_model, list_models

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
