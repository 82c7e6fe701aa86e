"""The latent kinds (`--kind`): how a TrainConfig becomes a model and its training objective.

Add a kind: a module with the model class (a `model.kinds.base.LatentModel` declaring its
`capabilities`), its objective and a `build` function, and one line here.
"""

from __future__ import annotations

from torch import nn

from model.config.train import TrainConfig
from model.core.compilation import CompiledObjective
from model.data.registry import with_recorded_data
from model.kinds import adgm, categorical, gaussian, m2
from model.kinds.base import Kind, Objective
from model.nets.registry import get_network

KINDS: dict[str, Kind] = {
    "gaussian": Kind(gaussian.VariationalAutoencoder, gaussian.build, gaussian.GaussianObjective),
    "categorical": Kind(categorical.CategoricalVAE, categorical.build, categorical.CategoricalObjective),
    "m2": Kind(m2.SemiSupervisedVAE, m2.build, m2.LabelledObjective, evaluate=m2.evaluate_m2),
    "adgm": Kind(adgm.AuxiliaryDeepGenerativeModel, adgm.build, adgm.ADGMObjective, evaluate=adgm.evaluate_adgm),
}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; expected one of {sorted(KINDS)}") from None


def build_model(config: TrainConfig) -> nn.Module:
    """The untrained model a config describes, of the input shape and class labels it records (those
    of its data set where it records none: `model.data.registry.with_recorded_data`)."""
    config = with_recorded_data(config)
    return get_kind(config.model.kind).build(config.model, get_network(config.arch), config.data.shape,
                                             config.data.labels_known)


def build_objective(config: TrainConfig) -> Objective:
    """The kind's training objective; under `config.compile` its call runs through torch.compile
    (`model.core.compilation.CompiledObjective`)."""
    objective = get_kind(config.model.kind).objective(config.optim)
    return CompiledObjective(objective) if config.compile else objective


def kinds_with(capability: str) -> list[str]:
    """The kinds whose models have `capability` (a field of `model.kinds.base.Capabilities`)."""
    return sorted(name for name, kind in KINDS.items() if getattr(kind.capabilities, capability))
