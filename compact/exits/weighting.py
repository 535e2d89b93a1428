"""Loss weights of the MW-BP paper (Eq. 5) and their schedules (Section 6.2).

For auxiliary losses ``i = 0..K-1`` attached at depth ``L_i`` (weighted layers from the input),
``gamma_i = max(0.01, (L_i / L_{K-1}) ** nu)``; the final loss has ``gamma_K = 1``. ``nu = 0`` weighs
every loss 1 (the paper's Table 7 baseline).

Schedules change ``nu`` at each learning-rate decay:

- ``constant``: ``nu`` stays (paper default ``nu = 2``);
- ``adaptive-1``: start at ``nu = 1/2`` and double it at each decay (Adaptive-I);
- ``adaptive-2``: start at ``nu = 2`` and halve it at each decay (Adaptive-II).

For the adaptive schedules the starting ``nu`` is the paper's unless one is given explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from compact._numbers import is_count
from compact._registry import Registry
from compact.errors import CompactError


@dataclass(frozen=True)
class Schedule:
    """How ``nu`` evolves: its default start and the factor applied at every learning-rate decay."""

    name: str
    default_nu: float
    factor_at_decay: float


SCHEDULES: Registry[Schedule] = Registry("weighting schedule")
for _s in (Schedule("constant", 2.0, 1.0), Schedule("adaptive-1", 0.5, 2.0), Schedule("adaptive-2", 2.0, 0.5)):
    SCHEDULES.register(_s.name)(_s)

MIN_GAMMA = 0.01
#: most learning-rate decays a stored schedule state may count (the paper's schedules decay 2 or 3 times)
MAX_DECAYS = 1000


def loss_weights(depths: Sequence[int], nu: float) -> list[float]:
    """Eq. 5: weights of all ``K + 1`` losses given the depths of the ``K`` auxiliary exits and the final output.

    ``depths`` lists every output's depth, shallow to deep, final last. The final weight is 1.
    """
    if not math.isfinite(nu) or nu < 0:
        raise CompactError(f"nu must be a finite number >= 0 (0: every loss weighs 1), got {nu}")
    if len(depths) < 1:
        raise CompactError("loss_weights needs at least the final output's depth")
    aux = list(depths[:-1])
    if not aux:
        return [1.0]
    if any(d <= 0 for d in aux):
        raise CompactError(f"exit depths must be > 0, got {list(depths)}")
    deepest = aux[-1]
    return [max(MIN_GAMMA, (d / deepest) ** nu) for d in aux] + [1.0]


class LossWeighting:
    """Current loss weights of a multi-exit network; stateful because adaptive schedules change ``nu``."""

    def __init__(self, depths: Sequence[int], nu: float | None = None, schedule: str = "constant") -> None:
        self.schedule = SCHEDULES.get(schedule)
        self.depths = [int(d) for d in depths]
        self.initial_nu = float(self.schedule.default_nu if nu is None else nu)
        loss_weights(self.depths, self.initial_nu)  # validates nu and depths
        self.decays = 0

    @property
    def nu(self) -> float:
        return self.initial_nu * self.schedule.factor_at_decay**self.decays

    def gammas(self) -> list[float]:
        """Weights of all losses, final last."""
        return loss_weights(self.depths, self.nu)

    def on_lr_decay(self) -> None:
        """Call once each time the learning rate is decayed (adaptive schedules change ``nu`` here)."""
        self.decays += 1

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.name, "initial_nu": self.initial_nu, "decays": self.decays}

    def load_state_dict(self, state: dict) -> None:
        if state.get("schedule") != self.schedule.name:
            raise CompactError(
                f"weighting state is for schedule {state.get('schedule')!r}, this run uses {self.schedule.name!r}"
            )
        nu, decays = state.get("initial_nu"), state.get("decays")
        if nu != self.initial_nu:
            raise CompactError(f"weighting state starts at nu = {nu!r}, this run at nu = {self.initial_nu:g}")
        if not is_count(decays) or decays > MAX_DECAYS:
            raise CompactError(
                f"weighting state has {decays!r} learning-rate decays; expected an integer in 0..{MAX_DECAYS}"
            )
        self.decays = decays
        loss_weights(self.depths, self.nu)  # nu after the decays must still be finite

    def __repr__(self) -> str:
        g = ", ".join(f"{x:.3f}" for x in self.gammas())
        return f"LossWeighting(schedule={self.schedule.name}, nu={self.nu:g}, gammas=[{g}])"
