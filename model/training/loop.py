"""The one training loop: a model, its objective and batches in; an epoch of optimiser steps out.

`vae train` (model.runs.train) runs it epoch by epoch between its saves; the anomaly scores'
companion models and the bench's models (`fit`) run it without checkpoints, since they are cheap
to refit and never resumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from model.config.train import TrainConfig
from model.core.device import device_of
from model.core.labels import UNLABELLED
from model.core.schedules import Progress
from model.data.base import Split
from model.data.batches import labelled_batches, training_batches
from model.kinds.base import Objective
from model.data.registry import with_recorded_data
from model.kinds.registry import build_model, build_objective, get_kind


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; `epoch` (1-based) and `step` say where."""

    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(f"the loss became {value} at epoch {epoch}, step {step}")
        self.value, self.epoch, self.step = value, epoch, step


def epoch_batches(config: TrainConfig, split: Split, binarize: str) -> Iterable[tuple[Tensor, Tensor]]:
    """One epoch of (x, y) batches as the kind trains: with a labelled minibatch every step for a
    semi-supervised kind (`labelled_batches`), else a random permutation."""
    draw = labelled_batches if get_kind(config.model.kind).capabilities.semi_supervised else training_batches
    return draw(split, config.optim.batch_size, binarize)


def fit_epoch(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
              batches: Iterable[tuple[Tensor, Tensor]], *, epoch: int, step: int, batches_per_epoch: int,
              grad_clip: float = 0.0, transform: Callable[[Tensor], Tensor] | None = None,
              ) -> tuple[int, dict[str, float], int]:
    """One pass of optimiser steps; returns (step after it, sums of each diagnostic, images seen).

    Args:
        epoch: completed epochs before this one (schedules see epoch + fraction done).
        transform: applied to each batch's images before the objective (e.g. `perturb`).
    Raises:
        NonFiniteLoss: at the first step whose loss is NaN or infinite (no step is taken).
    """
    model.train()
    device = device_of(model)
    sums: dict[str, float] = {}
    seen = 0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # a streamed split's batches
        if transform is not None:
            x = transform(x)
        loss, diagnostics = objective(model, x, y, Progress(epoch=epoch + i / batches_per_epoch, step=step))
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss.item(), epoch + 1, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        step += 1
        seen += x.shape[0]
        for key, value in diagnostics.items():
            sums[key] = sums.get(key, 0.0) + value.detach().sum().item()
    return step, sums, seen


def fit(config: TrainConfig, x: Tensor, *, epochs: int, transform: Callable[[Tensor], Tensor] | None = None,
        seed: int | None = None, weight_decay: float = 0.0) -> nn.Module:
    """A model of `config` trained on images x (N, *config.data.shape) for `epochs`, in eval mode.

    No image carries a label: a companion learns p(x) alone (an M2 companion must not read class 0).
    """
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    torch.manual_seed(config.seed if seed is None else seed)
    config = with_recorded_data(config, tuple(x.shape[1:]))  # a config not from a run: the images' own shape
    model = build_model(config).to(x.device)
    objective = build_objective(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=weight_decay)
    split = Split(x, torch.full((x.shape[0],), UNLABELLED, dtype=torch.long, device=x.device))
    batches_per_epoch = math.ceil(x.shape[0] / config.optim.batch_size)
    step = 0
    for epoch in range(epochs):
        step, _, _ = fit_epoch(model, objective, optimizer, training_batches(split, config.optim.batch_size, "none"),
                               epoch=epoch, step=step, batches_per_epoch=batches_per_epoch, transform=transform)
    optimizer.zero_grad(set_to_none=True)
    return model.eval()
