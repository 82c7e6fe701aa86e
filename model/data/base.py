"""Data as tensors: a split, the three splits of a run, and what describes a data set.

A whole data set is a few tens of MB, so it lives as one tensor on the training device and
batches are slices of a permutation: no per-image PIL or ToTensor work in the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """A data set cannot be loaded as asked; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W), float32 in [0, 1], and integer labels (N,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DataBundle:
    """The three splits of a data set, after class filtering and binarization."""

    train: Split
    validation: Split
    test: Split
    binarize: str  # "dynamic": train stays grey and is drawn afresh each pass (see `training_batches`)

    def to(self, device) -> "DataBundle":
        return DataBundle(self.train.to(device), self.validation.to(device), self.test.to(device), self.binarize)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set the registry knows: its images' shape, its classes, and how to load it.

    `load(data_dir)` returns (train, test) uint8 images (N, C, H, W) and int64 labels (N,) each.
    """

    name: str
    input_shape: tuple[int, ...]
    classes: tuple[int, ...]
    load: Callable[[str | None], tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]]
    description: str = ""


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_CACHE_DIR", Path.home() / ".cache" / "vae-lab"))
