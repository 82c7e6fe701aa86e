"""The course's variational autoencoder with a diagonal-Gaussian latent, and its objective."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from model.config.train import ModelConfig, OptimConfig
from model.core.distributions import ReparameterizedDiagonalGaussian, diagonal_gaussian
from model.core.images import check_images
from model.core.likelihoods import get_likelihood, summed_log_prob
from model.core.noise import Noise, rsample
from model.core.preprocess import scale
from model.core.objectives import (
    ElboTerms, ImportanceWeightedObjective, VariationalInference, elbo_terms_from_outputs, reduce_to,
)
from model.core.schedules import Progress, linear_warmup
from model.kinds.base import Capabilities
from model.nets.base import Network
from model.nets.registry import NETWORKS


class VariationalAutoencoder(nn.Module):
    """A VAE with Bernoulli observation model (Kingma & Welling 2013).

    Generative model:  z ~ p(z) = N(0, I),  x | z ~ Bernoulli(sigmoid(decoder(z))).
    Variational family: q(z|x) = N(mu(x), diag(sigma(x)²)) with [mu, log_sigma] = encoder(x).

    Args:
        input_shape: shape of one image, e.g. (1, 28, 28).
        latent_features: number of latent units.
        hidden: widths of the encoder's hidden layers; the decoder mirrors them. The course's
            network is (256, 128).
        activation: nonlinearity between layers (see `model.nets.mlp.ACTIVATIONS`).
        network: the network family (`model.nets.registry`) the encoder and decoder come from;
            its config is `hidden` and `activation`. Default: the MLP.
    """

    kind: ClassVar[str] = "gaussian"
    capabilities: ClassVar[Capabilities] = Capabilities(gaussian_latent=True)

    def __init__(self, input_shape: Sequence[int], latent_features: int,
                 hidden: Sequence[int] = (256, 128), activation: str = "relu", network: Network | None = None,
                 config: ModelConfig | None = None):
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.latent_features = int(latent_features)
        self.observation_features = math.prod(self.input_shape)
        network = network or NETWORKS["mlp"]
        config = config or ModelConfig(latent_features=self.latent_features, hidden=tuple(hidden),
                                       activation=activation)
        self.encoder = network.encoder(config, self.input_shape, 2 * self.latent_features)
        self.likelihood = get_likelihood(config.likelihood)  # p(x|z) (model.core.likelihoods)
        self.mixtures = config.mixtures
        self.decoder = network.decoder(config, self.latent_features,
                                       self.likelihood.parameter_shape(self.input_shape, self.mixtures))
        # Parameters [mu, log_sigma] of the prior N(0, I), kept as a buffer so they follow .to(device).
        self.register_buffer("prior_params", torch.zeros(1, 2 * self.latent_features))

    # --- the course's API -------------------------------------------------------------------

    def posterior(self, x: Tensor) -> ReparameterizedDiagonalGaussian:
        """q(z|x) = N(mu(x), sigma(x)²), batch shape (B, latent)."""
        return diagonal_gaussian(self.encoder(scale(x).reshape(x.shape[0], *self.input_shape)))

    def prior(self, batch_size: int = 1) -> ReparameterizedDiagonalGaussian:
        """p(z) = N(0, I), batch shape (batch_size, latent)."""
        prior_params = self.prior_params.expand(batch_size, -1)
        mu, log_sigma = prior_params.chunk(2, dim=-1)
        return ReparameterizedDiagonalGaussian(mu, log_sigma)

    def observation_model(self, z: Tensor) -> Distribution:
        """p(x|z) of the run's likelihood (course: Bernoulli(logits = decoder(z))), batch shape (*z.shape[:-1], *input_shape)."""
        return self.likelihood.build(self.decoder(z), self.mixtures)

    def forward(self, x: Tensor, noise: Noise | None = None) -> dict:
        """Encode, sample z ~ q(z|x) once, decode: `{"px", "pz", "qz", "z"}`."""
        qz = self.posterior(x)  # scales uint8 images; the objectives scale theirs before log p(x|z)
        pz = self.prior(batch_size=x.shape[0])
        z = rsample(qz, (), noise)
        return {"px": self.observation_model(z), "pz": pz, "qz": qz, "z": z}

    def sample_from_prior(self, batch_size: int = 100, noise: Noise | None = None) -> dict:
        """Ancestral samples: z ~ p(z), then p(x|z): `{"px", "pz", "z"}`."""
        pz = self.prior(batch_size=batch_size)
        z = rsample(pz, (), noise)
        return {"px": self.observation_model(z), "pz": pz, "z": z}

    # --- every kind's face (model.kinds.base.LatentModel) --------------------------------------

    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x): shape (K, B)."""
        log_px, log_pz, log_qz = self.log_weight_terms(x, num_samples, noise)
        return log_px + log_pz - log_qz

    def log_weight_terms(self, x: Tensor, num_samples: int, noise: Noise | None = None):
        """(log p(x|z_k), log p(z_k), log q(z_k|x)) for z_k ~ q(z|x), each of shape (K, B)."""
        x = check_images(x, self.input_shape)
        qz = self.posterior(x)
        z = rsample(qz, (num_samples,), noise)  # (K, B, D)
        px = self.observation_model(z)  # batch shape (K, B, *input_shape)
        log_px = summed_log_prob(px, x.expand(num_samples, *x.shape), 2)  # (K, B)
        log_pz = reduce_to(self.prior(x.shape[0]).log_prob(z), 2)
        log_qz = reduce_to(qz.log_prob(z), 2)
        return log_px, log_pz, log_qz

    def pixel_log_px(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log p(x_i|z_k) of every subpixel i for z_k ~ q(z|x): shape (K, B, *input_shape) (anomaly maps)."""
        x = check_images(x, self.input_shape)
        z = rsample(self.posterior(x), (num_samples,), noise)
        return self.observation_model(z).log_prob(x.expand(num_samples, *x.shape))

    def elbo_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None) -> ElboTerms:
        """Per-example ELBO terms from one posterior sample."""
        x = check_images(x, self.input_shape)
        return elbo_terms_from_outputs(x, self.forward(x, noise=noise), kl)

    def features(self, x: Tensor) -> Tensor:
        """Deterministic latent features for downstream classifiers: the posterior means (B, D)."""
        return self.posterior(check_images(x, self.input_shape)).mu

    def encode(self, x: Tensor, num_samples: int = 0, noise: Noise | None = None) -> dict[str, Tensor]:
        """Posterior parameters `mu`, `sigma` (B, D) and, if asked, `z` samples (num_samples, B, D)."""
        qz = self.posterior(check_images(x, self.input_shape))
        out = {"mu": qz.mu, "sigma": qz.sigma}
        if num_samples > 0:
            out["z"] = rsample(qz, (num_samples,), noise)
        return out

    def decode(self, z: Tensor) -> Tensor:
        """Means of p(x|z) per pixel (Bernoulli: the probabilities), shape (N, *input_shape)."""
        if z.dim() != 2 or z.shape[1] != self.latent_features:
            raise ValueError(f"expected latents of shape (N, {self.latent_features}), got {tuple(z.shape)}")
        return self.observation_model(z).mean

    def sample(self, n: int, noise: Noise | None = None) -> dict[str, Tensor]:
        """n prior samples: latents `z` (n, D) and decoded `probs` (n, *input_shape)."""
        out = self.sample_from_prior(n, noise=noise)
        return {"z": out["z"], "probs": out["px"].mean}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the posterior mean, shape (B, *input_shape)."""
        return self.decode(self.features(x))

    def describe(self) -> dict:
        """The latent layout: its size and what `encode` returns (`type` is the kind, as GET /models shows it)."""
        return {"type": self.kind, "likelihood": self.likelihood.name, "latent_features": self.latent_features,
                "encode_outputs": ["mu", "sigma"]}


class GaussianObjective:
    """β-ELBO (with β warm-up) or the importance-weighted bound, as the config says."""

    def __init__(self, config: OptimConfig):
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


def build(config: ModelConfig, network: Network, input_shape: Sequence[int], class_labels) -> nn.Module:
    return VariationalAutoencoder(input_shape, config.latent_features, config.hidden, config.activation,
                                  network, config)
