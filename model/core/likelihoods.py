"""Observation models p(x|z): what a decoder's output means as a distribution over images."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Bernoulli


def bernoulli(logits: Tensor) -> Bernoulli:
    """p(x|z) = Bernoulli(logits): each pixel's grey level is the probability of ink.

    Grey levels in [0, 1] are soft targets, outside Bernoulli's support, so validation is off
    (the course does the same); `log_prob(x)` is then −BCE(x, sigmoid(logits)).
    """
    return Bernoulli(logits=logits, validate_args=False)
