"""What a network family provides: encoders and decoders that know image shapes, not latents.

A latent kind asks its family for
- `encoder(config, input_shape, out_features)`: images (B, *input_shape) → (B, out_features);
- `decoder(config, in_features, output_shape)`: latents (..., in_features) → (..., *output_shape),
  the parameters of p(x|z) (Bernoulli logits);
- `conditional_encoder(config, input_shape, condition_features, out_features)`: images (B, ...)
  and conditions (..., B, condition_features) → (..., B, out_features), for q(z|x, y).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from model.config.train import ModelConfig


@dataclass(frozen=True)
class Network:
    """One network family (a registry entry of `model.nets.registry.NETWORKS`)."""

    encoder: Callable[[ModelConfig, Sequence[int], int], nn.Module]
    decoder: Callable[[ModelConfig, int, Sequence[int]], nn.Module]
    conditional_encoder: Callable[[ModelConfig, Sequence[int], int, int], nn.Module]
    description: str = ""
