"""Scoring images as served: one anomaly score (and optionally a map) per image, computed with the
parameters it was calibrated with, then read against the calibration as percentiles and flags.

The service's `anomaly` operation and `vae predict` both call these two functions, so a file gives
the same numbers through either (for the same seed: each image scored as a one-image request).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor, nn

from model.anomaly.calibration import AnomalyCalibration
from model.anomaly.maps import anomaly_maps, default_map
from model.anomaly.registry import SCORES
from model.core.noise import Noise


class NoMapsError(ValueError):
    """The run has no calibrated anomaly maps (it was calibrated before maps existed)."""


def choose_map(calibration: AnomalyCalibration, name: str | None) -> str:
    """The calibrated map `name`, or the default one (`model.anomaly.maps.default_map`) for None."""
    if not calibration.maps:
        raise NoMapsError("the run has no calibrated anomaly maps (it was calibrated before maps existed); "
                          "`vae evaluate RUN_DIR` calibrates them")
    name = name or default_map(calibration.maps)
    if name not in calibration.maps:
        raise ValueError(f"map: expected one of the calibrated maps {sorted(calibration.maps)}, got {name!r}")
    return name


def score_images(model: nn.Module, x: Tensor, *, score: str, params: Mapping | None = None,
                 noise: Noise | None = None, companions: Mapping[str, nn.Module] | None = None,
                 map: str | None = None, map_params: Mapping | None = None) -> dict[str, Tensor]:
    """{"scores": (B,)} and, with `map`, {"anomaly_map": (B, H, W)} before calibration.

    The map's noise is drawn after the score's, so asking for a map leaves the scores as they were.
    """
    out = {"scores": SCORES[score](model, x, noise=noise, companions=companions, **dict(params or {}))}
    if map is not None:
        out["anomaly_map"] = anomaly_maps(model, x, name=map, noise=noise, **dict(map_params or {}))
    return out


def read_scores(calibration: AnomalyCalibration, outputs: Mapping[str, np.ndarray], *, score: str,
                threshold: str | None = None, false_positive_rate: float | None = None,
                map: str | None = None) -> dict[str, np.ndarray]:
    """Scores and maps (numpy) against the calibration: percentiles, flags, the threshold used and,
    where there is a map, the map in percentiles of normal pixels."""
    value, _, _ = calibration.threshold_for(score, threshold, false_positive_rate)
    scores = np.asarray(outputs["scores"])
    out = {
        "scores": scores,
        "is_anomaly": scores > value,
        "percentiles": calibration.scores[score].percentile(scores).astype(np.float32),
        "threshold": np.asarray([value], dtype=np.float32),
    }
    if "anomaly_map" in outputs:
        out["anomaly_map"] = calibration.maps[map].percentile(outputs["anomaly_map"]).astype(np.float32)
    return out
