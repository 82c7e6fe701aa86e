"""Anomaly scores: functions of a trained model and a batch, higher meaning more anomalous.

Every score has the signature `score(model, x, *, k, noise, companions) -> Tensor (B,)` in nats per
image (except `reconstruction`, a squared error, and `relative_reconstruction`, a ratio), so
calibration and serving treat them alike.
`companions` maps names to the extra models a run directory carries (`Checkpoint.companions`);
`NEEDS` says which score needs which. The likelihood-correcting scores live in `model.anomaly.likelihood`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from model.anomaly.likelihood import (KINDS, NEEDS, excess, input_complexity, likelihood_ratio, likelihood_regret,
                           relative_reconstruction)
from model.core.noise import Noise
from model.core.objectives import iwae_bound

ScoreFn = Callable[..., Tensor]


def negative_iwae(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                  companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−L_K(x): the importance-weighted estimate of −log p(x) (Burda et al. 2015)."""
    return -iwae_bound(model, x, k, noise=noise)


def negative_elbo(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                  companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−ELBO(x) from one posterior sample, with the kind's default KL estimate (sampled for the Gaussian VAE)."""
    return -model.elbo_terms(x, noise=noise).elbo


def reconstruction_error(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                         companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """Sum of squared pixel errors between x and the decoder mean at the posterior mean."""
    return (model.reconstruct(x) - x.reshape(x.shape[0], *model.input_shape)).pow(2).flatten(1).sum(1)


SCORES: dict[str, ScoreFn] = {
    "iwae": negative_iwae,
    "elbo": negative_elbo,
    "reconstruction": reconstruction_error,
    "relative_reconstruction": relative_reconstruction,
    "complexity": input_complexity,
    "excess": excess,
    "likelihood_ratio": likelihood_ratio,
    "likelihood_regret": likelihood_regret,
}
DEFAULT_SCORE = "iwae"
# The default score of a run, per data set: the first available of these, ranked by the mean of
# the data set's two benchmark AUROCs (its one-class mean and its OOD direction) measured by
# `vae bench anomaly` (docs/anomaly.md); the embedded digits' OOD direction is against Fashion-MNIST.
# Unknown data: iwae.
PREFERRED_SCORES: dict[str, tuple[str, ...]] = {
    "mnist": ("relative_reconstruction", "excess", "reconstruction", "elbo", "iwae", "likelihood_ratio", "complexity"),
    "fashion-mnist": ("relative_reconstruction", "excess", "reconstruction", "complexity", "elbo", "iwae",
                      "likelihood_ratio"),
    "embedded": ("excess", "relative_reconstruction", "reconstruction", "elbo", "iwae", "likelihood_ratio", "complexity"),
}


def available_scores(model: nn.Module, companions: Mapping[str, nn.Module] | None = None) -> list[str]:
    """The scores that work for this model's kind and whose companions are all present."""
    return [name for name in SCORES
            if all(need in (companions or {}) for need in NEEDS.get(name, ()))
            and getattr(model, "kind", None) in KINDS.get(name, (getattr(model, "kind", None),))]


def default_score(dataset: str | None, available: list[str]) -> str:
    """The benchmark's best score for `dataset` among `available` (DEFAULT_SCORE for unknown data)."""
    for name in PREFERRED_SCORES.get(dataset, (DEFAULT_SCORE,)):
        if name in available:
            return name
    raise ValueError(f"none of the preferred scores {PREFERRED_SCORES.get(dataset)} is available; got {available}")


def get_score(name: str) -> ScoreFn:
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(f"unknown anomaly score {name!r}; expected one of {sorted(SCORES)}") from None


@torch.no_grad()
def score_batches(model: nn.Module, x: Tensor, score: str, *, k: int = 100, batch_size: int = 500,
                  companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """A score over a whole split, in batches, on the model's device; returns a CPU tensor (N,)."""
    fn = get_score(score)
    device = next(model.parameters()).device
    out = [fn(model, x[i:i + batch_size].to(device), k=k, companions=companions).cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)
