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
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.core.preprocess import Preprocessing, prepare, scale
from model.io.images import Decoded, ImageError, ImageTooLargeError, decode_image, encode_png
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


def _decoded(data: bytes, field: str, max_pixels: int) -> Decoded:
    """One encoded image decoded, or a BadInputError naming `field`. An image over `max_pixels` is
    refused from its header, before its pixels take any memory: a PNG of one colour compresses
    1,000 to 1, and PIL's own guard stops only at 89 megapixels, over a gigabyte once resized in
    float32."""
    try:
        return decode_image(data, field, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        raise BadInputError(f"{field}: expected an image of at most {max_pixels} pixels (VAE_MAX_IMAGE_PIXELS), "
                            f"got {error.width}×{error.height} = {error.width * error.height}") from None
    except ImageError as error:  # its message names the field, what was expected and what arrived
        raise BadInputError(str(error)) from None


def preprocess_decoded(decoded: Sequence[Decoded], preprocessing: Preprocessing, field: str) -> Images:
    """Decoded images as training would have seen them, (B, C, H, W) float32 in [0, 1], with the
    notes (each naming `field[i]`) of what decoding and preprocessing changed.

    The numbers are those of `preprocess` image by image, computed per batch: images of one decoded
    (C, H, W) go through `prepare` together (channel conversion and resizing act on each image
    alone), none when that is already the model's, and `scale` runs once (it is elementwise).
    """
    notes = []
    same_shape: dict[tuple[int, ...], list[int]] = {}  # decoded (C, H, W) -> the images of it
    for i, image in enumerate(decoded):
        changes = (*image.notes, preprocessing.channel_note(image.pixels.shape[0]),
                   preprocessing.resize_note(image.size))
        notes.extend(f"{field}[{i}]: {note}" for note in changes if note)
        same_shape.setdefault(tuple(image.pixels.shape), []).append(i)
    x = torch.empty((len(decoded), *preprocessing.shape), dtype=torch.uint8)  # (B, C, H, W)
    for shape, members in same_shape.items():
        group = torch.stack([decoded[i].pixels for i in members])
        x[members] = group if shape == preprocessing.shape else prepare(group, preprocessing)
    return Images(scale(x).numpy(), tuple(notes), tuple(image.pixels for image in decoded))


def _file_bytes(item, field: str) -> bytes:
    """An image file's bytes from a base64 string (JSON) or, as they are, from an upload (multipart)."""
    if isinstance(item, bytes):
        return item
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
    """Image files (PNG, JPEG, ...) of any size as the model's (B, C, H, W).

    Args:
        items: each a base64 string (as JSON carries files) or the bytes of an uploaded file.
    """
    if not isinstance(items, list) or not items:
        raise BadInputError(f"{field}: expected a non-empty list of base64-encoded images, got "
                            f"{'an empty list' if isinstance(items, list) else type(items).__name__}")
    check_count(len(items), max_images, field)  # before decoding any
    names = [f"{field}[{i}]" for i in range(len(items))]
    decoded = [_decoded(_file_bytes(item, name), name, max_pixels) for item, name in zip(items, names)]
    return preprocess_decoded(decoded, preprocessing, field)


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
