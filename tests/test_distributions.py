"""Properties of ReparameterizedDiagonalGaussian and the Bernoulli observation model."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from model import Bernoulli, ReparameterizedDiagonalGaussian


def test_course_check_moments_and_log_prob():
    # The notebook's own check: 10^6 samples of N(1.224, 0.689²).
    torch.manual_seed(0)
    mu = torch.full((1_000_000,), 1.224)
    sigma = torch.full((1_000_000,), 0.689)
    dist = ReparameterizedDiagonalGaussian(mu, sigma.log())
    z = dist.rsample()
    assert abs(z.mean().item() - 1.224) < 1e-3 * 2  # standard error is 0.689 / 1000
    assert abs(z.var().item() - 0.689**2) < 1e-3 * 2
    reference = Normal(mu, sigma).log_prob(z)
    assert torch.allclose(dist.log_prob(z), reference, atol=1e-3)


def test_log_prob_is_elementwise():
    dist = ReparameterizedDiagonalGaussian(torch.zeros(5, 3), torch.zeros(5, 3))
    z = torch.randn(5, 3)
    assert dist.log_prob(z).shape == (5, 3)
    assert torch.allclose(dist.log_prob(z), Normal(0.0, 1.0).log_prob(z))


def test_log_sigma_is_log_standard_deviation_not_variance():
    dist = ReparameterizedDiagonalGaussian(torch.zeros(1), torch.tensor([math.log(2.0)]))
    assert dist.sigma.item() == pytest.approx(2.0)
    assert dist.stddev.item() == pytest.approx(2.0)
    assert dist.variance.item() == pytest.approx(4.0)


def test_rsample_gradients_reach_mu_and_log_sigma():
    mu = torch.zeros(4, 2, requires_grad=True)
    log_sigma = torch.zeros(4, 2, requires_grad=True)
    z = ReparameterizedDiagonalGaussian(mu, log_sigma).rsample()
    z.pow(2).sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert log_sigma.grad is not None and log_sigma.grad.abs().sum() > 0


def test_sample_has_no_gradient():
    mu = torch.zeros(3, requires_grad=True)
    assert not ReparameterizedDiagonalGaussian(mu, torch.zeros(3)).sample().requires_grad


def test_sample_epsilon_is_shaped_typed_and_placed_like_mu():
    mu = torch.zeros(3, 4, dtype=torch.float64)
    eps = ReparameterizedDiagonalGaussian(mu, torch.zeros_like(mu)).sample_epsilon()
    assert eps.shape == mu.shape and eps.dtype == mu.dtype and eps.device == mu.device


def test_sample_shape_comes_first():
    dist = ReparameterizedDiagonalGaussian(torch.zeros(5, 3), torch.zeros(5, 3))
    assert dist.rsample((7,)).shape == (7, 5, 3)


def test_distribution_interface():
    mu, log_sigma = torch.randn(2, 3), torch.randn(2, 3)
    dist = ReparameterizedDiagonalGaussian(mu, log_sigma)
    reference = Normal(mu, log_sigma.exp())
    assert dist.batch_shape == (2, 3)
    assert torch.equal(dist.mean, mu)
    assert torch.allclose(dist.entropy(), reference.entropy())


def test_mismatched_shapes_name_both():
    with pytest.raises(ValueError, match=r"mu \(2, 3\).*log_sigma \(3, 2\)"):
        ReparameterizedDiagonalGaussian(torch.zeros(2, 3), torch.zeros(3, 2))


def test_analytic_kl_matches_reference_and_monte_carlo():
    torch.manual_seed(1)
    q = ReparameterizedDiagonalGaussian(torch.randn(3), 0.3 * torch.randn(3))
    p = ReparameterizedDiagonalGaussian(torch.randn(3), 0.3 * torch.randn(3))
    analytic = kl_divergence(q, p)
    assert torch.allclose(analytic, kl_divergence(Normal(q.mu, q.sigma), Normal(p.mu, p.sigma)), atol=1e-6)
    z = q.sample((400_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    # Monte Carlo standard error here is below 0.005 per unit; allow 0.02.
    assert torch.allclose(monte_carlo, analytic, atol=0.02)


def test_bernoulli_accepts_grey_levels_as_soft_targets():
    px = Bernoulli(logits=torch.zeros(2, 784), validate_args=False)
    x = torch.rand(2, 784)
    assert torch.allclose(px.log_prob(x).sum(1), torch.full((2,), -784 * math.log(2)))
