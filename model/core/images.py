"""The check every model applies to the images it is given (pure torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from model.core.preprocess import scale


def check_images(x: Tensor, input_shape: Sequence[int]) -> Tensor:
    """Reshape a batch to (B, *input_shape) after checking its size and values, or say what was wrong.

    uint8 images (how data sets are kept in memory) are scaled to [0, 1] here (`preprocess.scale`).
    """
    x = scale(x)
    n_pixels = math.prod(input_shape)
    if x.dim() < 2 or math.prod(x.shape[1:]) != n_pixels:
        raise ValueError(
            f"expected a batch of images of {n_pixels} pixels (shape (B, {', '.join(map(str, input_shape))})), "
            f"got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("expected finite pixel values in [0, 1], got NaN or infinity")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"expected pixel values in [0, 1], got values in [{x.min().item():g}, {x.max().item():g}]")
    return x.reshape(x.shape[0], *input_shape)
