"""Anomaly-score calibration: the score's distribution on held-out normal data, as quantiles.

With the quantiles stored, a threshold for any false-positive rate and a percentile for any score
can be read off without the data.
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


@dataclass(frozen=True)
class AnomalyCalibration:
    """Calibrations of every available score, and which one to use by default."""

    scores: dict[str, ScoreCalibration]
    default: str

    def __post_init__(self):
        if self.default not in self.scores:
            raise ValueError(f"default score {self.default!r} is not among the calibrated {sorted(self.scores)}")

    def to_dict(self) -> dict:
        return {"default": self.default, "scores": {k: v.to_dict() for k, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "AnomalyCalibration":
        return cls({k: ScoreCalibration(**v) for k, v in data["scores"].items()}, data["default"])
