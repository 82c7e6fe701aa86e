"""Bulk image files: decoding opens each file once and preprocesses a request as one batch, and
that changes nothing. Real embedded digits written as files of several modes, sizes and formats;
every property compares with the reference each shortcut replaces (PIL's own conversion,
`ImageOps.exif_transpose`, `preprocess` image by image), exactly."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from model.core.preprocess import Preprocessing, preprocess
from model.data.loading import load_raw
from model.io.images import ImageError, ImageTooLargeError, decode_image
from service.core.errors import BadInputError
from service.http.images import decode_base64_images

LIMIT = 1 << 24  # VAE_MAX_IMAGE_PIXELS far above every image here


@pytest.fixture(scope="module")
def digits() -> list[np.ndarray]:
    """Eight real digits, (28, 28) uint8."""
    train, _ = load_raw("embedded", None)
    return [(d[0] * 255).round().to(torch.uint8).numpy() for d in train.x[:8]]


def file_of(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def variants(digit: np.ndarray, seed: int) -> dict[str, bytes]:
    """One digit as files of many modes and sizes: the model's own (grey 28×28) and others."""
    grey = Image.fromarray(digit)
    tint = np.random.default_rng(seed).uniform(0.3, 1.0, 3)
    rgb = Image.fromarray(np.round(digit[..., None] * tint).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(200)
    return {
        "L 28×28": file_of(grey),
        "L 40×32": file_of(grey.resize((32, 40))),
        "1 28×28": file_of(grey.point(lambda v: 255 * (v > 127)).convert("1")),
        "RGB 28×28": file_of(rgb),
        "RGB 40×32": file_of(rgb.resize((32, 40))),
        "RGBA 28×28": file_of(rgba),
        "P 28×28": file_of(rgb.convert("P")),
        "I;16 28×28": file_of(Image.fromarray(digit.astype(np.uint16) * 257)),
        "JPEG L 28×28": file_of(grey, "JPEG", quality=95),
        "JPEG RGB 20×24": file_of(rgb.resize((24, 20)), "JPEG", quality=95),
    }


def reference_pixels(data: bytes) -> np.ndarray:
    """(C, H, W) uint8 by PIL's own conversions, as decode_image did before its shortcuts."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    target = "L" if image.mode in ("1", "L") else "RGB"
    array = np.asarray(image.convert(target))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@pytest.mark.parametrize("kind", ["L 28×28", "1 28×28", "RGB 28×28", "RGBA 28×28", "P 28×28", "JPEG L 28×28",
                                  "JPEG RGB 20×24"])
def test_grey_and_rgb_files_decode_to_pils_own_conversion(digits, kind):
    data = variants(digits[0], 0)[kind]
    decoded = decode_image(data)
    assert decoded.pixels.dtype == torch.uint8 and decoded.pixels.is_contiguous()
    np.testing.assert_array_equal(decoded.pixels.numpy(), reference_pixels(data))
    decoded.pixels[0, 0, 0] = 1  # writable: its own memory, not PIL's read-only bytes


@pytest.mark.parametrize("shape, resize, antialias", [
    ((1, 28, 28), "bilinear", True), ((3, 28, 28), "bilinear", True), ((3, 40, 32), "bicubic", True),
    ((1, 20, 24), "bilinear", False), ((1, 20, 24), "nearest", False), ((3, 20, 24), "area", False)])
def test_a_request_is_preprocessed_exactly_as_each_file_would_be_alone(digits, shape, resize, antialias):
    """The batch (images of one decoded shape prepared together, those of the model's shape not at
    all, one `scale`) equals training's `preprocess(decode_image(file))` per file, bit for bit,
    whatever mix of modes and sizes."""
    preprocessing = Preprocessing(shape, resize, antialias)
    files = [data for i, d in enumerate(digits[:3]) for data in variants(d, i).values()]
    images = decode_base64_images(files, preprocessing, len(files), LIMIT)
    expected = torch.stack([preprocess(decode_image(data).pixels, preprocessing) for data in files])
    assert images.x.dtype == np.float32 and images.x.shape == (len(files), *shape)
    assert torch.equal(torch.from_numpy(images.x), expected)
    for original, data in zip(images.originals, files, strict=True):
        assert torch.equal(original, decode_image(data).pixels)


def test_notes_name_each_file_in_order(digits):
    files = list(variants(digits[0], 0).values())
    notes = decode_base64_images(files, Preprocessing((1, 28, 28)), len(files), LIMIT).notes
    expected = []
    for i, data in enumerate(files):
        decoded = decode_image(data)
        preprocessing = Preprocessing((1, 28, 28))
        for note in (*decoded.notes, preprocessing.channel_note(decoded.pixels.shape[0]),
                     preprocessing.resize_note(decoded.size)):
            if note:
                expected.append(f"images_png[{i}]: {note}")
    assert list(notes) == expected
    assert "images_png[0]" not in " ".join(notes)  # the model's own shape and mode: nothing to say
    assert "images_png[1]: resized from 32×40 to 28×28 (bilinear, antialiased)" in notes


def test_uploaded_bytes_and_base64_strings_decode_alike(digits):
    files = [variants(d, i)["RGB 40×32"] for i, d in enumerate(digits)]
    preprocessing = Preprocessing((1, 28, 28))
    uploaded = decode_base64_images(files, preprocessing, len(files), LIMIT)
    strings = [base64.b64encode(f).decode() for f in files]
    as_json = decode_base64_images(strings, preprocessing, len(files), LIMIT)
    assert np.array_equal(uploaded.x, as_json.x) and uploaded.notes == as_json.notes
    with pytest.raises(BadInputError, match=r"images_png\[1\]: expected a base64 string, got int"):
        decode_base64_images([strings[0], 7], preprocessing, 8, LIMIT)


def test_an_error_names_the_file_by_its_index(digits):
    files = [variants(digits[0], 0)["L 28×28"]] * 2 + [b"GIF89a but not really"]
    with pytest.raises(BadInputError, match=r"^images_png\[2\]: expected an image"):
        decode_base64_images(files, Preprocessing((1, 28, 28)), 8, LIMIT)


@pytest.mark.parametrize("fmt, orientation", [("JPEG", 6), ("PNG", 6), ("PNG", 3), ("JPEG", 1), ("PNG", 1)])
def test_exif_orientation_is_applied_as_exif_transpose_does(digits, fmt, orientation):
    """JPEG carries EXIF, and so can a PNG (its eXIf chunk): both are rotated, and noted, only when
    the orientation moves pixels."""
    image = Image.fromarray(digits[1][:, 2:])  # not square: a rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = file_of(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded.pixels.numpy(), reference_pixels(data))
    assert ("EXIF orientation applied" in decoded.notes) == (orientation != 1)
    assert decoded.size == ((26, 28) if orientation in (5, 6, 7, 8) else (28, 26))


def large_header_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height but whose pixel data is cut short."""
    noise = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    return file_of(Image.fromarray(noise))[:200]


def test_the_pixel_limit_refuses_from_the_header_before_decoding(monkeypatch):
    data = large_header_png(101, 100)
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(data)  # only loading it would find it truncated

    def never(self):
        raise AssertionError("pixels decoded before the size was checked")

    with monkeypatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", never)
        with pytest.raises(ImageTooLargeError, match=r"^upload: expected an image of at most 10000 pixels, got "
                                                     r"101×100 = 10100$") as raised:
            decode_image(data, "upload", max_pixels=100 * 100)
    assert (raised.value.width, raised.value.height, raised.value.max_pixels) == (101, 100, 10000)
    good = file_of(Image.new("L", (28, 28), 3))
    with pytest.raises(BadInputError, match=r"^images_png\[1\]: expected an image of at most 10000 pixels "
                                            r"\(VAE_MAX_IMAGE_PIXELS\), got 101×100 = 10100$"):
        decode_base64_images([good, data], Preprocessing((1, 28, 28)), 8, 100 * 100)


def test_decompression_bombs_are_refused_and_the_smaller_limit_named(monkeypatch):
    """Over PIL's guard (it warns up to twice its limit, and refuses beyond), an image is refused;
    the service's own limit is named whenever the image exceeds it, as it is the one to change."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned, refused = file_of(Image.new("L", (40, 40), 0)), file_of(Image.new("L", (50, 50), 0))
    for data in (warned, refused):
        with pytest.raises(ImageError, match=r"^image: expected an image of at most 1000 pixels \(") as raised:
            decode_image(data)
        assert not isinstance(raised.value, ImageTooLargeError)
    with pytest.raises(ImageTooLargeError, match="at most 500 pixels, got 40×40 = 1600"):
        decode_image(warned, max_pixels=500)
    with pytest.raises(ImageError, match="at most 1000 pixels"):
        decode_image(refused, max_pixels=500)  # PIL refuses it before the header can be read
    assert decode_image(file_of(Image.new("L", (30, 30), 0)), max_pixels=900).size == (30, 30)


def test_an_upload_of_many_files_answers_as_its_base64_twin(client_factory, digits):
    client = client_factory()
    files = [variants(d, i)["RGB 40×32"] for i, d in enumerate(digits)]
    as_json = client.post("/models/tiny/elbo", json={"images_png": [base64.b64encode(f).decode() for f in files],
                                                     "seed": 0})
    upload = client.post("/models/tiny/elbo", files=[("images", (f"{i}.png", f, "image/png"))
                                                     for i, f in enumerate(files)], data={"seed": "0"})
    assert as_json.status_code == upload.status_code == 200, upload.text
    assert upload.json() == as_json.json()
    assert upload.json()["preprocessing"][0] == "images_png[0]: colour converted to grey (ITU-R 601-2 luma)"
    bad = client.post("/models/tiny/elbo", files=[("images", ("0.png", files[0], "image/png")),
                                                  ("images", ("1.png", b"\x89PNG\r\n\x1a\n", "image/png"))])
    assert bad.status_code == 422 and bad.json()["error"].startswith("images_png[1]: expected an image (PNG")


@pytest.fixture(scope="module")
def client_factory(model_dir, asgi_client):
    from service.app import create_app
    from service.settings import Settings

    return lambda: asgi_client(create_app(Settings(model_dir=model_dir, max_wait_ms=0)))
