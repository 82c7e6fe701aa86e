"""The observation models: the discretized logistic mixture is a proper distribution over 8-bit
images, and the scores that assume the Bernoulli say so instead of answering under another."""

from __future__ import annotations

import math

import pytest
import torch

from model.anomaly.registry import SCORES, available_scores, default_score, unavailable_reason
from model.config.train import TrainConfig
from model.core.likelihoods import LEVELS, LIKELIHOODS, discretized_logistic
from model.kinds.registry import build_model

GRID = torch.arange(LEVELS, dtype=torch.float32) / (LEVELS - 1)


@pytest.mark.parametrize("components", [1, 4])
def test_the_256_levels_of_every_subpixel_have_probabilities_summing_to_one(components):
    torch.manual_seed(0)
    per = LIKELIHOODS["logistic"].parameters_per_channel(components)
    params = torch.randn(2, per * 3, 4, 5) * 3  # wide and narrow scales, means in and out of [0, 1]
    px = discretized_logistic(params, components)
    log_p = px.log_prob(GRID.view(LEVELS, 1, 1, 1, 1).expand(LEVELS, 2, 3, 4, 5))
    assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all()
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(2, 3, 4, 5), atol=1e-4, rtol=0)
    assert px.mean.shape == (2, 3, 4, 5) and ((px.mean >= 0) & (px.mean <= 1)).all()
    sample = px.sample()
    assert sample.shape == (2, 3, 4, 5) and torch.equal(sample, torch.round(sample * 255) / 255)


def test_a_narrow_component_puts_its_mass_on_the_level_at_its_mean():
    level = 77 / 255
    params = torch.tensor([level - 0.5, -9.0]).view(1, 2, 1, 1)  # (B, 2C, H, W): mean, log scale
    px = discretized_logistic(params, 1)  # the decoder's means are centred on 0.5
    assert px.log_prob(torch.full((1, 1, 1, 1), level)).exp().item() > 0.98
    assert px.log_prob(torch.full((1, 1, 1, 1), 80 / 255)).exp().item() < 1e-3
    # Edge bins take the tails: a mean far below 0 gives level 0 nearly all the mass.
    low = discretized_logistic(torch.tensor([[[[-3.0]], [[-2.0]]]]), 1)
    assert low.log_prob(torch.zeros(1, 1, 1, 1)).exp().item() > 0.99


def test_no_model_spends_more_than_eight_bits_on_a_subpixel_on_average():
    """256 levels: a proper distribution's entropy is at most log2 256 = 8 bits, the literature's scale."""
    torch.manual_seed(1)
    px = discretized_logistic(torch.randn(3, 3 * 3 * 2, 4, 4) * 2, 3)  # K = 3, C = 2
    log_p = px.log_prob(GRID.view(LEVELS, 1, 1, 1, 1).expand(LEVELS, 3, 2, 4, 4))
    entropy_bits = -(log_p.exp() * log_p).sum(0) / math.log(2)
    assert (entropy_bits <= 8 + 1e-3).all() and (entropy_bits > 0).all()


def test_scores_that_assume_the_bernoulli_are_unavailable_under_the_logistic():
    config = TrainConfig.of(input_shape=(3, 8, 6), class_labels=(0, 1), hidden=(16,), likelihood="logistic",
                            mixtures=2)
    model = build_model(config)
    assert model.describe()["likelihood"] == "logistic"
    out = model.decoder(torch.zeros(1, model.latent_features))
    assert out.shape == (1, 3 * 2 * 3, 8, 6)  # 3 numbers per component and channel
    names = available_scores(model)
    assert "excess" not in names and "combined" not in names and "iwae" in names and "complexity" in names
    assert all(SCORES[n].likelihoods is None or "logistic" in SCORES[n].likelihoods for n in names)
    assert default_score("folder", names) == "iwae"
    # Unavailable, and saying why.
    assert "assumes the bernoulli likelihood and this model's is 'logistic'" in unavailable_reason("excess", model)
    assert "component 'excess'" in unavailable_reason("combined", model)
    assert unavailable_reason("iwae", model) is None
    bernoulli = build_model(config.replace(likelihood="bernoulli"))
    assert {"excess", "combined"} <= set(available_scores(bernoulli))
    x = torch.randint(0, 256, (4, 3, 8, 6), dtype=torch.uint8)
    log_w = model.log_weights(x, 3)
    assert log_w.shape == (3, 4) and torch.isfinite(log_w).all() and (log_w < 0).all()
