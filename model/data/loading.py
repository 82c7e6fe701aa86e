"""The splits a run trains, validates and tests on, from the data set its config names."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from model.config.train import DataConfig, TrainConfig
from model.core.preprocess import Preprocessing, prepare, scale
from model.data.base import DataBundle, DataError, RawData, Split
from model.data.registry import get_dataset
from model.data.transforms import hide_labels

LABEL_SEED_OFFSET = 2  # the labelled subset is drawn with seed + 2 (seed + 1 draws binarization)
PREPARE_CHUNK = 4096  # images resized at once when a built-in data set is brought to another shape


def target_shape(data: DataConfig, native: tuple[int, ...]) -> tuple[int, ...]:
    """The (C, H, W) a run of `data` takes: recorded, else asked for (--channels, --image-size), else `native`."""
    if data.input_shape is not None:
        return tuple(data.input_shape)
    return (data.channels or native[0], *(data.image_size or native[1:]))


def _prepare_all(images: Tensor, preprocessing: Preprocessing) -> Tensor:
    return torch.cat([prepare(images[i:i + PREPARE_CHUNK], preprocessing)
                      for i in range(0, len(images), PREPARE_CHUNK)]) if len(images) else images


def load_raw_data(data: DataConfig) -> RawData:
    """The data set `data` names as uint8 images, brought to the run's shape with its preprocessing.

    A built-in data set keeps its own size unless --image-size / --channels (or a recorded input
    shape) ask for another; a folder is brought to one shape by its loader.
    """
    spec = get_dataset(data.dataset)
    raw = spec.load(data)
    if spec.input_shape is not None:
        shape = target_shape(data, spec.input_shape)
        if shape != tuple(spec.input_shape):
            preprocessing = Preprocessing(shape, data.resize, data.antialias)
            raw = dataclasses.replace(raw, train=(_prepare_all(raw.train[0], preprocessing), raw.train[1]),
                                      test=(_prepare_all(raw.test[0], preprocessing), raw.test[1]))
    return raw


def load_raw(name: str, data_dir: str | None) -> tuple[Split, Split]:
    """(train, test) of the data set `name`, grey levels in [0, 1] (float32), all classes."""
    raw = load_raw_data(DataConfig(dataset=name, data_dir=data_dir))
    return tuple(Split(scale(x), y.long()) for x, y in (raw.train, raw.test))


def check_classes(name: str, classes, known) -> None:
    """The class filter names labels the data set has, or say which it has."""
    if classes is None:
        return
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise DataError(f"classes: {name} has the labels {sorted(known)}, got {unknown}")


def load_data(config: TrainConfig) -> DataBundle:
    """The train / validation / test splits a TrainConfig asks for, on the CPU, images uint8.

    The validation split is carved from the training images with the run's seed; with
    `train_subset`, training images are subsampled after that. Binarization: "static" draws
    every split once (seeded); "dynamic" draws validation and test once (seeded, so evaluation
    is repeatable) and training images afresh in every pass.
    """
    data = config.data
    spec = get_dataset(data.dataset)
    if spec.classes is not None:
        check_classes(data.dataset, data.classes, spec.classes)
    raw = load_raw_data(data)
    (train_x, train_y), (test_x, test_y) = raw.train, raw.test
    masks = raw.test_masks
    if spec.classes is None:
        check_classes(data.dataset, data.classes, torch.cat([train_y, test_y]).unique().tolist())
    if data.classes is not None:
        wanted = torch.as_tensor(list(data.classes), dtype=train_y.dtype)
        keep_train, keep_test = torch.isin(train_y, wanted), torch.isin(test_y, wanted)
        train_x, train_y = train_x[keep_train], train_y[keep_train]
        test_x, test_y = test_x[keep_test], test_y[keep_test]
        masks = masks[keep_test] if masks is not None else None
    if len(train_y) == 0 or len(test_y) == 0:
        raise DataError(f"the class filter {list(data.classes)} leaves no images in {data.dataset}")
    streamed = raw.streamed
    if raw.validation is not None:  # a streamed folder: its loader drew the validation images (fixed seed)
        validation = Split(*raw.validation)
        train = Split(train_x, train_y, streamed=streamed)
        if data.train_subset is not None:
            pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(config.seed))
            train = Split(train_x[pick[: data.train_subset]], train_y[pick[: data.train_subset]])
    else:
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(train_y), generator=generator)
        n_val = max(1, int(round(data.validation_fraction * len(train_y))))
        if n_val >= len(train_y):
            raise DataError(f"{data.dataset}: {len(train_y)} training images; expected at least 2, one for "
                            "training and one for validation")
        validation = Split(train_x[order[:n_val]], train_y[order[:n_val]])
        # train_on_validation: every training image is trained on (Burda et al. 2015 train on all
        # 60,000 MNIST images); the validation images are then a seeded sample of them, in the same order.
        rest = order if data.train_on_validation else order[n_val:]
        if data.train_subset is not None:
            rest = rest[: data.train_subset]
        train = Split(train_x[rest], train_y[rest])
    test = Split(test_x, test_y, streamed=streamed)
    if data.labels is not None:
        train = hide_labels(train, data.labels, config.seed + LABEL_SEED_OFFSET)
    labelled = None if raw.labelled is None else Split(*raw.labelled)
    if data.binarize != "none":
        draw = torch.Generator().manual_seed(config.seed + 1)
        validation = Split(_binary(validation.x, draw), validation.y)
        test = Split(_binary(test.x, draw), test.y)
        if data.binarize == "static":
            train = Split(_binary(train.x, draw), train.y)
        if labelled is not None:
            labelled = Split(_binary(labelled.x, draw), labelled.y)
    info = {**raw.report} if raw.report else {"dataset": data.dataset}
    info["images"] = {"train": len(train), "validation": len(validation), "test": len(test)}
    return DataBundle(train, validation, test, data.binarize, info=info, test_masks=masks,
                      class_names=raw.class_names, labelled_validation=labelled)


def _binary(x: Tensor, generator: torch.Generator) -> Tensor:
    """One seeded Bernoulli draw of grey levels, kept as uint8 0/255 (the same draws as on floats)."""
    return (torch.bernoulli(scale(x), generator=generator) * 255).to(torch.uint8)
