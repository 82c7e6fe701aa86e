"""Distributions in the course's vocabulary, built on torch.distributions.

`ReparameterizedDiagonalGaussian` is the exercise's own class (its names `mu`, `log_sigma`,
`sample_epsilon` stay); everything else comes from torch.distributions directly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, constraints, kl_divergence, register_kl

__all__ = ["Bernoulli", "ReparameterizedDiagonalGaussian", "kl_divergence"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ReparameterizedDiagonalGaussian(Distribution):
    """A Gaussian with diagonal covariance, N(mu, diag(sigma²)), sampled as z = mu + sigma * eps.

    Unlike `torch.distributions.Normal`, the scale is given as `log_sigma` (the log of the
    standard deviation, not of the variance), as the encoder predicts it. `log_prob` is
    element-wise, as in the course: sum over the latent dimension yourself (or use
    `Independent(..., 1)`).

    Args:
        mu: mean, any shape.
        log_sigma: log standard deviation, the same shape as `mu`.
    """

    arg_constraints = {"mu": constraints.real, "log_sigma": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, mu: Tensor, log_sigma: Tensor, validate_args: bool | None = None):
        if mu.shape != log_sigma.shape:
            raise ValueError(
                "ReparameterizedDiagonalGaussian expects mu and log_sigma of the same shape, "
                f"got mu {tuple(mu.shape)} and log_sigma {tuple(log_sigma.shape)}"
            )
        self.mu = mu
        self.log_sigma = log_sigma
        self.sigma = log_sigma.exp()
        super().__init__(batch_shape=mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def stddev(self) -> Tensor:
        return self.sigma

    @property
    def variance(self) -> Tensor:
        return self.sigma.pow(2)

    def sample_epsilon(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """eps ~ N(0, I), shaped `sample_shape + mu.shape`, with mu's dtype and device."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """z ~ N(mu, sigma²) without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size(), eps: Tensor | None = None) -> Tensor:
        """z = mu + sigma * eps (the reparameterization trick): gradients reach mu and log_sigma.

        Args:
            sample_shape: leading sample dimensions, e.g. `(K,)` for K importance samples.
            eps: standard-normal noise of shape `sample_shape + mu.shape`; drawn if omitted.
        """
        if eps is None:
            eps = self.sample_epsilon(sample_shape)
        return self.mu + self.sigma * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z | mu, sigma²), element-wise: the result has the broadcast shape of z and mu."""
        if self._validate_args:
            self._validate_sample(z)
        return -self.log_sigma - _HALF_LOG_2PI - 0.5 * ((z - self.mu) / self.sigma).pow(2)

    def entropy(self) -> Tensor:
        """Element-wise differential entropy, 0.5 log(2 pi e sigma²)."""
        return self.log_sigma + 0.5 + _HALF_LOG_2PI

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return ReparameterizedDiagonalGaussian(
            self.mu.expand(batch_shape), self.log_sigma.expand(batch_shape)
        )


@register_kl(ReparameterizedDiagonalGaussian, ReparameterizedDiagonalGaussian)
def _kl_gaussian_gaussian(q: ReparameterizedDiagonalGaussian, p: ReparameterizedDiagonalGaussian) -> Tensor:
    """Element-wise KL(q || p) = log(σp/σq) + (σq² + (μq − μp)²) / (2σp²) − 1/2."""
    if q.mu.shape != p.mu.shape:
        raise ValueError(
            f"KL between Gaussians of different shapes: q {tuple(q.mu.shape)}, p {tuple(p.mu.shape)}"
        )
    var_ratio = (q.sigma / p.sigma).pow(2)
    mean_term = ((q.mu - p.mu) / p.sigma).pow(2)
    return 0.5 * (var_ratio + mean_term - 1) - (q.log_sigma - p.log_sigma)


# log σ passes through a soft clamp to (−LOG_SIGMA_BOUND, LOG_SIGMA_BOUND): near zero it is the
# identity, far out it saturates, so a small β cannot send σ to 0 or ∞ and the KL to NaN.
LOG_SIGMA_BOUND = 10.0


def diagonal_gaussian(params: Tensor) -> ReparameterizedDiagonalGaussian:
    """N(mu, sigma²) from a network's output `[mu, log_sigma]` (..., 2·D), log σ soft-clamped."""
    mu, log_sigma = params.chunk(2, dim=-1)
    return ReparameterizedDiagonalGaussian(mu, LOG_SIGMA_BOUND * torch.tanh(log_sigma / LOG_SIGMA_BOUND))
