"""Anomaly scores built on the likelihood: −L_K, −ELBO, and three corrections of −L_K.

A VAE's likelihood alone fails as an out-of-distribution detector: trained on Fashion-MNIST it
gives MNIST digits a *higher* likelihood than clothes (Nalisnick et al. 2019), because simple
images (few strokes, much black) are likely under any pixel model. The scores here remove that
"simplicity" term in three published ways:

- `input_complexity`: −log p(x) minus the length of a lossless compression of x (Serrà et al. 2020);
- `excess`: the same correction in the likelihood's own units: −log p(x) minus the least −log p(x)
  any Bernoulli decoder can reach on x, the entropy of its grey levels;
- `likelihood_ratio`: −log p(x) + log p_bg(x), with p_bg a background model trained on perturbed
  inputs (Ren et al. 2019);

Each correction is also a function of its own (`complexity_correction`, ...), which the registry
declares, so `model.anomaly.scoring.score_split` computes −L_K once for all of them. Likelihood
regret (Xiao et al. 2020) is in `model.anomaly.regret`; the background model's training in
`model.anomaly.companions`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from model.anomaly.base import BACKGROUND, require
from model.core.noise import Noise
from model.core.objectives import iwae_bound


def negative_iwae(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                  companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−L_K(x): the importance-weighted estimate of −log p(x) (Burda et al. 2015)."""
    return -iwae_bound(model, x, k, noise=noise)


def negative_elbo(model: nn.Module, x: Tensor, *, k: int = 1, noise: Noise | None = None,
                  companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−ELBO(x) from one posterior sample, with the kind's default KL estimate (sampled for the Gaussian VAE)."""
    return -model.elbo_terms(x, noise=noise).elbo


# --- input complexity (Serrà et al. 2020) ------------------------------------------------------

def complexity_bits(x: Tensor) -> Tensor:
    """L(x): length in bits of a lossless compression of each image, at 8 bits per pixel.

    The compressor is DEFLATE at level 9 (zlib), the entropy coder inside PNG, which Serrà et al.
    2020 use among others. Images are quantised to 256 grey levels first, as stored on disk.

    Args:
        x: images (B, ...) with grey levels in [0, 1].
    Returns:
        bits per image (B,), float32, on x's device.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a batch of images (B, ...), got shape {tuple(x.shape)}")
    pixels = (x.detach().reshape(x.shape[0], -1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    bits = [8 * len(zlib.compress(row.tobytes(), 9)) for row in pixels]
    return torch.tensor(bits, dtype=torch.float32, device=x.device)


def input_complexity(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                     companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """S(x) = −log p(x) − L(x) (Serrà et al. 2020, eq. 2), both in nats.

    −log p(x) is −L_K(x); L(x) is `complexity_bits(x)` · ln 2. A simple image (short code) is
    likely under every model, so subtracting its code length leaves what the model adds: the
    likelihood ratio against a universal compressor.
    """
    return -iwae_bound(model, x, k, noise=noise) + complexity_correction(model, x, k=k)


def input_entropy(x: Tensor) -> Tensor:
    """Σ_i H(x_i) in nats: −log p(x) under the Bernoulli whose means are the pixels of x themselves.

    With grey levels as soft Bernoulli targets, −log p(x|z) = Σ_i [H(x_i) + KL(x_i ‖ p_i(z))], so
    this is the floor under every decoder's −log p(x|z): zero for a binary image, large for one
    full of grey. Args: x (B, ...) in [0, 1]. Returns: (B,).
    """
    p = x.reshape(x.shape[0], -1).clamp(0, 1)
    return (torch.special.entr(p) + torch.special.entr(1 - p)).sum(1)


def excess(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
           companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−log p(x) − Σ_i H(x_i): the likelihood in excess of the input's own entropy, in nats.

    Serrà et al.'s correction (S = −log p(x) − L(x), eq. 2) with L(x) measured in the likelihood's
    own units: a compressor's 8-bit code length is on another scale than a soft-target Bernoulli
    likelihood (thousands of nats against hundreds), so `input_complexity` is dominated by L(x).
    Here L(x) is the code length of x under the ideal pixel-wise Bernoulli code, an exact lower
    bound of −log p(x|z); what remains is Σ_i KL(x_i ‖ p_i) plus the latent terms: how far the
    model is from x, not how grey x is. For the Bernoulli-likelihood kinds; −log p(x) is −L_K(x).
    """
    return -iwae_bound(model, x, k, noise=noise) + excess_correction(model, x, k=k)


# --- likelihood ratio against a background model (Ren et al. 2019) -----------------------------

def likelihood_ratio(model: nn.Module, x: Tensor, *, k: int = 100, noise: Noise | None = None,
                     companions: Mapping[str, nn.Module] | None = None) -> Tensor:
    """−LLR(x) = −log p(x) + log p_bg(x) (Ren et al. 2019, eq. 5), both as L_K in nats.

    p_bg is the same kind of model trained on inputs with a fraction of their pixels replaced by
    noise (`perturb`): it learns the population statistics of pixels (how much background, how
    bright) but not the semantics, so the ratio keeps the semantic part of the likelihood.

    Args:
        companions: must hold "background" (see `fit_background`).
    """
    return -iwae_bound(model, x, k, noise=noise) + likelihood_ratio_correction(model, x, k=k, noise=noise,
                                                                              companions=companions)


# --- what each correction adds to −L_K(x) ---------------------------------------------------------

def complexity_correction(model, x: Tensor, *, k: int, noise: Noise | None = None, companions=None) -> Tensor:
    return -math.log(2) * complexity_bits(x)


def excess_correction(model, x: Tensor, *, k: int, noise: Noise | None = None, companions=None) -> Tensor:
    return -input_entropy(x)


def likelihood_ratio_correction(model, x: Tensor, *, k: int, noise: Noise | None = None, companions=None) -> Tensor:
    return iwae_bound(require(companions, BACKGROUND, "likelihood_ratio"), x, k, noise=noise)
