"""The REST API on a tiny trained model, through the ASGI app: every endpoint, and what its
numbers must satisfy."""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from model import load_checkpoint
from model.data.loading import load_data
from model.config.train import TrainConfig
from model.core.objectives import iwae_bound
from model.core.noise import RowwiseNoise
from model.core.preprocess import scale
from service.app import create_app
from service.settings import Settings

OPERATIONS = ["encode", "decode", "sample", "reconstruct", "elbo", "iwae", "classify", "anomaly"]


@pytest.fixture(scope="module")
def client(model_dir, asgi_client):
    return asgi_client(create_app(Settings(model_dir=model_dir, max_wait_ms=0)))


@pytest.fixture(scope="module")
def digits():
    """Four real test digits as (4, 784) float lists."""
    x = scale(load_data(TrainConfig.of(train_subset=100)).test.x[:4])  # the data sets hold uint8 images
    return x.reshape(4, -1).tolist()


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return load_checkpoint(tiny_run)


def png_of(image) -> str:
    grey = np.round(np.asarray(image, dtype=np.float32).reshape(28, 28) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_health_and_readiness(client):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and "tiny" in ready.json()["reason"]


def test_models_lists_the_run_by_directory_name(client):
    (entry,) = client.get("/models").json()["models"]
    assert entry["name"] == "tiny" and entry["kind"] == "gaussian" and entry["ready"]
    assert sorted(entry["operations"]) == sorted(OPERATIONS)


def test_model_description(client, tiny_run):
    body = client.get("/models/tiny").json()
    assert body["input_shape"] == [1, 28, 28] and body["latent_features"] == 2
    assert body["config"]["hidden"] == [32]
    assert body["evaluation"]["iwae"]["k"] == 10
    calibration = load_checkpoint(tiny_run).calibration
    assert body["anomaly"]["default"] == calibration.default
    assert "iwae" in body["anomaly"]["scores"] and set(body["anomaly"]["scores"]) <= set(calibration.scores)
    for name, score in body["anomaly"]["scores"].items():
        assert score["params"] == calibration.scores[name].params and score["n"] == calibration.scores[name].n > 0
        assert score["false_positive_rate"] == 0.01
        assert score["threshold"] == pytest.approx(calibration.scores[name].threshold(0.01))
    assert body["classes"] == list(range(10))


def test_encode_matches_the_model_and_samples_on_request(client, checkpoint, digits):
    body = client.post("/models/tiny/encode", json={"images": digits[:2]}).json()
    assert "z" not in body
    qz = checkpoint.model.posterior(torch.tensor(digits[:2]))
    np.testing.assert_allclose(body["mu"], qz.mu.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["sigma"], qz.sigma.detach().numpy(), rtol=1e-5, atol=1e-6)
    sampled = client.post("/models/tiny/encode", json={"images": digits[:2], "num_samples": 3, "seed": 1}).json()
    z = np.asarray(sampled["z"])
    assert z.shape == (2, 3, 2)  # per image, num_samples latents
    # Samples lie within a few posterior standard deviations of the mean.
    assert np.all(np.abs(z - np.asarray(body["mu"])[:, None]) < 6 * np.asarray(body["sigma"])[:, None])


def test_images_as_nested_lists_and_pngs_agree(client, digits):
    flat = client.post("/models/tiny/reconstruct", json={"images": digits[:2]}).json()["probs"]
    nested = [np.asarray(d).reshape(28, 28).tolist() for d in digits[:2]]
    assert client.post("/models/tiny/reconstruct", json={"images": nested}).json()["probs"] == flat
    pngs = client.post("/models/tiny/reconstruct", json={"images_png": [png_of(d) for d in digits[:2]]}).json()
    # PNGs carry 8-bit grey levels: close to, not equal to, the float images.
    np.testing.assert_allclose(pngs["probs"], flat, atol=0.02)
    files = [("images", (f"{i}.png", base64.b64decode(png_of(d)), "image/png")) for i, d in enumerate(digits[:2])]
    upload = client.post("/models/tiny/reconstruct", files=files).json()
    assert upload["probs"] == pngs["probs"]


def test_decode_gives_pixel_probabilities_and_pngs(client, checkpoint):
    z = [[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5]]
    probs = np.asarray(client.post("/models/tiny/decode", json={"z": z}).json()["probs"])
    assert probs.shape == (3, 784) and np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs, checkpoint.model.decode(torch.tensor(z)).detach().reshape(3, -1).numpy(),
                               rtol=1e-5, atol=1e-6)
    pngs = client.post("/models/tiny/decode", json={"z": z, "png": True}).json()["images_png"]
    image = Image.open(io.BytesIO(base64.b64decode(pngs[1])))
    assert image.size == (28, 28) and image.mode == "L"
    np.testing.assert_allclose(np.asarray(image) / 255, probs[1].reshape(28, 28), atol=1 / 255)


def test_sample_is_reproducible_with_a_seed(client):
    a = client.post("/models/tiny/sample", json={"n": 3, "seed": 5}).json()
    b = client.post("/models/tiny/sample", json={"n": 3, "seed": 5}).json()
    c = client.post("/models/tiny/sample", json={"n": 3, "seed": 6}).json()
    assert a == b and a["z"] != c["z"]
    assert np.asarray(a["z"]).shape == (3, 2) and np.asarray(a["probs"]).shape == (3, 784)


def test_elbo_terms_and_beta(client, checkpoint, digits):
    body = client.post("/models/tiny/elbo", json={"images": digits, "seed": 0}).json()
    assert body["beta"] == 1.0
    np.testing.assert_allclose(body["elbo"], np.subtract(body["log_px"], body["kl"]), rtol=1e-5)
    half = client.post("/models/tiny/elbo", json={"images": digits, "seed": 0, "beta": 0.5}).json()
    assert half["log_px"] == body["log_px"] and half["kl"] == body["kl"]  # same seed, same sample
    np.testing.assert_allclose(half["elbo"], np.asarray(body["log_px"]) - 0.5 * np.asarray(body["kl"]), rtol=1e-5)
    # The same seed gives the same numbers as the library with the same per-request noise.
    terms = checkpoint.model.elbo_terms(torch.tensor(digits), kl=checkpoint.config.optim.kl,
                                        noise=RowwiseNoise([0], [len(digits)]))
    np.testing.assert_allclose(body["log_px"], terms.log_px.detach().numpy(), rtol=1e-5)


def test_iwae_is_the_library_bound_and_rises_with_k(client, checkpoint, digits):
    body = client.post("/models/tiny/iwae", json={"images": digits, "k": 64, "seed": 3}).json()
    assert body["k"] == 64
    expected = iwae_bound(checkpoint.model, torch.tensor(digits), 64, noise=RowwiseNoise([3], [4]))
    np.testing.assert_allclose(body["log_px"], expected.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(body["bits_per_dim"], -np.asarray(body["log_px"]) / (784 * math.log(2)), rtol=1e-5)
    elbo = np.mean(client.post("/models/tiny/elbo", json={"images": digits * 8, "seed": 1}).json()["elbo"])
    assert np.mean(body["log_px"]) > elbo  # L_64 is a tighter bound than the ELBO on average
    assert client.post("/models/tiny/iwae", json={"images": digits[:1]}).json()["k"] == 100  # VAE_DEFAULT_K


def test_classify_probabilities(client, checkpoint, digits):
    body = client.post("/models/tiny/classify", json={"images": digits}).json()
    probs = np.asarray(body["probs"])
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert body["labels"] == [body["classes"][i] for i in probs.argmax(1)]
    expected = checkpoint.classifier(checkpoint.model.features(torch.tensor(digits)))
    np.testing.assert_allclose(probs, expected.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_anomaly_flags_noise_not_digits(client, checkpoint, digits):
    rng = np.random.default_rng(0)
    noise_images = rng.uniform(0, 1, (2, 784)).tolist()
    body = client.post("/models/tiny/anomaly",
                       json={"images": digits + noise_images, "seed": 0, "score": "iwae"}).json()
    calibration = checkpoint.calibration.scores["iwae"]
    assert body["score"] == "iwae" and body["false_positive_rate"] == 0.01
    assert body["threshold"] == pytest.approx(calibration.threshold(0.01), rel=1e-6)
    assert body["is_anomaly"] == [s > body["threshold"] for s in body["scores"]]
    assert body["is_anomaly"][4:] == [True, True]  # uniform noise is nothing like a digit
    assert all(0 <= p <= 100 for p in body["percentiles"])
    lenient = client.post("/models/tiny/anomaly",
                          json={"images": digits, "seed": 0, "score": "iwae", "false_positive_rate": 0.5}).json()
    assert lenient["threshold"] < body["threshold"]
    # Without `score`, the run's default; naming the default gives the same numbers.
    default = client.post("/models/tiny/anomaly", json={"images": digits, "seed": 0}).json()
    assert default["score"] == checkpoint.calibration.default
    explicit = client.post("/models/tiny/anomaly", json={"images": digits, "seed": 0, "score": default["score"]}).json()
    assert explicit["scores"] == default["scores"]


def test_metrics_count_requests_by_model_operation_and_status(client, digits):
    client.post("/models/tiny/elbo", json={"images": digits[:1]})
    client.post("/models/tiny/elbo", json={"images": [[2.0] * 784]})
    text = client.get("/metrics").text
    assert 'vae_requests_total{model="tiny",operation="elbo",status="200"}' in text
    assert 'vae_requests_total{model="tiny",operation="elbo",status="422"}' in text
    assert 'vae_request_seconds_bucket{le="0.001",model="tiny",operation="elbo",status="200"}' in text
    assert 'vae_batch_rows_count{model="tiny",operation="elbo"}' in text
    assert 'vae_queue_seconds_count{model="tiny",operation="elbo"}' in text


def test_metrics_label_the_docs_by_their_route_not_as_unmatched(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir)))
    for path in ("/docs", "/openapi.json", "/docs/openapi-3.0.json", "/docs-assets/swagger-ui.css",
                 "/docs-assets/swagger-ui-bundle.js", "/nowhere"):
        client.get(path)
    counted = dict(re.findall(r'^vae_requests_total\{model="",operation="([^"]*)",status="(?:\d+)"\} (\S+)$',
                              client.get("/metrics").text, re.M))
    assert counted == {"/docs": "1.0", "/openapi.json": "1.0", "/docs/openapi-3.0.json": "1.0",
                       "/docs-assets": "2.0", "unmatched": "1.0"}


def test_openapi_documents_every_operation_with_examples(client):
    spec = client.get("/openapi.json").json()
    for op in OPERATIONS:
        body = spec["paths"][f"/models/{{name}}/{op}"]["post"]["requestBody"]["content"]
        assert body["application/json"]["examples"], op
    assert "multipart/form-data" in spec["paths"]["/models/{name}/encode"]["post"]["requestBody"]["content"]
    assert "/v2/models/{model}/infer" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_settings_come_from_vae_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("VAE_MAX_K", "7")
    monkeypatch.setenv("VAE_API_TOKEN", "")
    settings = Settings()
    assert settings.model_dir == tmp_path and settings.max_k == 7 and settings.token is None
    monkeypatch.setenv("VAE_LOG_LEVEL", "WARNING")
    assert Settings().log_level == "warning"
    monkeypatch.setenv("VAE_MAX_BATCH_SIZE", "zero")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()
