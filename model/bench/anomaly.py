"""`vae bench anomaly`: the AUROC of every anomaly score on the benchmarks of `model.bench.config`.

Every case trains a fresh model (and, for the likelihood ratio, a background model on perturbed
inputs) with `model.anomaly.companions.fit_model` (the bench's MLP and Bernoulli likelihood, for
images of any shape: a folder's colour images too), scores the test images in batches and reports
the AUROC of each score with its wall time. Scoring goes through `model.anomaly.scoring.score_split`,
as calibration does: −L_K is computed once and shared by the scores built on it
(`model.anomaly.registry.NLL_SCORES`), so they all see the same importance samples.

A report is a JSON object: the command, the config, one result per case and the summary per
benchmark (`summarise`); `model.bench.render` draws its tables and `model.bench.rankings` ranks
the scores per data set from it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from model.anomaly.base import BACKGROUND
from model.anomaly.calibration import ScoreCalibration
from model.anomaly.combined import standardisation, standardise
from model.anomaly.companions import fit_model
from model.anomaly.registry import NLL_SCORES, SCORES
from model.anomaly.scoring import score_split
from model.bench.config import BenchConfig, benchmark_data
from model.config.train import FOLDER_DATASETS, TrainConfig
from model.core.compilation import compiling
from model.core.labels import UNLABELLED
from model.data.base import DataError, Split
from model.data.loading import load_raw
from model.data.registry import DATASETS
from model.data.transforms import filter_classes


@dataclass
class Case:
    """One model to train and the test images it scores."""

    benchmark: str
    name: str
    train_x: Tensor  # (N, C, H, W)
    test_x: Tensor  # (M, C, H, W)
    test_anomalous: Tensor  # bool (M,)
    epochs: int


def data_dir(name: str, config: BenchConfig) -> str:
    """Where the bench reads the data set `name`: DATA_ROOT/name, or --folder for a folder of images."""
    if name in FOLDER_DATASETS and config.folder is not None:
        return config.folder
    return str(Path(config.data_root) / name)


def _load(name: str, config: BenchConfig, cache: dict[str, tuple[Split, Split]]) -> tuple[Split, Split]:
    if name not in cache:
        cache[name] = load_raw(name, data_dir(name, config))
    return cache[name]


def one_class_labels(name: str, train: Split, test: Split, config: BenchConfig) -> tuple[int, ...]:
    """The classes of `oneclass-<name>`: --classes, else the data set's, else (a folder) those its
    training images have; each must have test images of its own and of other classes."""
    known = DATASETS[name].classes
    if known is None:
        known = tuple(sorted(set(train.y.tolist()) - {UNLABELLED}))
        if not known:
            raise DataError(f"oneclass-{name}: {data_dir(name, config)} has no labelled training images; a one-class "
                            "benchmark needs classes: class subfolders (DIR/<class>/*.png), train/ and test/ of "
                            "class subfolders, or the MVTec AD layout (train/good, test/<good|defect>)")
    labels = tuple(config.classes or known)
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise DataError(f"classes: {name} has the labels {list(known)}, got {unknown}")
    for c in labels:
        normal = int((test.y == c).sum())
        if normal == 0 or normal == len(test):
            raise DataError(f"oneclass-{name} class {c}: its test images hold {normal} of class {c} and "
                            f"{len(test) - normal} of other classes; an AUROC needs some of each")
    return labels


def _subset(x: Tensor, anomalous: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= x.shape[0]:
        return x, anomalous
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[pick], anomalous[pick]


def cases(config: BenchConfig, cache: dict[str, tuple[Split, Split]]) -> Iterator[Case]:
    """Yield the cases of every benchmark, loading each data set once into `cache`."""
    for benchmark in config.benchmarks:
        normal, other = benchmark_data(benchmark)
        train, test = _load(normal, config, cache)
        if other is None:
            for c in one_class_labels(normal, train, test, config):
                x, anomalous = _subset(test.x, test.y != c, config.test_subset, config.seed + c)
                yield Case(benchmark, f"class {c}", filter_classes(train, [c]).x, x, anomalous, config.epochs)
            continue
        _, ood = _load(other, config, cache)
        n = None if config.test_subset is None else config.test_subset // 2
        x_in, _ = _subset(test.x, torch.zeros(len(test), dtype=torch.bool), n, config.seed)
        x_out, _ = _subset(ood.x, torch.ones(len(ood), dtype=torch.bool), n, config.seed + 1)
        anomalous = torch.cat([torch.zeros(len(x_in), dtype=torch.bool), torch.ones(len(x_out), dtype=torch.bool)])
        yield Case(benchmark, f"{normal} vs {other}", train.x, torch.cat([x_in, x_out]), anomalous, config.ood_epochs)


def auroc(scores, anomalous) -> float:
    """Area under the ROC curve of `scores` (higher = anomalous) against the boolean labels."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"AUROC needs finite scores, got {int((~np.isfinite(scores)).sum())} non-finite")
    return float(roc_auc_score(np.asarray(anomalous, dtype=bool), scores))


CALIBRATION_IMAGES = 1000  # training images that standardise a derived score's components


def run_case(case: Case, config: BenchConfig) -> dict:
    """Train the case's model (and background model), score its test images, return the AUROCs;
    under `config.compile` the training losses and the bounds run compiled (model.core.compilation)."""
    with compiling(config.compile):
        return _run_case(case, config)


def _run_case(case: Case, config: BenchConfig) -> dict:
    train_config = TrainConfig.of(latent_features=config.latent_features, hidden=config.hidden, kl="analytic",
                                  arch=config.arch, conv_channels=config.conv_channels,
                                  epochs=case.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                                  input_shape=tuple(case.train_x.shape[1:]), compile=config.compile)
    started = time.perf_counter()
    model = fit_model(train_config, case.train_x, epochs=case.epochs)
    train_seconds = time.perf_counter() - started
    background, background_epochs, background_seconds = None, 0, 0.0
    if "likelihood_ratio" in config.scores:
        background_epochs = max(1, math.ceil(config.background_epochs * case.epochs))
        started = time.perf_counter()
        background = fit_model(train_config, case.train_x, epochs=background_epochs,
                               perturb_rate=config.perturb_rate, seed=config.seed + 1)
        background_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)
    companions = {BACKGROUND: background} if background is not None else None
    regret = {"likelihood_regret": {"steps": config.regret_steps}}

    def score_case(k: int, names=config.scores):
        return score_split(model, case.test_x, names, k=k, companions=companions, params=regret)

    result = {"benchmark": case.benchmark, "case": case.name, "train_images": int(case.train_x.shape[0]),
              "test_images": int(case.test_x.shape[0]), "anomalous_images": int(case.test_anomalous.sum()),
              "epochs": case.epochs, "background_epochs": background_epochs,
              "train_seconds": round(train_seconds, 2), "background_seconds": round(background_seconds, 2)}
    if config.k_sweep:
        result["k_sweep"] = {}
        for k in config.k_sweep:
            values, seconds = score_case(k, [n for n in config.scores if n in NLL_SCORES])
            result["k_sweep"][str(k)] = {
                name: {"auroc": auroc(values[name], case.test_anomalous), "seconds": seconds[name]}
                for name in values}
        return result
    derived = [name for name in config.scores if SCORES[name].components]
    parts = sorted({part for name in derived for part in SCORES[name].components})
    direct = [name for name in config.scores if name not in derived]
    values, seconds = score_case(config.k, [*direct, *(p for p in parts if p not in direct)])
    if derived:
        # A fresh model has no held-out calibration images: its combined score is standardised on a
        # seeded subset of its own training images instead (docs/anomaly.md says so).
        calibration_x = case.train_x[torch.randperm(case.train_x.shape[0], generator=torch.Generator().manual_seed(
            config.seed))[:CALIBRATION_IMAGES]]
        reference, _ = score_split(model, calibration_x, parts, k=config.k, companions=companions)
        fitted = {part: ScoreCalibration.fit(part, reference[part].numpy()) for part in parts}
        for name in derived:
            components = SCORES[name].components
            values[name] = standardise({c: values[c] for c in components},
                                       standardisation({c: fitted[c] for c in components}))
            seconds[name] = round(sum(seconds[c] for c in components), 2)
    result["auroc"] = {name: auroc(values[name], case.test_anomalous) for name in config.scores}
    result["score_seconds"] = {name: seconds[name] for name in config.scores}
    return result


def scoring_seconds(result: dict) -> float:
    """Wall time of a case's scoring: a score built on −L_K counts the shared −L_K, here counted once."""
    seconds = result["score_seconds"]
    derived = [n for n in seconds if n in NLL_SCORES and n != "iwae"]
    return sum(seconds.values()) - seconds.get("iwae", 0.0) * len(derived)


def summarise(results: list[dict]) -> dict:
    """Per benchmark: the mean AUROC of each score over its cases, the best score, and the wall time."""
    summary = {}
    for benchmark in dict.fromkeys(r["benchmark"] for r in results):
        rows = [r for r in results if r["benchmark"] == benchmark and "auroc" in r]
        if not rows:
            continue
        names = list(rows[0]["auroc"])
        means = {n: float(np.mean([r["auroc"][n] for r in rows])) for n in names}
        summary[benchmark] = {
            "cases": len(rows),
            "mean_auroc": means,
            "seconds": round(sum(r["train_seconds"] + r["background_seconds"] + scoring_seconds(r) for r in rows), 1),
            "best": max(names, key=means.__getitem__),
        }
    return summary


def merge(reports: list[dict]) -> dict:
    """Several reports as one (e.g. OOD and one-class run separately): results joined, summary redone."""
    results = [r for report in reports for r in report["results"]]
    return {"command": " && ".join(r["command"] for r in reports), "config": [r["config"] for r in reports],
            "threads": reports[0]["threads"], "results": results, "summary": summarise(results),
            "wall_seconds": round(sum(r["wall_seconds"] for r in reports), 1)}


def run(config: BenchConfig, *, command: str = "", on_case: Callable[[dict], object] | None = None,
        log: Callable[[str], object] = print) -> dict:
    """Run every case; returns the report.

    Args:
        command: the command line, recorded in the report.
        on_case: called with the report so far after each case (`vae bench anomaly` saves it there,
            so a long run keeps what it measured).
    """
    started = time.perf_counter()
    report = {"command": command, "config": asdict(config), "threads": torch.get_num_threads(),
              "results": [], "summary": {}, "wall_seconds": 0.0}
    cache: dict[str, tuple[Split, Split]] = {}
    for case in cases(config, cache):
        report["results"].append(run_case(case, config))
        report["summary"] = summarise(report["results"])
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        if on_case is not None:
            on_case(report)
        last = report["results"][-1]
        log(f"{case.benchmark} {case.name}: " + json.dumps(last.get("auroc") or last.get("k_sweep"))
            + f" ({report['wall_seconds']:.0f} s so far)")
        if config.k_sweep:
            break
    return report
