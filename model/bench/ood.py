"""`vae bench ood RUN_DIR`: a trained run's scores on its normal test images against many kinds of
out-of-distribution images (the families of `model.bench.families`, and other data sets).

For each calibrated score of the run it reports the AUROC (normal test images against the family)
and the share of the family that the run's own threshold at 1 % false positives flags: the
threshold a user of the service gets by default. Nothing is trained here; the run is scored as
it is served.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from model.core.preprocess import scale
from model.anomaly.calibration import DEFAULT_FALSE_POSITIVE_RATE
from model.anomaly.scoring import score_split
from model.bench.anomaly import auroc
from model.bench.config import OodConfig
from model.bench.families import FAMILIES, HELD_OUT, generate
from model.data.loading import load_data, load_raw
from model.data.registry import DATASETS
from model.runs.checkpoint import load_checkpoint

# Other data sets of the same geometry a run's inputs could come from instead. The embedded digits
# are MNIST digits, so they are no anomaly for an MNIST run.
OTHER_DATASETS = {"mnist": ("fashion-mnist",), "fashion-mnist": ("mnist", "embedded"),
                  "embedded": ("fashion-mnist",)}


def _auroc(normal: np.ndarray, other: np.ndarray) -> float:
    """AUROC of normal images (label 0) against another set (label 1)."""
    return auroc(np.r_[normal, other], np.r_[np.zeros(len(normal), bool), np.ones(len(other), bool)])


def _subset(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= x.shape[0]:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def run_ood(run_dir: str | Path, config: OodConfig = OodConfig()) -> dict:
    """Score the run's normal test images and every family; returns the results as a JSON-able dict."""
    started = time.perf_counter()
    checkpoint = load_checkpoint(run_dir)
    calibration = checkpoint.calibration
    if calibration is None:
        raise ValueError(f"{run_dir}: the run has no calibration.json; `vae evaluate {run_dir}` makes one")
    names = list(config.scores or calibration.scores)
    missing = sorted(set(names) - set(calibration.scores))
    if missing:
        raise ValueError(f"scores: the run calibrated {sorted(calibration.scores)}, got {missing}")
    run_config = checkpoint.config
    normal = _subset(scale(load_data(run_config).test.x), config.test_subset, config.seed)
    inputs = {"normal": normal}
    for i, family in enumerate(config.families):
        inputs[family] = generate(family, normal, config.seed + 1 + i)
    dataset = run_config.data.dataset
    for other in OTHER_DATASETS.get(dataset, ()):
        if DATASETS[other].input_shape != tuple(normal.shape[1:]):
            continue
        data_dir = None if other == "embedded" else str(Path(config.data_root) / other)
        inputs[other] = _subset(load_raw(other, data_dir)[1].x, config.test_subset, config.seed)
    x = torch.cat(list(inputs.values()))
    sizes = [len(v) for v in inputs.values()]
    values: dict[str, np.ndarray] = {}
    for name in names:  # each score as it was calibrated (its k)
        params = calibration.scores[name].params
        k = int(params.get("k", 1))
        extra = {key: v for key, v in params.items() if key != "k"}
        torch.manual_seed(config.seed)
        scored, _ = score_split(checkpoint.model, x, [name], k=k, companions=checkpoint.companions,
                                params={name: extra} if extra else None)
        values[name] = scored[name].numpy()
    results: dict[str, dict] = {}
    bounds = np.cumsum([0, *sizes])
    split = {key: slice(bounds[i], bounds[i + 1]) for i, key in enumerate(inputs)}
    for name in names:
        threshold = calibration.scores[name].threshold(DEFAULT_FALSE_POSITIVE_RATE)
        normal_scores = values[name][split["normal"]]
        per = {"normal": {"flagged": float((normal_scores > threshold).mean())}}
        for key in inputs:
            if key == "normal":
                continue
            scores = values[name][split[key]]
            per[key] = {"auroc": _auroc(normal_scores, scores), "flagged": float((scores > threshold).mean())}
        results[name] = per
    return {"run": str(run_dir), "dataset": dataset, "default_score": calibration.default,
            "normal_images": sizes[0], "families": list(config.families),
            "datasets": [k for k in inputs if k not in FAMILIES and k != "normal"], "held_out": list(HELD_OUT),
            "false_positive_rate": DEFAULT_FALSE_POSITIVE_RATE, "scores": results,
            "seconds": round(time.perf_counter() - started, 1)}


def worst(result: dict, score: str, include_held_out: bool = False) -> dict:
    """A score's worst AUROC and worst flag rate over the suite (held-out families apart unless asked)."""
    per = result["scores"][score]
    keys = [k for k in per if k != "normal" and (include_held_out or k not in result["held_out"])]
    return {"auroc": min(per[k]["auroc"] for k in keys), "flagged": min(per[k]["flagged"] for k in keys)}


def render(result: dict) -> str:
    """A Markdown table: families (held-out last) by scores, each cell "AUROC / % flagged"."""
    scores = list(result["scores"])
    rows = [*(f for f in result["families"] if f not in result["held_out"]), *result["datasets"]]
    held = [f for f in result["families"] if f in result["held_out"]]

    def cell(score, key):
        entry = result["scores"][score][key]
        return f"{entry['auroc']:.3f} / {100 * entry['flagged']:.0f}%"

    head = f"| family ({result['dataset']}, {result['normal_images']:,} normal test images) | " + \
        " | ".join(f"`{s}`" + (" (default)" if s == result["default_score"] else "") for s in scores) + " |"
    lines = [head, "| --- |" + " ---: |" * len(scores)]
    lines += [f"| {key} | " + " | ".join(cell(s, key) for s in scores) + " |" for key in rows]
    lines.append("| **worst, not held out** | " + " | ".join(
        f"**{worst(result, s)['auroc']:.3f} / {100 * worst(result, s)['flagged']:.0f}%**" for s in scores) + " |")
    lines += [f"| held out: {key} | " + " | ".join(cell(s, key) for s in scores) + " |" for key in held]
    if held:
        lines.append("| **worst, all** | " + " | ".join(
            f"**{worst(result, s, True)['auroc']:.3f} / {100 * worst(result, s, True)['flagged']:.0f}%**"
            for s in scores) + " |")
    lines.append("| normal test images flagged | " + " | ".join(
        f"{100 * result['scores'][s]['normal']['flagged']:.1f}%" for s in scores) + " |")
    return "\n".join(lines)
