"""`vae data export`: a data set written as a folder of PNG files that `--dataset folder` reads back.

The layout is train-test with class subfolders, files numbered in the data set's order:

    OUT/train/<label>/<index>.png      OUT/test/<label>/<index>.png

PNG is lossless and the folder loader orders files by name and takes integer class names as the
labels, so training on the export gives the same images, labels, splits and results as training
on the built-in loader (tests/test_folder_data.py checks this on a seeded run).
"""

from __future__ import annotations

from pathlib import Path

from model.config.train import DataConfig
from model.data.base import DataError
from model.data.loading import load_raw_data
from model.io.atomic import atomic_directory
from model.io.images import encode_png


def export_folder(data: DataConfig, out: str | Path) -> dict[str, int]:
    """Write the data set `data` names (its classes filter applied) to `out`; returns images per split.

    The folder appears whole or not at all: files are written beside it and moved into place.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"--out {out}: expected a new or empty folder, got one holding files")
    raw = load_raw_data(data)
    counts = {}
    with atomic_directory(out) as tmp:
        for part, (x, y) in (("train", raw.train), ("test", raw.test)):
            keep = [i for i in range(len(y)) if data.classes is None or int(y[i]) in data.classes]
            width = len(str(max(len(y) - 1, 1)))
            for i in keep:
                folder = tmp / part / str(int(y[i]))
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:0{width}d}.png").write_bytes(encode_png(x[i]))
            counts[part] = len(keep)
    return counts
