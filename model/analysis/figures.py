"""What every figure of this package shares: pyplot on the Agg backend, an atomic PNG writer,
images tiled into one grid (`torchvision.utils.make_grid`) for C = 1 (grey) or C = 3 (RGB), and
the size in inches that shows a grid of any (H, W) with square pixels.

Grey images are shown with the reversed grey colormap, ink dark on white, as the course draws
digits; RGB images as they are. `show_images` picks the right one.

Figures are sized from the images, never from 28: `image_inches` gives a panel the aspect of
what it shows, one figure pixel per image pixel where that fits between a least and a most size.
The least sizes are the course's own, so its 28×28 figures keep the sizes they always had.

`in_chunks` runs a model over many images a few at a time, so the plots of large colour images
need no more memory than the course's 2,000 test digits did.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from model.io.atomic import atomic_write

DPI = 80
GRID_LINES = 0.25  # between tiles: light grey under the reversed grey colormap (0 is white)
TITLE_CHARS_PER_INCH = 16  # of a fontsize-9 title: a longer one is wrapped to fit its panel
PIXELS_AT_ONCE = 1_568_000  # `in_chunks`: pixels encoded in one pass (about 6 MiB of float32), fewer larger images


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend), whatever the environment's default."""
    matplotlib.use("Agg")  # a no-op once Agg is set
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` atomically, close it, and return the path."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)
    return path


def image_grid(images: Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1], row-major, `nrow` to a row, with `pad` pixels of grid lines.

    Returns:
        (rows·(H+pad)+pad, nrow·(W+pad)+pad) for grey images, with a trailing RGB axis of 3 for
        colour ones (fewer columns when N < nrow).
    """
    images = images.detach().cpu().float()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    grey = images.shape[1] == 1
    lines = GRID_LINES if grey else 1 - GRID_LINES  # the same light grey on screen
    if images.shape[0] == 1:  # make_grid returns a lone image unframed
        grid = torch.nn.functional.pad(images[0], (pad, pad, pad, pad), value=lines)
    else:
        grid = make_grid(images, nrow=nrow, padding=pad, pad_value=lines)  # (3, H', W'): grey repeated
    return grid[0].numpy() if grey else grid.permute(1, 2, 0).numpy()


def show_images(ax, grid: np.ndarray, **imshow):
    """`ax.imshow` of an `image_grid`: grey ink dark on white (vmin 0, vmax 1), colour as it is."""
    if grid.ndim == 2:
        imshow = {"cmap": "gray_r", "vmin": 0, "vmax": 1, **imshow}
    return ax.imshow(grid, interpolation="nearest", **imshow)


def image_inches(pixels: tuple[int, int], least: float, most: float) -> tuple[float, float]:
    """(width, height) in inches that show `pixels` (H, W) with square pixels.

    The longer side gets one figure pixel per image pixel (at `DPI`), kept within [least, most] inches.
    """
    height, width = pixels
    longer = min(max(max(height, width) / DPI, least), most)
    return longer * width / max(height, width), longer * height / max(height, width)


def fit_title(title: str, inches: float) -> str:
    """`title` wrapped onto as many lines as a panel `inches` wide needs (fontsize 9)."""
    return textwrap.fill(title, max(12, int(inches * TITLE_CHARS_PER_INCH)))


def class_names(config) -> dict[int, str]:
    """The name of each class label of a run (its TrainConfig), where its data names them (a folder's
    subfolders); empty where the labels are their own names (the built-in data sets)."""
    data = config.data
    if data.class_names is None or data.class_labels is None:
        return {}
    return dict(zip((int(c) for c in data.class_labels), data.class_names))


def in_chunks(fn: Callable[[Tensor], Tensor | dict[str, Tensor]], x: Tensor) -> Tensor | dict[str, Tensor]:
    """`fn(x)` for a function of a batch (N, ...) returning (N, ...) tensors (or a dict of them),
    applied to at most `PIXELS_AT_ONCE` pixels at a time and joined along the first axis."""
    parts = [fn(chunk) for chunk in x.split(max(1, PIXELS_AT_ONCE // max(1, x[0].numel())))]
    if isinstance(parts[0], dict):
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(parts)
