"""Serving models of any (C, H, W): image files of any size and mode go through the run's own
preprocessing (the functions training used), the response says what that changed, nested lists
must have the model's shape, and outputs come in the model's channels. Two tiny runs on the real
embedded digits: a colour, non-square one (3×40×32) and a grey, non-square one (1×20×24)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from model import load_checkpoint
from model.config.train import TrainConfig
from model.core.preprocess import Preprocessing, prepare, preprocess, to_channels
from model.data.base import DataBundle, Split
from model.data.loading import load_raw
from model.io.images import decode_image
from model.runs.train import train
from service.app import create_app
from service.settings import Settings

COLOUR, GREY = (3, 40, 32), (1, 20, 24)
NAMES = ("zero", "one", "two")
TINY = dict(hidden=(32,), latent_features=2, epochs=1, batch_size=64, eval_k=5, calibration_k=5, seed=0, device="cpu")


def _digits(digits: Split, shape, generator: torch.Generator) -> Split:
    """Digits as uint8 images of `shape`, colour ones tinted per image, through training's preprocessing."""
    x = digits.x if digits.x.dtype == torch.uint8 else (digits.x * 255).round().to(torch.uint8)
    x = to_channels(x, shape[0])
    if shape[0] == 3:
        tint = torch.rand(len(x), 3, 1, 1, generator=generator) * 0.7 + 0.3
        x = (x.float() * tint).round().to(torch.uint8)
    return Split(prepare(x, Preprocessing(shape)), digits.y)


def _train(root, name: str, digits: list[Split], shape, class_names=None) -> None:
    generator = torch.Generator().manual_seed(0)
    train_split, validation, test = (_digits(split, shape, generator) for split in digits)
    bundle = DataBundle(train_split, validation, test, binarize="none", class_names=class_names)
    train(TrainConfig.of(**TINY), root / name, progress=False, data=bundle)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run directories trained on 300 real digits of the classes 0, 1 and 2 (60 held out for
    validation, 60 for test)."""
    train_split, _ = load_raw("embedded", None)
    (keep,) = torch.nonzero(train_split.y < len(NAMES), as_tuple=True)
    pick = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))]
    digits = [Split(train_split.x[i], train_split.y[i]) for i in (pick[:300], pick[300:360], pick[360:420])]
    root = tmp_path_factory.mktemp("image-models")
    _train(root, "colour", digits, COLOUR, class_names=NAMES)
    _train(root, "grey", digits, GREY)
    return root


@pytest.fixture(scope="module")
def client(runs, asgi_client):
    return asgi_client(create_app(Settings(model_dir=runs, max_wait_ms=0)))


@pytest.fixture(scope="module")
def colour(runs):
    return load_checkpoint(runs / "colour")


@pytest.fixture(scope="module")
def grey(runs):
    return load_checkpoint(runs / "grey")


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """An image file of (H, W) or (H, W, C) pixels: uint8 grey, RGB or RGBA, or uint16 grey."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (H, W, 3) uint8: gradients, so JPEG keeps it close."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (a * yy + b * xx) + c) for a, b, c in rng.uniform(0.3, 1.5, (3, 3))]
    return np.round(127.5 + 120 * np.stack(channels, -1)).astype(np.uint8)


def served(checkpoint, data: bytes) -> torch.Tensor:
    """What training's functions make of an image file for this run: the model's (1, C, H, W)."""
    return preprocess(decode_image(data).pixels, checkpoint.config.data.preprocessing)[None]


def test_model_description_reports_shape_preprocessing_likelihood_and_class_names(client, colour):
    body = client.get("/models/colour").json()
    assert body["input_shape"] == [3, 40, 32]
    assert body["preprocessing"] == colour.config.data.preprocessing.describe() == {
        "channels": 3, "height": 40, "width": 32, "resize": "bilinear", "antialias": True, "aspect": "stretched",
        "scaling": "uint8 / 255 -> [0, 1]", "colour_to_grey": "ITU-R 601-2 luma (PIL 'L')"}
    assert body["likelihood"] == "bernoulli"
    assert body["classes"] == [0, 1, 2] and body["class_names"] == list(NAMES)
    grey = client.get("/models/grey").json()
    assert grey["input_shape"] == [1, 20, 24] and grey["preprocessing"]["channels"] == 1
    assert "class_names" not in grey


def test_png_and_jpeg_of_another_size_are_resized_as_in_training_and_the_response_says_so(client, colour):
    files = [encoded(photo(48, 64)), encoded(photo(30, 50, seed=1), "JPEG")]  # 64×48 and 50×30 (W×H)
    body = client.post("/models/colour/reconstruct", json={"images_png": [b64(f) for f in files]}).json()
    assert body["preprocessing"] == ["images_png[0]: resized from 64×48 to 32×40 (bilinear, antialiased)",
                                     "images_png[1]: resized from 50×30 to 32×40 (bilinear, antialiased)"]
    assert body["image_shape"] == [3, 40, 32] and np.asarray(body["probs"]).shape == (2, 3 * 40 * 32)
    # Train/serve equality: the service fed the model exactly what decode_image + preprocess give.
    x = torch.cat([served(colour, f) for f in files])
    expected = colour.model.reconstruct(x).detach().reshape(2, -1).numpy()
    np.testing.assert_allclose(body["probs"], expected, rtol=1e-5, atol=1e-6)
    as_lists = client.post("/models/colour/reconstruct", json={"images": x.tolist()}).json()
    assert as_lists["probs"] == body["probs"] and "preprocessing" not in as_lists
    # Multipart uploads take the same path, JPEG included.
    upload = client.post("/models/colour/encode", files=[("images", ("a.jpg", files[1], "image/jpeg"))]).json()
    np.testing.assert_allclose(upload["mu"], colour.model.posterior(x[1:]).mu.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert upload["preprocessing"] == ["images_png[0]: resized from 50×30 to 32×40 (bilinear, antialiased)"]


def test_an_image_of_the_models_size_and_mode_needs_no_note(client, colour):
    exact = encoded(photo(40, 32))
    body = client.post("/models/colour/elbo", json={"images_png": [b64(exact)], "seed": 0}).json()
    assert "preprocessing" not in body
    reference = client.post("/models/colour/elbo", json={"images": served(colour, exact).tolist(), "seed": 0}).json()
    assert body == reference


@pytest.mark.parametrize("pixels, mode, notes", [
    (np.dstack([photo(20, 24), np.full((20, 24), 200, np.uint8)]), "RGBA",
     ["alpha channel dropped", "colour converted to grey (ITU-R 601-2 luma)"]),
    (photo(60, 48), "RGB", ["colour converted to grey (ITU-R 601-2 luma)",
                            "resized from 48×60 to 24×20 (bilinear, antialiased)"]),
    ((photo(20, 24)[..., 0].astype(np.uint16) * 257), "I;16", ["I;16 grey levels scaled to 8 bits"]),
])
def test_a_grey_model_takes_colour_and_16_bit_pngs(client, grey, pixels, mode, notes):
    data = encoded(pixels)
    assert decode_image(data).mode == mode
    body = client.post("/models/grey/iwae", json={"images_png": [b64(data)], "k": 4, "seed": 1}).json()
    assert body["preprocessing"] == [f"images_png[0]: {note}" for note in notes]
    reference = client.post("/models/grey/iwae", json={"images": served(grey, data).tolist(), "k": 4, "seed": 1})
    assert body["log_px"] == reference.json()["log_px"]


def test_a_colour_model_takes_a_grey_png(client, colour):
    data = encoded(photo(40, 32)[..., 1])
    body = client.post("/models/colour/classify", json={"images_png": [b64(data)]}).json()
    assert body["preprocessing"] == ["images_png[0]: grey converted to RGB (the grey level in each channel)"]
    assert body["classes"] == [0, 1, 2] and body["class_names"] == list(NAMES)
    x = served(colour, data)
    assert torch.equal(x[:, 0], x[:, 2])
    np.testing.assert_allclose(body["probs"], colour.classifier(colour.model.features(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_nested_lists_must_have_the_models_shape(client):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, *COLOUR)).astype(np.float32)
    nested = client.post("/models/colour/reconstruct", json={"images": x.tolist()}).json()["probs"]
    flat = client.post("/models/colour/reconstruct", json={"images": x.reshape(2, -1).tolist()}).json()["probs"]
    assert nested == flat
    for wrong in (rng.uniform(0, 1, (2, 28, 28)), x[:, 0]):  # another size; H×W without the channels
        response = client.post("/models/colour/reconstruct", json={"images": wrong.tolist()})
        assert response.status_code == 422
        assert response.json()["error"] == (
            "images: expected a list of images, each 3×40×32 nested lists (C×H×W) or 3840 numbers, got 2 images "
            f"of shape {'×'.join(map(str, wrong.shape[1:]))}")
    g = rng.uniform(0, 1, (2, *GREY)).astype(np.float32)
    outputs = [client.post("/models/grey/reconstruct", json={"images": v.tolist()}).json()["probs"]
               for v in (g, g[:, 0], g.reshape(2, -1))]  # C×H×W, H×W (C = 1) and flat
    assert outputs[0] == outputs[1] == outputs[2]
    response = client.post("/models/grey/elbo", json={"images": x.tolist()})
    assert response.status_code == 422 and response.json()["error"] == (
        "images: expected a list of images, each 480 numbers or 20×24 nested lists, got 2 images of shape 3×40×32")


def test_decode_and_sample_return_images_in_the_models_channels(client, colour):
    z = [[0.0, 0.0], [1.0, -0.5]]
    body = client.post("/models/colour/decode", json={"z": z}).json()
    assert body["image_shape"] == [3, 40, 32]
    probs = np.asarray(body["probs"]).reshape(2, *COLOUR)  # rows are C·H·W in row-major order
    np.testing.assert_allclose(probs, colour.model.decode(torch.tensor(z)).detach().numpy(), rtol=1e-5, atol=1e-6)
    pngs = client.post("/models/colour/decode", json={"z": z, "png": True}).json()["images_png"]
    image = Image.open(io.BytesIO(base64.b64decode(pngs[1])))
    assert image.mode == "RGB" and image.size == (32, 40)
    np.testing.assert_allclose(np.asarray(image).transpose(2, 0, 1) / 255, probs[1], atol=0.5 / 255 + 1e-6)
    sampled = client.post("/models/colour/sample", json={"n": 3, "seed": 2, "png": True}).json()
    assert sampled["image_shape"] == [3, 40, 32] and len(sampled["images_png"]) == 3
    grey_png = client.post("/models/grey/sample", json={"n": 1, "seed": 2, "png": True}).json()["images_png"][0]
    image = Image.open(io.BytesIO(base64.b64decode(grey_png)))
    assert image.mode == "L" and image.size == (24, 20)


def oip(client, model: str, images: np.ndarray, parameters=None):
    body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(images.shape),
                        "data": images.reshape(-1).tolist()}], "parameters": parameters or {}}
    return client.post(f"/v2/models/{model}/infer", json=body)


def test_oip_declares_the_real_shapes_and_takes_image_shaped_and_flat_tensors(client):
    meta = client.get("/v2/models/colour.reconstruct").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 40, 32]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3840]}]
    assert client.get("/v2/models/grey.elbo").json()["inputs"][0]["shape"] == [-1, 1, 20, 24]
    x = np.random.default_rng(1).uniform(0, 1, (2, *COLOUR)).astype(np.float32)
    image_shaped = oip(client, "colour.elbo", x, {"seed": 3}).json()["outputs"]
    flat = oip(client, "colour.elbo", x.reshape(2, -1), {"seed": 3}).json()["outputs"]
    assert image_shaped == flat
    rest = client.post("/models/colour/elbo", json={"images": x.tolist(), "seed": 3}).json()
    assert {o["name"]: o["data"] for o in flat}["elbo"] == pytest.approx(rest["elbo"], rel=1e-6)
    wrong = oip(client, "colour.elbo", x[:, 0])  # [B, H, W] is only for grey models
    assert wrong.status_code == 422 and "3×40×32 nested lists (C×H×W) or 3840 numbers" in wrong.json()["error"]
    g = np.random.default_rng(2).uniform(0, 1, (2, *GREY)).astype(np.float32)
    grey_outputs = [oip(client, "grey.reconstruct", v).json()["outputs"][0] for v in (g, g[:, 0])]
    assert grey_outputs[0] == grey_outputs[1] and grey_outputs[0]["shape"] == [2, 480]
