"""MNIST and Fashion-MNIST through torchvision's dataset classes, from a folder of IDX files.

torchvision is imported where a data set is read, not at import time: the registry (and the
`vae` command that lists it) must work where only the serving dependencies are installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import Tensor

from model.data.base import DataError, RawData, default_cache_dir

SHAPE = (1, 28, 28)
CLASSES = tuple(range(10))


def _torchvision_classes():
    from torchvision import datasets  # reading the data only: keeps torchvision off the serving path

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


def load(name: str, data) -> RawData:
    """(train, test) uint8 images (N, 1, 28, 28) and labels of `name` ("mnist" or "fashion-mnist") from
    `data.data_dir` (a `DataConfig`)."""
    train = _torchvision_split(name, data.data_dir, train=True)
    test = _torchvision_split(name, data.data_dir, train=False)
    return RawData(*((x.reshape(-1, *SHAPE), y.long()) for x, y in (train, test)))
