"""Anomaly-score calibration: the score's distribution on held-out normal data, as quantiles.

With the quantiles stored, a threshold for any false-positive rate and a percentile for any score
can be read off without the data. Where the run has labelled anomalous validation images, each
score also gets the threshold that maximises F1 on them (`F1Threshold`); the quantiles of the
pixels of normal images' anomaly maps (`MapCalibration`) make a map read as percentiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LEVELS = np.linspace(0.0, 1.0, 1001)  # quantile levels, 0.1% apart
DEFAULT_FALSE_POSITIVE_RATE = 0.01


@dataclass(frozen=True)
class ScoreCalibration:
    """Quantiles of one anomaly score (higher = more anomalous) on normal held-out data."""

    score: str
    levels: list[float]
    quantiles: list[float]
    n: int  # how many normal images the quantiles come from
    params: dict = field(default_factory=dict)  # e.g. {"k": 100} for the IWAE score

    @classmethod
    def fit(cls, score: str, values: np.ndarray, params: dict | None = None) -> "ScoreCalibration":
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"calibration needs a non-empty 1-d array of finite scores, got shape {values.shape}")
        return cls(score, LEVELS.tolist(), np.quantile(values, LEVELS).tolist(), len(values), dict(params or {}))

    def threshold(self, false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE) -> float:
        """The score above which a normal image is flagged with probability `false_positive_rate`."""
        if not 0.0 < false_positive_rate < 1.0:
            raise ValueError(f"false_positive_rate: expected a number in (0, 1), got {false_positive_rate}")
        return float(np.interp(1.0 - false_positive_rate, self.levels, self.quantiles))

    def value_at(self, level: float) -> float:
        """The score at quantile `level` of the normal images (0.5: the median)."""
        return float(np.interp(level, self.levels, self.quantiles))

    def percentile(self, scores) -> np.ndarray:
        """Percent of normal images scoring at most each score (0–100)."""
        return 100.0 * np.interp(np.asarray(scores, dtype=np.float64), self.quantiles, self.levels)

    def to_dict(self) -> dict:
        return asdict(self)


# Pixel maps: the upper tail matters (a defect is a few pixels among thousands), so the levels are
# 0.1 % apart and then ever finer up to 1 − 10⁻⁶.
MAP_LEVELS = np.unique(np.concatenate([LEVELS, 1.0 - np.logspace(-6, -3, 31)]))


@dataclass(frozen=True)
class MapCalibration:
    """Quantiles of the pixel values of one anomaly map (`model.anomaly.maps`) over normal held-out images."""

    map: str
    params: dict  # how the map is computed: {"sigma": pixels, "samples": K}
    levels: list[float]
    quantiles: list[float]
    images: int  # how many normal images
    pixels: int  # how many pixel values the quantiles come from

    @classmethod
    def fit(cls, name: str, maps: np.ndarray, params: dict) -> "MapCalibration":
        maps = np.asarray(maps, dtype=np.float64)
        if maps.ndim != 3 or maps.size == 0 or not np.all(np.isfinite(maps)):
            raise ValueError(f"map calibration needs finite maps (N, H, W), got shape {maps.shape}")
        return cls(name, dict(params), MAP_LEVELS.tolist(), np.quantile(maps, MAP_LEVELS).tolist(),
                   maps.shape[0], int(maps.size))

    def percentile(self, values) -> np.ndarray:
        """Percent of normal images' pixels with at most each value (0–100), same shape as `values`."""
        return 100.0 * np.interp(np.asarray(values, dtype=np.float64), self.quantiles, self.levels)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class F1Threshold:
    """The threshold of one score that maximises F1 on labelled validation images (normal and anomalous).

    The threshold lies halfway between the lowest score it flags and the highest it does not, so a
    score equal to one seen in validation is classified as it was there.
    """

    score: str
    threshold: float
    f1: float
    precision: float
    recall: float
    normal: int  # how many normal and anomalous validation images it was chosen on
    anomalous: int
    false_positive_rate: float  # the share of the normal validation images it flags

    @classmethod
    def fit(cls, score: str, values: np.ndarray, anomalous: np.ndarray) -> "F1Threshold":
        values = np.asarray(values, dtype=np.float64)
        anomalous = np.asarray(anomalous, dtype=bool)
        if values.shape != anomalous.shape or values.ndim != 1 or not np.all(np.isfinite(values)):
            raise ValueError(f"an F1 threshold needs finite 1-d scores and labels of one shape, got "
                             f"{values.shape} and {anomalous.shape}")
        n_anomalous, n_normal = int(anomalous.sum()), int((~anomalous).sum())
        if n_anomalous == 0 or n_normal == 0:
            raise ValueError(f"an F1 threshold needs normal and anomalous validation images, got {n_normal} "
                             f"normal and {n_anomalous} anomalous")
        order = np.argsort(-values, kind="stable")
        ranked, hits = values[order], anomalous[order]
        # Flag the top j images, j = 1..N, at cuts between distinct values only.
        cuts = np.flatnonzero(np.r_[ranked[1:] < ranked[:-1], True])
        true_pos = np.cumsum(hits)[cuts]
        flagged = cuts + 1
        f1 = 2 * true_pos / (flagged + n_anomalous)
        best = int(np.argmax(f1))
        j = cuts[best]
        below = ranked[j + 1] if j + 1 < len(ranked) else ranked[j] - 1.0
        tp = int(true_pos[best])
        return cls(score, float((ranked[j] + below) / 2), float(f1[best]), tp / int(flagged[best]),
                   tp / n_anomalous, n_normal, n_anomalous, (int(flagged[best]) - tp) / n_normal)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnomalyCalibration:
    """Calibrations of every available score, which one to use by default, and where the run has them,
    the F1-maximising thresholds (`f1`) and the anomaly maps' pixel quantiles (`maps`)."""

    scores: dict[str, ScoreCalibration]
    default: str
    f1: dict[str, F1Threshold] = field(default_factory=dict)
    maps: dict[str, MapCalibration] = field(default_factory=dict)
    # Each score's AUROC on the labelled validation images, where the run has them: the default is
    # then the best of them (ties: the benchmark's order).
    validation_auroc: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.default not in self.scores:
            raise ValueError(f"default score {self.default!r} is not among the calibrated {sorted(self.scores)}")

    def threshold_for(self, score: str, threshold: str | None = None,
                      false_positive_rate: float | None = None) -> tuple[float, str, float]:
        """(threshold, which one, the share of normal images it flags) for `score`.

        `threshold` "f1" or "false_positive_rate" asks for one; None takes the F1 threshold where the
        run has one for this score and no false-positive rate is given, else the quantile at
        `false_positive_rate` (default `DEFAULT_FALSE_POSITIVE_RATE`). For f1 the rate is the one
        measured on the normal validation images.
        """
        if threshold not in (None, "f1", "false_positive_rate"):
            raise ValueError(f"threshold: expected 'f1' or 'false_positive_rate', got {threshold!r}")
        f1 = self.f1.get(score)
        if threshold == "f1" and false_positive_rate is not None:
            raise ValueError("threshold, false_positive_rate: the f1 threshold has its own false-positive rate; "
                             f"expected one of them, got threshold 'f1' and false_positive_rate {false_positive_rate}")
        if threshold == "f1" and f1 is None:
            raise ValueError(f"threshold: expected 'false_positive_rate', got 'f1', but this run has no F1 threshold "
                             f"for {score!r} (it needs labelled anomalous validation images: an MVTec folder's "
                             "validation/ or --validation-dir)")
        if f1 is not None and (threshold == "f1" or (threshold is None and false_positive_rate is None)):
            return f1.threshold, "f1", f1.false_positive_rate
        rate = DEFAULT_FALSE_POSITIVE_RATE if false_positive_rate is None else false_positive_rate
        return self.scores[score].threshold(rate), "false_positive_rate", rate

    def to_dict(self) -> dict:
        out = {"default": self.default, "scores": {k: v.to_dict() for k, v in self.scores.items()}}
        if self.f1:
            out["f1"] = {k: v.to_dict() for k, v in self.f1.items()}
        if self.maps:
            out["maps"] = {k: v.to_dict() for k, v in self.maps.items()}
        if self.validation_auroc:
            out["validation_auroc"] = dict(self.validation_auroc)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "AnomalyCalibration":
        # Runs calibrated before F1 thresholds and maps existed have neither key.
        return cls({k: ScoreCalibration(**v) for k, v in data["scores"].items()}, data["default"],
                   {k: F1Threshold(**v) for k, v in data.get("f1", {}).items()},
                   {k: MapCalibration(**v) for k, v in data.get("maps", {}).items()},
                   dict(data.get("validation_auroc", {})))
