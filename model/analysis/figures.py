"""What every figure of this package shares: pyplot on the Agg backend, an atomic PNG writer, and
images tiled into one grid (`torchvision.utils.make_grid`) for C = 1 (grey) or C = 3 (RGB).

Grey images are shown with the reversed grey colormap, ink dark on white, as the course draws
digits; RGB images as they are. `show_images` picks the right one.
"""

from __future__ import annotations

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
