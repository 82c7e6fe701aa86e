"""Likelihood regret (Xiao et al. 2020): how much the ELBO of x improves when its posterior is
optimised for x alone."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from model.core.noise import GLOBAL_NOISE, Noise
from model.core.objectives import reduce_to

REGRET_STEPS = 20  # Adam steps on each image's posterior; AUROC settles well before (docs/anomaly.md)
REGRET_LR = 0.1
REGRET_SAMPLES = 4  # posterior samples in the ELBO that the regret optimises


def likelihood_regret(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                      companions: Mapping[str, nn.Module] | None = None, steps: int = REGRET_STEPS,
                      lr: float = REGRET_LR, samples: int = REGRET_SAMPLES) -> Tensor:
    """Likelihood regret: max_t ELBO(x; q_t) − ELBO(x; q_0), in nats (Xiao et al. 2020, eq. 4).

    q_0 is the encoder's posterior; q_t follows `steps` Adam steps on the ELBO of x alone. Xiao et
    al. refit the encoder's weights per image; here each image's posterior parameters (mu,
    log_sigma) are optimised directly, which measures the same amortisation gap and runs for a
    whole batch at once (Adam is elementwise, so the images do not interact). The ELBO uses the
    analytic KL and `samples` fixed posterior draws (common random numbers), so regret ≥ 0 exactly.
    An image like the training data gains little; an outlier, poorly encoded, gains much.

    `k` is accepted for a uniform signature and not used. Needs a model with `posterior`, `prior`
    and `observation_model` (`Capabilities.gaussian_latent`: the Gaussian VAE).
    """
    if not getattr(getattr(model, "capabilities", None), "gaussian_latent", False):
        raise ValueError(f"likelihood regret needs a model with a Gaussian latent (posterior and observation_model), "
                         f"got one of kind {getattr(model, 'kind', type(model).__name__)!r}")
    if steps < 0 or samples < 1:
        raise ValueError(f"likelihood regret: expected steps >= 0 and samples >= 1, got {steps} and {samples}")
    noise = noise or GLOBAL_NOISE
    x = x.reshape(x.shape[0], *model.input_shape)
    with torch.no_grad():
        qz = model.posterior(x)
        mu0, log_sigma0 = qz.mu.detach(), qz.log_sigma.detach()
    eps = noise.normal((samples,), x.shape[0], mu0.shape[1:], device=x.device, dtype=x.dtype)  # (S, B, D)
    target = x.expand(samples, *x.shape)
    pz = Normal(torch.zeros_like(mu0), torch.ones_like(mu0))

    def elbo(mu: Tensor, log_sigma: Tensor) -> Tensor:  # (B,)
        z = mu + log_sigma.exp() * eps  # (S, B, D)
        log_px = reduce_to(model.observation_model(z).log_prob(target), 2).mean(0)
        return log_px - reduce_to(kl_divergence(Normal(mu, log_sigma.exp()), pz), 1)

    mu = mu0.clone().requires_grad_(True)
    log_sigma = log_sigma0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([mu, log_sigma], lr=lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            value = elbo(mu, log_sigma)  # the ELBO at q_step
            if step == 0:
                start = best = value.detach()
            best = torch.maximum(best, value.detach())
            if step == steps:
                break
            # Only the posterior parameters get gradients: the model's weights are left untouched.
            mu.grad, log_sigma.grad = torch.autograd.grad(-value.sum(), (mu, log_sigma))
            optimizer.step()
    return best - start
