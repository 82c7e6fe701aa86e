"""Multilayer perceptrons: the course's network family (pixels-256-128-2·latent and its mirror).

Inputs are flattened and outputs unflattened here, so the latent kinds never reshape images.
State-dict keys are those of a plain `nn.Sequential` of the layers (`encoder.0.weight`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from model.config.train import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    """The activation module called `name` (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def mlp(in_features: int, hidden: Sequence[int], out_features: int, act: str = "relu") -> nn.Sequential:
    """Linear layers in_features → hidden[0] → … → out_features, `act` between them, none at the end."""
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class ShapedMLP(nn.Sequential):
    """An MLP from inputs of shape (..., *in_shape) to outputs of shape (..., *out_shape)."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int], out_shape: Sequence[int], act: str):
        super().__init__(*mlp(math.prod(in_shape), hidden, math.prod(out_shape), act))
        self.in_ndim = len(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        # float(): under bf16 autocast (--precision bf16-mixed) the outputs come back as fp32, so every
        # distribution built on them computes in fp32 (model.core.precision); a no-op in fp32.
        return super().forward(x.flatten(-self.in_ndim)).unflatten(-1, self.out_shape).float()


class ConditionalMLP(nn.Module):
    """h(x, c) for images x (B, *in_shape) and conditions c (..., B, C), e.g. one-hot classes: (..., B, out).

    The first layer of an MLP on [x, c] is W_x x + W_c c; computing W_x x once per image and adding
    W_c c per condition makes evaluating every class of M2 cheap (Kingma et al. 2014's q(z|x, y)).
    """

    def __init__(self, in_shape: Sequence[int], condition_features: int, hidden: Sequence[int],
                 out_features: int, act: str):
        super().__init__()
        self.in_ndim = len(in_shape)
        self.x = nn.Linear(math.prod(in_shape), hidden[0])
        self.c = nn.Linear(condition_features, hidden[0], bias=False)
        self.head = nn.Sequential(activation(act), mlp(hidden[0], hidden[1:], out_features, act))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(self.x(x.flatten(-self.in_ndim)) + self.c(c)).float()  # fp32 out, as ShapedMLP


def encoder(config: ModelConfig, input_shape: Sequence[int], out_features: int) -> nn.Module:
    return ShapedMLP(input_shape, config.hidden, (out_features,), config.activation)


def decoder(config: ModelConfig, in_features: int, output_shape: Sequence[int]) -> nn.Module:
    return ShapedMLP((in_features,), tuple(reversed(config.hidden)), output_shape, config.activation)


def conditional_encoder(config: ModelConfig, input_shape: Sequence[int], condition_features: int,
                        out_features: int) -> nn.Module:
    return ConditionalMLP(input_shape, condition_features, config.hidden, out_features, config.activation)
