"""The interface every backpropagation method implements, and the method registry.

A method owns its optimizers (plain ``torch.optim.SGD``; MW-BP has one per loss) and performs one training
iteration in :meth:`BPMethod.step`. It knows nothing about data, epochs or files: the training engine calls
``set_lr`` when the schedule changes the learning rate, ``on_lr_decay`` at each decay (adaptive loss
weights), ``train_step`` for each batch (``step`` under the chosen precision), and
``state_dict``/``load_state_dict`` for checkpoints.

Mixed precision (:meth:`BPMethod.set_precision`): the step runs under ``torch.autocast`` in bfloat16 or
float16 (parameters, gradients and optimizer state stay float32). float16 scales every loss before its
backward (``torch.amp.GradScaler``). A method that makes several updates per iteration (MW-BP) checks each
update's gradients on its own: an update whose gradients overflowed is skipped, the other updates of the
iteration are applied, and the scale is reduced once at the end of the iteration.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from compact._numbers import is_count, is_finite_number
from compact._registry import Registry
from compact.errors import CompactError
from compact.exits.network import MultiExitNet
from compact.exits.weighting import LossWeighting


@dataclass
class SGDConfig:
    """SGD settings of the paper and the authors' code: Nesterov momentum 0.9, weight decay 5e-4, lr 0.1."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CompactError(f"SGD {name} must be a finite number >= 0, got {value!r}")
        if self.nesterov and self.momentum == 0:
            raise CompactError("Nesterov momentum needs momentum > 0")


@dataclass
class StepOutput:
    """What one iteration computed, per output (final last); ``None`` where a method computed no output.

    ``logits`` are detached; for methods that re-forward, each output's logits come from its own forward.
    """

    losses: list[float | None]
    logits: list[torch.Tensor | None] = field(repr=False)


METHODS: Registry[type[BPMethod]] = Registry("backpropagation method")


class BPMethod(ABC):
    """One way of turning the losses of a multi-exit network into parameter updates."""

    name: ClassVar[str]
    #: options accepted by the constructor besides net/sgd/weighting, with their defaults
    options: ClassVar[dict[str, Any]] = {}
    #: whether the method only makes sense on a trained network (the engine then requires ``init_from``)
    needs_trained_trunk: ClassVar[bool] = False

    def __init__(
        self,
        net: MultiExitNet,
        sgd: SGDConfig | None = None,
        weighting: LossWeighting | None = None,
    ) -> None:
        if not isinstance(net, MultiExitNet):
            raise CompactError(
                f"{self.name} needs a MultiExitNet (see compact.exits.attach_exits), got {type(net).__name__}"
            )
        self.net = net
        self.sgd = sgd if sgd is not None else SGDConfig()
        self.weighting = weighting if weighting is not None else LossWeighting(net.depths)
        if len(self.weighting.depths) != net.num_outputs:
            raise CompactError(
                f"loss weighting has {len(self.weighting.depths)} outputs but the network has {net.num_outputs}"
            )
        self.criterion = nn.CrossEntropyLoss()
        #: called with the parameters of an update after its backward, before its step (distributed
        #: training averages their gradients across processes here; see compact.engine.distributed)
        self.grad_sync: Callable[[list[nn.Parameter]], None] | None = None
        #: called after each optimizer step with the optimizer's index and its parameters (the engine's
        #: callbacks, e.g. its non-finite guard, see every update of a multi-update method)
        self.after_update: Callable[[int, list[nn.Parameter]], None] | None = None
        self.lr = float(self.sgd.lr)
        self.optimizers: list[torch.optim.Optimizer] = self._build_optimizers()
        #: autocast dtype (None: float32) and loss scaler (float16), see :meth:`set_precision`
        self.autocast_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        #: updates skipped because their gradients overflowed (float16 loss scaling)
        self.skipped_updates = 0

    # -- to implement -------------------------------------------------------------------------------
    @abstractmethod
    def _build_optimizers(self) -> list[torch.optim.Optimizer]: ...

    @abstractmethod
    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """One training iteration on the batch ``(x, y)``; the network must be in train mode."""

    @classmethod
    def trains_output(cls, i: int, num_outputs: int) -> bool:
        """Whether this method trains output ``i`` of ``num_outputs`` (so that its test error means
        something); all outputs unless a method says otherwise."""
        return True

    # -- shared machinery ---------------------------------------------------------------------------
    def _sgd(self, groups: list[dict]) -> torch.optim.SGD:
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            g["lr"] = self.lr * g["lr_scale"]
        s = self.sgd
        return torch.optim.SGD(
            groups, lr=self.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )

    # -- precision -----------------------------------------------------------------------------------
    def set_precision(self, dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None = None) -> None:
        """Run steps under autocast in ``dtype`` (None: float32), scaling losses with ``scaler`` (float16)."""
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise CompactError(f"precision must be float32, bfloat16 or float16, got {dtype}")
        self.autocast_dtype, self.scaler = dtype, scaler

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """:meth:`step` under the method's precision; the loss scale is updated once per iteration."""
        if self.autocast_dtype is None:
            context = contextlib.nullcontext()
        else:
            context = torch.autocast(x.device.type, dtype=self.autocast_dtype)
        with context:
            out = self.step(x, y)
        if self.scaler is not None:
            self.scaler.update()
        return out

    def _backward(self, loss: torch.Tensor, inputs=None, retain_graph: bool = False) -> None:
        """Backward of ``loss`` (scaled when float16 loss scaling is on) into ``inputs`` (default: all)."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        torch.autograd.backward(loss, inputs=inputs, retain_graph=retain_graph)

    def _apply_update(self, opt: torch.optim.Optimizer) -> None:
        """Step ``opt`` after the gradients of its parameters are synchronised (when distributed); with loss
        scaling, the scaler unscales them and skips the step if they overflowed (on every process alike:
        the synchronised gradients carry the overflow)."""
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.grad_sync is not None:
            self.grad_sync(params)
        if self.scaler is not None:
            self.scaler.step(opt)  # unscales in place; skips the step if a gradient is not finite
            if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                self.skipped_updates += 1
                return
        else:
            opt.step()
        if self.after_update is not None:
            self.after_update(next(i for i, o in enumerate(self.optimizers) if o is opt), params)

    def _lr_scale(self, optimizer_index: int, group: dict) -> float:
        """Factor applied to the base learning rate for one parameter group (1 unless a method says)."""
        return group.get("lr_scale", 1.0)

    def _apply_lr(self) -> None:
        for i, opt in enumerate(self.optimizers):
            for g in opt.param_groups:
                g["lr_scale"] = self._lr_scale(i, g)
                g["lr"] = self.lr * g["lr_scale"]

    def set_lr(self, lr: float) -> None:
        """Set the base learning rate (the engine's schedule calls this)."""
        if not math.isfinite(lr) or lr < 0:
            raise CompactError(f"learning rate must be a finite number >= 0, got {lr}")
        self.lr = float(lr)
        self._apply_lr()

    def on_lr_decay(self) -> None:
        """Tell the method that the learning rate was just decayed (adaptive loss-weight schedules)."""
        self.weighting.on_lr_decay()
        self._apply_lr()

    def _losses(self, outs: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        return [self.criterion(o, y) for o in outs]

    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "lr": self.lr,
            "sgd": asdict(self.sgd),
            "weighting": self.weighting.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore optimizer, weighting and loss-scale state saved by :meth:`state_dict` (a checkpoint, which
        may be damaged or crafted): every momentum buffer must have its parameter's shape and finite values,
        and the SGD settings (momentum, Nesterov, weight decay, each group's role and lr scale) stay the run's
        own; a checkpoint restores state, never settings."""
        if state.get("method") != self.name:
            raise CompactError(f"state is for method {state.get('method')!r}, not {self.name!r}")
        if len(state["optimizers"]) != len(self.optimizers):
            raise CompactError(
                f"state has {len(state['optimizers'])} optimizers, "
                f"{self.name} on this network has {len(self.optimizers)}"
            )
        lr = state["lr"]
        if not is_finite_number(lr) or lr < 0:
            raise CompactError(f"the stored learning rate must be a finite number >= 0, got {lr!r}")
        self.weighting.load_state_dict(state["weighting"])
        for i, (opt, s) in enumerate(zip(self.optimizers, state["optimizers"], strict=True)):
            settings = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            _check_param_ids(i, s, opt)
            opt.load_state_dict(s)
            for g, own in zip(opt.param_groups, settings, strict=True):
                g.update(own)
            for p in (p for g in opt.param_groups for p in g["params"]):
                for key, value in opt.state.get(p, {}).items():
                    if value is None:  # SGD keeps no momentum buffer before the first step
                        continue
                    if not isinstance(value, torch.Tensor):
                        raise CompactError(f"optimizer {i}'s {key} is a {type(value).__name__}, not a tensor")
                    ok = value.shape == p.shape and value.is_floating_point() and bool(torch.isfinite(value).all())
                    if not ok:
                        raise CompactError(
                            f"optimizer {i}'s {key} for a {tuple(p.shape)} parameter is a {value.dtype} tensor of "
                            f"shape {tuple(value.shape)}; it must be floating point, of the parameter's shape, finite"
                        )
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.lr = float(lr)
        self._apply_lr()


def _check_param_ids(index: int, saved: object, opt: torch.optim.Optimizer) -> None:
    """torch numbers an optimizer's parameters 0, 1, 2, ... across its groups in order and restores state by
    position: saved groups whose ids are renumbered or permuted would resume parameters with other
    parameters' momentum (those of the same shape pass every later check), and state under an id no group
    lists would be dropped unseen."""
    sizes = [len(g["params"]) for g in opt.param_groups]
    expected = list(range(sum(sizes)))
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    listed: list[object] = []
    for g in groups if isinstance(groups, list) else []:
        listed.append(g.get("params") if isinstance(g, dict) else None)
    ids = [q for params in listed if isinstance(params, list) for q in params]
    if (
        [len(q) if isinstance(q, list) else None for q in listed] != sizes
        or ids != expected
        or not all(is_count(q) for q in ids)
    ):
        raise CompactError(
            f"optimizer {index}'s parameter groups do not list parameters 0..{len(expected) - 1} in order "
            f"(groups of {sizes} on this network): the checkpoint is damaged or not from this run"
        )
    state = saved.get("state")
    if not isinstance(state, dict) or not all(is_count(k) and k < len(expected) for k in state):
        raise CompactError(f"optimizer {index}'s state is not keyed by parameters 0..{len(expected) - 1}")


def create_method(
    name: str,
    net: MultiExitNet,
    sgd: SGDConfig | None = None,
    weighting: LossWeighting | None = None,
    **options: Any,
) -> BPMethod:
    """Build a registered method by name; ``options`` are method-specific (e.g. ``c`` for relay)."""
    cls = METHODS.get(name)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        valid = ", ".join(f"{k} (default {v!r})" for k, v in cls.options.items()) or "none"
        raise CompactError(f"method {name!r} has no option(s) {', '.join(unknown)}; its options: {valid}")
    return cls(net, sgd=sgd, weighting=weighting, **options)


def list_methods() -> list[str]:
    return METHODS.names()
