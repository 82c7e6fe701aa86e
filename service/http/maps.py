"""Anomaly maps for the wire: each at its image's own size (bounded), as numbers and as a heatmap PNG.

The model's maps have its input resolution. An encoded image (images_png, an upload) of another size
gets its map resized back to that size, scaled down to at most VAE_MAX_MAP_PIXELS pixels, and its
heatmap laid over the image as it was sent (`model.anomaly.heatmap`). Nested-list images are the
model's input as they are, so their maps keep the model's resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from model.anomaly.heatmap import at_image_size, overlay
from service.http.images import Images, png_base64


def render_maps(percentiles: np.ndarray, images: Images, max_pixels: int, numbers: bool,
                pngs: bool) -> tuple[list | None, list[str] | None, list[list[int]]]:
    """(maps as nested lists or None, heatmap PNGs in base64 or None, [h, w] of each) from the
    model's maps (B, H, W) in percentiles."""
    maps, heat, shapes = [] if numbers else None, [] if pngs else None, []
    for i, values in enumerate(torch.from_numpy(percentiles)):
        original = images.originals[i] if images.originals else torch.from_numpy(images.x[i])
        resized = at_image_size(original, values, max_pixels)
        shapes.append(list(resized.shape))
        if maps is not None:
            maps.append(np.round(resized.numpy(), 3).tolist())
        if heat is not None:
            heat.append(png_base64(overlay(original, resized)))
    return maps, heat, shapes
