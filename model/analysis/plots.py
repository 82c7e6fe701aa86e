"""The course's plots of one run, as PNG files: `plot_run(RUN_DIR)` (the `vae plot` command).

Data next to reconstructions (decoder means, and samples x ~ p(x|z) of the run's likelihood: binary
under the course's Bernoulli, 8-bit levels under the discretized logistic), the latent space (2σ posterior
ellipses over the prior for two Gaussian units, PCA / t-SNE otherwise), the learning curves, prior
samples next to posterior samples, interpolations, the decoded manifold over [-3, 3]² and the KL
per latent unit. The last three need a Gaussian latent (`Capabilities.gaussian_latent`). Kinds
with plots of their own add them through `model.analysis.kind_plots.KIND_PLOTS`. The plots of a
whole sweep are in `model.analysis.sweep_plots`.

Images of any (C, H, W) are drawn: grey with the course's colormap, colour (C = 3) as RGB, each
figure sized from H and W so pixels stay square (`model.analysis.figures.image_inches`). Classes
are named as the run's data names them (`config.data.class_names`, e.g. a folder's subfolders).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Ellipse
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE
from torch import Tensor

from model.analysis.figures import (class_names, fit_title, image_grid, image_inches, in_chunks, pyplot, save_figure,
                                    show_images)
from model.analysis.kind_plots import KIND_PLOTS, MODE_OBSERVATIONS
from model.core.labels import UNLABELLED
from model.core.preprocess import scale
from model.analysis.plot_names import GAUSSIAN_PLOTS
from model.core.device import device_of
from model.data.loading import load_data
from model.evaluation.evaluate import ACTIVE_UNIT_THRESHOLD
from model.io.atomic import read_jsonl
from model.runs.checkpoint import METRICS, load_model

PLOTS_DIR = "plots"
PRIOR_RADIUS = 2.0  # the prior's 2σ disk, drawn behind the posterior ellipses
MAX_ELLIPSES = 400  # more ellipses would hide the means under them
CURVES = (("elbo", "ELBO"), ("kl", "KL(q(z|x) || p(z))"), ("log_px", "log p(x|z)"))
# (least, most) inches of an image panel's longer side (figures.image_inches); the least are the
# sizes the course's 28×28 figures always had.
GRID_INCHES = (3.2, 8.0)  # an 8×8 grid
TILE_INCHES = (0.6, 1.6)  # one image of a row of interpolations
MANIFOLD_INCHES = (4.9, 4.9)  # the 20×20 manifold: an overview, the same size for every image size


def _show(ax, grid: np.ndarray, title: str, inches: float) -> None:
    show_images(ax, grid)
    ax.set_title(fit_title(title, inches), fontsize=9)
    ax.axis("off")


def _colors(labels: np.ndarray):
    cmap = colormaps["tab10"]
    return [cmap(int(c) % 10) for c in labels]


def _legend_for_classes(ax, labels: np.ndarray, names: dict[int, str] | None = None) -> None:
    cmap = colormaps["tab10"]
    names = {UNLABELLED: "unlabelled", **(names or {})}
    handles = [Line2D([], [], marker="o", linestyle="", color=cmap(int(c) % 10), label=names.get(int(c), str(int(c))))
               for c in np.unique(labels)]
    ax.legend(handles=handles, fontsize=7, loc="upper right", title="class", title_fontsize=7, ncol=2)


def _reconstruction_model(model, x: Tensor):
    """p(x|z) at z ~ q(z|x) where the latent is Gaussian (as the course draws it), else at the
    kind's posterior mean or mode (what its `reconstruct` decodes); and which it was. The
    distribution is None for a kind that gives only its decoder means (no `MODE_OBSERVATIONS` entry)."""
    x = scale(x)
    if model.capabilities.gaussian_latent:
        return model.observation_model(model.posterior(x).rsample()), "z ~ q(z|x)"
    observation = MODE_OBSERVATIONS.get(model.kind)
    return (None if observation is None else observation(model, x)), "posterior mean"


def _posterior_means(model, x: Tensor) -> tuple[Tensor, str]:
    """Decoder means (B, C, H, W) of `_reconstruction_model`, and where they were decoded."""
    px, how = _reconstruction_model(model, x)
    return (model.reconstruct(x) if px is None else px.mean), how


@torch.no_grad()
def plot_reconstructions(model, x: Tensor, path: Path, nrow: int = 8) -> Path:
    """Data, reconstructions as decoder means, and as samples x ~ p(x|z) of the run's likelihood.

    The samples are the distribution's own draws: binary under the course's Bernoulli, 8-bit levels
    under the discretized logistic; the panel's title names the likelihood where it is not Bernoulli.
    A kind that gives only decoder means (no `MODE_OBSERVATIONS` entry) is sampled only under the
    Bernoulli, which its means determine; otherwise the sample panel is left out.
    """
    plt = pyplot()
    x = scale(x[: nrow * nrow])
    px, how = _reconstruction_model(model, x)
    bernoulli = model.likelihood.bernoulli
    if px is None:  # a kind giving only decoder means: a Bernoulli is its mean, other likelihoods are not drawn
        means = model.reconstruct(x)
        samples = torch.bernoulli(means) if bernoulli else None
    else:
        means, samples = px.mean, px.sample().float()
    panels = [("data", x), (f"reconstruction: decoder mean ({how})", means)]
    if samples is not None:
        panels.append(("reconstruction: sample x ~ p(x|z)" + ("" if bernoulli else f" ({model.likelihood.name})"),
                       samples))
    grids = [(title, image_grid(images.reshape(x.shape), nrow)) for title, images in panels]
    width, height = image_inches(grids[0][1].shape[:2], *GRID_INCHES)
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * width + 0.4, height + 0.4))
    for ax, (title, grid) in zip(axes, grids):
        _show(ax, grid, title, width)
    return save_figure(fig, path)


def _projection_pca(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


@torch.no_grad()
def plot_latent(model, x: Tensor, y: Tensor, path: Path, tsne: bool = False, seed: int = 0,
                names: dict[int, str] | None = None) -> Path:
    """Two latent units: posterior means and 2σ ellipses over the prior's 2σ disk; more: PCA (and t-SNE).

    Points are coloured by the labels y; `names` gives the legend's name of each label.
    """
    plt = pyplot()
    labels = y.cpu().numpy()
    colors = _colors(labels)
    if model.capabilities.gaussian_latent and model.latent_features == 2:
        encoded = in_chunks(model.encode, x)
        mu, sigma = encoded["mu"].cpu().numpy(), encoded["sigma"].cpu().numpy()
        fig, ax = plt.subplots(figsize=(5.2, 5))
        ax.add_patch(Circle((0, 0), PRIOR_RADIUS, color="0.85", zorder=0, label="p(z): 2σ"))
        n_ellipses = min(len(mu), MAX_ELLIPSES)
        for m, s, c in zip(mu[:n_ellipses], sigma[:n_ellipses], colors[:n_ellipses]):
            ax.add_patch(Ellipse(tuple(m), 4 * s[0], 4 * s[1], facecolor="none", edgecolor=c, alpha=0.25, lw=0.6))
        ax.scatter(mu[:, 0], mu[:, 1], c=colors, s=4)
        limit = max(3.0, float(np.abs(mu).max()) * 1.05)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_title(f"q(z|x) over the prior: {len(mu):,} means, 2σ ellipses of {n_ellipses:,}", fontsize=9)
        _legend_for_classes(ax, labels, names)
        return save_figure(fig, path)

    features = in_chunks(model.features, x).cpu().numpy()
    panels = [("PCA of posterior means", _projection_pca(features))]
    if tsne:
        keep = min(len(features), 1000)
        embedded = TSNE(n_components=2, random_state=seed, init="pca").fit_transform(features[:keep])
        panels.append((f"t-SNE of posterior means ({keep} images)", embedded))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels):
        ax.scatter(points[:, 0], points[:, 1], c=colors[: len(points)], s=4)
        ax.set_title(f"{title} ({features.shape[1]} latent units)", fontsize=9)
        _legend_for_classes(ax, labels, names)
    return save_figure(fig, path)


def plot_learning_curves(metrics: Sequence[dict], path: Path) -> Path:
    """ELBO, KL and log p(x|z) per epoch: training mean against the full validation set (nats)."""
    plt = pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (key, title) in zip(axes, CURVES):
        for split, style in (("train", "--"), ("validation", "-")):
            ax.plot(epochs, [m[split][key] for m in metrics], style, marker=".", label=split)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats per image")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


@torch.no_grad()
def plot_samples(model, x: Tensor, path: Path, nrow: int = 8) -> Path:
    """Prior samples (z ~ p(z)) next to posterior samples (z ~ q(z|x)), both as decoder means."""
    plt = pyplot()
    n = nrow * nrow
    prior = model.sample(n)["probs"]
    posterior, _ = _posterior_means(model, x[:n])
    grid = image_grid(prior.reshape(-1, *x.shape[1:]), nrow)
    width, height = image_inches(grid.shape[:2], *GRID_INCHES)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width + 0.6, height + 0.6))
    _show(axes[0], grid, "prior samples: z ~ p(z)", width)
    _show(axes[1], image_grid(posterior.reshape(-1, *x.shape[1:]), nrow), "posterior samples: z ~ q(z|x)", width)
    return save_figure(fig, path)


@torch.no_grad()
def plot_interpolations(model, x: Tensor, y: Tensor, path: Path, pairs: int = 6, steps: int = 10) -> Path:
    """Decoder means along straight lines between the posterior means of two test images.

    The pairs are of different classes, in data order; where the images have one class (or none),
    consecutive images are paired instead.
    """
    plt = pyplot()
    labels = y.cpu()
    starts, ends = [], []
    for i in range(len(labels)):  # pairs of different classes, in data order (deterministic)
        j = next((j for j in range(i + 1, len(labels)) if labels[j] != labels[i]), None)
        if j is not None and i not in ends:
            starts.append(i)
            ends.append(j)
        if len(starts) == pairs:
            break
    if not starts:  # one class, or unlabelled images: consecutive ones
        count = min(pairs, len(labels) // 2)
        starts, ends = list(range(0, 2 * count, 2)), list(range(1, 2 * count, 2))
    mu = in_chunks(model.features, x)
    t = torch.linspace(0, 1, steps, device=mu.device)[None, :, None]  # (1, steps, 1)
    z = (1 - t) * mu[starts][:, None] + t * mu[ends][:, None]  # (pairs, steps, D)
    images = model.decode(z.reshape(-1, z.shape[-1]))
    width, height = image_inches(x.shape[-2:], *TILE_INCHES)
    fig, ax = plt.subplots(figsize=(steps * width, len(starts) * height + 0.4))
    _show(ax, image_grid(images.reshape(-1, *x.shape[1:]), steps), "interpolations between posterior means",
          steps * width)
    return save_figure(fig, path)


@torch.no_grad()
def plot_manifold(model, path: Path, n: int = 20, limit: float = 3.0) -> Path:
    """Decoder means over an n×n grid of [-limit, limit]² (two latent units only)."""
    plt = pyplot()
    axis = torch.linspace(-limit, limit, n)
    z2, z1 = torch.meshgrid(-axis, axis, indexing="ij")  # top row: largest z2
    z = torch.stack([z1.flatten(), z2.flatten()], 1).to(device_of(model))
    images = model.decode(z)
    grid = image_grid(images.reshape(-1, *model.input_shape), n, pad=0)
    width, height = image_inches(grid.shape[:2], *MANIFOLD_INCHES)
    fig, ax = plt.subplots(figsize=(width + 0.6, height + 0.6))
    # The axes run over [-limit, limit]² whatever the images' shape: square pixels need the aspect
    # of the grid, not of the square extent.
    show_images(ax, grid, extent=(-limit, limit, -limit, limit), aspect=grid.shape[0] / grid.shape[1])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"decoder means over [-{limit:g}, {limit:g}]²", fontsize=9)
    return save_figure(fig, path)


@torch.no_grad()
def unit_statistics(model, x: Tensor) -> dict[str, np.ndarray]:
    """Per latent unit: mean analytic KL(q(z_d|x) || N(0, 1)) over x, and Var_x of the posterior mean."""
    encoded = in_chunks(model.encode, x)
    mu, sigma = encoded["mu"], encoded["sigma"]
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1) - sigma.log()  # (B, D)
    return {"kl": kl.mean(0).cpu().numpy(), "mean_variance": mu.var(0).cpu().numpy()}


def plot_unit_kl(model, x: Tensor, path: Path) -> Path:
    """KL per latent unit and the variance of its posterior mean (active: > 0.01, Burda et al. 2015)."""
    plt = pyplot()
    stats = unit_statistics(model, x)
    units = np.arange(len(stats["kl"]))
    active = stats["mean_variance"] > ACTIVE_UNIT_THRESHOLD
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 0.25 * len(units) + 4), 3))
    axes[0].bar(units, stats["kl"], color=["C0" if a else "0.6" for a in active])
    axes[0].set_title(f"KL per unit (nats; total {stats['kl'].sum():.1f})", fontsize=9)
    axes[1].bar(units, stats["mean_variance"], color=["C0" if a else "0.6" for a in active])
    axes[1].axhline(ACTIVE_UNIT_THRESHOLD, color="k", lw=0.8, ls="--")
    axes[1].set_yscale("log")
    axes[1].set_title(f"Var_x E_q[z_d]: {int(active.sum())} of {len(units)} units active (> {ACTIVE_UNIT_THRESHOLD})",
                      fontsize=9)
    for ax in axes:
        ax.set_xlabel("latent unit")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, *, tsne: bool = False,
             images: int = 2000, data=None, data_dir: str | None = None,
             only: Iterable[str] | None = None, log=print) -> list[Path]:
    """Write the run's plots as PNG files under `out_dir` (default RUN_DIR/plots); returns their paths.

    Args:
        images: test images used for the latent space and unit statistics (the first 64 are drawn).
        data: a loaded DataBundle to use instead of loading the run's data set.
        data_dir: where the run's data set lives, if not where its config says.
        only: names among `GAUSSIAN_PLOTS` to draw (default: all that apply to the run).
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    model, config = load_model(run_dir)
    wanted = set(GAUSSIAN_PLOTS if only is None else only)
    unknown = wanted - set(GAUSSIAN_PLOTS)
    if unknown:
        raise ValueError(f"unknown plots {sorted(unknown)}; expected some of {list(GAUSSIAN_PLOTS)}")
    if data is None:
        data = load_data(config.replace(data_dir=data_dir) if data_dir else config)
    test = data.test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.seed))[:images]
    x, y = test.x[pick], test.y[pick]  # uint8 as loaded: each plot scales what it draws
    torch.manual_seed(config.seed)
    written = []
    metrics = read_jsonl(run_dir / METRICS)
    if "learning_curves" in wanted and metrics:
        written.append(plot_learning_curves(metrics, out / "learning_curves.png"))
    if "reconstructions" in wanted:
        written.append(plot_reconstructions(model, x, out / "reconstructions.png"))
    if "samples" in wanted:
        written.append(plot_samples(model, x, out / "samples.png"))
    if "latent" in wanted:
        written.append(plot_latent(model, x, y, out / "latent.png", tsne=tsne, seed=config.seed,
                                   names=class_names(config)))
    gaussian = model.capabilities.gaussian_latent
    if gaussian:
        if "interpolations" in wanted:
            written.append(plot_interpolations(model, x, y, out / "interpolations.png"))
        if "manifold" in wanted and model.latent_features == 2:
            written.append(plot_manifold(model, out / "manifold.png"))
        if "unit_kl" in wanted:
            written.append(plot_unit_kl(model, x, out / "unit_kl.png"))
    kind_plots = KIND_PLOTS.get(config.model.kind)
    if kind_plots is not None:
        written.extend(Path(p) for p in kind_plots(model, config, test, out))
    elif not gaussian:
        log(f"note: no kind-specific plots for kind {config.model.kind!r} (model.analysis.kind_plots.KIND_PLOTS "
            "has no entry for it); drew the generic ones")
    return written
