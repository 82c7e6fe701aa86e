"""Convolutional networks (`--arch conv`): stride-2 stages down to a small grid, and their mirror.

Encoder, for images (B, C, H, W) and S = len(conv_channels) stages:

    replicate-pad to (H', W'), multiples of 2^S  →  S × [Conv 4×4 stride 2, act, res_blocks × residual]
    →  (B, conv_channels[-1], H'/2^S, W'/2^S)  →  flatten  →  Linear  →  (B, out_features)

Decoder, for latents (..., D), the mirror: Linear, act, reshape to the encoder's last grid, then
S × [ConvTranspose 4×4 stride 2, act, res_blocks × residual] through the channels reversed
(the last stage keeps conv_channels[0]), a 3×3 conv to the P parameter channels (no activation),
and a crop of the (H', W') canvas to (H, W).

Choices:
- kernel 4, stride 2, padding 1 halves an even size exactly and its transpose doubles it exactly;
  a kernel divisible by the stride also spares the transposed convs their checkerboard artefacts
  (Odena et al. 2016, "Deconvolution and checkerboard artifacts").
- Any image size works, 28×28, 40×32 or 1×1: the encoder pads each side up to the next multiple
  of 2^S (half of it before, the rest after), repeating the edge pixels (replicate) so the padding
  adds no edge the image lacks; the decoder crops the same rows and columns off its output.
- A residual block is act(x + conv3×3(act(conv3×3(x)))), channels and size unchanged.
- `hidden` is not used, except `hidden[-1]`: the width of the conditional encoder's joint layer,
  where the image features meet the condition (the first layer of `ConditionalMLP`).

State-dict keys name the parts: `stages.0.conv.weight`, `stages.0.blocks.0.conv1.weight`, `head.weight`
(encoder); `head.weight`, `stages.0.conv.weight`, `out.weight` (decoder); `x.stages…`, `x.head…`, `c.weight`,
`head.1.weight` (conditional encoder). They do not depend on the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from model.config.train import ModelConfig
from model.nets.mlp import activation

KERNEL, STRIDE, PADDING = 4, 2, 1  # exact halving / doubling of even sizes


def _pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """Padding (before, after) that brings `size` up to the next multiple of `multiple`."""
    total = -size % multiple
    return total // 2, total - total // 2


class ResidualBlock(nn.Module):
    """act(x + conv(act(conv(x)))) with 3×3 convolutions: (N, channels, h, w) → the same shape."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


class Stage(nn.Module):
    """One resolution step: a stride-2 (transposed) convolution, act, then `res_blocks` residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, res_blocks: int, act: str, up: bool = False):
        super().__init__()
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(in_channels, out_channels, KERNEL, STRIDE, PADDING)
        self.act = activation(act)
        self.blocks = nn.Sequential(*(ResidualBlock(out_channels, act) for _ in range(res_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.act(self.conv(x)))


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) → (B, out_features): padding, conv stages, flatten, one linear layer.

    Args:
        input_shape: (C, H, W) of one image, any positive sizes.
        channels: the output channels of each stride-2 stage.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], res_blocks: int, out_features: int,
                 act: str):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"--arch conv expects images of shape (C, H, W), got input shape {tuple(input_shape)}")
        self.input_shape = tuple(int(d) for d in input_shape)
        c, h, w = self.input_shape
        multiple = 2 ** len(channels)
        top, bottom = _pad_amounts(h, multiple)
        left, right = _pad_amounts(w, multiple)
        self.padding = (left, right, top, bottom)  # F.pad's order: last dimension first
        self.grid = (channels[-1], (h + top + bottom) // multiple, (w + left + right) // multiple)
        widths = [c, *channels]
        self.stages = nn.Sequential(*(Stage(n_in, n_out, res_blocks, act) for n_in, n_out in zip(widths, widths[1:])))
        self.head = nn.Linear(math.prod(self.grid), out_features)

    def features(self, x: Tensor) -> Tensor:
        """The last stage's feature maps (B, *grid), grid = (channels[-1], H'/2^S, W'/2^S)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1] (8-bit images divided by 255), got dtype {x.dtype}")
        if any(self.padding):
            x = F.pad(x, self.padding, mode="replicate")
        return self.stages(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1)).float()  # fp32 out under bf16 autocast (model.nets.mlp)


class ConvDecoder(nn.Module):
    """Latents (..., in_features) → (..., *output_shape): linear to a grid, transposed-conv stages, a crop.

    Args:
        in_features: D, the latent width the decoder reads.
        output_shape: (P, H, W), P parameter channels of p(x|z) (e.g. C logits, or 2C for a logistic).
        channels: the encoder's stage channels; the decoder runs through them in reverse.
    """

    def __init__(self, in_features: int, output_shape: Sequence[int], channels: Sequence[int], res_blocks: int,
                 act: str):
        super().__init__()
        if len(output_shape) != 3:
            raise ValueError(f"--arch conv decodes to shape (P, H, W), got output shape {tuple(output_shape)}")
        self.output_shape = tuple(int(d) for d in output_shape)
        p, h, w = self.output_shape
        multiple = 2 ** len(channels)
        self.crop = (_pad_amounts(h, multiple)[0], _pad_amounts(w, multiple)[0])  # (top, left), as the encoder pads
        self.grid = (channels[-1], math.ceil(h / multiple), math.ceil(w / multiple))
        self.head = nn.Linear(in_features, math.prod(self.grid))
        self.act = activation(act)
        widths = [*reversed(channels), channels[0]]
        self.stages = nn.Sequential(*(Stage(n_in, n_out, res_blocks, act, up=True)
                                      for n_in, n_out in zip(widths, widths[1:])))
        self.out = nn.Conv2d(channels[0], p, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.act(self.head(z.reshape(-1, z.shape[-1]))).unflatten(-1, self.grid)  # (N, C_S, h', w')
        out = self.out(self.stages(h))  # (N, P, H', W'), H' = 2^S h' >= H
        top, left = self.crop
        _, height, width = self.output_shape
        out = out[..., top:top + height, left:left + width]
        return out.reshape(*lead, *self.output_shape).float()  # fp32 out under bf16 autocast


class ConditionalConvEncoder(nn.Module):
    """h(x, c) for images x (B, C, H, W) and conditions c (..., B, condition_features): (..., B, out_features).

    As `model.nets.mlp.ConditionalMLP`: the joint layer is W_x f(x) + W_c c, so the conv features
    f(x) are computed once per image and only the cheap W_c c per condition (every class of M2).
    """

    def __init__(self, input_shape: Sequence[int], condition_features: int, channels: Sequence[int],
                 res_blocks: int, width: int, out_features: int, act: str):
        super().__init__()
        self.x = ConvEncoder(input_shape, channels, res_blocks, width, act)
        self.c = nn.Linear(condition_features, width, bias=False)
        self.head = nn.Sequential(activation(act), nn.Linear(width, out_features))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(self.x(x) + self.c(c)).float()  # (B, width) + (..., B, width); fp32 out


def encoder(config: ModelConfig, input_shape: Sequence[int], out_features: int) -> nn.Module:
    return ConvEncoder(input_shape, config.conv_channels, config.res_blocks, out_features, config.activation)


def decoder(config: ModelConfig, in_features: int, output_shape: Sequence[int]) -> nn.Module:
    return ConvDecoder(in_features, output_shape, config.conv_channels, config.res_blocks, config.activation)


def conditional_encoder(config: ModelConfig, input_shape: Sequence[int], condition_features: int,
                        out_features: int) -> nn.Module:
    return ConditionalConvEncoder(input_shape, condition_features, config.conv_channels, config.res_blocks,
                                  config.hidden[-1], out_features, config.activation)
