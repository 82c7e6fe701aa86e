"""How the objectives are computed: the ELBO, the β-ELBO and the importance-weighted bound L_K.

Objectives are plain functions of a model and a batch; `VariationalInference` is the course's
callable face over them. Importance samples come first in every shape: `(K, B, ...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence

from model.core import compilation
from model.core.likelihoods import summed_log_prob
from model.core.noise import Noise
from model.core.preprocess import scale

KLMode = Literal["sampled", "analytic"]
KL_MODES: tuple[str, ...] = get_args(KLMode)


def reduce_to(values: Tensor, ndim: int) -> Tensor:
    """Sum `values` over every dimension after the first `ndim` (e.g. pixels, latent units)."""
    return values.flatten(ndim).sum(-1) if values.dim() > ndim else values


@dataclass(frozen=True)
class ElboTerms:
    """Per-example terms of the evidence lower bound, each of shape (B,)."""

    log_px: Tensor  # E_q[log p(x|z)], one sample
    kl: Tensor  # KL(q(z|x) || p(z)), sampled or analytic

    @property
    def elbo(self) -> Tensor:
        return self.log_px - self.kl

    def beta_elbo(self, beta: float) -> Tensor:
        # log p(x|z) − β·KL. Not `elbo − β·kl`, which would count the KL twice.
        return self.log_px - beta * self.kl


def check_kl_mode(kl: str) -> None:
    if kl not in KL_MODES:
        raise ValueError(f"unknown KL mode {kl!r}; expected one of {list(KL_MODES)}")


def kl_term(qz, pz, z: Tensor, kl: KLMode, ndim: int) -> Tensor:
    """KL(q(z|x) || p(z)) summed over the latent units, keeping the first `ndim` dimensions.

    `kl="sampled"` is the course's one-sample estimate log q(z|x) − log p(z) at the sampled z;
    `kl="analytic"` the closed form registered with `torch.distributions.kl_divergence`.
    """
    check_kl_mode(kl)
    if kl == "sampled":
        return reduce_to(qz.log_prob(z), ndim) - reduce_to(pz.log_prob(z), ndim)
    return reduce_to(kl_divergence(qz, pz), ndim)


def bits_per_dim(log_px, n_pixels: int):
    """−log p(x) in bits per pixel value: the unit the image-modelling literature reports."""
    return -log_px / (n_pixels * math.log(2))


def elbo_terms_from_outputs(x: Tensor, outputs: dict, kl: KLMode = "sampled") -> ElboTerms:
    """The ELBO's terms from a model's `forward` outputs (`px`, `pz`, `qz`, `z`); `kl` as in `kl_term`."""
    px, pz, qz, z = outputs["px"], outputs["pz"], outputs["qz"], outputs["z"]
    batch = x.shape[0]
    log_px = summed_log_prob(px, x.reshape(px.batch_shape + px.event_shape), 1)
    kl_z = kl_term(qz, pz, z, kl, 1)
    assert log_px.shape == kl_z.shape == (batch,), (log_px.shape, kl_z.shape)
    return ElboTerms(log_px=log_px, kl=kl_z)


class VariationalInference:
    """The course's β-ELBO objective: `loss, diagnostics, outputs = vi(model, x)`.

    loss = −mean(log p(x|z) − β·KL); diagnostics hold per-example `elbo`, `log_px` and `kl`.

    Args:
        beta: weight of the KL term (1 gives the ELBO; 0 a plain autoencoder).
        kl: "sampled" (the course's log q(z|x) − log p(z)) or "analytic" (closed form, lower variance).
    """

    def __init__(self, beta: float = 1.0, kl: KLMode = "sampled"):
        self.beta = beta
        self.kl = kl

    def __call__(self, model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict]:
        x = scale(x)  # uint8 images (a data set in memory) to [0, 1]
        outputs = model(x)
        terms = elbo_terms_from_outputs(x, outputs, self.kl)
        loss = -terms.beta_elbo(self.beta).mean()
        with torch.no_grad():
            diagnostics = {"elbo": terms.elbo, "log_px": terms.log_px, "kl": terms.kl}
        return loss, diagnostics, outputs


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) Σ_k exp(log_w_k), stably."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def iwae_bound(model: nn.Module, x: Tensor, num_samples: int, chunk_size: int = 128,
               noise: Noise | None = None) -> Tensor:
    """The importance-weighted bound L_K(x) (Burda et al. 2015, eq. 8), per example.

    L_K = log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). The K samples are drawn in chunks of
    `chunk_size`, keeping a running log-sum-exp, so memory is O(chunk_size · B) whatever K is.

    Inside `model.core.compilation.compiling()` (`--compile`) each chunk runs compiled, with the
    same draws.

    Args:
        model: any model kind with `log_weights(x, num_samples, noise) -> (K, B)`.
        x: images (B, ...).
        num_samples: K ≥ 1.
    Returns:
        L_K(x), shape (B,).
    """
    if num_samples < 1:
        raise ValueError(f"the importance-weighted bound needs K >= 1 samples, got {num_samples}")
    running = None  # (B,) log Σ_k w_k so far
    done = 0
    fused = compilation.chunk_log_sum_exp() if compilation.active() and noise is None else None  # under --compile
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        chunk = torch.logsumexp(model.log_weights(x, k, noise=noise), 0) if fused is None else fused(model, x, k)
        running = chunk if running is None else torch.logaddexp(running, chunk)
        done += k
    return running - math.log(num_samples)


class ImportanceWeightedObjective:
    """Training with the importance-weighted bound: loss = −mean L_K(x) (Burda et al. 2015).

    The gradient of L_K weights each sample's gradient by its normalised importance weight, so
    K = 1 is the ordinary (sampled-KL) ELBO. Diagnostics report the ELBO terms of the first of
    the K samples, so no extra forward pass is needed. Needs a model with
    `log_weight_terms(x, K) -> (log p(x|z), log p(z), log q(z|x))`, each (K, B); `outputs` holds them.
    """

    def __init__(self, num_samples: int):
        if num_samples < 1:
            raise ValueError(f"the IWAE objective needs K >= 1 samples, got {num_samples}")
        self.num_samples = num_samples

    def __call__(self, model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict]:
        log_px, log_pz, log_qz = model.log_weight_terms(x, self.num_samples)  # each (K, B)
        log_w = log_px + log_pz - log_qz
        bound = log_mean_exp(log_w, 0)
        loss = -bound.mean()
        with torch.no_grad():
            kl = log_qz[0] - log_pz[0]  # the course's one-sample KL, at the first sample
            diagnostics = {"elbo": log_px[0] - kl, "log_px": log_px[0], "kl": kl, "iwae": bound}
        outputs = {"log_px": log_px, "log_pz": log_pz, "log_qz": log_qz}
        return loss, diagnostics, outputs
