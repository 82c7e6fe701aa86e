"""The supplementary demonstrations: importance sampling and the ordering of the bounds."""

import math

import pytest
import torch

from model import TrainConfig
from model.runs.checkpoint import load_model
from model.data.loading import load_data
from model.analysis.demos import bound_ordering, grouped_bounds, importance_sampling, quadrature_log_px
from model.runs.train import train
from model.kinds.gaussian import VariationalAutoencoder


def test_importance_sampling_recovers_the_mean_of_p():
    result = importance_sampling(n_samples=20_000, repeats=50, seed=1)
    assert abs(result["estimate"] - 5.0) < 0.25
    assert abs(result["self_normalised_estimate"] - 5.0) < 0.1
    assert abs(result["mean_weight"] - 1.0) < 0.05  # E_q[p/q] = 1
    wide, narrow = result["convergence"]["N(1, 3)"], result["convergence"]["N(1, 1)"]
    # more samples, smaller spread; a proposal narrower than p spreads more for the same n
    assert wide[-1]["std"] < wide[0]["std"]
    assert narrow[2]["std"] > wide[2]["std"]


def test_grouped_bounds_are_the_elbo_at_one_and_log_mean_exp_at_all():
    log_w = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)) * 2
    bounds = grouped_bounds(log_w, [1, 3, 12])
    assert torch.allclose(bounds[1], log_w.mean(0))
    assert torch.allclose(bounds[12], torch.logsumexp(log_w, 0) - math.log(12))
    with pytest.raises(ValueError, match=r"expected every K in 1..12 \(the samples drawn\), got 13"):
        grouped_bounds(log_w, [13])


def test_quadrature_matches_a_model_whose_posterior_is_exact():
    # A decoder that ignores z makes p(x|z) constant, so log p(x) = log p(x|z) exactly.
    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 4, 4), latent_features=2, hidden=(8,))
    last = model.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
    x = torch.rand(3, 1, 4, 4)
    exact = model.observation_model(torch.zeros(3, 2)).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(quadrature_log_px(model, x, points=81, width=8.0), exact, atol=1e-3)


def test_bounds_rise_with_k_towards_log_px(tmp_path):
    config = TrainConfig.of(hidden=(32,), latent_features=2, epochs=2, batch_size=128, train_subset=400,
                         eval_k=4, calibration_k=4, seed=5)
    data = load_data(config)
    model, _ = load_model(train(config, tmp_path / "run", data=data, progress=False))
    result = bound_ordering(model, data.test.x[:20], ks=[1, 10, 100, 1000], seed=0)
    bounds = [row["bound"] for row in result["rows"]]
    assert result["monotone"] and bounds == sorted(bounds)
    assert bounds[-1] - bounds[0] > 3 * result["rows"][-1]["gain_se"]  # a real gain, not noise
    assert result["quadrature_log_px"] >= bounds[-1] - 0.5  # log p(x) >= L_K, within quadrature error


def test_pathwise_and_score_function_gradients_agree_in_mean_and_differ_in_spread():
    from model.analysis.demos import gradient_estimators

    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 4, 4), latent_features=2, hidden=(8,))
    x = torch.rand(1, 1, 4, 4)
    result = gradient_estimators(model, x, samples=20_000, seed=1)
    pathwise, score = result["units"]["pathwise"], result["units"]["score_function_baseline"]
    for d in range(2):  # both unbiased: means agree within 4 standard errors of the noisier one
        assert abs(pathwise["mean"][d] - score["mean"][d]) < 4 * score["std"][d] / math.sqrt(20_000)
        assert pathwise["std"][d] < score["std"][d] < result["units"]["score_function"]["std"][d]
