"""The one preprocessing of every image a model sees: channels, size, then scaling to [0, 1].

Training, evaluation, `vae predict` and the service all call `prepare` (uint8 in, uint8 out, so a
data set stays uint8 in memory) and `scale` (per batch); `preprocess` is the two together. It is
pure torch: decoding a file into a uint8 tensor is `model.io.images.decode_image`.

Resizing stretches to (H, W), as anomalib's and torchvision's `Resize((H, W))` do: the aspect
ratio is not kept. Channel conversion: grey → colour repeats the grey level; colour → grey is
ITU-R 601-2 luma in the integer arithmetic of PIL's `convert("L")`, so a grey PNG and its colour
copy give the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# --resize: torch's interpolation modes by their user-facing names ("nearest" is the
# pixel-centre-correct "nearest-exact"; "area" averages, the right choice for large reductions).
RESIZE_MODES: dict[str, str] = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact",
                                "area": "area"}
ANTIALIASED = ("bilinear", "bicubic")  # the modes torch can antialias when shrinking


@dataclass(frozen=True)
class Preprocessing:
    """What is done to an image before a model sees it (recorded in every run's config).

    shape: (C, H, W) the model takes, C in {1, 3}.
    resize: how an image of another size is brought to (H, W) (one of `RESIZE_MODES`).
    antialias: low-pass filter before shrinking (bilinear and bicubic only).
    """

    shape: tuple[int, int, int]
    resize: str = "bilinear"
    antialias: bool = True

    def __post_init__(self):
        if len(self.shape) != 3 or self.shape[0] not in (1, 3) or min(self.shape) < 1:
            raise ValueError(f"preprocessing shape: expected (C, H, W) with C 1 or 3, got {list(self.shape)}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {list(RESIZE_MODES)}, got {self.resize!r}")

    def describe(self) -> dict:
        channels, height, width = self.shape
        return {"channels": channels, "height": height, "width": width, "resize": self.resize,
                "antialias": self.antialias and self.resize in ANTIALIASED, "aspect": "stretched",
                "scaling": "uint8 / 255 -> [0, 1]", "colour_to_grey": "ITU-R 601-2 luma (PIL 'L')"}

    def channel_note(self, channels: int) -> str | None:
        """What `prepare` does to an image of `channels` channels, or None when it keeps them."""
        if channels == self.shape[0]:
            return None
        if self.shape[0] == 1:
            return "colour converted to grey (ITU-R 601-2 luma)"
        return "grey converted to RGB (the grey level in each channel)"

    def resize_note(self, size: Sequence[int]) -> str | None:
        """What `prepare` does to an image of (H, W) `size`, or None when it keeps the size."""
        height, width = self.shape[1:]
        if tuple(size) == (height, width):
            return None
        how = self.resize + (", antialiased" if self.antialias and self.resize in ANTIALIASED else "")
        return f"resized from {size[1]}×{size[0]} to {width}×{height} ({how})"


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 (..., C_in, H, W), C_in in {1, 3}, as `channels` (1 or 3) channels."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if have == 3 and channels == 1:
        r, g, b = (images[..., i, :, :].to(torch.int32) for i in range(3))
        # PIL's L = R·299/1000 + G·587/1000 + B·114/1000, in its 16-bit fixed point with rounding.
        grey = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        return grey.to(torch.uint8).unsqueeze(-3)
    raise ValueError(f"expected images of 1 or 3 channels (grey or RGB), got {have}")


def prepare(images: Tensor, preprocessing: Preprocessing) -> Tensor:
    """uint8 images (C, H, W) or (N, C, H, W) → uint8 of the model's (C, H, W): channels, then size."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.dim() not in (3, 4):
        raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(images.shape)}")
    channels, height, width = preprocessing.shape
    out = to_channels(images, channels)
    if tuple(out.shape[-2:]) != (height, width):
        batch = out if out.dim() == 4 else out.unsqueeze(0)
        mode = RESIZE_MODES[preprocessing.resize]
        options = {"antialias": preprocessing.antialias} if preprocessing.resize in ANTIALIASED else {}
        if mode in ("bilinear", "bicubic"):
            options["align_corners"] = False
        resized = F.interpolate(batch.float(), size=(height, width), mode=mode, **options)
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        out = resized if out.dim() == 4 else resized[0]
    return out.contiguous()


def scale(images: Tensor) -> Tensor:
    """uint8 → float32 in [0, 1] (x / 255); float images are returned as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def preprocess(images: Tensor, preprocessing: Preprocessing) -> Tensor:
    """`scale(prepare(images))`: what a model is given for uint8 images of any size and 1 or 3 channels."""
    return scale(prepare(images, preprocessing))
