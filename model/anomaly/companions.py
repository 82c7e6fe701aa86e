"""The companion models some anomaly scores need, trained beside the model: the likelihood ratio's
background model (Ren et al. 2019), trained through the one training loop on perturbed images."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from model.anomaly.base import BACKGROUND
from model.config.train import TrainConfig
from model.core.noise import GLOBAL_NOISE, Noise
from model.training.loop import fit


def perturb(x: Tensor, rate: float, noise: Noise | None = None) -> Tensor:
    """Replace each pixel with probability `rate` by a uniform grey level (Ren et al. 2019, sec. 4).

    Args:
        x: images (B, ...) in [0, 1].
        rate: the mutation rate μ in [0, 1].
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturb rate: expected a probability in [0, 1], got {rate}")
    noise = noise or GLOBAL_NOISE
    u = noise.uniform((2,), x.shape[0], x.shape[1:], device=x.device, dtype=x.dtype)  # (2, B, ...)
    return torch.where(u[0] < rate, u[1], x)


def fit_model(config: TrainConfig, x: Tensor, *, epochs: int, perturb_rate: float = 0.0, seed: int | None = None,
              weight_decay: float = 0.0) -> nn.Module:
    """A model of `config` trained on images x (N, ...) with its objective, in eval mode.

    With `perturb_rate` > 0 each batch is perturbed afresh (`perturb`): that makes the background model.
    """
    transform = partial(perturb, rate=perturb_rate) if perturb_rate > 0 else None
    return fit(config, x, epochs=epochs, transform=transform, seed=seed, weight_decay=weight_decay)


def fit_companions(config: TrainConfig, x: Tensor) -> dict[str, nn.Module]:
    """The companions `config` asks for, trained on the training images x: {"background": VAE} or {}."""
    if config.anomaly.background_epochs < 1:
        return {}
    background = fit_model(config, x, epochs=config.anomaly.background_epochs,
                           perturb_rate=config.anomaly.perturb_rate, seed=config.seed + 1)
    return {BACKGROUND: background}
