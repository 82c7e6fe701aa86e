"""`combined`: the largest of several scores, each standardised on held-out normal images.

Each component is made comparable by its median and interquartile range on the calibration images
(z = (s − median) / IQR, robust to the long tails anomaly scores have), and the combined score is
the largest z: an image is as anomalous as its most anomalous view. The components complement
each other. The relative reconstruction error sees the semantic outliers (another class, another
data set, a blank or shifted image) but forgives busy images, noise above all, whose edges excuse
any error. `excess` (−L_K less the input's own entropy) sees noise, JPEG artefacts and
salt-and-pepper, which no decoder of the training data gives likelihood to. `complexity` (−L_K
less a compressor's code length) sees the images that are simpler than the data yet unlikely:
pixelated and blurred ones. docs/anomaly.md measures what each part buys.

The medians and IQRs are the score's calibration parameters (`centre_<name>`, `scale_<name>` in
calibration.json), so serving computes it exactly as it was calibrated.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from model.core.noise import Noise

# Chosen on the suite's visible families (docs/anomaly.md, "The default score"): the best worst case
# over MNIST and Fashion-MNIST runs among every combination of up to three scores.
COMPONENTS = ("relative_reconstruction", "complexity", "excess")
MIN_SCALE = 1e-6  # a component that is constant on normal images is read in its own units


def component_names(params: Mapping[str, float]) -> list[str]:
    return sorted(key.removeprefix("centre_") for key in params if key.startswith("centre_"))


def standardise(values: Mapping[str, Tensor], params: Mapping[str, float]) -> Tensor:
    """max over components of (value − centre) / scale; values (B,) per component name."""
    names = component_names(params)
    if not names:
        raise ValueError("the combined score needs its calibration (centre_<score>, scale_<score> parameters); "
                         f"got {sorted(params)}")
    z = [(values[name] - params[f"centre_{name}"]) / params[f"scale_{name}"] for name in names]
    return torch.stack(z).amax(0)


def combined(scores: Mapping, model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
             companions: Mapping[str, nn.Module] | None = None, **params: float) -> Tensor:
    """The combined score of images x (B, ...) from its components' functions in `scores`."""
    values = {name: scores[name](model, x, k=k, noise=noise, companions=companions)
              for name in component_names(params)}
    return standardise(values, params)


def standardisation(quantiles: Mapping[str, object]) -> dict[str, float]:
    """centre_<name> and scale_<name> from each component's `ScoreCalibration`."""
    params = {}
    for name, calibration in quantiles.items():
        q25, q50, q75 = (calibration.value_at(level) for level in (0.25, 0.5, 0.75))
        params[f"centre_{name}"] = q50
        params[f"scale_{name}"] = max(q75 - q25, MIN_SCALE)
    return params
