"""Sampling categorical variables with Gumbel noise: exact one-hot samples (Gumbel-max) and their
continuous relaxation (Gumbel-softmax / Concrete; Jang et al. 2016; Maddison et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions.utils import clamp_probs

from model.core.noise import GLOBAL_NOISE, Noise


def gumbel_noise(logits: Tensor, sample_shape: Sequence[int], noise: Noise) -> Tensor:
    """g = −log(−log u), u ~ U(0, 1), shaped `(*sample_shape, *logits.shape)` (logits are (B, ..., C))."""
    u = noise.uniform(tuple(sample_shape), logits.shape[0], logits.shape[1:], device=logits.device,
                      dtype=logits.dtype)
    # As torch.distributions.ExpRelaxedCategorical.rsample does, so the same uniforms give its sample.
    return -(-clamp_probs(u).log()).log()


def relaxed_one_hot(logits: Tensor, temperature: float, sample_shape: Sequence[int] = (),
                    noise: Noise | None = None, straight_through: bool = False) -> Tensor:
    """A Gumbel-softmax sample of `RelaxedOneHotCategorical(temperature, logits)`: a point of the simplex.

    With `straight_through`, the forward value is the one-hot argmax and the gradient is that of
    the relaxed sample (Jang et al. 2016, section 2.2).

    Args:
        logits: (B, N, C) unnormalised log-probabilities of N variables of C categories.
    Returns:
        (*sample_shape, B, N, C), each last-axis vector non-negative and summing to 1.
    """
    g = gumbel_noise(logits, sample_shape, noise or GLOBAL_NOISE)
    soft = torch.softmax((logits + g) / temperature, dim=-1)
    if not straight_through:
        return soft
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def one_hot_sample(logits: Tensor, sample_shape: Sequence[int] = (), noise: Noise | None = None) -> Tensor:
    """An exact sample of `OneHotCategorical(logits=logits)` by the Gumbel-max trick: (*sample_shape, B, N, C)."""
    g = gumbel_noise(logits, sample_shape, noise or GLOBAL_NOISE)
    return F.one_hot((logits + g).argmax(-1), logits.shape[-1]).to(logits.dtype)
