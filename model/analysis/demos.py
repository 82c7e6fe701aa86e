"""The supplementary material's two points, as runnable demonstrations (`vae demo ...`).

1. Importance sampling: E_p[f(z)] = E_q[w(z) f(z)] with w = p/q, estimated from samples of q alone
   (the course's example: p = N(5, 1), q = N(1, 3), f(z) = z), and what a poor proposal does.
2. The bound ordering log p(x) ≥ L_{K+1} ≥ L_K ≥ L_1 = ELBO on a trained model, for K = 1 … 5,000
   (Burda et al. 2015, Theorem 1). For two latent units log p(x) itself is computed by quadrature.

And for exercise 2.1, why the reparameterization trick: the spread of the pathwise gradient
∇_mu E_q[log p(x|z)] against the score-function (REINFORCE) estimator of the same gradient.

Images may be uint8 or in [0, 1] (they are scaled here), of any (C, H, W), under any likelihood:
the demonstrations only call `log_prob` of the run's p(x|z), so under the discretized logistic
log p(x) is that of 8-bit images. Work is chunked so memory grows with the image size no faster
than it does for the course's 28×28 digits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Normal

from model.analysis.figures import pyplot, save_figure
from model.core.preprocess import scale

DEFAULT_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Values of p(x|z) evaluated at once (float32, about 150 MiB): a bound on memory, whatever the image size.
# Larger images take fewer samples (or grid points) per pass, so memory stays what it was.
PIXELS_AT_ONCE = 39_200_000


# --- 1. importance sampling ------------------------------------------------------------------

# The course's example: the mean of p = N(5, 1) estimated from samples of a proposal q; the first
# proposal is wide enough to cover p, the second too narrow (the weights' variance explodes).
TARGET = (5.0, 1.0)
PROPOSALS = {"N(1, 3)": (1.0, 3.0), "N(1, 1)": (1.0, 1.0)}


def _normal(loc_scale: tuple[float, float]) -> Normal:
    return Normal(torch.tensor(loc_scale[0]), torch.tensor(loc_scale[1]))


def _draw(dist: Normal, shape, generator: torch.Generator) -> Tensor:
    return dist.loc + dist.scale * torch.randn(shape, generator=generator, dtype=torch.float64)


def _weights(q: Normal, z: Tensor) -> Tensor:
    return (_normal(TARGET).log_prob(z) - q.log_prob(z)).exp()  # w(z) = p(z) / q(z)


def importance_sampling(n_samples: int = 10_000, repeats: int = 200, seed: int = 0) -> dict:
    """Estimate the mean of p = N(5, 1) from samples of q, as the course's illustration does.

    Returns the single estimate from `n_samples` draws of q = N(1, 3) next to the empirical mean of
    as many draws of p, the effective sample size, and for growing sample sizes the mean and
    standard deviation of the estimate over `repeats` repetitions, for each of `PROPOSALS`.
    """
    generator = torch.Generator().manual_seed(seed)
    q = _normal(PROPOSALS["N(1, 3)"])
    z = _draw(q, (n_samples,), generator)
    w = _weights(q, z)
    out = {
        "p": "N(5, 1)", "q": "N(1, 3)", "f": "z", "true_mean": TARGET[0], "n_samples": n_samples, "seed": seed,
        "estimate": float((w * z).mean()),
        "self_normalised_estimate": float((w * z).sum() / w.sum()),
        "empirical_mean_of_p_samples": float(_draw(_normal(TARGET), (n_samples,), generator).mean()),
        "mean_weight": float(w.mean()),  # E_q[w] = 1
        "effective_sample_size": float(w.sum() ** 2 / w.pow(2).sum()),
        "convergence": {},
    }
    for name, loc_scale in PROPOSALS.items():
        proposal, rows = _normal(loc_scale), []
        for n in (10, 100, 1_000, 10_000, 100_000):
            z = _draw(proposal, (repeats, n), generator)
            estimates = (_weights(proposal, z) * z).mean(1)  # (repeats,)
            rows.append({"n": n, "mean": float(estimates.mean()), "std": float(estimates.std())})
        out["convergence"][name] = rows
    return out


def importance_samples(n_samples: int = 10_000, seed: int = 0) -> dict[str, Tensor]:
    """What `plot_importance_sampling` draws: `n_samples` of q = N(1, 3) (`q`), their weights
    w = p/q (`w`), and as many samples of p = N(5, 1) (`p`); each (n_samples,)."""
    generator = torch.Generator().manual_seed(seed)
    q = _normal(PROPOSALS["N(1, 3)"])
    z = _draw(q, (n_samples,), generator)
    return {"q": z, "w": _weights(q, z), "p": _draw(_normal(TARGET), (n_samples,), generator)}


def plot_importance_sampling(result: dict, path: Path) -> Path:
    """The weighted histogram of q's samples against p, and the estimate's spread per sample size."""
    plt = pyplot()
    samples = importance_samples(result["n_samples"], result["seed"])
    q_samples, w, p_samples = samples["q"].numpy(), samples["w"].numpy(), samples["p"].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = 80
    axes[0].hist(p_samples, bins=bins, density=True, alpha=0.3, color="C0", label="p(z) = N(5, 1)")
    axes[0].hist(q_samples, bins=bins, density=True, alpha=0.3, color="C1", label="q(z) = N(1, 3)")
    axes[0].hist(q_samples, bins=bins, weights=w / w.sum(), density=True, histtype="step", color="k",
                 label="q samples weighted by w = p/q")
    axes[0].axvline(result["empirical_mean_of_p_samples"], color="C0", label="empirical mean of p samples")
    axes[0].axvline(result["estimate"], color="C1", ls="--", label="importance-weighted estimate")
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"E_p[z] from {result['n_samples']:,} samples of q: {result['estimate']:.3f} "
                      f"(ESS {result['effective_sample_size']:.0f})", fontsize=9)
    for i, (name, rows) in enumerate(result["convergence"].items()):
        ns = np.array([r["n"] for r in rows])
        axes[1].loglog(ns, [r["std"] for r in rows], marker="o", color=f"C{i + 2}", label=f"q = {name}")
    first = result["convergence"]["N(1, 3)"][0]
    ns = np.array([r["n"] for r in result["convergence"]["N(1, 3)"]])
    axes[1].loglog(ns, first["std"] * np.sqrt(first["n"] / ns), color="0.6", ls=":", label="∝ 1/√n")
    axes[1].set_xlabel("samples of q")
    axes[1].set_ylabel("std of the estimate over repeats")
    axes[1].set_title("spread of the estimate: a proposal narrower than p is far noisier", fontsize=9)
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)


# --- 2. the bound ordering -------------------------------------------------------------------

@torch.no_grad()
def grouped_bounds(log_w: Tensor, ks) -> dict[int, Tensor]:
    """L_K per image for each K from one set of log-weights (K_max, B).

    The K_max samples are cut into ⌊K_max / K⌋ disjoint groups of K; each group gives an unbiased
    estimate of L_K, and their mean a low-variance one. Returns {K: (B,)}.
    """
    k_max = log_w.shape[0]
    out = {}
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(f"expected every K in 1..{k_max} (the samples drawn), got {k}")
        groups = k_max // k
        grouped = log_w[: groups * k].reshape(groups, k, -1)  # (groups, K, B)
        out[k] = (torch.logsumexp(grouped, 1) - math.log(k)).mean(0)
    return out


def _require_gaussian_latent(model, what: str) -> None:
    if not model.capabilities.gaussian_latent:
        raise ValueError(f"{what} needs a model with a Gaussian latent (as --kind gaussian), got kind {model.kind!r}")


@torch.no_grad()
def quadrature_log_px(model, x: Tensor, points: int = 121, width: float = 8.0) -> Tensor:
    """log p(x) = log ∫ p(x|z) p(z) dz on a points×points grid over mu ± width·sigma (two latent units).

    Returns (B,). A deterministic check on the importance-weighted bounds: a rectangle rule over a
    box that q(z|x) places essentially all its mass in. The model's latent must be Gaussian
    (`Capabilities.gaussian_latent`: it has `prior` and `observation_model(z)`).
    """
    _require_gaussian_latent(model, "quadrature")
    if model.latent_features != 2:
        raise ValueError(f"quadrature needs a model with 2 latent units, got {model.latent_features}")
    x = scale(x)
    encoded = model.encode(x)
    mu, sigma = encoded["mu"], encoded["sigma"]  # (B, 2)
    t = torch.linspace(-width, width, points, device=mu.device)
    at_once = max(1, PIXELS_AT_ONCE // x[0].numel())  # grid points per pass: all 121² for a 28×28 digit
    out = []
    for i in range(x.shape[0]):
        axes = [mu[i, d] + sigma[i, d] * t for d in range(2)]
        z1, z2 = torch.meshgrid(*axes, indexing="ij")
        z = torch.stack([z1.flatten(), z2.flatten()], 1)  # (points², 2)
        log_px_z = torch.cat([
            model.observation_model(part).log_prob(x[i].expand(part.shape[0], *x.shape[1:])).flatten(1).sum(1)
            for part in z.split(at_once)])  # (points²,)
        log_pz = model.prior(z.shape[0]).log_prob(z).sum(1)
        cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
        out.append(torch.logsumexp(log_px_z + log_pz, 0) + cell.log())
    return torch.stack(out)


def ks_up_to(k_max: int) -> list[int]:
    """The `DEFAULT_KS` up to `k_max`, and `k_max` itself."""
    return sorted({k for k in DEFAULT_KS if k < k_max} | {k_max})


@torch.no_grad()
def bound_ordering(model, x: Tensor, ks=DEFAULT_KS, chunk: int = 250, seed: int = 0) -> dict:
    """Measure E[L_K] for each K on images x, with paired standard errors, and check the ordering.

    Returns a dict with, per K, the mean bound over the images, its gain over L_1 and over the
    previous K (each with the standard error of the mean of the per-image differences), the ELBO
    with the analytic KL, and for two latent units the quadrature log p(x).
    """
    torch.manual_seed(seed)
    x = scale(x)
    ks = sorted(set(int(k) for k in ks))
    k_max = ks[-1]
    chunk = max(1, min(chunk, PIXELS_AT_ONCE // x.numel()))  # the course's 250 for 200 digits
    log_w = torch.cat([model.log_weights(x, min(chunk, k_max - done)) for done in range(0, k_max, chunk)])  # (K_max, B)
    bounds = grouped_bounds(log_w, ks)
    n = x.shape[0]

    def mean_se(values: Tensor) -> tuple[float, float]:
        return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")

    elbo = model.elbo_terms(x, kl="analytic").elbo
    rows, previous = [], None
    for k in ks:
        gain, gain_se = mean_se(bounds[k] - bounds[ks[0]])
        step, step_se = mean_se(bounds[k] - bounds[previous]) if previous is not None else (0.0, 0.0)
        rows.append({"k": k, "bound": float(bounds[k].mean()), "gain_over_first": gain, "gain_se": gain_se,
                     "step": step, "step_se": step_se})
        previous = k
    result = {
        "images": n, "k_max": k_max, "seed": seed, "rows": rows,
        "elbo_analytic_kl": mean_se(elbo)[0],
        "monotone": all(b["bound"] >= a["bound"] for a, b in zip(rows, rows[1:])),
    }
    if model.capabilities.gaussian_latent and model.latent_features == 2:
        log_px = quadrature_log_px(model, x)
        result["quadrature_log_px"] = float(log_px.mean())
        result["quadrature_minus_last_bound"] = mean_se(log_px - bounds[k_max])
    return result


def plot_bound_ordering(result: dict, path: Path, title: str = "") -> Path:
    plt = pyplot()
    rows = result["rows"]
    first = rows[0]["bound"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar([r["k"] for r in rows], [r["gain_over_first"] for r in rows], yerr=[r["gain_se"] for r in rows],
                marker="o", capsize=3, label="L_K − L_1 (mean ± s.e. over images)")
    ax.axhline(result["elbo_analytic_kl"] - first, color="C2", ls=":", label="ELBO (analytic KL) − L_1")
    if "quadrature_log_px" in result:
        ax.axhline(result["quadrature_log_px"] - first, color="k", ls="--", label="log p(x) by quadrature − L_1")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("nats per image, relative to L_1")
    ax.set_title(title or f"log p(x) ≥ L_(K+1) ≥ L_K ≥ L_1 on {result['images']} test images "
                          f"(L_1 = {first:.2f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


# --- 3. the reparameterization trick ----------------------------------------------------------

def gradient_estimators(model, x: Tensor, samples: int = 2000, seed: int = 0) -> dict:
    """Per-sample estimates of ∇_mu E_q(z|x)[log p(x|z)] for one image x (1, ...), two ways.

    pathwise (reparameterized): z = mu + sigma·eps, gradient through the decoder;
    score function: log p(x|z) · ∇_mu log q(z|x) = log p(x|z) (z − mu) / sigma², z held fixed, with and
    without the sample-mean baseline. All three are unbiased; their spreads differ.
    Returns per latent unit: mean and std of each estimator over `samples` draws. The baseline uses
    the same draws (a slight bias, irrelevant next to the spreads compared). The model's latent
    must be Gaussian (`Capabilities.gaussian_latent`).
    """
    _require_gaussian_latent(model, "the gradient estimators")
    x = scale(x)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        qz = model.posterior(x)
    mu, sigma = qz.mu.detach(), qz.sigma.detach()  # (1, D)
    eps = torch.randn(samples, mu.shape[1], generator=generator)
    mu_rows = mu.expand(samples, -1).clone().requires_grad_(True)  # each row feeds only its own sample
    z = mu_rows + sigma * eps
    log_px = model.observation_model(z).log_prob(x.expand(samples, *x.shape[1:])).flatten(1).sum(1)  # (S,)
    (pathwise,) = torch.autograd.grad(log_px.sum(), mu_rows)  # (S, D)
    f = log_px.detach()[:, None]
    score = (z.detach() - mu) / sigma.pow(2)  # ∇_mu log q(z|x)
    estimators = {"pathwise": pathwise, "score_function": f * score, "score_function_baseline": (f - f.mean()) * score}
    out = {"samples": samples, "seed": seed, "sigma": sigma[0].tolist(), "units": {}}
    for name, values in estimators.items():
        out["units"][name] = {"mean": values.mean(0).tolist(), "std": values.std(0).tolist()}
    out["std_ratio_score_over_pathwise"] = [
        s / p for s, p in zip(out["units"]["score_function"]["std"], out["units"]["pathwise"]["std"])]
    out["std_ratio_baseline_over_pathwise"] = [
        s / p for s, p in zip(out["units"]["score_function_baseline"]["std"], out["units"]["pathwise"]["std"])]
    return out


def plot_gradient_estimators(results: list[dict], path: Path) -> Path:
    """Std of each estimator per image (latent unit 1), log scale: one marker per image."""
    plt = pyplot()
    names = ("pathwise", "score_function_baseline", "score_function")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, name in enumerate(names):
        stds = [r["units"][name]["std"][d] for r in results for d in range(len(r["sigma"]))]
        ax.scatter(np.full(len(stds), i) + np.linspace(-0.2, 0.2, len(stds)), stds, s=8, color=f"C{i}")
        ax.plot([i - 0.3, i + 0.3], [np.median(stds)] * 2, color="k", lw=1)
    ax.set_xticks(range(len(names)), ["pathwise\n(reparameterized)", "score function\nwith baseline",
                                      "score function"], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("std of one-sample gradient estimate")
    ax.set_title(f"∂/∂mu E_q[log p(x|z)]: {len(results)} test images × every latent unit, "
                 f"{results[0]['samples']} draws each (bar: median)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def reparameterization(model, x: Tensor, samples: int = 2000, seed: int = 0) -> dict:
    """`gradient_estimators` for each image of x (N, ...), image i with seed + i, and how their spreads compare.

    Returns the medians over images and latent units of std(score function) / std(pathwise), with and
    without the baseline, the smallest ratio with it, and every image's estimates (`per_image`).
    """
    rows = [gradient_estimators(model, x[i:i + 1], samples, seed=seed + i) for i in range(x.shape[0])]
    ratios = np.array([r["std_ratio_score_over_pathwise"] for r in rows])  # (images, D)
    baseline = np.array([r["std_ratio_baseline_over_pathwise"] for r in rows])
    return {"images": x.shape[0], "samples": samples,
            "median_std_ratio_score_over_pathwise": float(np.median(ratios)),
            "median_std_ratio_baseline_over_pathwise": float(np.median(baseline)),
            "min_std_ratio_baseline_over_pathwise": float(baseline.min()), "per_image": rows}
