"""`vae bench defects --data-dir DIR`: how well a model finds and outlines defects, against two baselines.

DIR is a folder in the MVTec AD layout: train/good/ (normal images), test/<good|type>/ and
ground_truth/<type>/<name>_mask.png, and optionally validation/<good|type>/ (labelled images, where
a run chooses its F1 thresholds). `vae data make-defects` writes one from real digits or garments.
The bench trains the model `vae train --dataset folder --data-dir DIR` trains, with the training
flags given, or evaluates a finished run on DIR (--run), and scores every test image with

- every score the run calibrated, computed as calibrated (the run's default marked "default");
- every anomaly map of `model.anomaly.maps`; a map's image score is its maximum (that of the
  default map is the extra image score `map_max`);
- two baselines that learn nothing, on the same images:
  `mean image`    map Σ_c (x − x̄)², x̄ the mean training image; image score the map's sum, the
                  squared distance to x̄ (the sum, not the max, so both baselines rank images by a
                  distance over the whole image);
  `nearest image` map Σ_c (x − n(x))², n(x) the training image nearest to x in L2 over all pixels;
                  image score ‖x − n(x)‖. A training image is its own nearest: its map is zero.
  Both maps are smoothed by the model's default map's Gaussian (the same σ), so the three maps
  differ only in what they compare x with.

Metrics (`model.bench.metrics`), per defect type (the good test images and that type's) and
overall: image AUROC, F1-max and AUPR, pixel AUROC and AUPRO (to 30 % FPR). The run's scores also
get the F1 at the run's own thresholds: the F1-maximising one (chosen on validation/, where the
folder has it) and the one flagging 1 % of normal validation images.

The report (JSON, a Markdown table beside it) is saved after each part, so a stopped bench keeps
what it measured.
"""

# This module's top-level imports are light: `vae`'s parser, which `vae serve` builds too, reads
# `DefectBenchConfig` from here, so scikit-learn (`model.bench.metrics`) and the training stack are
# imported by the functions that use them.

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.anomaly.calibration import DEFAULT_FALSE_POSITIVE_RATE
from model.anomaly.maps import available_maps, default_map, gaussian_blur, map_params, maps_of_split
from model.config.base import raise_problems, setting
from model.config.train import DEVICES, FOLDER_DATASETS, TrainConfig
from model.core.device import resolve_device
from model.core.preprocess import scale
from model.data.base import DataBundle, DataError
from model.data.defects import DefectConfig
from model.runs.checkpoint import Checkpoint, load_checkpoint

TITLE = "invalid defect bench config"
LAYOUT = ("the MVTec AD layout: train/good/ (normal images), test/<good|type>/ and "
          "ground_truth/<type>/<name>_mask.png")
GOOD = "good"
# The fields that choose what is trained; --run evaluates a model that is already trained.
TRAINING = ("epochs", "latent_features", "hidden", "arch", "conv_channels", "batch_size", "lr", "calibration_k",
            "eval_k", "background_epochs")
IMAGE_CHUNK = 4096  # training images scaled at once by the baselines
DISTANCES = 2 ** 24  # (test × training) distances the nearest-image baseline holds at once
SHOWN = 8  # entries of a folder named in an error


@dataclass(frozen=True)
class DefectBenchConfig:
    """What `vae bench defects` evaluates: the folder, and the model it trains (or the run it takes).

    A training field left None takes `vae train`'s default, so the bench trains exactly the model
    `vae train --dataset folder --data-dir DIR` would.
    """

    data_dir: str | None = setting(None, "the MVTec AD folder: train/good/, test/<good|type>/, "
                                         "ground_truth/<type>/<name>_mask.png, optionally validation/<good|type>/")
    run: str | None = setting(None, "evaluate this complete run directory on DATA_DIR instead of training a model "
                                    "(default: train one)")
    epochs: int | None = setting(None, "training epochs (default: vae train's)")
    latent_features: int | None = setting(None, "latent units (default: vae train's)")
    hidden: tuple[int, ...] | None = setting(None, "hidden widths (default: vae train's)")
    arch: str | None = setting(None, "network (default: vae train's for a folder, conv)", ("mlp", "conv"))
    conv_channels: tuple[int, ...] | None = setting(None, "--arch conv: channels of each stride-2 stage "
                                                          "(default: vae train's)")
    batch_size: int | None = setting(None, "images per step (default: vae train's)")
    lr: float | None = setting(None, "Adam learning rate (default: vae train's)")
    calibration_k: int | None = setting(None, "importance samples of the scores built on L_K (default: vae train's)")
    eval_k: int | None = setting(None, "importance samples of the run's test L_K (default: vae train's)")
    background_epochs: int | None = setting(None, "epochs of the likelihood ratio's background model; 0: no such "
                                                  "score (default: vae train's)")
    data_workers: int | None = setting(None, "processes decoding the folder's images (default: vae train's)")
    seed: int = setting(0, "seed of the model and its validation split, and of the scores' and maps' posterior "
                           "samples")
    device: str = setting("auto", "where to train and score", DEVICES)

    def __post_init__(self):
        problems = []
        given = [name for name in TRAINING if getattr(self, name) is not None]
        if self.run is not None and given:
            problems.append(f"{', '.join(given)}: expected no training settings with --run {self.run} (the run is "
                            f"already trained), got {', '.join(f'{n}={getattr(self, n)!r}' for n in given)}")
        raise_problems(TITLE, problems)

    def train_config(self) -> TrainConfig:
        """The TrainConfig of `vae train --dataset folder --data-dir DATA_DIR` with this config's flags."""
        values = {name: getattr(self, name) for name in (*TRAINING, "data_workers") if getattr(self, name) is not None}
        return TrainConfig.of(dataset="folder", data_dir=self.data_dir, seed=self.seed, device=self.device, **values)


# CI: defects drawn on the embedded digits' ones (one class of object, as each MVTec AD category is:
# on all ten digits a defect of 5 % of the image hides in how much the digits differ, and even the
# nearest-image baseline's image AUROC stays near 0.6), a small conv model, cheap scores.
QUICK_DEFECTS = DefectConfig(dataset="embedded", classes=(1,), train=350, validation=10, test=20, seed=0)
QUICK = DefectBenchConfig(epochs=40, batch_size=32, latent_features=16, hidden=(128,), conv_channels=(16, 32),
                          calibration_k=10, eval_k=10, data_workers=0, device="cpu")
# --quick fails below these, overall: the default score's image AUROC, the default map's pixel AUROC
# and AUPRO. On QUICK_DEFECTS a working pipeline measures about 0.96, 0.98 and 0.93. Random maps
# measure 0.5 pixel AUROC; maps scored against other images' masks still measure about 0.8, as
# the map is high near the digit's ink and every defect is there, but AUPRO drops to about 0.5;
# scores against shuffled labels measure 0.5 image AUROC (tests/test_bench_defects.py).
QUICK_FLOORS = {"image_auroc": 0.85, "pixel_auroc": 0.9, "aupro": 0.7}
FLOOR_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}


def check_layout(root: Path) -> None:
    """Refuse a folder that is not in the MVTec AD layout before any image is decoded."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root}: no such directory; expected a folder in {LAYOUT}")
    missing = [f"{part}/" for part in ("train/good", "test", "ground_truth") if not (root / part).is_dir()]
    if missing:
        found = sorted(f"{p.name}/" if p.is_dir() else p.name for p in root.iterdir())
        shown = ", ".join(found[:SHOWN]) + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")
        raise DataError(f"--data-dir {root}: expected {LAYOUT}; found no {' or '.join(missing)} (it holds "
                        f"{shown or 'nothing'})")


def describe(data: DataBundle, root: Path) -> dict:
    """What the bench measures on: images and defect area per test folder, checked to allow every metric."""
    layout = data.info.get("layout")
    if layout != "mvtec" or data.test_masks is None or data.class_names is None:
        raise DataError(f"--data-dir {root}: expected {LAYOUT}, got a {layout} folder")
    pixels = data.test_masks[0].numel()
    folders = {}
    for label, name in enumerate(data.class_names):
        area = data.test_masks[data.test.y == label].flatten(1).sum(1).double()  # (images,)
        folders[name] = {"images": int(area.numel()), "with_mask": int((area > 0).sum()),
                         "mean_defect_fraction": float(area.mean() / pixels) if area.numel() else 0.0}
    types = [name for name in data.class_names if name != GOOD]
    if folders.get(GOOD, {}).get("images", 0) == 0 or not types:
        counts = {name: folder["images"] for name, folder in folders.items()}
        raise DataError(f"--data-dir {root}: expected normal test images in test/good/ and defective ones in "
                        f"test/<type>/, got these test images per folder: {counts}")
    unmasked = [name for name in types if folders[name]["with_mask"] == 0]
    if unmasked:
        raise DataError(f"--data-dir {root}: expected defect masks ground_truth/<type>/<name>_mask.png for the "
                        f"images of test/<type>/, found none for {unmasked}")
    made = root / "defects.json"  # written by `vae data make-defects`: how the defects were drawn
    return {"data_dir": str(root), "image_shape": list(data.test.x.shape[1:]),
            "images": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test),
                       "labelled_validation": 0 if data.labelled_validation is None else len(data.labelled_validation)},
            "types": types, "test": folders,
            **({"made_by": json.loads(made.read_text())} if made.is_file() else {})}


# --- the two baselines ---------------------------------------------------------------------------

def _flat(images: Tensor, device) -> Tensor:
    """uint8 or [0, 1] images (N, C, H, W) as float32 rows (N, C·H·W) on `device`, in chunks."""
    return torch.cat([scale(images[i:i + IMAGE_CHUNK].to(device)).flatten(1)
                      for i in range(0, images.shape[0], IMAGE_CHUNK)])


def _check_shapes(train_x: Tensor, x: Tensor) -> None:
    if train_x.ndim != 4 or train_x.shape[1:] != x.shape[1:] or train_x.shape[0] == 0:
        raise ValueError(f"expected training and test images (N, C, H, W) of one image shape, got "
                         f"{tuple(train_x.shape)} and {tuple(x.shape)}")


@torch.no_grad()
def mean_image_baseline(train_x: Tensor, x: Tensor, *, sigma: float) -> tuple[Tensor, Tensor]:
    """Distance to the mean training image: (maps (N, H, W) Σ_c (x − x̄)² smoothed by `sigma`,
    scores (N,) ‖x − x̄‖², the unsmoothed map's sum), on the CPU."""
    _check_shapes(train_x, x)
    device = x.device
    total = torch.zeros(train_x[0].numel(), dtype=torch.float64, device=device)
    for i in range(0, train_x.shape[0], IMAGE_CHUNK):
        total += scale(train_x[i:i + IMAGE_CHUNK].to(device)).flatten(1).double().sum(0)
    mean = (total / train_x.shape[0]).float().view(x.shape[1:])  # (C, H, W)
    raw = (scale(x) - mean).pow(2).sum(1)  # (N, H, W)
    return gaussian_blur(raw, sigma).cpu(), raw.flatten(1).sum(1).cpu()


@torch.no_grad()
def nearest_image_baseline(train_x: Tensor, x: Tensor, *, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Distance to the nearest training image n(x) in L2 over all pixels: (maps (N, H, W)
    Σ_c (x − n(x))² smoothed by `sigma`, scores (N,) ‖x − n(x)‖, n(x)'s index (N,)), on the CPU.

    The search runs on x's device in chunks of test images (`DISTANCES` distances at a time); the
    map and score are then computed from the difference itself, not from the search's distances.
    """
    _check_shapes(train_x, x)
    reference = _flat(train_x, x.device)  # (M, D)
    rows = max(1, DISTANCES // reference.shape[0])
    maps, scores, nearest = [], [], []
    for i in range(0, x.shape[0], rows):
        query = _flat(x[i:i + rows], x.device)  # (B, D)
        index = torch.cdist(query, reference).argmin(1)  # (B,)
        raw = (query - reference[index]).pow(2).view(-1, *x.shape[1:]).sum(1)  # (B, H, W)
        maps.append(gaussian_blur(raw, sigma).cpu())
        scores.append(raw.flatten(1).sum(1).sqrt().cpu())
        nearest.append(index.cpu())
    return torch.cat(maps), torch.cat(scores), torch.cat(nearest)


# --- methods and their metrics -------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One way of scoring the test images: a score per image and, where it has them, maps."""

    name: str  # "score/<name>", "map/<name>" or "baseline/<name>": its key in the report
    label: str  # its row in the tables
    image_score: str  # what `scores` is, in words
    scores: np.ndarray  # (N,), higher = more anomalous
    maps: np.ndarray | None  # (N, H, W), higher = more anomalous
    seconds: float  # its scoring's wall time; for the run's scores, that of the one pass computing them all
    default: bool = False
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)  # the run's: f1, fpr_1pct


def subsets(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The test images each row of the report is measured on: every one ("overall"), and per defect
    type the good ones with that type's. Labels index `names`, good first (model.data.folder)."""
    out = {"overall": np.ones(len(labels), dtype=bool)}
    for label, name in enumerate(names):
        if name != GOOD:
            out[name] = (labels == 0) | (labels == label)
    return out


def measure(method: Method, labels: np.ndarray, masks: np.ndarray, names: tuple[str, ...]) -> dict[str, dict]:
    """The metrics of a method on each subset: image AUROC, F1-max, AUPR, the F1 at each of its
    thresholds and, with maps, pixel AUROC and AUPRO. masks: (N, H, W) bool."""
    from model.bench.metrics import f1_at, image_metrics, pixel_metrics

    out = {}
    for subset, pick in subsets(labels, names).items():
        anomalous = labels[pick] != 0
        row = image_metrics(method.scores[pick], anomalous)
        for key, threshold in method.thresholds.items():
            row[f"f1_at_{key}"] = f1_at(method.scores[pick], anomalous, threshold)
        if method.maps is not None:
            row.update(pixel_metrics(method.maps[pick], masks[pick]))
        out[subset] = row
    return out


def model_methods(checkpoint: Checkpoint, x: Tensor, seed: int) -> Iterator[Method]:
    """The run's calibrated scores (one pass: −L_K is shared), then each map the model has, as Methods."""
    from model.anomaly.scoring import score_calibrated

    calibration, model = checkpoint.calibration, checkpoint.model
    names = list(calibration.scores)
    started = time.perf_counter()
    torch.manual_seed(seed)
    values = score_calibrated(model, x, calibration.scores, names, companions=checkpoint.companions)
    seconds = time.perf_counter() - started  # of all the scores together
    for name in names:
        thresholds = {"fpr_1pct": calibration.scores[name].threshold(DEFAULT_FALSE_POSITIVE_RATE)}
        if name in calibration.f1:
            thresholds["f1"] = calibration.f1[name].threshold
        default = name == calibration.default
        yield Method(f"score/{name}", f"model `{name}`" + " (default)" * default, name, values[name].numpy(),
                     None, seconds, default, thresholds)
    yield from map_methods(checkpoint, x, seed)


def map_methods(checkpoint: Checkpoint, x: Tensor, seed: int) -> Iterator[Method]:
    """Each map the model has, computed as the run calibrated it; its image score is the map's maximum."""
    model, stored = checkpoint.model, checkpoint.calibration.maps
    names = available_maps(model)
    for name in names:
        params = stored[name].params if name in stored else map_params(name, model.input_shape)
        started = time.perf_counter()
        torch.manual_seed(seed)
        maps = maps_of_split(model, x, name=name, **params).numpy()  # (N, H, W)
        default = name == default_map(stored or names)
        label = f"model map `{name}`" + (" (default; image: `map_max`)" if default else " (image: its max)")
        yield Method(f"map/{name}", label, "map_max" if default else f"the maximum of the map {name}",
                     maps.reshape(len(maps), -1).max(1), maps, time.perf_counter() - started, default)


def baseline_methods(train_x: Tensor, x: Tensor, sigma: float) -> Iterator[Method]:
    """The mean-image and nearest-image baselines as Methods."""
    started = time.perf_counter()
    maps, scores = mean_image_baseline(train_x, x, sigma=sigma)
    yield Method("baseline/mean_image", "baseline: mean training image", "squared L2 distance to the mean "
                 "training image", scores.numpy(), maps.numpy(), time.perf_counter() - started)
    started = time.perf_counter()
    maps, scores, _ = nearest_image_baseline(train_x, x, sigma=sigma)
    yield Method("baseline/nearest_image", "baseline: nearest training image", "L2 distance to the nearest "
                 "training image", scores.numpy(), maps.numpy(), time.perf_counter() - started)


# --- the bench -----------------------------------------------------------------------------------

def _run_config(run_config: TrainConfig, config: DefectBenchConfig, root: Path) -> TrainConfig:
    """A run's config reading DIR, with the run's preprocessing (its input shape) and split seed."""
    values = {"dataset": "folder", "data_dir": str(root), "validation_dir": None}
    trained_on = run_config.data.data_dir
    same = (run_config.data.dataset in FOLDER_DATASETS and trained_on is not None
            and Path(trained_on).expanduser().resolve() == root.resolve())
    if not same:  # these chose images of the data set the run was trained on
        values.update(classes=None, labels=None, train_subset=None)
    if config.data_workers is not None:
        values["data_workers"] = config.data_workers
    return run_config.replace(**values)


def run_defects(config: DefectBenchConfig, work_dir: str | Path, *, command: str = "",
                on_part: Callable[[dict], object] | None = None, log: Callable[[str], object] = print,
                progress: bool = False, seconds: dict | None = None) -> dict:
    """Train (or load) the model, score DATA_DIR's test images every way, measure; returns the report.

    Args:
        work_dir: where a model the bench trains is written (`work_dir/run`, replaced if there).
        on_part: called with the report so far after each part (`vae bench defects` saves it there).
        seconds: wall times measured before the bench (e.g. drawing the folder), kept in the report.
    """
    from model.data.loading import load_data
    from model.runs.train import train

    started = time.perf_counter()
    if config.data_dir is None:
        raise ValueError("data_dir: expected the MVTec AD folder to evaluate on (--data-dir DIR), got none")
    root = Path(config.data_dir).expanduser()
    check_layout(root)
    device = resolve_device(config.device)
    report = {"command": command, "config": dataclasses.asdict(config), "threads": torch.get_num_threads(),
              "seconds": dict(seconds or {}), "data": {}, "run": None, "methods": {}, "wall_seconds": 0.0}

    def save(part: str) -> None:
        report["wall_seconds"] = round(time.perf_counter() - started + sum((seconds or {}).values()), 1)
        if on_part is not None:
            on_part(report)
        log(f"{part} ({report['wall_seconds']:.0f} s so far)")

    def timed(key: str, since: float) -> None:
        report["seconds"][key] = round(time.perf_counter() - since, 2)

    checkpoint = None
    if config.run is not None:
        checkpoint = load_checkpoint(config.run, device)
        if checkpoint.calibration is None:
            raise ValueError(f"--run {config.run}: the run has no calibration.json; `vae evaluate {config.run}` "
                             "makes one")
        train_config = _run_config(checkpoint.config, config, root)
    else:
        train_config = config.train_config()
    since = time.perf_counter()
    data = load_data(train_config)
    timed("load", since)
    report["data"] = describe(data, root)
    if checkpoint is None:
        since = time.perf_counter()
        run_dir = train(train_config, Path(work_dir) / "run", overwrite=True, progress=progress, data=data)
        timed("train", since)
        checkpoint = load_checkpoint(run_dir, device)
    calibration = checkpoint.calibration
    report["run"] = {"dir": str(checkpoint.path), "trained_by_bench": config.run is None,
                     "config": checkpoint.config.to_dict(), "default_score": calibration.default,
                     "default_map": default_map(calibration.maps or available_maps(checkpoint.model)),
                     "f1_thresholds": bool(calibration.f1)}
    save(f"data and model ready: {len(data.test)} test images of {len(report['data']['types'])} defect types")

    labels = data.test.y.numpy()
    masks = data.test_masks[:, 0].numpy().astype(bool)  # (N, H, W)
    names = data.class_names
    chosen = report["run"]["default_map"]
    stored = calibration.maps.get(chosen)
    sigma = (stored.params if stored else map_params(chosen, checkpoint.model.input_shape))["sigma"]
    x = data.test.x
    report["seconds"]["metrics"] = 0.0
    # Each method is computed as the loop reaches it, so each is saved as soon as it is measured.
    methods = chain(model_methods(checkpoint, x, config.seed), baseline_methods(data.train.x, x.to(device), sigma))
    for method in methods:
        since = time.perf_counter()
        metrics = measure(method, labels, masks, names)
        report["seconds"]["metrics"] = round(report["seconds"]["metrics"] + time.perf_counter() - since, 2)
        report["methods"][method.name] = {"label": method.label, "default": method.default,
                                          "image_score": method.image_score, "thresholds": method.thresholds,
                                          "seconds": round(method.seconds, 2), "metrics": metrics}
        overall = metrics["overall"]
        save(f"{method.label}: image AUROC {overall['auroc']:.3f}"
             + (f", pixel AUROC {overall['pixel_auroc']:.3f}, AUPRO {overall['aupro']:.3f}" if "aupro" in overall
                else ""))
    report["comparison"] = comparison(report)
    save("done")
    return report


def quick(config: DefectBenchConfig, work_dir: str | Path, **kwargs) -> dict:
    """The CI preset's bench: draw `QUICK_DEFECTS` into `work_dir`/defects (replacing an earlier
    one), then `run_defects` on it, training into `work_dir`/run."""
    from model.data.defects import make_defects

    started = time.perf_counter()
    folder = Path(work_dir) / "defects"
    shutil.rmtree(folder, ignore_errors=True)
    make_defects(QUICK_DEFECTS, folder)
    drawn = {"make_defects": round(time.perf_counter() - started, 2)}
    return run_defects(dataclasses.replace(config, data_dir=str(folder)), work_dir, seconds=drawn, **kwargs)


# --- reading a report ----------------------------------------------------------------------------

COLUMNS = (("auroc", "image AUROC"), ("f1_max", "F1-max"), ("aupr", "AUPR"), ("pixel_auroc", "pixel AUROC"),
           ("aupro", "AUPRO"), ("f1_at_f1", "F1 @ run's F1 threshold"), ("f1_at_fpr_1pct", "F1 @ 1 % FPR"))
BASELINES = ("baseline/mean_image", "baseline/nearest_image")


def defaults(report: dict) -> tuple[str, str]:
    """The report's keys of the model's default score and default map."""
    return f"score/{report['run']['default_score']}", f"map/{report['run']['default_map']}"


def comparison(report: dict) -> dict:
    """Overall, the model's default score (image AUROC) and map (pixel AUROC, AUPRO) beside each
    baseline: {metric: {"model": value, "model_method": key, baseline key: value}}."""
    score, map_ = defaults(report)
    methods = report["methods"]
    out = {}
    for metric, model_key in (("auroc", score), ("f1_max", score), ("aupr", score), ("pixel_auroc", map_),
                              ("aupro", map_)):
        row = {"model_method": model_key, "model": methods[model_key]["metrics"]["overall"][metric]}
        row.update({b: methods[b]["metrics"]["overall"][metric] for b in BASELINES if b in methods})
        out[metric] = row
    return out


def quick_failures(report: dict, floors: dict[str, float]) -> list[str]:
    """Why a report fails `floors` (keys of QUICK_FLOORS; the default score's image AUROC, the
    default map's pixel AUROC and AUPRO, overall); empty when it passes."""
    score, map_ = defaults(report)
    measured = {"image_auroc": (score, "auroc"), "pixel_auroc": (map_, "pixel_auroc"), "aupro": (map_, "aupro")}
    failures = []
    for name, floor in floors.items():
        key, metric = measured[name]
        got = report["methods"][key]["metrics"]["overall"][metric]
        if got < floor:
            failures.append(f"{key}: overall {FLOOR_NAMES[name]} {got:.3f}, expected >= {floor}")
    return failures


def _table(methods: dict, subset: str) -> list[str]:
    columns = [(key, title) for key, title in COLUMNS if any(key in m["metrics"][subset] for m in methods.values())]
    best = {key: max(m["metrics"][subset].get(key, -np.inf) for m in methods.values()) for key, _ in columns}
    lines = ["| method | " + " | ".join(title for _, title in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for method in methods.values():
        row = method["metrics"][subset]
        cells = ["—" if key not in row else (f"**{row[key]:.3f}**" if row[key] == best[key] else f"{row[key]:.3f}")
                 for key, _ in columns]
        lines.append(f"| {method['label']} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """The report as Markdown: overall then per defect type, a row per method (best per column in bold),
    then the model's defaults against the baselines."""
    data, run = report["data"], report["run"]
    parts = ", ".join(f"{key} {value:.0f} s" for key, value in report["seconds"].items())
    lines = [f"Command: `{report['command']}`  "] if report["command"] else []
    lines.append(f"Wall time: {report['wall_seconds']:.0f} s ({parts}); torch threads: {report['threads']}  ")
    if data:
        images = data["images"]
        folders = ", ".join(f"{name} {v['images']}" + (f" ({100 * v['mean_defect_fraction']:.1f} % of the image)"
                                                      if name != GOOD else "") for name, v in data["test"].items())
        lines.append(f"Data: `{data['data_dir']}`, images {'×'.join(map(str, data['image_shape']))}: "
                     f"{images['train']} training, {images['validation']} validation, "
                     f"{images['labelled_validation']} labelled validation; test: {folders}  ")
    if run:
        lines.append(f"Model: `{run['dir']}` ({'trained by the bench' if run['trained_by_bench'] else 'given'}; "
                     f"{run['config']['arch']}, {run['config']['latent_features']} latent units, "
                     f"{run['config']['epochs']} epochs); default score `{run['default_score']}`, default map "
                     f"`{run['default_map']}`")
    methods = report["methods"]
    if not methods:
        return "\n".join(lines)
    for subset in next(iter(methods.values()))["metrics"]:
        anomalous = sum(data["test"][t]["images"] for t in data["types"] if subset in ("overall", t))
        total = anomalous + data["test"][GOOD]["images"]
        lines += ["", f"#### {subset} ({total} test images, {anomalous} defective)", "", *_table(methods, subset)]
    if "comparison" in report:
        lines += ["", "#### the model's defaults against the baselines, overall", "",
                  "| metric | model | " + " | ".join(methods[b]["label"].removeprefix("baseline: ") for b in BASELINES)
                  + " |", "| --- | ---: |" + " ---: |" * len(BASELINES)]
        titles = dict(COLUMNS)
        for metric, row in report["comparison"].items():
            lines.append(f"| {titles[metric]} (`{row['model_method']}`) | {row['model']:.3f} | "
                         + " | ".join(f"{row[b]:.3f} ({row['model'] - row[b]:+.3f})" for b in BASELINES) + " |")
    return "\n".join(lines)
