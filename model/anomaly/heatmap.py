"""Anomaly maps as pictures: brought to an image's own size, coloured, and laid over the image.

Pure torch (the serving path has no matplotlib). A map here is in percentiles of the pixels of
normal images (`model.anomaly.calibration.MapCalibration.percentile`): pixels below `LOW` (90, the
range most pixels of normal images fall in) are drawn in the colour scale's cold end, and the scale
runs to its hot end at 100, so a pixel hotter than any of a normal image stands out whatever the
model or the data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOW = 90.0  # percentile at the cold end of the colour scale
ALPHA = 0.5  # opacity of the heat over the image
# The colour scale: anchors of the "turbo" map (Mikhailov 2019) at equal steps, RGB in [0, 1].
TURBO = torch.tensor([
    [0.190, 0.072, 0.232], [0.276, 0.421, 0.891], [0.158, 0.736, 0.923], [0.197, 0.949, 0.595],
    [0.644, 0.990, 0.234], [0.938, 0.812, 0.227], [0.977, 0.486, 0.107], [0.820, 0.216, 0.020],
    [0.480, 0.016, 0.011],
])


def fit_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(H, W) scaled down, aspect kept, so that H·W ≤ max_pixels (unchanged if it already fits)."""
    height, width = size
    if height * width <= max_pixels:
        return height, width
    factor = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * factor)), max(1, int(width * factor))


def resize_map(values: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps (..., H, W) resized bilinearly to `size` (h, w)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    flat = values.reshape(-1, 1, *values.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*values.shape[:-2], *size)


def colour(percentiles: Tensor, low: float = LOW) -> Tensor:
    """RGB (3, H, W) in [0, 1] of a map (H, W) of percentiles: `low` and below cold, 100 hot."""
    t = ((percentiles.float() - low) / (100.0 - low)).clamp(0, 1) * (len(TURBO) - 1)
    lower = t.floor().long().clamp(max=len(TURBO) - 2)
    frac = (t - lower).unsqueeze(-1)
    rgb = TURBO[lower] * (1 - frac) + TURBO[lower + 1] * frac  # (H, W, 3)
    return rgb.permute(2, 0, 1)


def at_image_size(image: Tensor, percentiles: Tensor, max_pixels: int) -> Tensor:
    """A map (h, w) in percentiles brought to its image's size (C, H, W), scaled down to at most
    `max_pixels` pixels, clamped to 0–100 (`overlay(image, it)` is then its heatmap)."""
    return resize_map(percentiles, fit_size(tuple(image.shape[-2:]), max_pixels)).clamp(0, 100)


def overlay(image: Tensor, percentiles: Tensor, *, low: float = LOW, alpha: float = ALPHA) -> Tensor:
    """The map's colours laid over the image: uint8 RGB (3, h, w) at the map's size (h, w).

    Args:
        image: (C, H, W), C 1 or 3, uint8 or floats in [0, 1]; resized to the map's size if it differs.
        percentiles: (h, w) map in percentiles (0–100).
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3) or percentiles.dim() != 2:
        raise ValueError(f"expected an image (C, H, W) with C 1 or 3 and a map (H, W), got shapes "
                         f"{tuple(image.shape)} and {tuple(percentiles.shape)}")
    base = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    base = resize_map(base, tuple(percentiles.shape)).clamp(0, 1).expand(3, -1, -1)
    mixed = (1 - alpha) * base + alpha * colour(percentiles, low)
    return (mixed * 255).round().to(torch.uint8)
