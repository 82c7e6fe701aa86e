"""Anomaly scores that correct the likelihood, and the background model one of them needs.

A VAE's likelihood alone fails as an out-of-distribution detector: trained on Fashion-MNIST it
gives MNIST digits a *higher* likelihood than clothes (Nalisnick et al. 2019), because simple
images (few strokes, much black) are likely under any pixel model. The scores here remove that
"simplicity" term in three published ways:

- `input_complexity`: −log p(x) minus the length of a lossless compression of x (Serrà et al. 2020);
- `excess`: the same correction in the likelihood's own units: −log p(x) minus the least −log p(x)
  any Bernoulli decoder can reach on x, the entropy of its grey levels;
- `likelihood_ratio`: −log p(x) + log p_bg(x), with p_bg a background model trained on perturbed
  inputs (Ren et al. 2019);
- `likelihood_regret`: how much the ELBO of x improves when its posterior is optimised for x alone
  (Xiao et al. 2020).

`relative_reconstruction` applies Serrà et al.'s idea to the reconstruction error instead: the
error divided by the image's own structure (its edge energy), both in square-root grey levels.

Every score has the signature `score(model, x, *, k, noise, companions) -> Tensor (B,)`, higher
meaning more anomalous, like those in `model.anomaly.registry`. `companions` holds the extra models a run
directory carries (`{"background": VAE}`); a score that needs one says so in `NEEDS`.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from model.core.noise import GLOBAL_NOISE, Noise
from model.core.objectives import iwae_bound, reduce_to
from model.kinds.gaussian import check_images

BACKGROUND = "background"
NEEDS: dict[str, tuple[str, ...]] = {"likelihood_ratio": (BACKGROUND,)}
# Scores that read a model's internals rather than its `log_weights`: the kinds they work for.
KINDS: dict[str, tuple[str, ...]] = {"likelihood_regret": ("gaussian",)}
REGRET_STEPS = 20  # Adam steps on each image's posterior; AUROC settles well before (docs/anomaly.md)
REGRET_LR = 0.1
REGRET_SAMPLES = 4  # posterior samples in the ELBO that the regret optimises
NLL_SCORES = ("iwae", "complexity", "excess", "likelihood_ratio")  # the scores built on −L_K(x)
K_SCORES = NLL_SCORES  # the scores whose value depends on k (the others accept it and ignore it)


# --- input complexity (Serrà et al. 2020) ------------------------------------------------------

def complexity_bits(x: Tensor) -> Tensor:
    """L(x): length in bits of a lossless compression of each image, at 8 bits per pixel.

    The compressor is DEFLATE at level 9 (zlib), the entropy coder inside PNG, which Serrà et al.
    2020 use among others. Images are quantised to 256 grey levels first, as stored on disk.

    Args:
        x: images (B, ...) with grey levels in [0, 1].
    Returns:
        bits per image (B,), float32, on x's device.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a batch of images (B, ...), got shape {tuple(x.shape)}")
    pixels = (x.detach().reshape(x.shape[0], -1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    bits = [8 * len(zlib.compress(row.tobytes(), 9)) for row in pixels]
    return torch.tensor(bits, dtype=torch.float32, device=x.device)


def input_complexity(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                     companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """S(x) = −log p(x) − L(x) (Serrà et al. 2020, eq. 2), both in nats.

    −log p(x) is −L_K(x); L(x) is `complexity_bits(x)` · ln 2. A simple image (short code) is
    likely under every model, so subtracting its code length leaves what the model adds: the
    likelihood ratio against a universal compressor.
    """
    return -iwae_bound(model, x, k, noise=noise) - math.log(2) * complexity_bits(x)


def input_entropy(x: Tensor) -> Tensor:
    """Σ_i H(x_i) in nats: −log p(x) under the Bernoulli whose means are the pixels of x themselves.

    With grey levels as soft Bernoulli targets, −log p(x|z) = Σ_i [H(x_i) + KL(x_i ‖ p_i(z))], so
    this is the floor under every decoder's −log p(x|z): zero for a binary image, large for one
    full of grey. Args: x (B, ...) in [0, 1]. Returns: (B,).
    """
    p = x.reshape(x.shape[0], -1).clamp(0, 1)
    return (torch.special.entr(p) + torch.special.entr(1 - p)).sum(1)


def excess(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
           companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−log p(x) − Σ_i H(x_i): the likelihood in excess of the input's own entropy, in nats.

    Serrà et al.'s correction (S = −log p(x) − L(x), eq. 2) with L(x) measured in the likelihood's
    own units: a compressor's 8-bit code length is on another scale than a soft-target Bernoulli
    likelihood (thousands of nats against hundreds), so `input_complexity` is dominated by L(x).
    Here L(x) is the code length of x under the ideal pixel-wise Bernoulli code, an exact lower
    bound of −log p(x|z); what remains is Σ_i KL(x_i ‖ p_i) plus the latent terms: how far the
    model is from x, not how grey x is. For the Bernoulli-likelihood kinds; −log p(x) is −L_K(x).
    """
    return -iwae_bound(model, x, k, noise=noise) - input_entropy(x)


# --- reconstruction relative to the image's own structure (after Serrà et al. 2020) ---------------

EDGE_FLOOR = 1.0  # added to the edge energy: a blank image's score stays finite (its error is what remains)


def edge_energy(x: Tensor) -> Tensor:
    """Σ (√x_i − √x_j)² over horizontally and vertically adjacent pixels i, j: how much edge x has.

    The sum of squared differences of neighbouring pixels (the image's Dirichlet energy) in
    square-root grey levels: the scale that makes a Poisson pixel's noise constant, and in which
    the squared error is the first term of the Hellinger distance. A blank image has none; a thin stroke, twice its length; a textured
    garment, much more.

    Args:
        x: images (B, ..., H, W) with grey levels in [0, 1].
    Returns:
        (B,) on x's device.
    """
    if x.dim() < 3:
        raise ValueError(f"expected images (B, ..., H, W), got shape {tuple(x.shape)}")
    r = x.clamp(0, 1).sqrt()
    down = (r[..., 1:, :] - r[..., :-1, :]).pow(2).flatten(1).sum(1)
    across = (r[..., :, 1:] - r[..., :, :-1]).pow(2).flatten(1).sum(1)
    return down + across


def relative_reconstruction(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                            companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """Σ_i (√x̂_i − √x_i)² / (edge_energy(x) + 1): the reconstruction error per unit of the image's structure.

    x̂ is the decoder mean at the posterior mean (as for `reconstruction`). Even a good model misses
    an image it knows mostly along its edges (a stroke one pixel off), so the plain error grows with
    how much edge an image has, and a simple image (a "1", a sneaker) is reconstructed well by
    models of other classes. Dividing by the edge energy removes that, as Serrà et al. (2020) remove
    the input's complexity from the likelihood; the square root makes dim and bright pixels count
    alike. A dimensionless ratio, ≥ 0, 0 for a perfect reconstruction. Built on the benchmarks in
    docs/anomaly.md (this project's score, not a published one).

    `k`, `noise` and `companions` are accepted for a uniform signature and not used.
    """
    shape = tuple(getattr(model, "input_shape", ()))
    if len(shape) < 2:
        raise ValueError(f"relative reconstruction needs a model of images (C, H, W), got input shape {shape}")
    x = check_images(x, shape)
    error = (model.reconstruct(x).clamp(0, 1).sqrt() - x.sqrt()).pow(2).flatten(1).sum(1)
    return error / (edge_energy(x) + EDGE_FLOOR)


# --- likelihood ratio against a background model (Ren et al. 2019) -----------------------------

def likelihood_ratio(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                     companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−LLR(x) = −log p(x) + log p_bg(x) (Ren et al. 2019, eq. 5), both as L_K in nats.

    p_bg is the same kind of model trained on inputs with a fraction of their pixels replaced by
    noise (`perturb`): it learns the population statistics of pixels (how much background, how
    bright) but not the semantics, so the ratio keeps the semantic part of the likelihood.

    Args:
        companions: must hold "background" (see `fit_background`).
    """
    background = require(companions, BACKGROUND, "likelihood_ratio")
    return -iwae_bound(model, x, k, noise=noise) + iwae_bound(background, x, k, noise=noise)


def require(companions: Mapping[str, nn.Module] | None, name: str, score: str) -> nn.Module:
    """The companion model `name`, or an error saying which score needs it."""
    if not companions or name not in companions:
        raise ValueError(
            f"the {score!r} score needs the companion model {name!r}, got companions {sorted(companions or {})}; "
            f"train with --background-epochs > 0 to fit it"
        )
    return companions[name]


def perturb(x: Tensor, rate: float, noise: Noise | None = None) -> Tensor:
    """Replace each pixel with probability `rate` by a uniform grey level (Ren et al. 2019, sec. 4).

    Args:
        x: images (B, ...) in [0, 1].
        rate: the mutation rate μ in [0, 1].
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturb rate: expected a probability in [0, 1], got {rate}")
    noise = noise or GLOBAL_NOISE
    u = noise.uniform((2,), x.shape[0], x.shape[1:], device=x.device, dtype=x.dtype)  # (2, B, ...)
    return torch.where(u[0] < rate, u[1], x)


def fit_model(config, x: Tensor, *, epochs: int, perturb_rate: float = 0.0, seed: int | None = None,
              weight_decay: float = 0.0) -> nn.Module:
    """A model of `config`'s kind trained on images x (N, ...) with its objective, in eval mode.

    With `perturb_rate` > 0 each batch is perturbed afresh (`perturb`): that makes the background
    model. The loop is the training loop stripped of checkpoints and metrics: companions and
    benchmark models are cheap to refit and never resumed.
    """
    from model.data.loading import UNLABELLED, Split, training_batches
    from model.kinds.registry import build_model, build_objective
    from model.core.schedules import Progress

    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    torch.manual_seed(config.seed if seed is None else seed)
    model = build_model(config, x.shape[1:]).to(x.device)
    objective = build_objective(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=weight_decay)
    # Companions learn p(x) alone: no image carries a label (an M2 companion must not read class 0).
    split = Split(x, torch.full((x.shape[0],), UNLABELLED, dtype=torch.long, device=x.device))
    batches = math.ceil(x.shape[0] / config.batch_size)
    model.train()
    step = 0
    for epoch in range(epochs):
        for i, (xb, yb) in enumerate(training_batches(split, config.batch_size, "none")):
            if perturb_rate > 0:
                xb = perturb(xb, perturb_rate)
            loss, _ = objective(model, xb, yb, Progress(epoch=epoch + i / batches, step=step))
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became {loss.item()} at epoch {epoch + 1}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def fit_companions(config, x: Tensor) -> dict[str, nn.Module]:
    """The companions `config` asks for, trained on the training images x: {"background": VAE} or {}."""
    if config.background_epochs < 1:
        return {}
    background = fit_model(config, x, epochs=config.background_epochs, perturb_rate=config.perturb_rate,
                           seed=config.seed + 1)
    return {BACKGROUND: background}


# --- likelihood regret (Xiao et al. 2020) ------------------------------------------------------

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
    and `observation_model` (the Gaussian-latent VAE).
    """
    from torch.distributions import Normal, kl_divergence

    if getattr(model, "kind", None) not in KINDS["likelihood_regret"]:
        raise ValueError(f"likelihood regret needs a model of kind {KINDS['likelihood_regret']}, "
                         f"got {getattr(model, 'kind', type(model).__name__)!r}")
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


# --- many scores of a whole split ----------------------------------------------------------------

@torch.no_grad()
def score_split(model: nn.Module, x: Tensor, names, *, k: int, noise: Noise | None = None,
                companions: Mapping[str, nn.Module] | None = None, batch_size: int = 200,
                params: Mapping[str, dict] | None = None,
                progress: Callable[[int], object] | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Several scores of the images x (N, ...), in batches, with −L_K(x) computed once for all.

    The scores built on −L_K (`NLL_SCORES`) use the formulas of their functions (complexity =
    −L_K − L(x)·ln 2, excess = −L_K − Σ H(x_i), likelihood_ratio = −L_K + L_K^bg) on one shared
    −L_K, so they see the same importance samples and cost one bound between them; the other
    scores call their function in `model.anomaly.registry.SCORES` with `params[name]` as extra keywords.

    Args:
        progress: called with the number of images after each batch of each pass (a bar's `update`).
    Returns:
        ({name: (N,) CPU tensor}, {name: seconds}); a score built on −L_K counts its seconds too.
    """
    from model.anomaly.registry import SCORES

    unknown = sorted(set(names) - set(SCORES))
    if unknown:
        raise ValueError(f"unknown anomaly scores {unknown}; expected some of {sorted(SCORES)}")
    if "likelihood_ratio" in names:
        background = require(companions, BACKGROUND, "likelihood_ratio")
    device = next(model.parameters()).device
    params = params or {}
    values: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(fn(x[i:i + batch_size].to(device)).cpu())
            if progress is not None:
                progress(out[-1].shape[0])
        values[name] = torch.cat(out)
        seconds[name] = time.perf_counter() - started

    for name in names:
        if name not in NLL_SCORES:
            timed(name, lambda xb, fn=SCORES[name], name=name: fn(model, xb, k=k, noise=noise, companions=companions,
                                                                  **params.get(name, {})))
    if set(NLL_SCORES) & set(names):
        timed("iwae", lambda xb: -iwae_bound(model, xb, k, noise=noise))
    corrections = {  # what each score adds to −L_K(x)
        "complexity": lambda xb: -math.log(2) * complexity_bits(xb),
        "excess": lambda xb: -input_entropy(xb),
        "likelihood_ratio": lambda xb: iwae_bound(background, xb, k, noise=noise),
    }
    for name, correction in corrections.items():
        if name in names:
            timed(name, correction)
            values[name] = values["iwae"] + values[name]
            seconds[name] += seconds["iwae"]
    return {name: values[name] for name in names}, {name: round(seconds[name], 2) for name in names}
