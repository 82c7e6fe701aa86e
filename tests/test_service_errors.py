"""Bad input, missing models, limits and tokens: the right status and a message naming the field,
what was expected and what arrived. Nothing a client sends yields a 500."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from model.runs.checkpoint import CLASSIFIER, write_manifest
from model.config.train import TrainConfig
from service.app import create_app
from service.settings import Settings

GOOD = [0.5] * 784


def png(size=(28, 28), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


TRUNCATED_PNG = base64.b64encode(base64.b64decode(png((64, 48)))[:60]).decode()


@pytest.fixture(scope="module")
def client(model_dir, asgi_client):
    settings = Settings(model_dir=model_dir, max_k=1000, max_images=64, max_body_bytes=256 * 1024,
                        max_num_samples=10, max_image_pixels=100 * 100, max_wait_ms=0)
    return asgi_client(create_app(settings))


def assert_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


BAD_JSON = [  # (endpoint, body, status, fragments the message must hold)
    ("elbo", {"images": [[0.5] * 783]}, 422, ["images", "784", "783"]),
    ("elbo", {"images": [[[0.5] * 27] * 28]}, 422, ["images", "28×28", "28×27"]),
    ("elbo", {"images": [[1.5] * 784]}, 422, ["images", "[0, 1]", "1.5"]),
    ("elbo", {"images": [GOOD, [-0.25] * 784]}, 422, ["images", "[0, 1]", "-0.25", "image 1"]),
    ("elbo", {"images": [GOOD, [0.5] * 700]}, 422, ["images", "ragged", "700"]),
    ("elbo", {"images": [[[0.5] * 28] * 27 + [[0.5] * 20]]}, 422, ["images", "ragged"]),
    ("elbo", {"images": [["a"] * 784]}, 422, ["images", "numbers", "strings"]),
    ("elbo", {"images": [[None] * 784]}, 422, ["images", "numbers"]),
    ("elbo", {"images": [[True] * 784]}, 422, ["images", "numbers", "booleans"]),
    ("elbo", {"images": []}, 422, ["images", "at least one", "empty"]),
    ("elbo", {"images": GOOD}, 422, ["images", "flat list of 784 numbers"]),
    ("elbo", {"images": "zeros"}, 422, ["images", "list"]),
    ("elbo", {}, 422, ["images", "got none"]),
    ("elbo", {"images": [GOOD], "images_png": [png()]}, 422, ["images_png", "exactly one", "both"]),
    ("elbo", {"images": [GOOD] * 65}, 422, ["images", "at most 64", "65"]),
    ("elbo", {"images": [GOOD], "seeds": 1}, 422, ["seeds", "not a known field"]),
    ("elbo", {"images": [GOOD], "seed": -1}, 422, ["seed", "-1"]),
    ("elbo", {"images": [GOOD], "beta": -1}, 422, ["beta", "-1"]),
    ("elbo", {"images_png": ["not base64!"]}, 422, ["images_png[0]", "base64"]),
    ("elbo", {"images_png": [base64.b64encode(b"not a png").decode()]}, 422, ["images_png[0]", "PNG"]),
    ("elbo", {"images_png": [TRUNCATED_PNG]}, 422, ["images_png[0]", "complete image", "cannot be decoded"]),
    ("elbo", {"images_png": [png((101, 100))]}, 422,
     ["images_png[0]", "at most 10000 pixels (VAE_MAX_IMAGE_PIXELS)", "101×100"]),
    ("elbo", {"images_png": []}, 422, ["images_png", "empty"]),
    ("iwae", {"images": [GOOD], "k": 1001}, 422, ["k", "at most 1000", "1001"]),
    ("iwae", {"images": [GOOD], "k": 0}, 422, ["k", "0"]),
    ("encode", {"images": [GOOD], "num_samples": 11}, 422, ["num_samples", "at most 10", "11"]),
    ("anomaly", {"images": [GOOD], "false_positive_rate": 0}, 422, ["false_positive_rate", "0"]),
    ("anomaly", {"images": [GOOD], "false_positive_rate": 1.5}, 422, ["false_positive_rate", "1.5"]),
    ("anomaly", {"images": [GOOD], "score": "vibes"}, 422, ["score", "iwae", "vibes"]),
    ("decode", {"z": [[0.0, 0.0, 0.0]]}, 422, ["z", "2 numbers", "1×3"]),
    ("decode", {"z": [0.0, 0.0]}, 422, ["z", "flat list of 2"]),
    ("decode", {"z": [[0.0, 0.0], [0.0]]}, 422, ["z", "ragged"]),
    ("decode", {"z": []}, 422, ["z", "empty"]),
    ("decode", {"z": [[0.0, 0.0]], "y": [1]}, 400, ["y", "gaussian", "no class label"]),
    ("sample", {"n": 0}, 422, ["n", "0"]),
    ("sample", {"n": 65}, 422, ["n", "at most 64", "65"]),
    ("sample", {"n": "many"}, 422, ["n", "many"]),
]


@pytest.mark.parametrize("endpoint, body, status, fragments", BAD_JSON,
                         ids=[f"{e}-{i}" for i, (e, *_rest) in enumerate(BAD_JSON)])
def test_bad_json_bodies(client, endpoint, body, status, fragments):
    assert_error(client.post(f"/models/tiny/{endpoint}", json=body), status, *fragments)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(client, literal):
    raw = '{"images": [[%s%s]]}' % (literal, ", 0.5" * 783)
    response = client.post("/models/tiny/elbo", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, "images", "finite", literal.lower().lstrip("-")[:3])


@pytest.mark.parametrize("content, content_type, status, fragment", [
    ('{"images": [[0.5, ', "application/json", 422, "invalid JSON"),
    ("[1, 2]", "application/json", 422, "JSON object"),
    ("", "application/json", 422, "empty body"),
    ("images=1", "text/plain", 415, "application/json or multipart/form-data"),
    ("--x\r\nbroken", "multipart/form-data; boundary=x", 422, "images"),
])
def test_malformed_bodies(client, content, content_type, status, fragment):
    response = client.post("/models/tiny/elbo", content=content, headers={"content-type": content_type})
    assert_error(response, status, fragment)


def test_multipart_upload_errors(client):
    garbage = [("images", ("a.png", b"\x89PNG garbage", "image/png"))]
    assert_error(client.post("/models/tiny/elbo", files=garbage), 422, "images_png[0]", "PNG")
    misnamed = [("photo", ("a.png", base64.b64decode(png()), "image/png"))]
    assert_error(client.post("/models/tiny/elbo", files=misnamed), 422, "photo", "'images'")
    bad_field = [("images", ("a.png", base64.b64decode(png()), "image/png"))]
    assert_error(client.post("/models/tiny/elbo", files=bad_field, data={"seed": "x"}), 422, "seed", "'x'")
    ok = client.post("/models/tiny/elbo", files=bad_field, data={"seed": "3", "beta": "0.5"})
    assert ok.status_code == 200 and ok.json()["beta"] == 0.5


def test_a_file_that_is_not_an_image_is_described_by_its_bytes(client):
    """What arrived, as bytes: never the repr of a Python object (PIL's message names its BytesIO)."""
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00"  # 12 bytes: a GIF header, too short to decode
    response = client.post("/models/tiny/elbo", files=[("images", ("a.gif", gif, "image/gif"))])
    assert response.status_code == 422
    assert response.json() == {"error": "images_png[0]: expected an image (PNG, JPEG, BMP or TIFF), got 12 bytes "
                                        "starting with b'GIF89a\\x01\\x00', which is no known image format"}
    empty = client.post("/models/tiny/elbo", json={"images_png": [""]})
    assert empty.status_code == 422
    assert empty.json() == {"error": "images_png[0]: expected an image (PNG, JPEG, BMP or TIFF), got an empty file, "
                                     "which is no known image format"}


@pytest.mark.parametrize("path, body, message", [
    ("/models/tiny/elbo", {"images": [[0.5, 0.5]]},
     "images: expected a list of images, each 784 numbers or 28×28 nested lists, got 1 image of shape 2"),
    ("/models/tiny/elbo", {"images": [0.5]},
     "images: expected a list of images, each 784 numbers or 28×28 nested lists, got a flat list of 1 number "
     "(wrap a single image in a list)"),
    ("/models/tiny/decode", {"z": [0.0]},
     "z: expected a list of latent vectors of 2 numbers each, got a flat list of 1 number (wrap a single latent "
     "in a list)"),
    ("/v2/models/tiny.elbo/infer", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [0, 0]}]},
     "inputs.images: expected 1 value for shape [1], got 2"),
    ("/v2/models/tiny.elbo/infer", {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1],
                                                "parameters": {"binary_data_size": 2}}]},
     "inputs.images.parameters.binary_data_size: expected 1 byte for shape [1] of UINT8, got 2"),
])
def test_counts_of_one_read_as_english(client, path, body, message):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert response.json() == {"error": message}


def test_unknown_model_and_route(client):
    assert_error(client.post("/models/nope/elbo", json={"images": [GOOD]}), 404, "nope", "tiny")
    assert_error(client.get("/models/nope"), 404, "nope")
    assert_error(client.get("/nowhere"), 404, "/nowhere")
    assert_error(client.post("/models/tiny/teleport", json={}), 404)


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/models/tiny/elbo", "POST"),
    ("DELETE", "/models", "GET"),
    ("PUT", "/v2/models/tiny.elbo/infer", "POST"),
])
def test_a_wrong_method_is_405_naming_the_allowed_ones(client, method, path, allowed):
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json() == {"error": f"{path} does not answer {method}; expected {allowed}"}


def test_body_over_the_limit(client):
    big = json.dumps({"images": [GOOD] * 80}).encode()  # ~ 310 kB > 256 KiB
    assert_error(client.post("/models/tiny/elbo", content=big, headers={"content-type": "application/json"}),
                 413, "262144", str(len(big)))

    async def chunks():  # no Content-Length: the limit applies to the bytes as they stream in
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    assert_error(client.post("/models/tiny/elbo", content=chunks(), headers={"content-type": "application/json"}),
                 413, "262144")


def test_errors_are_counted_not_crashes(client):
    text = client.get("/metrics").text
    assert 'status="500"' not in text


@pytest.fixture(scope="module")
def odd_models(tiny_run, tmp_path_factory):
    """A good run, a damaged one (weights overwritten), an incomplete one, one without a classifier."""
    root = tmp_path_factory.mktemp("odd-models")
    shutil.copytree(tiny_run, root / "good")
    shutil.copytree(tiny_run, root / "damaged")
    (root / "damaged" / "model.safetensors").write_bytes(b"\0" * 100)
    shutil.copytree(tiny_run, root / "incomplete")
    (root / "incomplete" / "checkpoint.json").unlink()
    shutil.copytree(tiny_run, root / "noclassifier")
    (root / "noclassifier" / CLASSIFIER).unlink()
    write_manifest(root / "noclassifier", TrainConfig.load(root / "noclassifier" / "config.json"))
    (root / "stray-file.txt").write_text("not a run")
    return root


def test_a_damaged_checkpoint_beside_a_good_one(odd_models, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=odd_models)))
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"good", "damaged", "incomplete", "noclassifier"}
    assert models["good"]["ready"] and models["noclassifier"]["ready"]
    assert not models["damaged"]["ready"] and "model.safetensors" in models["damaged"]["error"]
    assert not models["incomplete"]["ready"] and "checkpoint.json" in models["incomplete"]["error"]
    assert client.get("/health/ready").status_code == 200
    assert client.post("/models/good/elbo", json={"images": [GOOD]}).status_code == 200
    assert_error(client.post("/models/damaged/elbo", json={"images": [GOOD]}), 503, "damaged", "model.safetensors")
    assert_error(client.get("/v2/models/damaged.elbo/ready"), 503, "damaged")
    # An operation the model cannot run: 400, naming the kinds that can.
    assert "classify" not in models["noclassifier"]["operations"]
    assert_error(client.post("/models/noclassifier/classify", json={"images": [GOOD]}), 400,
                 "no latent classifier", "kinds that support 'classify'", "gaussian")
    entry = client.app.state.service.registry.models["good"]
    entry.operations = ("encode",)  # as if its kind could only encode
    assert_error(client.post("/models/good/iwae", json={"images": [GOOD]}), 400,
                 "kind 'gaussian'", "does not support 'iwae'", "kinds that support 'iwae'")


def test_readiness_is_503_when_no_model_is_ready(tiny_run, tmp_path_factory, asgi_client):
    root = tmp_path_factory.mktemp("broken-only")
    shutil.copytree(tiny_run, root / "broken")
    (root / "broken" / "config.json").write_text("{ not json")
    client = asgi_client(create_app(Settings(model_dir=root)))
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert "broken" in ready.json()["reason"] and "config.json" in ready.json()["reason"]
    assert client.get("/v2/health/ready").status_code == 503
    missing = asgi_client(create_app(Settings(model_dir=root / "nowhere")))
    assert "does not exist" in missing.get("/health/ready").json()["reason"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_not_ready(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir, device="cuda")))
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and "CUDA" in ready.json()["reason"]


def test_bearer_token(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir, api_token="s3cret")))
    assert client.get("/health/ready").status_code == 200  # probes need no token
    assert client.get("/v2/health/live").status_code == 200
    assert_error(client.get("/models"), 401, "Bearer")
    assert client.get("/models").headers["www-authenticate"] == "Bearer"
    assert_error(client.post("/models/tiny/elbo", json={"images": [GOOD]}, headers={"authorization": "Bearer nope"}),
                 401, "not the configured one")
    assert_error(client.get("/metrics", headers={"authorization": "Basic s3cret"}), 401)
    assert_error(client.get("/v2/models/tiny.elbo"), 401)
    ok = client.post("/models/tiny/elbo", json={"images": [GOOD]}, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_full_queue_is_429_with_retry_after(model_dir, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=model_dir, max_queue=1, max_batch_size=1, max_wait_ms=0)))
    service = client.app.state.service
    release = threading.Event()
    service.inference.executor.submit(release.wait)  # the only inference thread is busy
    body = {"json": {"images": [GOOD], "seed": 1}}

    async def three_requests():
        import asyncio

        tasks = []
        for _ in range(3):  # the first waits for the thread, the second waits in the queue, the third...
            tasks.append(asyncio.ensure_future(client.client.post("/models/tiny/elbo", **body)))
            await asyncio.sleep(0.3)
        release.set()
        return await asyncio.gather(*tasks)

    responses = client.run(three_requests())
    assert [r.status_code for r in responses] == [200, 200, 429], [r.text for r in responses]
    rejected = responses[2]
    assert int(rejected.headers["retry-after"]) >= 1
    assert re.fullmatch(r"tiny\.elbo: the queue is full \(1 request, VAE_MAX_QUEUE=1\); retry in \d+ s",
                        rejected.json()["error"]), rejected.json()


def random_json(rng, depth: int = 0):
    """A random JSON value: numbers of every size, strings, nulls, booleans, lists, objects."""
    kind = rng.integers(0, 9 if depth < 4 else 6)
    if kind == 0:
        return float(rng.normal() * 10.0 ** rng.integers(-3, 40))
    if kind == 1:
        return int(rng.integers(-(2**62), 2**62)) * int(rng.choice([1, 2**40]))
    if kind == 2:
        return rng.choice(["", "a", "0.5", "NaN", "images", "iVBORw0KGgo="])
    if kind == 3:
        return None
    if kind == 4:
        return bool(rng.integers(0, 2))
    if kind == 5:
        return float(rng.uniform(0, 1))
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.integers(0, 5))]
    keys = ["images", "images_png", "z", "y", "n", "k", "seed", "beta", "num_samples", "png", "score",
            "false_positive_rate", "inputs", "parameters", "name", "shape", "datatype", "data"]
    return {str(rng.choice(keys)): random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))}


def test_no_input_yields_a_500(client):
    """Seeded random bodies, plus pathological ones, to every operation: always a 2xx or a 4xx."""
    rng = np.random.default_rng(0)
    paths = [f"/models/tiny/{op}" for op in ("encode", "decode", "sample", "reconstruct", "elbo", "iwae",
                                             "classify", "anomaly")] + ["/v2/models/tiny.elbo/infer",
                                                                        "/v2/models/tiny.sample/infer"]
    bodies = [json.dumps(random_json(rng)) for _ in range(300)]
    bodies += ["[" * 5000 + "]" * 5000, '{"images": ' + "[" * 3000 + "0.5" + "]" * 3000 + "}",
               '{"images": [[1e309]]}', '{"z": [[1e39, 0]]}', '{"n": 1e400}', '{"y": [1e30], "z": [[0, 0]]}',
               '{"y": [99999999999999999999999], "z": [[0, 0]]}', "\xff\xfe"]
    for i, body in enumerate(bodies):
        path = paths[i % len(paths)]
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code < 500, (path, body[:200], response.text)
        if response.status_code >= 400:
            assert response.json()["error"]
