"""The one training loop: a model, its objective and batches in; an epoch of optimiser steps out.

`vae train` (model.runs.train) runs it epoch by epoch between its saves; the anomaly scores'
companion models and the bench's models (`fit`) run it without checkpoints, since they are cheap
to refit and never resumed. Under torchrun every process runs it on its shard of each global batch
through DistributedDataParallel (model.training.distributed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from model.config.train import TrainConfig
from model.core.device import device_of
from model.core.labels import UNLABELLED
from model.core.precision import autocast
from model.core.schedules import Progress
from model.data.base import Split
from model.data.batches import Shard, batches_per_epoch, labelled_batches, training_batches
from model.kinds.base import Objective
from model.data.registry import with_recorded_data
from model.kinds.registry import build_model, build_objective, get_kind
from model.training.distributed import SINGLE, Processes


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; `epoch` (1-based) and `step` say where."""

    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(f"the loss became {value} at epoch {epoch}, step {step}")
        self.value, self.epoch, self.step = value, epoch, step


def epoch_batches(config: TrainConfig, split: Split, binarize: str,
                  shard: Shard | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """One epoch of (x, y) batches as the kind trains: with a labelled minibatch every step for a
    semi-supervised kind (`labelled_batches`), else a random permutation; with a `shard`, this
    process's part of each global batch."""
    draw = labelled_batches if get_kind(config.model.kind).capabilities.semi_supervised else training_batches
    return draw(split, config.optim.batch_size, binarize, shard)


def fit_epoch(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
              batches: Iterable[tuple[Tensor, Tensor]], *, epoch: int, step: int, batches_per_epoch: int,
              grad_clip: float = 0.0, transform: Callable[[Tensor], Tensor] | None = None,
              parallel: nn.Module | None = None, processes: Processes = SINGLE, precision: str = "fp32",
              ) -> tuple[int, dict[str, float], int]:
    """One pass of optimiser steps; returns (step after it, sums of each diagnostic, images seen).

    Args:
        epoch: completed epochs before this one (schedules see epoch + fraction done).
        transform: applied to each batch's images before the objective (e.g. `perturb`).
        precision: "bf16-mixed" runs the forward pass under bf16 autocast (`model.core.precision`);
            the backward pass follows it, outside autocast as torch recommends.
        parallel: `model` and `objective` under DistributedDataParallel
            (`model.training.distributed.data_parallel`), called instead of the objective; the sums
            and images returned are then those of every process of `processes`.
    Raises:
        NonFiniteLoss: at the first step whose loss is NaN or infinite on any process (no step is taken).
    """
    (model if parallel is None else parallel).train()
    device = device_of(model)
    sums: dict[str, float] = {}
    seen = 0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # a streamed split's batches
        if transform is not None:
            x = transform(x)
        progress = Progress(epoch=epoch + i / batches_per_epoch, step=step)
        with autocast(precision, device):
            loss, diagnostics = objective(model, x, y, progress) if parallel is None else parallel(x, y, progress)
        if parallel is not None:
            loss = _global_batch_loss(loss, x.shape[0], processes, epoch, step)
        elif not torch.isfinite(loss):
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
    if processes.distributed:
        total = processes.sum({**sums, "": seen})  # "" is no diagnostic's name
        seen = int(total.pop(""))
        sums = total
    return step, sums, seen


def adam(model: nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.Adam:
    """The training loop's optimiser: Adam, fused (one kernel over all parameters per step instead of
    a dozen elementwise passes) where torch has a fused Adam for the parameters' device.

    Fused and for-each Adam compute the same update up to rounding; their state dicts are alike,
    so a run resumes under either. docs/performance.md measures what fusing buys.
    """
    device = device_of(model)
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, eps=eps, fused=fused or None)


BURDA_STAGES = 8  # Burda et al. (2015), section 5: stages i = 0 ... 7, 3,280 epochs in all


def burda_stage_epochs(stage: int) -> int:
    """Epochs of stage `stage` (0-based) of Burda et al.'s schedule: 3^i."""
    return 3 ** stage


def burda_epochs(stages: int) -> int:
    """Epochs of the first `stages` stages: 1 + 3 + ... + 3^(stages-1) = (3^stages - 1) / 2."""
    return (3 ** stages - 1) // 2


def burda_stage(epoch: int) -> int:
    """The stage (0-based) that epoch `epoch` (0-based, completed epochs before it) belongs to; epochs
    past the last stage stay in it."""
    stage = 0
    while stage < BURDA_STAGES - 1 and epoch >= burda_epochs(stage + 1):
        stage += 1
    return stage


def learning_rate(lr: float, schedule: str, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based): a function of the epoch alone, so a resumed run
    steps at the rate it would have.

    burda: lr · 10^(−i/7) in stage i (Burda et al. 2015, section 5, with lr = 0.001).
    """
    if schedule == "constant":
        return lr
    if schedule == "burda":
        return lr * 10 ** (-burda_stage(epoch) / 7)
    raise ValueError(f"lr_schedule: expected one of ['constant', 'burda'], got {schedule!r}")


def _global_batch_loss(loss: Tensor, images: int, processes: Processes, epoch: int, step: int) -> Tensor:
    """This process's loss, weighted so that the averaged gradient is that of the global batch's mean loss.

    Every rank sees every rank's loss, so all of them stop together at a NaN (no rank is left waiting
    in a backward the others never start). DistributedDataParallel averages the gradients of
    `world_size` losses, each the mean of its own images; the last batch of an epoch can divide
    unevenly, so each is weighted by its share of the images: n_r · W / Σ n (exactly 1 when equal).
    """
    seen = processes.stack(torch.stack([loss.detach().float(), loss.new_tensor(float(images))]))  # (W, 2)
    bad = ~torch.isfinite(seen[:, 0])
    if bad.any():
        raise NonFiniteLoss(seen[bad][0, 0].item(), epoch + 1, step)
    return loss * (images * processes.world_size / seen[:, 1].sum().item())


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
    optimizer = adam(model, config.optim.lr, weight_decay, eps=config.optim.adam_eps)
    split = Split(x, torch.full((x.shape[0],), UNLABELLED, dtype=torch.long, device=x.device))
    steps = batches_per_epoch(x.shape[0], config.optim.batch_size)
    step = 0
    for epoch in range(epochs):
        set_learning_rate(optimizer, config, epoch)
        step, _, _ = fit_epoch(model, objective, optimizer, training_batches(split, config.optim.batch_size, "none"),
                               epoch=epoch, step=step, batches_per_epoch=steps, transform=transform,
                               precision=config.precision)
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> float:
    """Set the optimiser's rate for epoch `epoch` (`learning_rate`); a constant schedule leaves it as built."""
    lr = learning_rate(config.optim.lr, config.optim.lr_schedule, epoch)
    if config.optim.lr_schedule != "constant":
        for group in optimizer.param_groups:
            group["lr"] = lr
    return lr
