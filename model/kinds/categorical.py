"""A VAE whose latent is N categorical variables of C categories, relaxed with Gumbel-softmax.

Training draws relaxed (Concrete) samples at a temperature annealed with the training step
(Jang et al. 2016; Maddison et al. 2016), optionally straight-through one-hot; evaluation and
serving draw discrete one-hot samples, whose log q is exact, so the importance-weighted bound is
a bound on the same log p(x) as the Gaussian model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, OneHotCategorical, kl_divergence

from model.config.train import ModelConfig, OptimConfig
from model.core.distributions import ReparameterizedDiagonalGaussian, diagonal_gaussian
from model.core.gumbel import one_hot_sample, relaxed_one_hot
from model.core.images import check_images
from model.core.likelihoods import get_likelihood, summed_log_prob
from model.core.noise import GLOBAL_NOISE, Noise, rsample
from model.core.objectives import ElboTerms, check_kl_mode, kl_term, reduce_to
from model.core.schedules import Progress, exponential_temperature, linear_warmup
from model.kinds.base import Capabilities
from model.nets.base import Network
from model.nets.registry import NETWORKS


class CategoricalVAE(nn.Module):
    """A VAE with N categorical latent variables of C categories each, optionally beside G Gaussian units.

    Generative model:  c_n ~ Cat(1/C) one-hot for n = 1..N,  z ~ N(0, I_G),
                       x | c, z ~ Bernoulli(sigmoid(decoder([c_1, …, c_N, z]))).
    Variational family: q(c, z | x) = Π_n Cat(c_n | softmax(logits_n(x))) · N(z | mu(x), diag sigma(x)²).

    The latent vector the decoder reads is `[c_1 (C), …, c_N (C), z (G)]`, `N·C + G` numbers.
    The categorical KL is always the closed form of the categorical distributions; `kl` chooses
    how the Gaussian units' KL is taken, as for the Gaussian kind.

    Args:
        input_shape: shape of one image, e.g. (1, 28, 28).
        variables: N, the number of categorical variables.
        categories: C, the categories of each.
        gaussian_features: G, Gaussian latent units beside them (0: none).
        hidden, activation: the encoder's hidden widths (the decoder mirrors them) and nonlinearity.
        network, config: the network family and its config (default: the MLP of `hidden`, `activation`).
    """

    kind: ClassVar[str] = "categorical"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, input_shape: Sequence[int], variables: int, categories: int, gaussian_features: int = 0,
                 hidden: Sequence[int] = (256, 128), activation: str = "relu", network: Network | None = None,
                 config: ModelConfig | None = None):
        super().__init__()
        if variables < 1 or categories < 2 or gaussian_features < 0:
            raise ValueError(
                f"expected >= 1 variables of >= 2 categories and >= 0 Gaussian units, got "
                f"{variables} variables, {categories} categories, {gaussian_features} Gaussian units"
            )
        self.input_shape = tuple(int(d) for d in input_shape)
        self.variables, self.categories = int(variables), int(categories)
        self.gaussian_features = int(gaussian_features)
        self.latent_features = self.variables * self.categories + self.gaussian_features
        self.observation_features = math.prod(self.input_shape)
        network = network or NETWORKS["mlp"]
        config = config or ModelConfig(hidden=tuple(hidden), activation=activation)
        self.encoder = network.encoder(config, self.input_shape,
                                       self.variables * self.categories + 2 * self.gaussian_features)
        self.likelihood = get_likelihood(config.likelihood)  # p(x|z) (model.core.likelihoods)
        self.mixtures = config.mixtures
        self.decoder = network.decoder(config, self.latent_features,
                                       self.likelihood.parameter_shape(self.input_shape, self.mixtures))
        # Uniform prior logits over categories and [mu, log_sigma] of N(0, I), as buffers.
        self.register_buffer("prior_logits", torch.zeros(1, self.variables, self.categories))
        self.register_buffer("prior_params", torch.zeros(1, 2 * self.gaussian_features))

    # --- distributions ------------------------------------------------------------------------

    def posterior(self, x: Tensor) -> tuple[OneHotCategorical, ReparameterizedDiagonalGaussian | None]:
        """q(c|x) with batch shape (B, N) and event (C,), and q(z|x) with batch shape (B, G) (None if G = 0)."""
        h_x = self.encoder(x.reshape(x.shape[0], *self.input_shape))
        logits = h_x[:, : self.variables * self.categories].reshape(-1, self.variables, self.categories)
        qc = OneHotCategorical(logits=logits)
        if self.gaussian_features == 0:
            return qc, None
        return qc, diagonal_gaussian(h_x[:, self.variables * self.categories:])

    def prior(self, batch_size: int = 1) -> tuple[OneHotCategorical, ReparameterizedDiagonalGaussian | None]:
        """p(c) = Π_n Cat(1/C), batch shape (B, N); p(z) = N(0, I), batch shape (B, G) (None if G = 0)."""
        pc = OneHotCategorical(logits=self.prior_logits.expand(batch_size, -1, -1))
        if self.gaussian_features == 0:
            return pc, None
        mu, log_sigma = self.prior_params.expand(batch_size, -1).chunk(2, dim=-1)
        return pc, ReparameterizedDiagonalGaussian(mu, log_sigma)

    def observation_model(self, latent: Tensor) -> Distribution:
        """p(x|c, z) from the flat latent `[c, z]` (..., N·C + G): batch shape (..., *input_shape)."""
        return self.likelihood.build(self.decoder(latent), self.mixtures)

    def _latent(self, c: Tensor, z: Tensor | None) -> Tensor:
        """Flatten c (..., N, C) and append z (..., G): (..., N·C + G)."""
        flat = c.flatten(-2)
        return flat if z is None else torch.cat([flat, z], dim=-1)

    # --- training -----------------------------------------------------------------------------

    def forward(self, x: Tensor, noise: Noise | None = None, temperature: float | None = None,
                straight_through: bool = False) -> dict:
        """Encode, sample once, decode: `{"px", "qc", "pc", "qz", "pz", "c", "z"}` (`qz`, `pz`, `z` None if G = 0).

        Args:
            temperature: Gumbel-softmax temperature for a relaxed sample of c; None draws one-hot c.
            straight_through: with a temperature, one-hot forward values and relaxed gradients.
        """
        noise = noise or GLOBAL_NOISE
        qc, qz = self.posterior(x)
        pc, pz = self.prior(x.shape[0])
        if temperature is None:
            c = one_hot_sample(qc.logits, (), noise)
        else:
            c = relaxed_one_hot(qc.logits, temperature, (), noise, straight_through)
        z = None if qz is None else rsample(qz, (), noise)
        return {"px": self.observation_model(self._latent(c, z)), "qc": qc, "pc": pc, "qz": qz, "pz": pz,
                "c": c, "z": z}

    def elbo_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None,
                   temperature: float | None = None, straight_through: bool = False) -> ElboTerms:
        """Per-example ELBO terms from one sample: log p(x|c, z) and KL(q(c|x) || p(c)) + KL(q(z|x) || p(z)).

        Without a temperature the sample is one-hot (evaluation); with one, it is relaxed (training).
        """
        check_kl_mode(kl)
        x = check_images(x, self.input_shape)
        out = self.forward(x, noise, temperature, straight_through)
        log_px = summed_log_prob(out["px"], x, 1)
        kl_c = kl_divergence(out["qc"], out["pc"]).sum(-1)  # exact, summed over the N variables
        if out["qz"] is not None:
            kl_c = kl_c + kl_term(out["qz"], out["pz"], out["z"], kl, 1)
        return ElboTerms(log_px=log_px, kl=kl_c)

    # --- the service's face -------------------------------------------------------------------

    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log w_k = log p(x|c_k, z_k) + log p(c_k, z_k) − log q(c_k, z_k|x) with one-hot c_k: shape (K, B).

        The samples are discrete, so log q(c|x) is an exact log-probability and L_K bounds the same
        log p(x) that the Gaussian kind's does.
        """
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        qc, qz = self.posterior(x)
        pc, pz = self.prior(x.shape[0])
        c = one_hot_sample(qc.logits, (num_samples,), noise)  # (K, B, N, C)
        log_w = (pc.log_prob(c) - qc.log_prob(c)).sum(-1)  # (K, B)
        z = None
        if qz is not None:
            z = rsample(qz, (num_samples,), noise)  # (K, B, G)
            log_w = log_w + reduce_to(pz.log_prob(z) - qz.log_prob(z), 2)
        px = self.observation_model(self._latent(c, z))  # batch shape (K, B, *input_shape)
        return log_w + summed_log_prob(px, x.expand(num_samples, *x.shape), 2)

    def pixel_log_px(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log p(x_i|c_k, z_k) of every subpixel i, one-hot c_k and z_k ~ q(·|x): (K, B, *input_shape)."""
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        qc, qz = self.posterior(x)
        c = one_hot_sample(qc.logits, (num_samples,), noise)
        z = None if qz is None else rsample(qz, (num_samples,), noise)
        return self.observation_model(self._latent(c, z)).log_prob(x.expand(num_samples, *x.shape))

    def features(self, x: Tensor) -> Tensor:
        """Deterministic features: category probabilities (N·C) then Gaussian means (G), shape (B, N·C + G)."""
        qc, qz = self.posterior(check_images(x, self.input_shape))
        return self._latent(qc.probs, None if qz is None else qz.mu)

    def encode(self, x: Tensor, num_samples: int = 0, noise: Noise | None = None) -> dict[str, Tensor]:
        """Category `probs` (B, N, C), Gaussian `mu`, `sigma` (B, G) if G > 0, and, if asked,
        one-hot latent samples `z` (num_samples, B, N·C + G) in the decoder's layout."""
        qc, qz = self.posterior(check_images(x, self.input_shape))
        out = {"probs": qc.probs}
        if qz is not None:
            out["mu"], out["sigma"] = qz.mu, qz.sigma
        if num_samples > 0:
            noise = noise or GLOBAL_NOISE
            c = one_hot_sample(qc.logits, (num_samples,), noise)
            z = None if qz is None else rsample(qz, (num_samples,), noise)
            out["z"] = self._latent(c, z)
        return out

    def decode(self, z: Tensor) -> Tensor:
        """Means of p(x|z) per pixel, shape (N, *input_shape), for latents `[c_1, …, c_N, z]` (N, N·C + G).

        Each c_n must be a point of the simplex: one-hot, or a relaxed sample.
        """
        if z.dim() != 2 or z.shape[1] != self.latent_features:
            raise ValueError(
                f"expected latents of shape (N, {self.latent_features}) = {self.variables} one-hot blocks of "
                f"{self.categories} then {self.gaussian_features} Gaussian units, got {tuple(z.shape)}"
            )
        c = z[:, : self.variables * self.categories].reshape(-1, self.variables, self.categories)
        if (c < 0).any() or not torch.allclose(c.sum(-1), torch.ones((), dtype=c.dtype, device=c.device), atol=1e-4):
            raise ValueError(
                f"expected each of the {self.variables} categorical blocks to lie on the simplex "
                f"(non-negative, summing to 1), got block sums in [{c.sum(-1).min():.4g}, {c.sum(-1).max():.4g}] "
                f"and minimum {c.min():.4g}"
            )
        return self.observation_model(z).mean

    def sample(self, n: int, noise: Noise | None = None) -> dict[str, Tensor]:
        """n prior samples: one-hot categories and Gaussian units `z` (n, N·C + G), decoded `probs`."""
        noise = noise or GLOBAL_NOISE
        pc, pz = self.prior(n)
        c = one_hot_sample(pc.logits, (), noise)
        z = None if pz is None else rsample(pz, (), noise)
        latent = self._latent(c, z)
        return {"z": latent, "probs": self.observation_model(latent).mean}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the posterior mode (most probable categories, Gaussian means): (B, *input_shape)."""
        qc, qz = self.posterior(check_images(x, self.input_shape))
        c = F.one_hot(qc.probs.argmax(-1), self.categories).to(qc.probs.dtype)
        return self.observation_model(self._latent(c, None if qz is None else qz.mu)).mean

    def describe(self) -> dict:
        """The latent layout, for the service's model description."""
        return {"type": "categorical", "likelihood": self.likelihood.name, "variables": self.variables, "categories": self.categories,
                "gaussian_features": self.gaussian_features, "latent_features": self.latent_features,
                "latent_layout": "[one-hot c_1 (categories), ..., one-hot c_N (categories), gaussian z]",
                "encode_outputs": ["probs", "mu", "sigma"] if self.gaussian_features else ["probs"]}


class CategoricalObjective:
    """The β-ELBO with relaxed samples at the annealed temperature (recorded as `temperature`)."""

    def __init__(self, config: OptimConfig):
        if config.objective != "elbo":
            raise ValueError(
                f"objective: --kind categorical trains with 'elbo' (relaxed samples), got {config.objective!r}; "
                "its importance-weighted bound is available for evaluation"
            )
        self.temperature = exponential_temperature(config.temperature, config.temperature_min,
                                                   config.temperature_rate)
        self.beta = linear_warmup(config.beta, config.beta_warmup)
        self.kl = config.kl
        self.straight_through = config.straight_through

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {"temperature": self.temperature(progress), "beta": self.beta(progress)}

    def __call__(self, model: CategoricalVAE, x: Tensor, y: Tensor, progress: Progress):
        terms = model.elbo_terms(x, self.kl, temperature=self.temperature(progress),
                                 straight_through=self.straight_through)
        loss = -terms.beta_elbo(self.beta(progress)).mean()
        with torch.no_grad():
            diagnostics = {"elbo": terms.elbo, "log_px": terms.log_px, "kl": terms.kl}
        return loss, diagnostics


def build(config: ModelConfig, network: Network, input_shape: Sequence[int], class_labels) -> nn.Module:
    return CategoricalVAE(input_shape, config.categorical_variables, config.categories, config.gaussian_features,
                          config.hidden, config.activation, network, config)
