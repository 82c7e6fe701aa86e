"""Plots only the categorical and M2 kinds have, as PNG files (matplotlib, Agg backend).

`KIND_PLOTS[kind](model, config, test, out_dir)` draws them all for a run and returns the paths;
`vae plot` calls it after the plots every kind shares (model.analysis.plots).

- categorical: `plot_category_codes` (what each category of each variable draws) and
  `plot_category_usage` (mean q(c|x) over the test set).
- m2: `plot_conditional_generation` (a row per class, a column per style z) and
  `plot_analogies` (test images' styles, redrawn as every class; Kingma et al. 2014, Fig. 1).
- adgm: the same two as m2 (its p(x|y, z) is M2's; the style is the mean of q(z|ā, ŷ, x)).

Their file names are `model.analysis.plot_names.KIND_PLOT_NAMES`. `MODE_OBSERVATIONS[kind](model, x)`
is the distribution p(x|·) whose mean the kind's `reconstruct(x)` returns, so the shared
reconstruction plot can draw samples of the run's likelihood for these kinds too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from model.analysis.figures import (class_names, fit_title, image_grid, image_inches, in_chunks, pyplot, save_figure,
                                    show_images)
from model.core.device import device_of
from model.core.noise import RowwiseNoise
from model.core.preprocess import scale

MAX_VARIABLES_SHOWN = 20  # rows of the category-code grid
TILE_INCHES = (0.5, 1.6)  # (least, most) inches of one image's longer side (figures.image_inches)


def _image_grid_figure(images: Tensor, nrow: int, row_labels: list[str], col_labels: list[str], title: str):
    """A grid of images (N, C, H, W), `nrow` to a row, labelled along both axes; sized from H and W."""
    plt = pyplot()
    rows = math.ceil(images.shape[0] / nrow)
    h, w = images.shape[-2:]
    width, height = image_inches((h, w), *TILE_INCHES)
    fig, ax = plt.subplots(figsize=(1.0 + width * nrow, 0.8 + height * rows))
    show_images(ax, image_grid(images, nrow))
    ax.set_xticks([1 + (w + 1) * i + w / 2 for i in range(nrow)], col_labels, fontsize=7)
    ax.set_yticks([1 + (h + 1) * i + h / 2 for i in range(rows)], row_labels, fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(fit_title(title, width * nrow + 0.5), fontsize=9)
    return fig


# --- categorical ------------------------------------------------------------------------------

@torch.no_grad()
def plot_category_codes(model, path: Path, seed: int = 0) -> Path:
    """What each code means: row n, column c decodes a base code with variable n set to category c.

    The base code is one draw from the prior (seeded), with the Gaussian units at 0.
    """
    base = model.sample(1, noise=RowwiseNoise([seed], [1]))["z"]  # (1, N·C + G)
    if model.gaussian_features:
        base[:, -model.gaussian_features:] = 0.0
    n_shown = min(model.variables, MAX_VARIABLES_SHOWN)
    codes = base.repeat(n_shown * model.categories, 1)
    for n in range(n_shown):
        block = slice(n * model.categories, (n + 1) * model.categories)
        codes[n * model.categories:(n + 1) * model.categories, block] = torch.eye(model.categories)
    images = model.decode(codes.to(device_of(model)))
    fig = _image_grid_figure(images, model.categories, [f"c{n + 1}" for n in range(n_shown)],
                             [str(c) for c in range(model.categories)],
                             "each category of each variable, the others fixed")
    return save_figure(fig, path)


@torch.no_grad()
def plot_category_usage(model, x: Tensor, path: Path) -> Path:
    """Mean q(c_n = k | x) over `x`, one row per variable, and each variable's usage perplexity.

    A perplexity of C means every category is used equally often; 1 means the variable is unused.
    """
    probs = in_chunks(model.encode, x.to(device_of(model)))["probs"].mean(0).cpu()  # (N, C)
    perplexity = torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum(-1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * model.categories, 1.0 + 0.3 * model.variables))
    image = ax.imshow(probs.numpy(), cmap="viridis", vmin=0, aspect="auto")
    ax.set_xlabel("category")
    ax.set_yticks(range(model.variables), [f"c{n + 1}  ({p:.1f})" for n, p in enumerate(perplexity.tolist())],
                  fontsize=7)
    ax.set_title(f"mean q(c|x) over {x.shape[0]} test images (usage perplexity)", fontsize=9)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def plot_categorical_run(model, config, test, out_dir: Path, images: int = 2000) -> list[Path]:
    out_dir = Path(out_dir)
    return [plot_category_codes(model, out_dir / "category_codes.png", seed=config.seed),
            plot_category_usage(model, test.x[:images], out_dir / "category_usage.png")]


def categorical_mode_observation(model, x: Tensor) -> Distribution:
    """p(x|c, z) at the most probable categories and the Gaussian units' means: what `reconstruct` decodes."""
    encoded = model.encode(x)
    c = F.one_hot(encoded["probs"].argmax(-1), model.categories).to(encoded["probs"].dtype).flatten(1)  # (B, N·C)
    return model.observation_model(torch.cat([c, encoded["mu"]], -1) if model.gaussian_features else c)


# --- M2 ---------------------------------------------------------------------------------------

def _label_names(labels: list[int], names: dict[int, str] | None) -> list[str]:
    return [(names or {}).get(label, str(label)) for label in labels]


@torch.no_grad()
def plot_conditional_generation(model, path: Path, styles: int = 10, seed: int = 0,
                                names: dict[int, str] | None = None) -> Path:
    """p(x|y, z): one row per class, one column per style z ~ p(z), the same z down each column.

    `names` gives the row label of each class label (default: the label).
    """
    device = device_of(model)
    z = model.sample(styles, noise=RowwiseNoise([seed], [styles]), y=model.class_labels[0])["z"]  # (S, D)
    labels = model.class_labels.tolist()
    images = torch.cat([model.decode(z.to(device), y=label) for label in labels])  # (classes·S, C, H, W)
    fig = _image_grid_figure(images, styles, _label_names(labels, names), [f"z{s + 1}" for s in range(styles)],
                             "conditional generation: a row per class, a column per style")
    return save_figure(fig, path)


@torch.no_grad()
def plot_analogies(model, x: Tensor, path: Path, names: dict[int, str] | None = None) -> Path:
    """Each test image (first column; uint8 or in [0, 1]) and its style, mean of q(z|x, ŷ), drawn as every class."""
    device = device_of(model)
    x = scale(x.to(device))
    mu = model.encode(x)["mu"]  # (B, D)
    labels = model.class_labels.tolist()
    columns = [x.reshape(x.shape[0], *model.input_shape)] + [model.decode(mu, y=label) for label in labels]
    images = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: (B·(classes+1), C, H, W)
    fig = _image_grid_figure(images, len(labels) + 1, [""] * x.shape[0], ["x", *_label_names(labels, names)],
                             "analogies: the style of x, drawn as each class")
    return save_figure(fig, path)


def plot_m2_run(model, config, test, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    names = class_names(config)
    known = [c for c in torch.unique(test.y).tolist() if c in set(model.class_labels.tolist())]
    first_of_each_class = [int(torch.nonzero(test.y == c)[0]) for c in known]
    return [plot_conditional_generation(model, out_dir / "conditional_generation.png", seed=config.seed, names=names),
            plot_analogies(model, test.x[first_of_each_class], out_dir / "analogies.png", names=names)]


def m2_mode_observation(model, x: Tensor) -> Distribution:
    """p(x|ŷ, z) at the most probable class ŷ and the mean of q(z|x, ŷ): what `reconstruct` decodes."""
    encoded = model.encode(x)
    index = model.class_index(encoded["y"])
    return model.observation_model(encoded["mu"], F.one_hot(index, model.num_classes).to(encoded["mu"].dtype))


# The ADGM has M2's generative model p(x|y, z) and M2's face (decode(z, y), sample(y=...), encode's ŷ and
# mean of q(z|·, ŷ)), so M2's plots and mode observation draw it unchanged.
KIND_PLOTS = {"categorical": plot_categorical_run, "m2": plot_m2_run, "adgm": plot_m2_run}
MODE_OBSERVATIONS = {"categorical": categorical_mode_observation, "m2": m2_mode_observation,
                     "adgm": m2_mode_observation}
