"""Anomaly scores: functions of a trained model and a batch, higher meaning more anomalous.

Every score has the signature `score(model, x, *, k, noise) -> Tensor (B,)` in nats per image
(except `reconstruction`, a squared error), so calibration and serving treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model.noise import Noise
from model.objectives import iwae_bound

ScoreFn = Callable[..., Tensor]


def negative_iwae(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None) -> Tensor:
    """−L_K(x): the importance-weighted estimate of −log p(x) (Burda et al. 2015)."""
    return -iwae_bound(model, x, k, noise=noise)


def negative_elbo(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None) -> Tensor:
    """−ELBO(x) with the analytic KL where the kind has one (one posterior sample for log p(x|z))."""
    return -model.elbo_terms(x, noise=noise).elbo


def reconstruction_error(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None) -> Tensor:
    """Sum of squared pixel errors between x and the decoder mean at the posterior mean."""
    return (model.reconstruct(x) - x.reshape(x.shape[0], *model.input_shape)).pow(2).flatten(1).sum(1)


SCORES: dict[str, ScoreFn] = {
    "iwae": negative_iwae,
    "elbo": negative_elbo,
    "reconstruction": reconstruction_error,
}
DEFAULT_SCORE = "iwae"


def get_score(name: str) -> ScoreFn:
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(f"unknown anomaly score {name!r}; expected one of {sorted(SCORES)}") from None


@torch.no_grad()
def score_batches(model: nn.Module, x: Tensor, score: str, *, k: int = 100, batch_size: int = 500) -> Tensor:
    """A score over a whole split, in batches, on the model's device; returns a CPU tensor (N,)."""
    fn = get_score(score)
    device = next(model.parameters()).device
    out = [fn(model, x[i:i + batch_size].to(device), k=k).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)
