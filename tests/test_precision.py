"""--precision bf16-mixed: the networks' products under bf16 autocast, every log-likelihood and sum
in fp32; and the fast summed Bernoulli log-likelihood the bounds use, against torch's own."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli

from model import TrainConfig, load_checkpoint
from model.config.base import ConfigError
from model.core.likelihoods import SoftBernoulli, summed_log_prob
from model.core.objectives import iwae_bound, reduce_to
from model.core.precision import autocast
from model.kinds.registry import KINDS, build_model
from model.runs.train import TrainingError, train

CPU = torch.device("cpu")


def _torch_sum(logits: torch.Tensor, x: torch.Tensor, ndim: int) -> torch.Tensor:
    return reduce_to(Bernoulli(logits=logits, validate_args=False).log_prob(x), ndim)


@pytest.mark.parametrize("lead", [(), (7,), (3, 5)])
def test_the_summed_bernoulli_log_likelihood_is_torchs_summed_log_prob(lead):
    """Over K samples of the same images (stride-0 x, the bound's case), over images alone, and with
    two sample dimensions (M2: classes × samples): value and gradient."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 5, 3)
    logits = (4 * torch.randn(*lead, 4, 1, 5, 3)).requires_grad_()
    ndim = len(lead) + 1
    expanded = x.expand(*lead, *x.shape)
    fast = summed_log_prob(SoftBernoulli(logits=logits, validate_args=False), expanded, ndim)
    (grad_fast,) = torch.autograd.grad(fast.sum(), logits)
    slow = _torch_sum(logits, expanded, ndim)
    (grad_slow,) = torch.autograd.grad(slow.sum(), logits)
    assert fast.shape == slow.shape == (*lead, 4)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-5, atol=1e-6)


def test_the_summed_log_likelihood_of_an_x_it_does_not_match_falls_back_to_log_prob():
    logits = torch.randn(2, 6)
    x = torch.rand(6)  # broadcasts against the logits, but is not of their shape
    torch.testing.assert_close(summed_log_prob(SoftBernoulli(logits=logits, validate_args=False), x, 1),
                               _torch_sum(logits, x, 1))


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="precision.*bf16-mixed"):
        TrainConfig.of(precision="fp16")
    with pytest.raises(ValueError, match=r"expected one of \['fp32', 'bf16-mixed'\]"):
        autocast("fp16", CPU)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_under_bf16_mixed_every_kinds_bounds_are_fp32_and_close_to_fp32s(kind):
    """The networks run in bf16, yet the ELBO terms and L_K come out float32, within bf16's rounding
    of the fp32 values on the same weights and the same noise (a few nats in some hundreds)."""
    config = TrainConfig.of(kind=kind, dataset="embedded", hidden=(64,), latent_features=4, input_shape=(1, 28, 28),
                            class_labels=tuple(range(10)), device="cpu")
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = torch.rand(16, 1, 28, 28).round()
    values = {}
    for precision in ("fp32", "bf16-mixed"):
        torch.manual_seed(1)
        with torch.no_grad(), autocast(precision, CPU):
            terms = model.elbo_terms(x)
            bound = iwae_bound(model, x, 8)
        values[precision] = (terms.log_px, terms.kl, bound)
    for fp32, bf16 in zip(values["fp32"], values["bf16-mixed"]):
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
        assert (bf16 - fp32).abs().max() < 0.02 * fp32.abs().max() + 0.5, (fp32, bf16)
    assert not torch.equal(values["fp32"][2], values["bf16-mixed"][2])  # the products did run in bf16


def test_a_bf16_mixed_run_records_its_precision_and_reaches_the_bounds_of_fp32(tmp_path, small_data):
    settings = dict(dataset="embedded", hidden=(64,), latent_features=4, epochs=2, batch_size=64, train_subset=512,
                    eval_k=20, calibration_k=5, seed=2, device="cpu")
    evaluations = {}
    for precision in ("fp32", "bf16-mixed"):
        run = train(TrainConfig.of(**settings, precision=precision), tmp_path / precision, progress=False,
                    data=small_data)
        checkpoint = load_checkpoint(run)
        assert checkpoint.config.precision == precision
        assert all(p.dtype == torch.float32 for p in checkpoint.model.parameters())  # weights stay fp32
        evaluations[precision] = checkpoint.evaluation
    # Two epochs from the same seed: the runs part only by bf16's rounding of the products.
    fp32, bf16 = evaluations["fp32"], evaluations["bf16-mixed"]
    assert abs(bf16["test"]["elbo"] - fp32["test"]["elbo"]) < 2.0, (fp32["test"], bf16["test"])
    assert abs(bf16["iwae"]["log_px"] - fp32["iwae"]["log_px"]) < 2.0


def test_resuming_in_another_precision_is_refused(tmp_path, small_data):
    config = TrainConfig.of(dataset="embedded", hidden=(32,), latent_features=2, epochs=1, train_subset=512,
                            eval_k=5, calibration_k=5, device="cpu")
    run = train(config, tmp_path / "run", progress=False, data=small_data)
    with pytest.raises(TrainingError, match="precision"):
        train(config.replace(epochs=2, precision="bf16-mixed"), run, resume=True, progress=False, data=small_data)
