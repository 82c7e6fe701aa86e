"""The metrics of a defect benchmark: image-level detection and pixel-level localisation.

Image level (one score per image, higher = anomalous, against whether the image is defective):
the AUROC, the AUPR (average precision, sklearn's step-wise area) and F1-max, the best F1 over all
thresholds; `f1_at` is the F1 at one given threshold (a run's stored one).

Pixel level (a map per image against its defect mask): the pixel AUROC over every pixel of the
images, and AUPRO (Bergmann et al. 2020, "Uninformed Students", Sec. 4.2): the per-region overlap
(the share of each connected defect region, 8-connected as OpenCV labels them, that a threshold
flags, averaged over all regions of all images) integrated over the false-positive rate of the
normal pixels from 0 to `FPR_LIMIT`, divided by `FPR_LIMIT` so that a perfect map scores 1. This is
what anomalib's `AUPRO` reports (src/anomalib/metrics/aupro.py); here the curve is exact, one point
per distinct map value, where anomalib resamples each region's ROC curve.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

FPR_LIMIT = 0.3  # AUPRO integrates the PRO curve up to this false-positive rate (MVTec AD, anomalib)
CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connected regions, as OpenCV's connectedComponents


def _image_inputs(scores, anomalous) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    anomalous = np.asarray(anomalous, dtype=bool)
    if scores.ndim != 1 or scores.shape != anomalous.shape:
        raise ValueError(f"expected 1-d scores and labels of one shape, got {scores.shape} and {anomalous.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"expected finite scores, got {int((~np.isfinite(scores)).sum())} non-finite")
    if anomalous.all() or not anomalous.any():
        raise ValueError(f"expected normal and anomalous images, got {int((~anomalous).sum())} normal and "
                         f"{int(anomalous.sum())} anomalous")
    return scores, anomalous


def f1_max(scores, anomalous) -> float:
    """The largest F1 over every threshold of `scores` (flagging the images scoring at least it)."""
    scores, anomalous = _image_inputs(scores, anomalous)
    precision, recall, _ = precision_recall_curve(anomalous, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).tiny)
    return float(f1.max())


def f1_at(scores, anomalous, threshold: float) -> float:
    """F1 of flagging the images scoring above `threshold`."""
    scores, anomalous = _image_inputs(scores, anomalous)
    flagged = scores > threshold
    true_positives = int((flagged & anomalous).sum())
    return 2 * true_positives / (int(flagged.sum()) + int(anomalous.sum()))


def image_metrics(scores, anomalous) -> dict[str, float]:
    """{"auroc", "f1_max", "aupr"} of image scores against the boolean labels."""
    scores, anomalous = _image_inputs(scores, anomalous)
    return {"auroc": float(roc_auc_score(anomalous, scores)), "f1_max": f1_max(scores, anomalous),
            "aupr": float(average_precision_score(anomalous, scores))}


def _pixel_inputs(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"expected maps and masks of one shape (N, H, W), got {maps.shape} and {masks.shape}")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"expected finite maps, got {int((~np.isfinite(maps)).sum())} non-finite pixels")
    if masks.all() or not masks.any():
        raise ValueError(f"expected normal and defective pixels, got {int((~masks).sum())} normal and "
                         f"{int(masks.sum())} defective")
    return maps, masks


def pixel_auroc(maps, masks) -> float:
    """AUROC of every pixel's map value (N, H, W) against the masks (N, H, W), 1 = defective."""
    maps, masks = _pixel_inputs(maps, masks)
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def regions(masks) -> np.ndarray:
    """The connected defect regions of masks (N, H, W): int (N, H, W), 0 = normal, 1..R across all images."""
    masks = np.asarray(masks).astype(bool)
    labels = np.zeros(masks.shape, dtype=np.int64)
    count = 0
    for i, mask in enumerate(masks):
        labels[i], found = ndimage.label(mask, structure=CONNECTIVITY)
        labels[i][mask] += count
        count += found
    return labels


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: (FPR, PRO), one point per distinct map value, from (0, 0) to (1, 1).

    At a threshold t, FPR is the share of normal pixels with a value >= t and PRO the mean over
    the defect regions of the share of each region's pixels with a value >= t.
    """
    maps, masks = _pixel_inputs(maps, masks)
    region = regions(masks).ravel()
    values = maps.ravel()
    normal = region == 0
    sizes = np.bincount(region)
    sizes[0] = 1  # the normal pixels weigh nothing on PRO; this only avoids 0/0
    weight = np.where(normal, 0.0, 1.0 / ((len(sizes) - 1) * sizes[region]))
    order = np.argsort(-values, kind="stable")
    ranked = values[order]
    last = np.r_[ranked[1:] < ranked[:-1], True]  # the last pixel of each run of equal values
    fpr = np.cumsum(normal[order])[last] / normal.sum()
    pro = np.minimum(np.cumsum(weight[order])[last], 1.0)
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(maps, masks, fpr_limit: float = FPR_LIMIT) -> float:
    """Area under the PRO curve from FPR 0 to `fpr_limit`, divided by `fpr_limit` (1: perfect)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit: expected a false-positive rate in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:inside] <= fpr_limit
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < fpr_limit:  # close the curve at the limit, on the segment that crosses it
        share = (fpr_limit - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
        x = np.r_[x, fpr_limit]
        y = np.r_[y, pro[inside - 1] + share * (pro[inside] - pro[inside - 1])]
    return float(np.trapezoid(y, x) / fpr_limit)


def pixel_metrics(maps, masks) -> dict[str, float]:
    """{"pixel_auroc", "aupro"} of maps (N, H, W) against masks (N, H, W)."""
    return {"pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks)}
