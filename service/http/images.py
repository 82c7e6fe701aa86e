"""Images and latents from the wire: nested lists, encoded image files (base64 or uploaded), and back.

Encoded images (PNG, JPEG and whatever else `model.io.images.decode_image` reads) may have any size
and mode: each goes through exactly what training did to its images, `decode_image` and then
`model.core.preprocess.preprocess` with the run's recorded `Preprocessing` (channels, then size,
then /255), and every change that made is reported as a note naming the image:
"images_png[0]: resized from 64×48 to 40×32 (bilinear, antialiased)". Nested lists are pixels the
client has already preprocessed, so they must have the model's shape.

Every check names the field, what was expected and what arrived: "images: expected values in
[0, 1], got values from -0.5 to 1.2 (image 3)". Lists are decoded in numpy, not pydantic, because a
request of 256 images holds 200,000 numbers.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from model.core.preprocess import Preprocessing, preprocess
from model.io.images import ImageError, decode_image, encode_png
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


@dataclass(frozen=True)
class Images:
    """A request's images as the model takes them, and what was done to bring them there.

    x: (B, C, H, W) float32 in [0, 1].
    notes: one per change, each naming its image, in image order (empty for nested lists).
    originals: each encoded image as decoded, uint8 (C, H, W) at its own size, before preprocessing
        (empty for nested lists, which are the model's input as they are): anomaly maps are returned
        at these sizes, over these pixels.
    """

    x: np.ndarray
    notes: tuple[str, ...] = ()
    originals: tuple[torch.Tensor, ...] = ()


def expected_images(shape: Sequence[int]) -> str:
    """What an image of a model of input (C, H, W) `shape` may look like as nested lists."""
    channels, height, width = shape
    if channels == 1:
        return f"{math.prod(shape)} numbers or {height}×{width} nested lists"
    return f"{_shape_text(shape)} nested lists (C×H×W) or {math.prod(shape)} numbers"


def check_images(array: np.ndarray, input_shape: Sequence[int], field: str = "images") -> np.ndarray:
    """(B, C, H, W) float32 in [0, 1] from (B, C, H, W), (B, C·H·W) in that order, or (B, H, W) when C = 1."""
    input_shape = tuple(input_shape)
    accepted = {(math.prod(input_shape),), input_shape}
    if input_shape[0] == 1:
        accepted.add(input_shape[1:])
    if array.ndim < 2 or tuple(array.shape[1:]) not in accepted:
        got = f"{plural(array.shape[0], 'image')} of shape {_shape_text(array.shape[1:])}" if array.ndim >= 2 else \
            f"a flat list of {plural(array.shape[0], 'number')} (wrap a single image in a list)"
        raise BadInputError(f"{field}: expected a list of images, each {expected_images(input_shape)}, got {got}")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        flat = array.reshape(array.shape[0], -1)
        first = int(np.argmax((flat < 0).any(1) | (flat > 1).any(1)))
        raise BadInputError(
            f"{field}: expected pixel values in [0, 1], got values from {low:g} to {high:g} (first offender: image {first})"
        )
    return array.reshape(array.shape[0], *input_shape)


def _check_size(data: bytes, field: str, max_pixels: int) -> None:
    """Refuse an image too large to decode from its header alone, before its pixels take any memory:
    a PNG of one colour compresses 1,000 to 1, and PIL's own guard stops only at 89 megapixels,
    over a gigabyte once resized in float32."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return  # not an image this peek can size: decode_image says what is wrong with it
    if width * height > max_pixels:
        raise BadInputError(f"{field}: expected an image of at most {max_pixels} pixels (VAE_MAX_IMAGE_PIXELS), "
                            f"got {width}×{height} = {width * height}")


def decode_file(data: bytes, preprocessing: Preprocessing, field: str,
                max_pixels: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """One encoded image as training would have seen it: (C, H, W) float32 in [0, 1], the notes
    (each prefixed with `field`) of what decoding and preprocessing changed, and the decoded uint8
    pixels before preprocessing."""
    _check_size(data, field, max_pixels)
    try:
        decoded = decode_image(data, field)
    except ImageError as error:  # its message names the field, what was expected and what arrived
        raise BadInputError(str(error)) from None
    notes = [*decoded.notes, preprocessing.channel_note(decoded.pixels.shape[0]),
             preprocessing.resize_note(decoded.size)]
    return (preprocess(decoded.pixels, preprocessing), [f"{field}: {note}" for note in notes if note],
            decoded.pixels)


def _base64_bytes(item, field: str) -> bytes:
    if not isinstance(item, str):
        raise BadInputError(f"{field}: expected a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):  # a data URL: data:image/png;base64,....
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadInputError(f"{field}: expected base64-encoded image bytes, got invalid base64 ({error})") from None


def decode_base64_images(items, preprocessing: Preprocessing, max_images: int, max_pixels: int,
                         field: str = "images_png") -> Images:
    """Base64-encoded image files (PNG, JPEG, ...) of any size as the model's (B, C, H, W)."""
    if not isinstance(items, list) or not items:
        raise BadInputError(f"{field}: expected a non-empty list of base64-encoded images, got "
                            f"{'an empty list' if isinstance(items, list) else type(items).__name__}")
    check_count(len(items), max_images, field)  # before decoding any
    pixels, notes, originals = [], [], []
    for i, item in enumerate(items):
        x, more, original = decode_file(_base64_bytes(item, f"{field}[{i}]"), preprocessing, f"{field}[{i}]",
                                        max_pixels)
        pixels.append(x)
        notes.extend(more)
        originals.append(original)
    return Images(torch.stack(pixels).numpy(), tuple(notes), tuple(originals))


def png_base64(image: np.ndarray | torch.Tensor) -> str:
    """Base64 of an 8-bit PNG of one image (C, H, W), uint8 or in [0, 1]: grey for C = 1, RGB for C = 3."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    return base64.b64encode(encode_png(image)).decode("ascii")


def images_from_request(images, images_png, preprocessing: Preprocessing, max_images: int,
                        max_pixels: int) -> Images:
    """The request's images as the model takes them, from exactly one of the two fields.

    Decoding files can take a while (a large JPEG): call it off the event loop when images_png is given.
    """
    if images is not None and images_png is not None:
        raise BadInputError("images, images_png: expected exactly one of them, got both")
    if images is None and images_png is None:
        raise BadInputError("images: expected a list of images (or images_png, or image file uploads), got none")
    if images_png is not None:
        return decode_base64_images(images_png, preprocessing, max_images, max_pixels)
    array = check_images(as_number_array(images, "images"), preprocessing.shape)
    check_count(array.shape[0], max_images, "images")
    return Images(array)

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
