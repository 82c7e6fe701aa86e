"""Reconstruction-based anomaly scores: the error of the decoder mean at the posterior mean,
plain or relative to the image's own structure (after Serrà et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from model.core.images import check_images
from model.core.noise import Noise


def reconstruction_error(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                         companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """Sum of squared pixel errors between x and the decoder mean at the posterior mean."""
    return (model.reconstruct(x) - x.reshape(x.shape[0], *model.input_shape)).pow(2).flatten(1).sum(1)


EDGE_FLOOR = 1.0  # added to the edge energy: a blank image's score stays finite (its error is what remains)


def edge_energy(x: Tensor) -> Tensor:
    """Σ (√x_i − √x_j)² over horizontally and vertically adjacent pixels i, j: how much edge x has.

    The sum of squared differences of neighbouring pixels (the image's Dirichlet energy) in
    square-root grey levels: the scale that makes a Poisson pixel's noise constant, and in which
    the squared error is the first term of the Hellinger distance. A blank image has none; a thin stroke, twice its length; a textured
    garment, much more.

    Args:
        x: images (B, ..., H, W) with grey levels in [0, 1].
    Returns:
        (B,) on x's device.
    """
    if x.dim() < 3:
        raise ValueError(f"expected images (B, ..., H, W), got shape {tuple(x.shape)}")
    r = x.clamp(0, 1).sqrt()
    down = (r[..., 1:, :] - r[..., :-1, :]).pow(2).flatten(1).sum(1)
    across = (r[..., :, 1:] - r[..., :, :-1]).pow(2).flatten(1).sum(1)
    return down + across


def relative_reconstruction(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                            companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """Σ_i (√x̂_i − √x_i)² / (edge_energy(x) + 1): the reconstruction error per unit of the image's structure.

    x̂ is the decoder mean at the posterior mean (as for `reconstruction`). Even a good model misses
    an image it knows mostly along its edges (a stroke one pixel off), so the plain error grows with
    how much edge an image has, and a simple image (a "1", a sneaker) is reconstructed well by
    models of other classes. Dividing by the edge energy removes that, as Serrà et al. (2020) remove
    the input's complexity from the likelihood; the square root makes dim and bright pixels count
    alike. A dimensionless ratio, ≥ 0, 0 for a perfect reconstruction. Built on the benchmarks in
    docs/anomaly.md (this project's score, not a published one).

    `k`, `noise` and `companions` are accepted for a uniform signature and not used.
    """
    shape = tuple(getattr(model, "input_shape", ()))
    if len(shape) < 2:
        raise ValueError(f"relative reconstruction needs a model of images (C, H, W), got input shape {shape}")
    x = check_images(x, shape)
    error = (model.reconstruct(x).clamp(0, 1).sqrt() - x.sqrt()).pow(2).flatten(1).sum(1)
    return error / (edge_energy(x) + EDGE_FLOOR)
