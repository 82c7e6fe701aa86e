"""Model kinds: how a TrainConfig becomes a model and its training objective.

A kind is a model class that offers the service's face (`encode`, `decode`, `sample`,
`reconstruct`, `elbo_terms`, `log_weights`, `features`, `describe`; see `VariationalAutoencoder`)
plus an objective for training. Add a kind by adding an entry to `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from model.kinds.categorical import CategoricalObjective, CategoricalVAE
from model.config.train import TrainConfig
from model.kinds.m2 import M2Objective, SemiSupervisedVAE, evaluate_m2, m2_batches
from model.core.objectives import ImportanceWeightedObjective, VariationalInference
from model.core.schedules import Progress, linear_warmup
from model.kinds.gaussian import VariationalAutoencoder


class GaussianObjective:
    """β-ELBO (with β warm-up) or the importance-weighted bound, as the config says."""

    def __init__(self, config: TrainConfig):
        self.beta = linear_warmup(config.beta, config.beta_warmup)
        self.kl = config.kl
        self.iwae = ImportanceWeightedObjective(config.k) if config.objective == "iwae" else None

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {} if self.iwae is not None else {"beta": self.beta(progress)}

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
    # Numbers only this kind has, added to evaluation.json under "kind": (model, DataBundle) -> dict.
    evaluate: Callable[[nn.Module, object], dict] | None = None
    # How training batches are drawn: (Split, batch_size, binarize) -> iterator of (x, y).
    # None: `model.data.loading.training_batches`, one random permutation per epoch.
    batches: Callable | None = None


def _build_gaussian(config: TrainConfig, input_shape) -> nn.Module:
    return VariationalAutoencoder(input_shape, config.latent_features, config.hidden, config.activation)


def _build_categorical(config: TrainConfig, input_shape) -> nn.Module:
    return CategoricalVAE(input_shape, config.categorical_variables, config.categories, config.gaussian_features,
                          config.hidden, config.activation)


def _build_m2(config: TrainConfig, input_shape) -> nn.Module:
    classes = sorted(config.classes) if config.classes is not None else range(10)
    return SemiSupervisedVAE(input_shape, config.latent_features, classes, config.hidden, config.activation)


KINDS: dict[str, Kind] = {
    "gaussian": Kind(build=_build_gaussian, objective=GaussianObjective),
    "categorical": Kind(build=_build_categorical, objective=CategoricalObjective),
    "m2": Kind(build=_build_m2, objective=M2Objective, evaluate=evaluate_m2,
               batches=m2_batches),
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
