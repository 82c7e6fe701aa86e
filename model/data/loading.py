"""The splits a run trains, validates and tests on, from the data set its config names."""

from __future__ import annotations

import torch

from model.config.train import TrainConfig
from model.data.base import DataBundle, DataError, Split
from model.data.registry import get_dataset
from model.data.transforms import filter_classes, hide_labels, to_unit_float

LABEL_SEED_OFFSET = 2  # the labelled subset is drawn with seed + 2 (seed + 1 draws binarization)


def load_raw(name: str, data_dir: str | None) -> tuple[Split, Split]:
    """(train, test) of the data set `name`, grey levels in [0, 1], all classes."""
    spec = get_dataset(name)
    train, test = spec.load(data_dir)
    return tuple(Split(to_unit_float(x), y.long()) for x, y in (train, test))


def check_classes(name: str, classes) -> None:
    """The class filter names labels the data set has, or say which it has."""
    if classes is None:
        return
    known = get_dataset(name).classes
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise DataError(f"classes: {name} has the labels {list(known)}, got {unknown}")


def load_data(config: TrainConfig) -> DataBundle:
    """The train / validation / test splits a TrainConfig asks for, on the CPU.

    The validation split is carved from the training images with the run's seed; with
    `train_subset`, training images are subsampled after that. Binarization: "static" draws
    every split once (seeded); "dynamic" draws validation and test once (seeded, so evaluation
    is repeatable) and training images afresh in every pass.
    """
    data = config.data
    check_classes(data.dataset, data.classes)
    train, test = load_raw(data.dataset, data.data_dir)
    train, test = filter_classes(train, data.classes), filter_classes(test, data.classes)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"the class filter {list(data.classes)} leaves no images in {data.dataset}")
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train), generator=generator)
    n_val = max(1, int(round(data.validation_fraction * len(train))))
    validation = Split(train.x[order[:n_val]], train.y[order[:n_val]])
    rest = order[n_val:]
    if data.train_subset is not None:
        rest = rest[: data.train_subset]
    train = Split(train.x[rest], train.y[rest])
    if data.labels is not None:
        train = hide_labels(train, data.labels, config.seed + LABEL_SEED_OFFSET)
    if data.binarize != "none":
        draw = torch.Generator().manual_seed(config.seed + 1)
        validation = Split(torch.bernoulli(validation.x, generator=draw), validation.y)
        test = Split(torch.bernoulli(test.x, generator=draw), test.y)
        if data.binarize == "static":
            train = Split(torch.bernoulli(train.x, generator=draw), train.y)
    return DataBundle(train, validation, test, data.binarize)
