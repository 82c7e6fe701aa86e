"""Schedules are functions of training progress, passed into objectives, never mutated inside them."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Where training is: `epoch` counts completed epochs fractionally (2.5 = halfway through the third)."""

    epoch: float
    step: int


def linear_warmup(target: float, warmup_epochs: float):
    """β(epoch) rising linearly from 0 to `target` over `warmup_epochs` (constant if 0)."""

    def schedule(progress: Progress) -> float:
        if warmup_epochs <= 0:
            return target
        return target * min(1.0, progress.epoch / warmup_epochs)

    return schedule


def exponential_temperature(start: float, floor: float, rate: float):
    """τ(step) = max(floor, start · exp(−rate · step)) (Jang et al. 2016, section 4)."""

    def schedule(progress: Progress) -> float:
        return max(floor, start * math.exp(-rate * progress.step))

    return schedule
