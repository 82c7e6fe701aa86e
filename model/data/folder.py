"""A folder of a user's own images (`--dataset folder --data-dir DIR`), in one of four layouts.

    flat        DIR/*.png                     unlabelled images
    classes     DIR/<class>/**/*.png          labels from the subfolder names (torchvision's ImageFolder)
    train-test  DIR/train/..., DIR/test/...   each part flat or class subfolders
    mvtec       DIR/train/good/, DIR/test/<good|defect>/, DIR/ground_truth/<defect>/<name>_mask.png
                (MVTec AD: trains on train/good; the test images keep their labels, good = 0, and masks)
                and optionally DIR/validation/<good|defect>/: labelled validation images

Labelled validation images (normal ones in `good/`, anomalous ones in any other subfolder) come from
an MVTec folder's `validation/` or, for any layout, from `--validation-dir`. They are kept apart
(`RawData.labelled`, 1 = anomalous) to choose each score's F1-maximising threshold, never trained on.

A layout without a test part gives `--test-fraction` of its images to the test split, drawn with
`SPLIT_SEED` whatever the run's seed, so every run on a folder is tested on the same images.

Files are PNG, JPEG, BMP or TIFF of any size and mode (`model.io.images.decode_image`), brought
to the run's (C, H, W) by `model.core.preprocess.prepare` and kept as uint8. Class names that are
all integers are the labels themselves (so `vae data export` round-trips the built-in data sets);
otherwise the labels are 0, 1, … in the names' sorted order.

Nothing is dropped silently: every file that is skipped (not an image, unreadable, truncated), every
mask without its image and every lossy conversion is warned about, naming the files, and counted in
the `report` that goes into the run's evaluation.json.

Memory: the decoded images of a folder whose uint8 size exceeds `--memory-budget` MiB are written
once to a disk cache (`$VAE_CACHE_DIR/folders/<key>/images.npy`) and memory-mapped, so training
streams batches from it; a later run on the same files and preprocessing reuses the cache.
Decoding runs in `--data-workers` processes through a torch `DataLoader` in both cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model.config.train import DataConfig
from model.core.labels import UNLABELLED
from model.core.preprocess import Preprocessing, prepare
from model.data.base import DataError, RawData, default_cache_dir
from model.io.images import GREY_MODES, IMAGE_SUFFIXES, ImageError, decode_image

SPLIT_SEED = 20202
PARTS = ("train", "validation", "test", "labelled")  # labelled: anomalous and normal validation images
MASK_SUFFIX = "_mask"
SHOWN = 5  # files named in a warning before "and N more"
CACHE_VERSION = 1


class FolderWarning(UserWarning):
    """Something in a folder of images was skipped or converted; the message names the files."""


@dataclass
class Entry:
    path: Path
    part: str  # "train", "validation" (streamed folders only) or "test"
    class_name: str | None


@dataclass
class Scan:
    layout: str
    entries: list[Entry]
    masks: dict[Path, Path] = field(default_factory=dict)  # test image → its mask
    ignored: list[tuple[Path, str]] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _named(paths, root: Path) -> str:
    names = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p) for p in paths]
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _scan_part(folder: Path, part: str, scan: Scan) -> None:
    """A flat folder or one of class subfolders, into `scan.entries`."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = _files(folder, recursive=False)
    if subdirs and any(_is_image(p) for d in subdirs for p in _files(d, recursive=True)):
        for path in top:
            scan.ignored.append((path, "beside class subfolders (images of no class)" if _is_image(path)
                                 else "not an image file"))
        for d in subdirs:
            for path in _files(d, recursive=True):
                if _is_image(path):
                    scan.entries.append(Entry(path, part, d.name))
                else:
                    scan.ignored.append((path, "not an image file"))
        return
    for path in top:
        if _is_image(path):
            scan.entries.append(Entry(path, part, None))
        else:
            scan.ignored.append((path, "not an image file"))


def _scan_labelled(folder: Path, scan: Scan, name: str) -> None:
    """Labelled validation images: `folder/good/` (normal) and `folder/<defect>/` (anomalous)."""
    if not folder.is_dir():
        raise DataError(f"{name} {folder}: no such directory; expected good/ and defect subfolders of images")
    before = len(scan.entries)
    _scan_part(folder, "labelled", scan)
    found = scan.entries[before:]
    classes = {e.class_name for e in found}
    if None in classes or "good" not in classes or len(classes) < 2:
        raise DataError(f"{name} {folder}: expected subfolders good/ (normal images) and at least one of "
                        f"anomalous images (e.g. scratch/), got {sorted(str(c) for c in classes) or 'no images'}")


def scan_folder(root: Path, validation_dir: Path | None = None) -> Scan:
    """The layout of `root` and every file in it, each an image entry or ignored with a reason."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root}: no such directory; expected a folder of images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    if (root / "train" / "good").is_dir() and (root / "test").is_dir():
        scan = Scan("mvtec", [])
        for path in _files(root / "train", recursive=True):
            inside_good = path.is_relative_to(root / "train" / "good")
            if _is_image(path) and inside_good:
                scan.entries.append(Entry(path, "train", "good"))
            else:
                scan.ignored.append((path, "not an image file" if inside_good else "outside train/good (MVTec "
                                     "trains on good images only)"))
        _scan_part(root / "test", "test", scan)
        if (root / "validation").is_dir():
            _scan_labelled(root / "validation", scan, "validation/")
        scan.entries = [Entry(e.path, e.part, e.class_name or "good") for e in scan.entries]
        truth = root / "ground_truth"
        if truth.is_dir():
            images = {(e.class_name, e.path.stem): e.path for e in scan.entries if e.part == "test"}
            for mask in _files(truth, recursive=True):
                stem = mask.stem[: -len(MASK_SUFFIX)] if mask.stem.endswith(MASK_SUFFIX) else mask.stem
                image = images.get((mask.parent.name, stem))
                if image is None:
                    scan.ignored.append((mask, f"a mask without its image (expected test/{mask.parent.name}/"
                                               f"{stem}.<png|jpg|...>)"))
                else:
                    scan.masks[image] = mask
    elif (root / "train").is_dir() and (root / "test").is_dir():
        scan = Scan("train-test", [])
        _scan_part(root / "train", "train", scan)
        _scan_part(root / "test", "test", scan)
        for path in _files(root, recursive=False):
            scan.ignored.append((path, "beside train/ and test/"))
    else:
        scan = Scan("flat", [])
        _scan_part(root, "train", scan)
        if any(e.class_name is not None for e in scan.entries):
            scan.layout = "classes"
    if not scan.entries:
        others = f"; it holds {len(scan.ignored)} other files ({_named([p for p, _ in scan.ignored], root)})" \
            if scan.ignored else " (it is empty)"
        raise DataError(f"--data-dir {root}: expected images ({', '.join(IMAGE_SUFFIXES)}) directly in it, in "
                        f"class subfolders, in train/ and test/, or in the MVTec AD layout, found none{others}")
    if scan.layout == "mvtec" and not any(e.part == "train" for e in scan.entries):
        raise DataError(f"--data-dir {root}: the MVTec AD layout trains on train/good, which holds no images")
    if validation_dir is not None:
        if any(e.part == "labelled" for e in scan.entries):
            raise DataError(f"--validation-dir {validation_dir}: --data-dir {root} has its own validation/ folder; "
                            "expected one source of labelled validation images, got both")
        _scan_labelled(validation_dir, scan, "--validation-dir")
    return scan


def _header(path: Path) -> tuple[tuple[int, int], str] | str:
    """((H, W), mode) from the file's header, or the reason it cannot be opened."""
    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.mode
    except Exception as error:  # noqa: BLE001 - any failure to open is reported per file, never raised
        return f"cannot be opened as an image ({type(error).__name__}: {error})"


def _grey(mode: str) -> bool:
    return mode in GREY_MODES


class _Decode(Dataset):
    """Decode and prepare each entry: (index, uint8 (C, H, W) or None, mask or None, notes, error or None)."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing, masks: list[Path | None]):
        self.paths, self.preprocessing, self.masks = paths, preprocessing, masks

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            decoded = decode_image(self.paths[i])
            pixels = prepare(decoded.pixels, self.preprocessing)
            mask = None
            if self.masks[i] is not None:
                raw = decode_image(self.masks[i]).pixels[:1]
                size = Preprocessing((1, *self.preprocessing.shape[1:]), "nearest", False)
                mask = (prepare(raw, size) > 127).to(torch.uint8)
            notes = list(decoded.notes)
            converted = self.preprocessing.channel_note(decoded.pixels.shape[0])
            if converted:
                notes.append(converted)
            resized = self.preprocessing.resize_note(decoded.size)
            if resized:
                notes.append("resized")
            return i, pixels, mask, tuple(notes), None
        except ImageError as error:
            reason = str(error).removeprefix(f"{self.paths[i]}: ").removeprefix(f"{self.masks[i]}: ")
            return i, None, None, (), reason


def _collate(items):
    return items


def _cache_key(root: Path, entries: list[Entry], preprocessing: Preprocessing, validation_fraction: float) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), list(preprocessing.shape),
                                        preprocessing.resize, preprocessing.antialias,
                                        validation_fraction]).encode())
    for e in entries:
        stat = e.path.stat()
        digest.update(f"{e.path}|{e.part}|{e.class_name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _labels(scan: Scan) -> tuple[dict[str, int], tuple[str, ...] | None]:
    names = sorted({e.class_name for e in scan.entries if e.class_name is not None and e.part != "labelled"})
    if not names:
        return {}, None
    if scan.layout == "mvtec":
        ordered = ["good", *[n for n in names if n != "good"]]
        return {n: i for i, n in enumerate(ordered)}, tuple(ordered)
    if all(n.lstrip("-").isdigit() for n in names):
        ordered = sorted(names, key=int)
        return {n: int(n) for n in ordered}, tuple(ordered)
    return {n: i for i, n in enumerate(names)}, tuple(names)


def _warn(message: str) -> None:
    warnings.warn(message, FolderWarning, stacklevel=3)


def load(data: DataConfig) -> RawData:
    """(train, test) uint8 images and labels of the folder `data.data_dir`, with a report of what was done."""
    root = Path(data.data_dir).expanduser()
    scan = scan_folder(root, Path(data.validation_dir).expanduser() if data.validation_dir else None)
    # Canonical order: by file name, then path (the order of `vae data export`'s numbered files).
    scan.entries.sort(key=lambda e: (e.path.name, str(e.path)))
    has_test_part = scan.layout in ("mvtec", "train-test")
    skipped: list[tuple[Path, str]] = []
    headers, kept = {}, []
    for e in scan.entries:
        header = _header(e.path)
        if isinstance(header, str):
            skipped.append((e.path, header))
        else:
            headers[e.path] = header
            kept.append(e)
    if not kept:
        raise DataError(f"--data-dir {root}: none of its {len(scan.entries)} image files can be read: "
                        f"{_named([p for p, _ in skipped], root)} ({skipped[0][1]})")
    if not has_test_part:  # the test images are drawn before decoding, so each part is one run of the cache
        pool = [e for e in kept if e.part == "train"]  # never the labelled validation images
        if len(pool) < 2:
            raise DataError(f"--data-dir {root}: {len(pool)} readable image; expected at least 2, one for "
                            "training and one for testing")
        n_test = min(len(pool) - 1, max(1, int(round(data.test_fraction * len(pool)))))
        generator = torch.Generator().manual_seed(SPLIT_SEED)
        for i in torch.randperm(len(pool), generator=generator)[:n_test].tolist():
            pool[i].part = "test"
    sizes = Counter(size for size, _ in headers.values())
    if data.input_shape is not None:  # a trained run's recorded shape wins: evaluation sees what training saw
        channels, height, width = data.input_shape
    else:
        height, width = data.image_size or max(sizes.items(), key=lambda item: (item[1], item[0]))[0]
        channels = data.channels or (1 if all(_grey(mode) for _, mode in headers.values()) else 3)
    preprocessing = Preprocessing((channels, height, width), data.resize, data.antialias)

    nbytes = len(kept) * channels * height * width
    streamed = nbytes > data.memory_budget * 2**20
    if streamed:  # the validation images too are drawn now (fixed seed), so each split is one run of the cache
        train_entries = [e for e in kept if e.part == "train"]
        n_val = max(1, int(round(data.validation_fraction * len(train_entries))))
        if n_val >= len(train_entries):
            raise DataError(f"--data-dir {root}: {len(train_entries)} training images; expected at least 2")
        generator = torch.Generator().manual_seed(SPLIT_SEED + 1)
        for i in torch.randperm(len(train_entries), generator=generator)[:n_val].tolist():
            train_entries[i].part = "validation"
    kept.sort(key=lambda e: PARTS.index(e.part))  # stable: each part one run, in the canonical order
    cache = default_cache_dir() / "folders" / _cache_key(root, kept, preprocessing, data.validation_fraction)
    if streamed and (cache / "meta.json").is_file():
        images, masks, meta = _read_cache(cache)
    else:
        images, masks, meta = _decode_all(kept, scan, preprocessing, data.data_workers,
                                          cache if streamed else None)
    skipped += [(Path(p), reason) for p, reason in meta["skipped"]]
    if meta["count"] == 0:
        raise DataError(f"--data-dir {root}: none of its {len(scan.entries)} image files can be decoded: "
                        f"{_named([p for p, _ in skipped], root)} ({skipped[0][1]})")
    order = [kept[i] for i in meta["kept"]]

    for reason_group, paths in _group(scan.ignored).items():
        _warn(f"--data-dir {root}: {len(paths)} files ignored, {reason_group}: {_named(paths, root)}")
    for reason_group, paths in _group(skipped).items():
        _warn(f"--data-dir {root}: {len(paths)} image files skipped, {reason_group}: {_named(paths, root)}")
    conversions = {note: paths for note, paths in meta["notes"].items()}
    for note, paths in conversions.items():
        if note == "resized":
            if len(paths) < len(order):
                _warn(f"--data-dir {root}: {len(paths)} of {len(order)} images are not {width}×{height} and were "
                      f"resized to it ({data.resize}): {_named(paths, root)}")
        else:
            _warn(f"--data-dir {root}: {len(paths)} images converted ({note}): {_named(paths, root)}")

    mapping, class_names = _labels(scan)
    # A labelled validation image's label is whether it is anomalous (anything but good/).
    labels = torch.tensor([int(e.class_name != "good") if e.part == "labelled" else
                           mapping[e.class_name] if e.class_name is not None else UNLABELLED for e in order],
                          dtype=torch.long)
    parts = [e.part for e in order]
    train_idx, val_idx, test_idx, labelled_idx = (
        torch.tensor([i for i, part in enumerate(parts) if part == name], dtype=torch.long) for name in PARTS)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"--data-dir {root}: expected usable images for both training and testing, got "
                        f"{len(train_idx)} and {len(test_idx)}")
    test_masks = masks[test_idx.numpy()] if masks is not None else None
    if streamed and len(val_idx) == 0:
        raise DataError(f"--data-dir {root}: no usable validation images")
    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    report = {
        "dataset": "folder", "data_dir": str(root), "layout": scan.layout,
        "images": {"train": len(train_idx) + len(val_idx), "test": len(test_idx)},
        "preprocessing": preprocessing.describe(),
        "sizes_found": {f"{w}x{h}": c for (h, w), c in sizes.most_common(10)},
        "modes_found": dict(Counter(mode for _, mode in headers.values())),
        "converted": {note: len(paths) for note, paths in conversions.items()},
        "ignored_files": [{"file": str(p), "reason": r} for p, r in scan.ignored],
        "skipped_files": [{"file": str(p), "reason": r} for p, r in skipped],
        "masks": len(scan.masks), "streamed": streamed, **({"cache": str(cache)} if streamed else {}),
    }
    if len(labelled_idx):
        anomalous = int(labels[labelled_idx].sum())
        report["labelled_validation"] = {"normal": len(labelled_idx) - anomalous, "anomalous": anomalous,
                                         "from": str(data.validation_dir or root / "validation")}
    return RawData(train=(_take(x, train_idx, streamed), labels[train_idx]),
                   test=(_take(x, test_idx, streamed), labels[test_idx]),
                   validation=(x[val_idx].clone(), labels[val_idx]) if streamed else None,
                   class_names=class_names, test_masks=None if test_masks is None else torch.from_numpy(test_masks),
                   report=report, streamed=streamed,
                   labelled=(x[labelled_idx].clone(), labels[labelled_idx]) if len(labelled_idx) else None)


def _take(x: Tensor, idx: Tensor, streamed: bool) -> Tensor:
    """Rows `idx` of x; a memory-mapped x keeps a contiguous run as a view (no copy into memory)."""
    if streamed and len(idx) and bool((idx[1:] - idx[:-1] == 1).all()):
        return x[int(idx[0]): int(idx[-1]) + 1]
    return x[idx]


def _group(items: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path, reason in items:
        key = reason.split(": ", 1)[-1] if ": " in reason else reason
        groups.setdefault(key, []).append(path)
    return groups


def _decode_all(entries: list[Entry], scan: Scan, preprocessing: Preprocessing, workers: int,
                cache: Path | None):
    """Decode every entry (in `workers` processes) into one uint8 array, in memory or in `cache`."""
    shape = (len(entries), *preprocessing.shape)
    tmp = None
    if cache is None:
        images = np.empty(shape, dtype=np.uint8)
    else:
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    mask_paths = [scan.masks.get(e.path) for e in entries]
    any_masks = scan.layout == "mvtec"
    masks = np.zeros((len(entries), 1, *preprocessing.shape[1:]), dtype=np.uint8) if any_masks else None
    loader = DataLoader(_Decode([e.path for e in entries], preprocessing, mask_paths), batch_size=64,
                        num_workers=workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(0))  # never draws from the run's global RNG
    kept, skipped, notes = [], [], {}
    count = 0
    for batch in loader:
        for i, pixels, mask, these_notes, error in batch:
            if error is not None:
                skipped.append((str(entries[i].path), error))
                continue
            images[count] = pixels.numpy()
            if masks is not None and mask is not None:
                masks[count] = mask.numpy()
            for note in these_notes:
                notes.setdefault(note, []).append(str(entries[i].path))
            kept.append(i)
            count += 1
    meta = {"count": count, "kept": kept, "skipped": skipped, "notes": notes}
    if masks is not None:
        masks = masks[:count]
    if cache is None:
        return images[:count], masks, meta
    images.flush()
    del images
    if masks is not None:
        np.save(tmp / "masks.npy", masks)
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)  # the cache appears whole or not at all
    return _read_cache(cache)


def _read_cache(cache: Path):
    meta = json.loads((cache / "meta.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode="c")[: meta["count"]]  # copy-on-write: never written back
    masks = np.load(cache / "masks.npy") if (cache / "masks.npy").is_file() else None
    return images, masks, meta

