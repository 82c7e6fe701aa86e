"""Data as tensors: a split, the three splits of a run, and what describes a data set.

A data set lives as one uint8 tensor on the training device and batches are slices of a
permutation, scaled to [0, 1] per batch: no per-image PIL or ToTensor work in the training loop.
A folder too large for memory is a memory-mapped uint8 array instead (`Split.streamed`), which
stays on the CPU and whose batches are moved to the device one at a time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """A data set cannot be loaded as asked; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) and integer labels (N,).

    Images are uint8 (0..255) as loaded (a quarter of float32's memory; `batches` and the models
    scale them per batch with `model.core.preprocess.scale`), or float32 in [0, 1].
    """

    x: Tensor
    y: Tensor
    streamed: bool = False  # x is memory-mapped from a disk cache: `to` leaves it where it is

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        if self.streamed:
            return self
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DataBundle:
    """The three splits of a data set, after class filtering and binarization."""

    train: Split
    validation: Split
    test: Split
    binarize: str  # "dynamic": train stays grey and is drawn afresh each pass (see `training_batches`)
    info: dict = field(default_factory=dict)  # what loading found and did (evaluation.json's "data")
    test_masks: Tensor | None = None  # (N_test, 1, H, W) uint8 0/1 defect masks (MVTec AD layout), or None
    class_names: tuple[str, ...] | None = None  # the name of each label, where the data has names
    # Labelled validation images, y = 1 anomalous, 0 normal (a folder's validation/ or --validation-dir):
    # they choose the F1 thresholds (`model.anomaly.calibration.F1Threshold`), never trained on.
    labelled_validation: Split | None = None

    def to(self, device) -> "DataBundle":
        return dataclasses.replace(
            self, train=self.train.to(device), validation=self.validation.to(device), test=self.test.to(device),
            labelled_validation=None if self.labelled_validation is None else self.labelled_validation.to(device))


@dataclass(frozen=True)
class RawData:
    """What a data set's `load` returns: uint8 images (N, C, H, W) and int64 labels per split.

    test_masks: per test image a (1, H, W) uint8 0/1 defect mask (zeros where none), or None.
    labelled: normal (y = 0) and anomalous (y = 1) validation images for F1 thresholds, or None.
    validation: given only where the loader must draw it (a streamed folder keeps each split one
        contiguous run of its disk cache); otherwise `load_data` carves it with the run's seed.
    report: what loading found and did (layout, counts, skipped files, conversions), for evaluation.json.
    streamed: the images are memory-mapped from a disk cache (see `model.data.folder`).
    """

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor] | None = None  # drawn by the loader (a streamed folder); else carved
    class_names: tuple[str, ...] | None = None
    test_masks: Tensor | None = None
    report: dict = field(default_factory=dict)
    streamed: bool = False
    labelled: tuple[Tensor, Tensor] | None = None  # labelled validation images, y = 1 anomalous (folders)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set the registry knows: how to load it and, where fixed, its images' shape and classes.

    `load(data_config)` returns a `RawData`. `input_shape` and `classes` are None for a data set
    that only knows them once loaded (a folder of images).
    """

    name: str
    load: Callable[..., RawData]
    description: str = ""
    input_shape: tuple[int, ...] | None = None
    classes: tuple[int, ...] | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_CACHE_DIR", Path.home() / ".cache" / "vae-lab"))
