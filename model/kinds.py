"""Model kinds: how a TrainConfig becomes a model and its training objective.

A kind is a model class that offers the service's face (`encode`, `decode`, `sample`,
`reconstruct`, `elbo_terms`, `log_weights`, `features`, `describe`; see `VariationalAutoencoder`)
plus an objective for training. Add a kind by adding an entry to `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from model.config import TrainConfig
from model.objectives import ImportanceWeightedObjective, VariationalInference
from model.schedules import Progress, linear_warmup
from model.vae import VariationalAutoencoder


class GaussianObjective:
    """β-ELBO (with β warm-up) or the importance-weighted bound, as the config says."""

    def __init__(self, config: TrainConfig):
        self.beta = linear_warmup(config.beta, config.beta_warmup)
        self.kl = config.kl
        self.iwae = ImportanceWeightedObjective(config.k) if config.objective == "iwae" else None

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {"beta": self.beta(progress)}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: Progress):
        if self.iwae is not None:
            loss, diagnostics, _ = self.iwae(model, x)
        else:
            loss, diagnostics, _ = VariationalInference(self.beta(progress), self.kl)(model, x)
        return loss, diagnostics


@dataclass(frozen=True)
class Kind:
    build: Callable[[TrainConfig, tuple[int, ...]], nn.Module]
    objective: Callable[[TrainConfig], Callable]


def _build_gaussian(config: TrainConfig, input_shape) -> nn.Module:
    return VariationalAutoencoder(input_shape, config.latent_features, config.hidden, config.activation)


KINDS: dict[str, Kind] = {
    "gaussian": Kind(build=_build_gaussian, objective=GaussianObjective),
}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; expected one of {sorted(KINDS)}") from None


def build_model(config: TrainConfig, input_shape) -> nn.Module:
    return get_kind(config.kind).build(config, tuple(input_shape))


def build_objective(config: TrainConfig):
    return get_kind(config.kind).objective(config)
