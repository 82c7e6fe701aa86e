"""Image files and bytes → uint8 tensors (C, H, W), C 1 or 3: the one decoder of training and serving.

PIL decodes (PNG, JPEG, BMP, TIFF, and whatever else it reads); every mode is brought to grey or
RGB here and each conversion that loses something is reported in `Decoded.notes`, so a caller can
count and warn: alpha dropped, 16-bit scaled to 8-bit, palette expanded, first frame of many, EXIF
rotation applied. What follows decoding is `model.core.preprocess`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# EXIF orientations that move pixels (ImageOps.exif_transpose's table); 1 is upright, others are invalid.
TRANSPOSED_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """A file or upload is not an image this tool can read; the message names it and why."""


class ImageTooLargeError(ImageError):
    """An image whose header declares more than the caller's `max_pixels`: refused before its pixels
    are decoded (a PNG of one colour compresses 1,000 to 1)."""

    def __init__(self, label: str, width: int, height: int, max_pixels: int):
        self.width, self.height, self.max_pixels = width, height, max_pixels
        super().__init__(f"{label}: expected an image of at most {max_pixels} pixels, "
                         f"got {width}×{height} = {width * height}")


@dataclass(frozen=True)
class Decoded:
    """A decoded image: `pixels` uint8 (C, H, W) with C 1 (grey) or 3 (RGB), and what was done.

    mode: PIL's mode of the file (e.g. "RGBA", "P", "I;16"); format: "PNG", "JPEG", ...
    notes: each lossy or surprising conversion, e.g. "alpha channel dropped".
    """

    pixels: Tensor
    mode: str
    format: str
    notes: tuple[str, ...] = ()

    @property
    def grey(self) -> bool:
        return self.pixels.shape[0] == 1

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) as decoded."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


def _describe(data: bytes) -> str:
    if not data:
        return "an empty file"
    return f"{len(data)} bytes starting with {data[:8]!r}"


def _sixteen_bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise ImageError(f"expected 16-bit grey levels in [0, 65535], got values in [{values.min()}, {values.max()}]")
    return ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)


def _pixels(image: Image.Image) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 of an "L" or "RGB" image, writable, in memory of its own."""
    width, height = image.size
    shape = (height, width) if image.mode == "L" else (height, width, 3)
    return np.frombuffer(bytearray(image.tobytes()), dtype=np.uint8).reshape(shape)


def _to_array(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """(H, W) or (H, W, 3) uint8, writable, from any PIL mode, with notes on what was lost."""
    notes: list[str] = []
    mode = image.mode
    if mode in SIXTEEN_BIT:
        notes.append(f"{mode} grey levels scaled to 8 bits")
        return _sixteen_bit(image), notes
    if mode == "F":
        raise ImageError("expected an 8- or 16-bit image, got 32-bit floating-point pixels (mode F)")
    if mode == "P":
        has_alpha = "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
        image = image.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette expanded to RGB")
        mode = image.mode
    if mode in ("LA", "La", "PA"):
        notes.append("alpha channel dropped")
        return _pixels(image.convert("L")), notes
    if mode in ("RGBA", "RGBa"):
        notes.append("alpha channel dropped")
        return _pixels(image.convert("RGB")), notes
    if mode == "L" or mode == "RGB":  # already there (convert would only copy)
        return _pixels(image), notes
    if mode == "1":
        return _pixels(image.convert("L")), notes
    notes.append(f"{mode} converted to RGB")
    return _pixels(image.convert("RGB")), notes


def _size_ignoring_bomb_warning(data: bytes) -> tuple[int, int] | None:
    """(W, H) from the header of an image PIL warns about as a possible decompression bomb, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return None


def _open(data: bytes, label: str, max_pixels: int | None) -> Image.Image:
    """The image of `data`, its header read and its pixels not yet decoded, within `max_pixels`."""
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Over PIL's own guard: the caller's (smaller) limit is the one to name, when the header says.
        size = _size_ignoring_bomb_warning(data) if max_pixels is not None else None
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageTooLargeError(label, *size, max_pixels) from None
        raise
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(label, width, height, max_pixels)
    return image


def decode_image(source: bytes | str | Path, name: str | None = None, max_pixels: int | None = None) -> Decoded:
    """Decode an image file (a path) or its bytes into uint8 (C, H, W), or raise `ImageError`.

    The file is opened once: its header is read, its size checked, then its pixels decoded.

    Args:
        name: how errors refer to the image (default: the path, or "image").
        max_pixels: the most width × height accepted; a larger image raises `ImageTooLargeError`
            from its header, before its pixels take any memory (default: only PIL's
            decompression-bomb guard, `Image.MAX_IMAGE_PIXELS`).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    except OSError as error:
        raise ImageError(f"{label}: cannot be read ({error.strerror or error})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(data, label, max_pixels)
            image_format = image.format or "unknown"
            frames = getattr(image, "n_frames", 1)
            image.load()  # decodes now: a truncated file fails here, not later
            notes: list[str] = []
            if frames > 1:
                notes.append(f"first of {frames} frames used")
            # exif_transpose copies an image it does not rotate; only call it for one it does. Its
            # orientation comes from getexif, which also reads a PNG's eXIf chunk and XMP.
            if image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED_ORIENTATIONS:
                image = ImageOps.exif_transpose(image)
                notes.append("EXIF orientation applied")
            mode = image.mode
            array, more = _to_array(image)
    except ImageTooLargeError:
        raise  # its message names the image already
    except ImageError as error:
        raise ImageError(f"{label}: {error}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: expected an image (PNG, JPEG, BMP or TIFF), got {_describe(data)}, which is "
                         f"no known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label}: expected an image of at most {Image.MAX_IMAGE_PIXELS} pixels ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{label}: expected a complete image, got {_describe(data)} that cannot be decoded "
                         f"({error})") from None
    pixels = torch.from_numpy(array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1)))
    return Decoded(pixels, mode, image_format, tuple(notes + more))


def encode_png(pixels: Tensor) -> bytes:
    """PNG bytes of one image: uint8 (C, H, W), or float (C, H, W) in [0, 1] (rounded), C 1 or 3."""
    if pixels.dtype != torch.uint8:
        pixels = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with C 1 or 3, got shape {tuple(pixels.shape)}")
    array = pixels.cpu().numpy()
    image = Image.fromarray(array[0], mode="L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
