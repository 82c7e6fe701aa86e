"""The Open Inference Protocol (V2) routes through the ASGI app: metadata, JSON and binary tensors,
and the same numbers as the REST routes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings

rng = np.random.default_rng(0)
IMAGES = rng.uniform(0, 1, (3, 784)).astype(np.float32)


@pytest.fixture(scope="module")
def client(model_dir, asgi_client):
    return asgi_client(create_app(Settings(model_dir=model_dir, max_wait_ms=0)))


def infer(client, model, inputs, parameters=None, outputs=None):
    body = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    if outputs:
        body["outputs"] = outputs
    return client.post(f"/v2/models/{model}/infer", json=body)


def images_tensor(images=IMAGES, shape=None):
    return {"name": "images", "datatype": "FP32", "shape": list(shape or images.shape), "data": images.tolist()}


def test_server_metadata_and_health(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny.encode/ready").status_code == 200
    assert client.get("/v2/models/tiny.encode/versions/1/ready").status_code == 200


def test_metadata_describes_the_tensors_the_model_returns(client):
    meta = client.get("/v2/models/tiny.encode").json()
    assert meta["name"] == "tiny.encode" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "mu", "datatype": "FP32", "shape": [-1, 2]},
                               {"name": "sigma", "datatype": "FP32", "shape": [-1, 2]},
                               {"name": "z", "datatype": "FP32", "shape": [-1, -1, 2]}]
    classify = {o["name"]: o for o in client.get("/v2/models/tiny.classify").json()["outputs"]}
    assert classify["labels"]["datatype"] == "INT64" and classify["probs"]["shape"] == [-1, 10]
    anomaly = {o["name"]: o for o in client.get("/v2/models/tiny.anomaly").json()["outputs"]}
    assert anomaly["is_anomaly"]["datatype"] == "BOOL" and anomaly["threshold"]["shape"] == [1]
    # Every declared output is what inference returns, with the declared types and shapes.
    for operation, inputs, parameters in [
        ("encode", [images_tensor()], {"num_samples": 4}), ("classify", [images_tensor()], None),
        ("anomaly", [images_tensor()], {"maps": True}), ("sample", [{"name": "n", "datatype": "INT64", "shape": [1], "data": [3]}], None),
        ("decode", [{"name": "z", "datatype": "FP32", "shape": [3, 2], "data": [0.0] * 6}], None),
        ("iwae", [images_tensor()], {"k": 8}), ("elbo", [images_tensor()], None), ("reconstruct", [images_tensor()], None),
    ]:
        declared = {o["name"]: o for o in client.get(f"/v2/models/tiny.{operation}").json()["outputs"]}
        returned = {o["name"]: o for o in infer(client, f"tiny.{operation}", inputs, parameters).json()["outputs"]}
        assert declared.keys() == returned.keys(), operation
        if operation == "anomaly":  # the map is an output only when asked for
            plain = {o["name"] for o in infer(client, "tiny.anomaly", inputs, None).json()["outputs"]}
            assert plain == declared.keys() - {"anomaly_map"}
        for name, spec in declared.items():
            got = returned[name]
            assert got["datatype"] == spec["datatype"], (operation, name)
            assert len(got["shape"]) == len(spec["shape"]) and all(
                d == -1 or d == g for d, g in zip(spec["shape"], got["shape"])), (operation, name, got["shape"])
            assert len(np.asarray(got["data"]).reshape(-1)) == int(np.prod(got["shape"]))


def test_infer_matches_rest_with_the_same_seed(client):
    oip = infer(client, "tiny.elbo", [images_tensor()], {"seed": 4, "beta": 0.5}).json()
    rest = client.post("/models/tiny/elbo", json={"images": IMAGES.tolist(), "seed": 4, "beta": 0.5}).json()
    outputs = {o["name"]: o for o in oip["outputs"]}
    assert oip["model_name"] == "tiny.elbo" and oip["model_version"] == "1"
    for name in ("elbo", "log_px", "kl"):
        assert outputs[name]["shape"] == [3]
        np.testing.assert_allclose(outputs[name]["data"], rest[name], rtol=1e-6)


def test_nested_data_and_image_shaped_tensors(client):
    flat = infer(client, "tiny.reconstruct", [images_tensor()]).json()["outputs"][0]
    nested = infer(client, "tiny.reconstruct", [{"name": "images", "datatype": "FP32", "shape": [3, 28, 28],
                                                   "data": IMAGES.reshape(3, 28, 28).tolist()}]).json()
    assert nested["outputs"][0]["data"] == flat["data"] and flat["shape"] == [3, 784]


def test_binary_tensor_extension_both_ways(client):
    header = json.dumps({
        "id": "req-7",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [3, 784],
                    "parameters": {"binary_data_size": IMAGES.nbytes}}],
        "parameters": {"seed": 2},
        "outputs": [{"name": "log_px", "parameters": {"binary_data": True}}, {"name": "elbo"}],
    }).encode()
    response = client.post("/v2/models/tiny.elbo/infer", content=header + IMAGES.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    size = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:size])
    assert head["id"] == "req-7"
    log_px_meta, elbo_meta = head["outputs"]
    assert log_px_meta["parameters"]["binary_data_size"] == 12 and "data" not in log_px_meta
    log_px = np.frombuffer(response.content[size:size + 12], dtype="<f4")
    reference = infer(client, "tiny.elbo", [images_tensor()], {"seed": 2}).json()["outputs"]
    np.testing.assert_allclose(log_px, reference[1]["data"], rtol=1e-6)
    np.testing.assert_allclose(elbo_meta["data"], reference[0]["data"], rtol=1e-6)


@pytest.mark.parametrize("model, body, status, fragment", [
    ("tiny", {"inputs": []}, 404, "{model}.{operation}"),
    ("tiny.teleport", {"inputs": []}, 404, "tiny.teleport"),
    ("nope.elbo", {"inputs": []}, 404, "nope"),
    ("tiny.elbo", {"inputs": []}, 422, "needs the input 'images'"),
    ("tiny.elbo", {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0]}]}, 422, "'pixels'"),
    ("tiny.elbo", {"inputs": [images_tensor(IMAGES, [3, 783])]}, 422, "expected 2349 values for shape [3, 783], got 2352"),
    ("tiny.elbo", {"inputs": [images_tensor(IMAGES[:, :783].copy())]}, 422, "784"),
    ("tiny.elbo", {"inputs": [images_tensor(IMAGES * 2)]}, 422, "[0, 1]"),
    ("tiny.elbo", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": [0.5] * 700}]},
     422, "784 values"),
    ("tiny.elbo", {"inputs": [{"name": "images", "datatype": "INT64", "shape": [1, 784], "data": [0] * 784}]},
     422, "FP32"),
    ("tiny.elbo", {"inputs": [{"name": "images", "datatype": "FP8", "shape": [1, 784], "data": [0] * 784}]},
     422, "FP8"),
    ("tiny.elbo", {"inputs": [images_tensor()], "parameters": {"sead": 1}}, 422, "parameters.sead"),
    ("tiny.iwae", {"inputs": [images_tensor()], "parameters": {"k": 10 ** 6}}, 422, "k"),
    ("tiny.elbo", {"inputs": [images_tensor()], "outputs": [{"name": "nope"}]}, 422, "nope"),
    ("tiny.sample", {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [0]}]}, 422, "positive"),
    ("tiny.decode", {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}]}, 422, "[N, 2]"),
    ("tiny.elbo", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784],
                               "parameters": {"binary_data_size": 3136}}]}, 422, "binary data"),
    ("tiny.elbo", {"inputs": "images"}, 422, "inputs"),
    ("tiny.sample", {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [1e30]}]}, 422, "integers"),
    ("tiny.sample", {"inputs": [{"name": "n", "datatype": "UINT8", "shape": [1], "data": [-3]}]}, 422, "[0, 255]"),
    ("tiny.sample", {"inputs": [{"name": "n", "datatype": "BOOL", "shape": [2], "data": [[1], [1, 2]]}]}, 422,
     "booleans"),
    ("tiny.elbo", {"inputs": [images_tensor()], "parameters": {"binary_data_output": "false"}}, 422,
     "binary_data_output"),
])
def test_bad_infer_requests(client, model, body, status, fragment):
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_unknown_model_metadata_is_404(client):
    response = client.get("/v2/models/nope.encode")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert client.get("/v2/models/tiny.encode/versions/2").status_code == 404
