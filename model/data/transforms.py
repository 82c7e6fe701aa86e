"""What is done to a data set's images before training: scaling, class filtering, hidden labels."""

from __future__ import annotations

import torch
from torch import Tensor

from model.core.labels import UNLABELLED
from model.data.base import DataError, Split


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 images (N, C, H, W) → float32 in [0, 1], the same shape."""
    return images.float() / 255.0


def filter_classes(split: Split, classes) -> Split:
    """Keep only the images whose label is in `classes` (None keeps all)."""
    if classes is None:
        return split
    keep = torch.isin(split.y, torch.as_tensor(list(classes), dtype=split.y.dtype))
    return Split(split.x[keep], split.y[keep])


def hide_labels(split: Split, n_labels: int, seed: int) -> Split:
    """Keep `n_labels` labels, balanced across the classes present, and mark the rest `UNLABELLED`.

    Each class keeps n_labels // C labels (the first n_labels % C classes in label order one
    more), drawn uniformly with `seed`, so the same seed always picks the same images.
    """
    classes = torch.unique(split.y).tolist()
    per_class = [n_labels // len(classes) + (i < n_labels % len(classes)) for i in range(len(classes))]
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c, n in zip(classes, per_class):
        idx = torch.nonzero(split.y == c).flatten()
        if n > len(idx):
            raise DataError(
                f"--labels {n_labels}: expected at least {n} training images of class {c} "
                f"to keep balanced labels, got {len(idx)}"
            )
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    y = torch.full_like(split.y, UNLABELLED)
    keep = torch.cat(keep)
    y[keep] = split.y[keep]
    return Split(split.x, y)


def labelled(split: Split) -> Split:
    """The images of a split whose label is known."""
    known = split.y != UNLABELLED
    return Split(split.x[known], split.y[known])
