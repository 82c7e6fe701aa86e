"""What every latent kind offers, stated as types: the model's face, its capabilities, its objective.

A kind is a model class (a `LatentModel`) with an objective that trains it. Downstream code (the
evaluation, the anomaly scores, the service) relies only on `LatentModel`'s methods and reads
`capabilities` for the rest, never `hasattr` or signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from model.config.train import ModelConfig, OptimConfig
from model.core.noise import Noise
from model.core.objectives import ElboTerms
from model.core.schedules import Progress
from model.nets.base import Network


@dataclass(frozen=True)
class Capabilities:
    """What a kind can do beyond every kind's face.

    conditional: `decode` and `sample` take class labels `y` (the generative model has a class).
    native_classifier: `classify(x)` gives q(y|x) (no separate latent classifier needed).
    gaussian_latent: `posterior(x)` is a `ReparameterizedDiagonalGaussian` and `observation_model(z)`
        decodes a sample of it (what likelihood regret optimises).
    semi_supervised: trains from partly labelled data; every step sees a labelled minibatch.
    """

    conditional: bool = False
    native_classifier: bool = False
    gaussian_latent: bool = False
    semi_supervised: bool = False


@runtime_checkable
class LatentModel(Protocol):
    """The face every kind offers (see `model.kinds.gaussian.VariationalAutoencoder`)."""

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    input_shape: tuple[int, ...]
    latent_features: int

    def elbo_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None) -> ElboTerms: ...
    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor: ...
    def pixel_log_px(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor: ...
    def features(self, x: Tensor) -> Tensor: ...
    def encode(self, x: Tensor, num_samples: int = 0, noise: Noise | None = None) -> dict[str, Tensor]: ...
    def decode(self, z: Tensor) -> Tensor: ...
    def sample(self, n: int, noise: Noise | None = None) -> dict[str, Tensor]: ...
    def reconstruct(self, x: Tensor) -> Tensor: ...
    def describe(self) -> dict: ...


class Objective(Protocol):
    """How a kind is trained: `loss, diagnostics = objective(model, x, y, progress)`.

    `diagnostics` hold per-example tensors (B,) (at least `elbo`, `log_px`, `kl`); `schedule(progress)`
    the scalars the schedules give at that point (β, temperature), recorded in metrics.jsonl.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: Progress) -> tuple[Tensor, dict]: ...
    def schedule(self, progress: Progress) -> dict[str, float]: ...


@dataclass(frozen=True)
class Kind:
    """A registry entry of `model.kinds.registry.KINDS`.

    build: (model config, network family, input shape (C, H, W), class labels) -> the model.
    objective: (optim config) -> its training objective.
    evaluate: numbers only this kind has, for evaluation.json under "kind":
        (model, test images, test labels, training labels) -> dict.
    """

    model: type
    build: Callable[[ModelConfig, Network, Sequence[int], Sequence[int]], nn.Module]
    objective: Callable[[OptimConfig], Objective]
    evaluate: Callable[[nn.Module, Tensor, Tensor, Tensor], dict] | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self.model.capabilities
