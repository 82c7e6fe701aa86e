"""Properties of the ELBO, the β-ELBO and the importance-weighted bound."""

import math

import pytest
import torch
from torch import nn

from model import VariationalAutoencoder, VariationalInference, iwae_bound
from model.core.distributions import ReparameterizedDiagonalGaussian
from model.core.noise import RowwiseNoise
from model.core.objectives import ImportanceWeightedObjective, elbo_terms_from_outputs


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VariationalAutoencoder((1, 28, 28), latent_features=2, hidden=(32, 16))


def test_course_snippet_runs(vae):
    x = torch.rand(8, 1, 28, 28)
    vi = VariationalInference(beta=1.0)
    loss, diagnostics, outputs = vi(vae, x)
    assert loss.dim() == 0
    assert set(outputs) == {"px", "pz", "qz", "z"}
    assert {k: v.shape for k, v in diagnostics.items()} == {"elbo": (8,), "log_px": (8,), "kl": (8,)}
    samples = vae.sample_from_prior(batch_size=5)
    assert set(samples) == {"px", "pz", "z"} and samples["px"].sample().shape == (5, 1, 28, 28)


def test_elbo_is_log_px_minus_kl_and_beta_counts_kl_once(vae):
    x = torch.rand(16, 1, 28, 28)
    beta = 3.0
    torch.manual_seed(5)
    loss, diagnostics, outputs = VariationalInference(beta=beta)(vae, x)
    log_px, kl = diagnostics["log_px"], diagnostics["kl"]
    assert torch.allclose(diagnostics["elbo"], log_px - kl)
    # Recompute the loss from the same outputs: −mean(log p(x|z) − β·KL), not −mean(elbo − β·KL).
    terms = elbo_terms_from_outputs(x, outputs)
    assert torch.allclose(loss, -(terms.log_px - beta * terms.kl).mean())
    assert not torch.allclose(loss, -(terms.elbo - beta * terms.kl).mean())


def test_sampled_kl_is_log_q_minus_log_p_at_z(vae):
    x = torch.rand(4, 1, 28, 28)
    outputs = vae(x)
    terms = elbo_terms_from_outputs(x, outputs, "sampled")
    expected = (outputs["qz"].log_prob(outputs["z"]) - outputs["pz"].log_prob(outputs["z"])).sum(1)
    assert torch.allclose(terms.kl, expected)


def test_sampled_kl_averages_to_analytic(vae):
    x = torch.rand(2, 1, 28, 28).repeat(10_000, 1, 1, 1)
    sampled = VariationalInference(kl="sampled")(vae, x)[1]["kl"].mean()
    analytic = VariationalInference(kl="analytic")(vae, x)[1]["kl"].mean()
    assert sampled.item() == pytest.approx(analytic.item(), abs=0.05)


def test_zero_logit_decoder_gives_minus_784_ln2(vae):
    for layer in vae.decoder:
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    log_px = VariationalInference()(vae, x)[1]["log_px"]
    assert torch.allclose(log_px, torch.full((3,), -784 * math.log(2)), atol=1e-3)


def test_l1_equals_elbo_in_expectation(vae):
    torch.manual_seed(2)
    x = torch.rand(1, 1, 28, 28).expand(4000, 1, 28, 28)
    l1 = iwae_bound(vae, x, 1).mean()
    elbo = VariationalInference()(vae, x)[1]["elbo"].mean()
    # Both are unbiased for the same expectation; per-sample spread here is a few nats.
    assert l1.item() == pytest.approx(elbo.item(), abs=0.5)


def _grid_log_px(model: VariationalAutoencoder, x: torch.Tensor, half_width=8.0, n=400) -> torch.Tensor:
    """log p(x) = log ∫ p(x|z) p(z) dz on a 2-d grid (exact up to quadrature error)."""
    axis = torch.linspace(-half_width, half_width, n)
    z = torch.cartesian_prod(axis, axis)  # (n², 2)
    log_dz = 2 * math.log(axis[1] - axis[0])
    log_pz = ReparameterizedDiagonalGaussian(torch.zeros_like(z), torch.zeros_like(z)).log_prob(z).sum(1)
    out = []
    for image in x:
        log_px_z = model.observation_model(z).log_prob(image.expand(z.shape[0], *image.shape)).flatten(1).sum(1)
        out.append(torch.logsumexp(log_px_z + log_pz, 0) + log_dz)
    return torch.stack(out)


@torch.no_grad()
def test_iwae_bound_rises_with_k_and_stays_below_exact_log_px():
    torch.manual_seed(3)
    model = VariationalAutoencoder((1, 8, 8), latent_features=2, hidden=(16,))
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.4))
    exact = _grid_log_px(model, x)
    mean, stderr = {}, {}
    for k, repeats in ((1, 4000), (10, 1000), (100, 200), (1000, 40)):
        draws = iwae_bound(model, x.repeat(repeats, 1, 1, 1), k, chunk_size=250).view(repeats, 3)
        mean[k], stderr[k] = draws.mean(0), draws.std(0) / math.sqrt(repeats)
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        slack = 3 * (stderr[small] ** 2 + stderr[large] ** 2).sqrt()  # three standard errors
        assert torch.all(mean[large] >= mean[small] - slack), (small, large, mean, stderr)
    assert torch.all(mean[1000] <= exact + 3 * stderr[1000] + 1e-3)
    assert torch.all(exact - mean[1000] < exact - mean[1])  # closer to log p(x) with more samples


class _LinearGaussian(nn.Module):
    """z ~ N(0, 1), x | z ~ N(a z, s²): log p(x) = log N(x | 0, a² + s²) in closed form."""

    def __init__(self, a=2.0, s=0.5):
        super().__init__()
        self.a, self.s = a, s
        self.dummy = nn.Parameter(torch.zeros(()))

    def log_weights(self, x, num_samples, noise=None):
        # A deliberately imperfect q(z|x) = N(0.8 · exact posterior mean, 1.3 · exact sd).
        precision = 1 + self.a**2 / self.s**2
        q = torch.distributions.Normal(0.8 * (self.a / self.s**2) * x / precision, 1.3 * precision**-0.5)
        z = q.sample((num_samples,))  # (K, B)
        log_px_z = torch.distributions.Normal(self.a * z, self.s).log_prob(x)
        return log_px_z + torch.distributions.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)


class _FixedWeights(nn.Module):
    """Hands out the columns of a fixed (K, B) log-weight table in order, chunk after chunk."""

    def __init__(self, log_w):
        super().__init__()
        self.log_w, self.used = log_w, 0

    def log_weights(self, x, num_samples, noise=None):
        chunk = self.log_w[self.used:self.used + num_samples]
        self.used += num_samples
        return chunk


def test_iwae_bound_is_the_same_whatever_the_chunk_size():
    log_w = 50 * torch.randn(1000, 4, dtype=torch.float64)  # spread widely: logsumexp must stay stable
    x = torch.zeros(4, 1)
    expected = torch.logsumexp(log_w, 0) - math.log(1000)
    for chunk in (1, 7, 128, 1000, 5000):
        assert torch.allclose(iwae_bound(_FixedWeights(log_w), x, 1000, chunk_size=chunk), expected)


def test_iwae_bound_approaches_the_closed_form_log_px():
    torch.manual_seed(4)
    model = _LinearGaussian()
    x = torch.tensor([-1.0, 0.3, 2.5])
    exact = torch.distributions.Normal(0.0, math.sqrt(model.a**2 + model.s**2)).log_prob(x)
    l5000 = iwae_bound(model, x, 5000, chunk_size=128)
    assert torch.all(l5000 <= exact + 0.01)
    assert torch.allclose(l5000, exact, atol=0.02)


def test_iwae_bound_same_noise_same_answer_whatever_the_batching(vae):
    x = torch.rand(5, 1, 28, 28)
    together = iwae_bound(vae, x, 50, chunk_size=16, noise=RowwiseNoise([1, 2], [2, 3]))
    first = iwae_bound(vae, x[:2], 50, chunk_size=16, noise=RowwiseNoise([1], [2]))
    second = iwae_bound(vae, x[2:], 50, chunk_size=16, noise=RowwiseNoise([2], [3]))
    assert torch.allclose(together, torch.cat([first, second]), atol=1e-5)


def test_iwae_objective_with_one_sample_is_the_elbo_with_sampled_kl(vae):
    x = torch.rand(6, 1, 28, 28)
    torch.manual_seed(11)
    iwae_loss, _, _ = ImportanceWeightedObjective(1)(vae, x)
    torch.manual_seed(11)  # the same posterior draw
    elbo_loss, _, _ = VariationalInference(beta=1.0, kl="sampled")(vae, x)
    assert torch.allclose(iwae_loss, elbo_loss, atol=1e-4)


def test_iwae_objective_trains_the_encoder(vae):
    x = torch.rand(6, 1, 28, 28)
    loss, diagnostics, _ = ImportanceWeightedObjective(5)(vae, x)
    loss.backward()
    assert all(p.grad is not None for p in vae.encoder.parameters())
    assert diagnostics["iwae"].shape == (6,)
    assert torch.allclose(diagnostics["elbo"], diagnostics["log_px"] - diagnostics["kl"])
    with pytest.raises(ValueError, match="K >= 1"):
        ImportanceWeightedObjective(0)


def test_wrong_image_shape_is_named(vae):
    with pytest.raises(ValueError, match=r"784 pixels.*got shape \(3, 28, 27\)"):
        vae.log_weights(torch.rand(3, 28, 27), 2)
