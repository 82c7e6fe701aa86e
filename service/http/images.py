"""Images and latents from the wire: nested lists, base64 PNGs, uploaded PNG files, and back.

Every check names the field, what was expected and what arrived: "images: expected values in
[0, 1], got values from -0.5 to 1.2 (image 3)". Decoding happens in numpy, not pydantic, because a
request of 256 images holds 200,000 numbers.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.errors import BadInputError, plural


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def _ragged_detail(values: list, depth: int = 0, path: str = "") -> str:
    """Where nested lists stop being rectangular (only called once numpy has said they are not)."""
    if not isinstance(values, list) or not values:
        return ""
    lengths = [len(v) if isinstance(v, list) else None for v in values]
    first = lengths[0]
    for i, length in enumerate(lengths):
        if length != first:
            what = "a number" if length is None else f"a list of {length}"
            expected = "a number" if first is None else f"a list of {first}"
            return f"item {path}[{i}] is {what} where {path}[0] is {expected}"
    for i, v in enumerate(values):
        detail = _ragged_detail(v, depth + 1, f"{path}[{i}]")
        if detail:
            return detail
    return ""


def as_number_array(values, field: str) -> np.ndarray:
    """Nested lists of numbers as a float32 array, or a BadInputError naming what is wrong."""
    if not isinstance(values, list):
        raise BadInputError(f"{field}: expected a list, got {type(values).__name__}")
    if not values:
        raise BadInputError(f"{field}: expected at least one item, got an empty list")
    try:
        array = np.asarray(values)
    except ValueError:
        detail = _ragged_detail(values) or "inhomogeneous nesting"
        raise BadInputError(f"{field}: expected rectangular nested lists of numbers, got ragged lists ({detail})") from None
    if array.dtype.kind not in "iuf":
        shown = {"b": "booleans", "U": "strings", "O": "nulls, objects or mixed types"}.get(array.dtype.kind, str(array.dtype))
        raise BadInputError(f"{field}: expected numbers, got {shown}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        index = np.argwhere(~np.isfinite(array))[0]
        bad = array[tuple(index)]
        raise BadInputError(f"{field}: expected finite numbers, got {bad} at index {list(map(int, index))}")
    return array


def check_images(array: np.ndarray, input_shape: Sequence[int], field: str = "images") -> np.ndarray:
    """(B, *input_shape) float32 in [0, 1] from (B, H·W), (B, H, W) or (B, C, H, W)."""
    n_pixels = math.prod(input_shape)
    accepted = {(n_pixels,), tuple(input_shape), tuple(input_shape[-2:])}
    if array.ndim < 2 or tuple(array.shape[1:]) not in accepted:
        got = f"{plural(array.shape[0], 'image')} of shape {_shape_text(array.shape[1:])}" if array.ndim >= 2 else \
            f"a flat list of {plural(array.shape[0], 'number')} (wrap a single image in a list)"
        raise BadInputError(
            f"{field}: expected a list of images, each {n_pixels} numbers or {_shape_text(input_shape[-2:])} "
            f"nested lists, got {got}"
        )
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        flat = array.reshape(array.shape[0], -1)
        first = int(np.argmax((flat < 0).any(1) | (flat > 1).any(1)))
        raise BadInputError(
            f"{field}: expected pixel values in [0, 1], got values from {low:g} to {high:g} (first offender: image {first})"
        )
    return array.reshape(array.shape[0], *input_shape)


def decode_png(data: bytes, input_shape: Sequence[int], field: str) -> np.ndarray:
    """One greyscale PNG of the model's size as float32 (H, W) in [0, 1]."""
    height, width = input_shape[-2:]
    try:
        image = Image.open(io.BytesIO(data))
        image_format = image.format
        size = image.size
        if image_format != "PNG":
            raise BadInputError(f"{field}: expected a PNG, got {image_format or 'an unknown format'}")
        if size != (width, height):
            raise BadInputError(f"{field}: expected a {width}×{height} PNG, got {size[0]}×{size[1]}")
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(image, dtype=np.float32) / 65535.0
        else:
            # Colour or palette PNGs become grey with PIL's ITU-R 601-2 luma; alpha is ignored.
            pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:  # its message holds the repr of our BytesIO, not news to the client
        raise BadInputError(f"{field}: expected a PNG image, got {_bytes_text(data)}, which is no "
                            f"known image format") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise BadInputError(f"{field}: expected a PNG image, got {_bytes_text(data)} that cannot be decoded "
                            f"({error})") from None
    return np.clip(pixels, 0.0, 1.0)


def _bytes_text(data: bytes) -> str:
    """How many bytes, and the first 8: where a PNG has its signature."""
    if not data:
        return "an empty file"
    return f"{plural(len(data), 'byte')} starting with {data[:8]!r}"


def decode_base64_pngs(items, input_shape: Sequence[int], field: str = "images_png") -> np.ndarray:
    if not isinstance(items, list) or not items:
        raise BadInputError(f"{field}: expected a non-empty list of base64-encoded PNGs, got "
                            f"{'an empty list' if isinstance(items, list) else type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise BadInputError(f"{field}[{i}]: expected a base64 string, got {type(item).__name__}")
        if item.startswith("data:"):  # a data URL: data:image/png;base64,....
            item = item.partition(",")[2]
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadInputError(f"{field}[{i}]: expected base64-encoded PNG bytes, got invalid base64 ({error})") from None
        out.append(decode_png(data, input_shape, f"{field}[{i}]"))
    return np.stack(out).reshape(len(out), *input_shape)


def encode_png(pixels: np.ndarray) -> str:
    """Base64 of an 8-bit greyscale PNG of one image (H, W) with values in [0, 1]."""
    grey = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def images_from_request(images, images_png, input_shape: Sequence[int], max_images: int) -> np.ndarray:
    """The request's images as (B, *input_shape) float32, from exactly one of the two fields."""
    if images is not None and images_png is not None:
        raise BadInputError("images, images_png: expected exactly one of them, got both")
    if images is None and images_png is None:
        raise BadInputError("images: expected a list of images (or images_png, or PNG file uploads), got none")
    if images is not None:
        array = check_images(as_number_array(images, "images"), input_shape)
    else:
        array = decode_base64_pngs(images_png, input_shape)
    check_count(array.shape[0], max_images, "images" if images is not None else "images_png")
    return array


def check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise BadInputError(f"{field}: expected at most {limit} per request (VAE_MAX_IMAGES), got {count}")


def latents_from_request(z, latent_features: int, max_images: int) -> np.ndarray:
    array = as_number_array(z, "z")
    if array.ndim != 2 or array.shape[1] != latent_features:
        got = f"shape {_shape_text(array.shape)}" if array.ndim != 1 else \
            f"a flat list of {plural(array.shape[0], 'number')} (wrap a single latent in a list)"
        raise BadInputError(f"z: expected a list of latent vectors of {plural(latent_features, 'number')} each, got {got}")
    check_count(array.shape[0], max_images, "z")
    return array
