"""The service speaks to every model kind through its `capabilities` and `describe()`: M2's class
labels and native classifier, the categorical kind's one-hot latents. Untrained runs (weights as
initialised, no calibration) are enough to check the plumbing, and take no time to make."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.io.atomic import write_json
from model.runs.checkpoint import CONFIG, save_weights, write_manifest
from model.config.train import TrainConfig
from model.kinds.registry import build_model
from service.app import create_app
from service.settings import Settings

GOOD = [0.5] * 784


def untrained_run(path, **config) -> None:
    config = TrainConfig.of(hidden=(8,), latent_features=2, **config)
    torch.manual_seed(0)
    path.mkdir(parents=True)
    write_json(path / CONFIG, config.to_dict())
    save_weights(path, build_model(config))
    write_manifest(path, config)


@pytest.fixture(scope="module")
def client(tmp_path_factory, asgi_client):
    root = tmp_path_factory.mktemp("kinds")
    untrained_run(root / "m2", kind="m2")
    untrained_run(root / "cat", kind="categorical", categorical_variables=2, categories=3)
    return asgi_client(create_app(Settings(model_dir=root, max_wait_ms=0)))


def test_kinds_are_ready_with_what_their_runs_allow(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["m2"]["kind"] == "m2" and models["m2"]["ready"]
    assert "classify" in models["m2"]["operations"]  # its own q(y|x), no stored classifier needed
    assert "anomaly" not in models["m2"]["operations"]  # no calibration in an untrained run
    assert models["cat"]["kind"] == "categorical" and "classify" not in models["cat"]["operations"]
    response = client.post("/models/m2/anomaly", json={"images": [GOOD]})
    assert response.status_code == 400 and "calibration" in response.json()["error"]
    assert "kinds that support 'anomaly'" in response.json()["error"]


def test_m2_labels(client):
    detail = client.get("/models/m2").json()
    assert detail["classes"] == list(range(10)) and detail["describe"]["decode_inputs"] == ["z", "y"]
    encoded = client.post("/models/m2/encode", json={"images": [GOOD, GOOD]}).json()
    assert {"probs", "y", "mu", "sigma"} <= encoded.keys() and len(encoded["y"]) == 2
    classified = client.post("/models/m2/classify", json={"images": [GOOD]}).json()
    assert classified["labels"] == [int(np.argmax(classified["probs"][0]))]
    assert np.isclose(sum(classified["probs"][0]), 1, atol=1e-5)
    missing = client.post("/models/m2/decode", json={"z": [[0.0, 0.0]]})
    assert missing.status_code == 422 and "pass y" in missing.json()["error"]
    three = client.post("/models/m2/decode", json={"z": [[0.0, 0.0]] * 2, "y": [3, 7]}).json()["probs"]
    one = client.post("/models/m2/decode", json={"z": [[0.0, 0.0]], "y": [7]}).json()["probs"]
    np.testing.assert_allclose(three[1], one[0], rtol=1e-5)
    assert client.post("/models/m2/decode", json={"z": [[0.0, 0.0]], "y": [1, 2]}).status_code == 422
    sampled = client.post("/models/m2/sample", json={"n": 3, "y": 4, "seed": 0}).json()
    assert sampled["y"] == [4, 4, 4] and np.asarray(sampled["probs"]).shape == (3, 784)
    meta = client.get("/v2/models/m2.decode").json()
    assert {"name": "y", "datatype": "INT64", "shape": [-1]} in meta["inputs"]
    oip = client.post("/v2/models/m2.decode/infer", json={"inputs": [
        {"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 0.0]},
        {"name": "y", "datatype": "INT64", "shape": [1], "data": [7]}]}).json()
    np.testing.assert_allclose(oip["outputs"][0]["data"], one[0], rtol=1e-5)


def test_categorical_latents_must_be_one_hot_blocks(client):
    sampled = client.post("/models/cat/sample", json={"n": 2, "seed": 1}).json()
    z = np.asarray(sampled["z"])
    assert z.shape == (2, 6) and np.allclose(z.reshape(2, 2, 3).sum(-1), 1)
    decoded = client.post("/models/cat/decode", json={"z": z.tolist()})
    assert decoded.status_code == 200
    np.testing.assert_allclose(decoded.json()["probs"], sampled["probs"], rtol=1e-5)
    off_simplex = client.post("/models/cat/decode", json={"z": [[0.0] * 6]})
    assert off_simplex.status_code == 422 and "simplex" in off_simplex.json()["error"]
    # The culprit fails alone when it shares a pass with a good request.
    together = client.gather([("POST", "/models/cat/decode", {"json": {"z": z.tolist()}}),
                              ("POST", "/models/cat/decode", {"json": {"z": [[0.0] * 6]}})])
    assert [r.status_code for r in together] == [200, 422]
    assert client.post("/models/cat/classify", json={"images": [GOOD]}).status_code == 400
