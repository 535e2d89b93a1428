"""The seven backpropagation methods of the MW-BP paper (Section 5.1), and head probing on a frozen trunk
(footnote 3), behind one interface."""

from compact.methods import joint as _joint  # noqa: F401  (registration)
from compact.methods import multiway as _multiway  # noqa: F401
from compact.methods import probe as _probe  # noqa: F401
from compact.methods import relay as _relay  # noqa: F401
from compact.methods import standard as _standard  # noqa: F401
from compact.methods._live import NonLiveWeightError, SavedTensorModifiedError, live_parameters
from compact.methods.base import METHODS, BPMethod, SGDConfig, StepOutput, create_method, list_methods

__all__ = [
    "METHODS",
    "BPMethod",
    "NonLiveWeightError",
    "SGDConfig",
    "SavedTensorModifiedError",
    "StepOutput",
    "create_method",
    "list_methods",
    "live_parameters",
]
