"""Anomaly maps: where in an image a model finds it anomalous, one value per pixel.

A map has the model's input resolution (H, W), higher meaning more anomalous, and sums over the
colour channels. Three definitions (the registry `MAPS`, `--map` / the service's `map`):

- `nll`: each pixel's share of −log p(x|z), averaged over `samples` posterior samples
  z_k ~ q(z|x): m_ij = −(1/K) Σ_k Σ_c log p(x_cij | z_k). Summed over the pixels it is the
  reconstruction term of −ELBO, so a map is the ELBO's own account of which pixels it could not
  explain. For the Bernoulli likelihood it is each pixel's binary cross-entropy; for the discretized
  logistic, each subpixel's code length in nats. The default for the logistic likelihood.
- `excess` (Bernoulli likelihood only; its default): the same less each pixel's own entropy H(x_cij),
  that is Σ_c KL(x_cij ‖ p_cij(z)), averaged over the samples. With grey levels as soft targets,
  −log p(x_i|z) = H(x_i) + KL(x_i ‖ p_i), and H(x_i) is the input's, not the model's: large for any
  mid-grey pixel however well it is explained (a garment's texture), zero for black and white. It is
  the `excess` score's correction, pixel by pixel (docs/anomaly.md).
- `reconstruction`: the squared error Σ_c (x̂_cij − x_cij)² of the decoder mean x̂ at the posterior
  mean; deterministic, and defined for every likelihood.

Each is then smoothed by a Gaussian of standard deviation `sigma` pixels (0: none). The default,
`default_sigma`, is 1/32 of the image's longer side (0.875 pixel at 28 × 28, 8 at 256 × 256: twice
anomalib's 4 at 256), chosen on the labelled validation images of the defect benchmark
(docs/anomaly.md). Smoothing pools the evidence of neighbouring pixels, as a defect covers several.

Calibration (`model.anomaly.calibration.MapCalibration`) stores the quantiles of all pixel values of
the maps of held-out normal images, so a served map reads as a percentile: 99.9 means that 0.1 % of
the pixels of normal images score higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.core.images import check_images
from model.core.noise import Noise

MAP_SAMPLES = 4  # posterior samples of the `nll` map: its Monte Carlo error is that of a 4-sample ELBO
SIGMA_FRACTION = 1 / 32  # default smoothing: this fraction of the longer side (anomalib: σ 4 at 256 px)


def default_sigma(shape) -> float:
    """The default smoothing, in pixels, for images of (C, H, W) or (H, W) `shape`."""
    return max(shape[-2:]) * SIGMA_FRACTION


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Maps (B, H, W) smoothed by a Gaussian of `sigma` pixels (separable, reflecting the borders)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma: expected a finite number of pixels >= 0, got {sigma}")
    if sigma == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1)  # (B, 1, H, W)
    for dim in (-2, -1):  # rows, then columns; a map narrower than the kernel is replicated, not reflected
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2] = pad[1 if dim == -1 else 3] = radius
        mode = "reflect" if out.shape[dim] > radius else "replicate"
        shape = (1, 1, -1, 1) if dim == -2 else (1, 1, 1, -1)
        out = F.conv2d(F.pad(out, pad, mode=mode), kernel.reshape(shape))
    return out.squeeze(1)


def nll_map(model: nn.Module, x: Tensor, *, samples: int = MAP_SAMPLES, noise: Noise | None = None) -> Tensor:
    """−(1/K) Σ_k Σ_c log p(x_cij | z_k), z_k ~ q(z|x): (B, H, W)."""
    if samples < 1:
        raise ValueError(f"samples: expected at least 1 posterior sample, got {samples}")
    return -model.pixel_log_px(x, samples, noise=noise).mean(0).sum(1)


def excess_map(model: nn.Module, x: Tensor, *, samples: int = MAP_SAMPLES, noise: Noise | None = None) -> Tensor:
    """−(1/K) Σ_k Σ_c [log p(x_cij | z_k) + H(x_cij)] = Σ_c KL(x_cij ‖ p_cij): (B, H, W), ≥ 0 (Bernoulli)."""
    if samples < 1:
        raise ValueError(f"samples: expected at least 1 posterior sample, got {samples}")
    p = check_images(x, model.input_shape).clamp(0, 1)
    entropy = torch.special.entr(p) + torch.special.entr(1 - p)
    return -(model.pixel_log_px(x, samples, noise=noise).mean(0) + entropy).sum(1)


def reconstruction_map(model: nn.Module, x: Tensor, *, samples: int = MAP_SAMPLES,
                       noise: Noise | None = None) -> Tensor:
    """Σ_c (x̂_cij − x_cij)², x̂ the decoder mean at the posterior mean: (B, H, W). `samples`, `noise` unused."""
    x = check_images(x, model.input_shape)
    return (model.reconstruct(x) - x).pow(2).sum(1)


@dataclass(frozen=True)
class AnomalyMap:
    """One map definition: fn(model, x, samples=, noise=) -> (B, H, W) before smoothing.

    likelihoods: the observation models it is meaningful for (None: any).
    """

    name: str
    fn: Callable[..., Tensor]
    description: str
    uses_samples: bool = False
    likelihoods: tuple[str, ...] | None = None


MAPS: dict[str, AnomalyMap] = {m.name: m for m in (
    AnomalyMap("excess", excess_map, "each pixel's −log p(x|z) less its own entropy: KL(x ‖ p), averaged over "
               "posterior samples", uses_samples=True, likelihoods=("bernoulli",)),
    AnomalyMap("nll", nll_map, "each pixel's share of −log p(x|z), averaged over posterior samples", uses_samples=True),
    AnomalyMap("reconstruction", reconstruction_map, "squared error of the decoder mean at the posterior mean"),
)}
PREFERRED = ("excess", "nll")  # the default map: the first of these a model has


def available_maps(model: nn.Module) -> list[str]:
    """The maps defined for this model's likelihood."""
    likelihood = model.likelihood.name
    return [name for name, m in MAPS.items() if m.likelihoods is None or likelihood in m.likelihoods]


def default_map(names) -> str:
    """The default among the maps `names` (calibrated or available): the first of PREFERRED there."""
    for name in PREFERRED:
        if name in names:
            return name
    raise ValueError(f"none of the default maps {list(PREFERRED)} is among {sorted(names)}")


def map_params(name: str, shape, samples: int | None = None, sigma: float | None = None) -> dict:
    """The parameters a map of `name` is computed with for images of `shape` (C, H, W): stored with
    its calibration, so the service computes it exactly as it was calibrated."""
    if name not in MAPS:
        raise ValueError(f"unknown anomaly map {name!r}; expected one of {sorted(MAPS)}")
    params = {"sigma": float(default_sigma(shape) if sigma is None else sigma)}
    if MAPS[name].uses_samples:
        params["samples"] = int(MAP_SAMPLES if samples is None else samples)
    return params


@torch.no_grad()
def anomaly_maps(model: nn.Module, x: Tensor, *, name: str = "nll", samples: int = MAP_SAMPLES,
                 sigma: float | None = None, noise: Noise | None = None) -> Tensor:
    """The smoothed anomaly maps (B, H, W) float32 of images x (B, C, H, W) (uint8, or floats in [0, 1]).

    Args:
        name: a map of `MAPS`.
        samples: posterior samples (the `nll` map).
        sigma: the Gaussian smoothing in pixels (None: `default_sigma`; 0: none).
        noise: the posterior samples' noise (`model.core.noise`), for reproducible maps.
    """
    if name not in available_maps(model):
        raise ValueError(f"anomaly map {name!r}: expected one of this model's maps {available_maps(model)} "
                         f"(likelihood {model.likelihood.name!r})")
    raw = MAPS[name].fn(model, x, samples=samples, noise=noise).float()
    return gaussian_blur(raw, default_sigma(raw.shape) if sigma is None else sigma)


def peak(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None, companions=None) -> Tensor:
    """The largest value of each image's default map (`default_map`, default smoothing): (B,).

    An image is as anomalous as its most anomalous neighbourhood, the image score anomalib derives
    from its maps. `k` and `companions` are accepted for the scores' uniform signature and not used.
    """
    name = default_map(available_maps(model))
    return anomaly_maps(model, x, name=name, noise=noise).flatten(1).max(1).values


def maps_of_split(model: nn.Module, x: Tensor, *, batch_size: int = 100, progress: Callable[[int], object] | None = None,
                  **kwargs) -> Tensor:
    """`anomaly_maps` of many images (N, C, H, W), in batches on the model's device: (N, H, W) on the CPU."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(anomaly_maps(model, x[i:i + batch_size].to(device), **kwargs).cpu())
        if progress is not None:
            progress(out[-1].shape[0])
    return torch.cat(out) if out else torch.zeros(0, *x.shape[-2:])
