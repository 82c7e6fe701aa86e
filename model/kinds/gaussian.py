"""The course's variational autoencoder with a diagonal-Gaussian latent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli

from model.core.distributions import ReparameterizedDiagonalGaussian
from model.nets.mlp import mlp
from model.core.noise import GLOBAL_NOISE, Noise
from model.core.objectives import ElboTerms, elbo_terms_from_outputs, reduce_to

# log σ passes through a soft clamp to (−LOG_SIGMA_BOUND, LOG_SIGMA_BOUND): near zero it is the
# identity, far out it saturates, so a small β cannot send σ to 0 or ∞ and the KL to NaN.
LOG_SIGMA_BOUND = 10.0


def check_images(x: Tensor, input_shape: Sequence[int]) -> Tensor:
    """Reshape a batch to (B, *input_shape) after checking its size and values, or say what was wrong."""
    n_pixels = math.prod(input_shape)
    if x.dim() < 2 or math.prod(x.shape[1:]) != n_pixels:
        raise ValueError(
            f"expected a batch of images of {n_pixels} pixels (shape (B, {', '.join(map(str, input_shape))})), "
            f"got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("expected finite pixel values in [0, 1], got NaN or infinity")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"expected pixel values in [0, 1], got values in [{x.min().item():g}, {x.max().item():g}]")
    return x.reshape(x.shape[0], *input_shape)


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
    """

    kind: ClassVar[str] = "gaussian"
    operations: ClassVar[frozenset[str]] = frozenset(
        {"encode", "decode", "sample", "reconstruct", "elbo", "iwae", "classify", "anomaly"}
    )

    def __init__(self, input_shape: Sequence[int], latent_features: int,
                 hidden: Sequence[int] = (256, 128), activation: str = "relu"):
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.latent_features = int(latent_features)
        self.observation_features = math.prod(self.input_shape)
        hidden = tuple(hidden)
        self.encoder = mlp(self.observation_features, hidden, 2 * self.latent_features, activation)
        self.decoder = mlp(self.latent_features, tuple(reversed(hidden)), self.observation_features, activation)
        # Parameters [mu, log_sigma] of the prior N(0, I), kept as a buffer so they follow .to(device).
        self.register_buffer("prior_params", torch.zeros(1, 2 * self.latent_features))

    # --- the course's API -------------------------------------------------------------------

    def posterior(self, x: Tensor) -> ReparameterizedDiagonalGaussian:
        """q(z|x) = N(mu(x), sigma(x)²), batch shape (B, latent)."""
        h_x = self.encoder(x.reshape(x.shape[0], -1))
        mu, log_sigma = h_x.chunk(2, dim=-1)
        log_sigma = LOG_SIGMA_BOUND * torch.tanh(log_sigma / LOG_SIGMA_BOUND)
        return ReparameterizedDiagonalGaussian(mu, log_sigma)

    def prior(self, batch_size: int = 1) -> ReparameterizedDiagonalGaussian:
        """p(z) = N(0, I), batch shape (batch_size, latent)."""
        prior_params = self.prior_params.expand(batch_size, -1)
        mu, log_sigma = prior_params.chunk(2, dim=-1)
        return ReparameterizedDiagonalGaussian(mu, log_sigma)

    def observation_model(self, z: Tensor) -> Bernoulli:
        """p(x|z) = Bernoulli(logits = decoder(z)), batch shape (*z.shape[:-1], *input_shape)."""
        px_logits = self.decoder(z).reshape(*z.shape[:-1], *self.input_shape)
        # Grey levels in [0, 1] are soft targets, outside Bernoulli's support: skip validation.
        return Bernoulli(logits=px_logits, validate_args=False)

    def forward(self, x: Tensor, noise: Noise | None = None) -> dict:
        """Encode, sample z ~ q(z|x) once, decode: `{"px", "pz", "qz", "z"}`."""
        qz = self.posterior(x)
        pz = self.prior(batch_size=x.shape[0])
        z = self._rsample(qz, (), noise)
        return {"px": self.observation_model(z), "pz": pz, "qz": qz, "z": z}

    def sample_from_prior(self, batch_size: int = 100, noise: Noise | None = None) -> dict:
        """Ancestral samples: z ~ p(z), then p(x|z): `{"px", "pz", "z"}`."""
        pz = self.prior(batch_size=batch_size)
        z = self._rsample(pz, (), noise)
        return {"px": self.observation_model(z), "pz": pz, "z": z}

    # --- the service's face (shared by every model kind) --------------------------------------

    def _rsample(self, dist: ReparameterizedDiagonalGaussian, sample_shape, noise: Noise | None) -> Tensor:
        noise = noise or GLOBAL_NOISE
        eps = noise.normal(sample_shape, dist.mu.shape[0], dist.mu.shape[1:],
                           device=dist.mu.device, dtype=dist.mu.dtype)
        return dist.rsample(sample_shape, eps=eps)

    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x): shape (K, B)."""
        log_px, log_pz, log_qz = self.log_weight_terms(x, num_samples, noise)
        return log_px + log_pz - log_qz

    def log_weight_terms(self, x: Tensor, num_samples: int, noise: Noise | None = None):
        """(log p(x|z_k), log p(z_k), log q(z_k|x)) for z_k ~ q(z|x), each of shape (K, B)."""
        x = check_images(x, self.input_shape)
        qz = self.posterior(x)
        z = self._rsample(qz, (num_samples,), noise)  # (K, B, D)
        px = self.observation_model(z)  # batch shape (K, B, *input_shape)
        log_px = reduce_to(px.log_prob(x.expand(num_samples, *x.shape)), 2)  # (K, B)
        log_pz = reduce_to(self.prior(x.shape[0]).log_prob(z), 2)
        log_qz = reduce_to(qz.log_prob(z), 2)
        return log_px, log_pz, log_qz

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
            out["z"] = self._rsample(qz, (num_samples,), noise)
        return out

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli means p(x|z) per pixel, shape (N, *input_shape)."""
        if z.dim() != 2 or z.shape[1] != self.latent_features:
            raise ValueError(f"expected latents of shape (N, {self.latent_features}), got {tuple(z.shape)}")
        return self.observation_model(z).probs

    def sample(self, n: int, noise: Noise | None = None) -> dict[str, Tensor]:
        """n prior samples: latents `z` (n, D) and decoded `probs` (n, *input_shape)."""
        out = self.sample_from_prior(n, noise=noise)
        return {"z": out["z"], "probs": out["px"].probs}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the posterior mean, shape (B, *input_shape)."""
        return self.decode(self.features(x))

    def describe(self) -> dict:
        """The latent layout, for the service's model description."""
        return {"type": "gaussian", "latent_features": self.latent_features,
                "encode_outputs": ["mu", "sigma"]}
