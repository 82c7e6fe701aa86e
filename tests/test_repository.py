"""The live model repository: run directories added, replaced and removed while serving, versions,
and the OIP model repository extension (index, load, unload).

Polling is driven by hand here (`VAE_POLL_INTERVAL_S=0`, then `poll(client)`), so each test says
exactly what the server saw; one test lets the server's own poller find a new run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_checkpoint
from model.runs.checkpoint import MANIFEST, WEIGHTS, is_complete
from service.app import create_app
from service.core.repository import fingerprint, versions_on_disk
from service.settings import Settings

TINY_VARIANT_SEED = 4  # the second run: tests/conftest.py's TINY_RUN with another seed
IMAGES = np.random.default_rng(0).uniform(0, 1, (3, 784)).astype(np.float32)


def variant_run(tmp_path_factory) -> Path:
    """A second tiny run (another seed), trained once per test session whichever module asks first."""
    path = tmp_path_factory.getbasetemp() / "variant-run" / "variant"
    if is_complete(path):
        return path
    from conftest import TINY_RUN
    from model.config.train import TrainConfig
    from model.data.base import DataBundle, Split
    from model.data.loading import load_data
    from model.runs.train import train

    config = TrainConfig.of(**{**TINY_RUN, "seed": TINY_VARIANT_SEED})
    data = load_data(config)
    data = DataBundle(data.train, Split(data.validation.x[:60], data.validation.y[:60]),
                      Split(data.test.x[:200], data.test.y[:200]), data.binarize)
    return train(config, path, progress=False, data=data)


def posterior_means(run_dir: Path) -> np.ndarray:
    """What /encode must answer for IMAGES, computed in-process from the run directory."""
    model = load_checkpoint(run_dir).model
    with torch.no_grad():
        return model.posterior(torch.from_numpy(IMAGES)).mu.numpy()


def replace_by_rename(source: Path, target: Path) -> None:
    """As an operator would: copy beside the target (hidden, so never served), then swap by two renames."""
    staged = target.parent / f".{target.name}.incoming"
    shutil.copytree(source, staged)
    aside = target.parent / f".{target.name}.old"
    os.rename(target, aside)
    os.rename(staged, target)
    shutil.rmtree(aside)


@pytest.fixture(scope="module")
def run_a(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def run_b(tmp_path_factory) -> Path:
    return variant_run(tmp_path_factory)


@pytest.fixture(scope="module")
def means(run_a, run_b) -> dict[str, np.ndarray]:
    out = {"a": posterior_means(run_a), "b": posterior_means(run_b)}
    assert np.abs(out["a"] - out["b"]).max() > 1e-2, "the two runs must be told apart by their answers"
    return out


@pytest.fixture
def serve(asgi_client, tmp_path):
    """`serve({name: run_dir or {version: run_dir}}, **settings)`: a model directory laid out so, and the app."""
    def start(layout: dict, **settings):
        root = tmp_path / "models"
        root.mkdir(exist_ok=True)
        for name, source in layout.items():
            if isinstance(source, dict):
                for version, run in source.items():
                    shutil.copytree(run, root / name / version)
            else:
                shutil.copytree(source, root / name)
        client = asgi_client(create_app(Settings(model_dir=root, poll_interval_s=settings.pop("poll_interval_s", 0),
                                                 max_wait_ms=0, **settings)))
        return client, root

    return start


def poll(client) -> None:
    client.run(client.app.state.service.repository.poll_now())


def encode(client, name: str, **params):
    return client.post(f"/models/{name}/encode", json={"images": IMAGES.tolist()}, params=params)


def answered_by(response, means: dict[str, np.ndarray]) -> str:
    """Which run's exact answer a 200 /encode response is ('a' or 'b'); fails if neither's."""
    assert response.status_code == 200, response.text
    mu = np.asarray(response.json()["mu"])
    matches = [k for k, expected in means.items() if np.allclose(mu, expected, rtol=1e-5, atol=1e-5)]
    assert len(matches) == 1, f"the answer is no complete model's: {mu}"
    return matches[0]


def index(client, **body) -> list[dict]:
    response = client.post("/v2/repository/index", json=body or None)
    assert response.status_code == 200, response.text
    return response.json()


def reloads(client, model: str, outcome: str) -> float:
    text = client.get("/metrics").text
    prefix = f'vae_model_reloads_total{{model="{model}",outcome="{outcome}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


# --- added, replaced, removed -------------------------------------------------------------------

def test_a_run_added_while_serving_is_served_from_the_next_poll(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    shutil.copytree(run_b, root / ".new.incoming")
    os.rename(root / ".new.incoming", root / "new")
    assert client.post("/models/new/encode", json={"images": IMAGES.tolist()}).status_code == 404
    poll(client)
    assert answered_by(encode(client, "new"), means) == "b"
    assert answered_by(encode(client, "m"), means) == "a"
    assert [m["name"] for m in client.get("/models").json()["models"]] == ["m", "new"]
    assert reloads(client, "new", "loaded") == 1


def test_a_replaced_run_answers_from_the_next_poll_and_its_old_batchers_retire(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    assert answered_by(encode(client, "m"), means) == "a"
    service = client.app.state.service
    old = service.registry.get("m")
    assert any(key[2] == old.generation for key in service.inference.batchers)
    replace_by_rename(run_b, root / "m")
    assert answered_by(encode(client, "m"), means) == "a"  # not polled yet: the loaded copy serves
    poll(client)
    response = encode(client, "m")
    assert answered_by(response, means) == "b" and response.headers["x-model-version"] == "1"
    assert not any(key[2] == old.generation for key in service.inference.batchers)
    assert service.registry.get("m").generation != old.generation


def test_a_removed_run_goes_at_the_second_poll_without_it(serve, run_a, means):
    """One poll may fall between an operator's two renames: a directory must be missing twice."""
    client, root = serve({"m": run_a, "other": run_a})
    shutil.rmtree(root / "other")
    poll(client)
    assert answered_by(encode(client, "other"), means) == "a"
    poll(client)
    response = encode(client, "other")
    assert response.status_code == 404
    assert response.json()["error"] == "no model named 'other'; models: m"
    assert reloads(client, "other", "removed") == 1


def test_a_directory_back_before_the_second_poll_is_kept(serve, run_a, means):
    client, root = serve({"m": run_a})
    os.rename(root / "m", root / ".m.aside")
    poll(client)
    os.rename(root / ".m.aside", root / "m")
    poll(client)
    poll(client)
    assert answered_by(encode(client, "m"), means) == "a"
    assert reloads(client, "m", "removed") == 0


def test_a_poll_of_unchanged_directories_reads_no_weights(serve, run_a, monkeypatch):
    """Change detection is a stat of each run directory: no file is hashed, no model loaded."""
    import model.runs.checkpoint as checkpoint

    client, root = serve({"m": run_a, "broken": run_a})
    (root / "broken" / MANIFEST).unlink()
    poll(client)  # the failure is recorded (the copy loaded at start-up still serves); nothing changes after
    hashed = []
    monkeypatch.setattr(checkpoint, "sha256", lambda path: hashed.append(path) or "0")
    for _ in range(3):
        poll(client)
    assert hashed == []
    assert reloads(client, "broken", "failed") == 1 and reloads(client, "m", "loaded") == 1  # start-up's


def test_fingerprint_changes_with_any_file_and_with_a_renamed_directory(run_a, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    first = fingerprint(run)
    assert fingerprint(run) == first
    with open(run / "metrics.jsonl", "r+b") as f:  # same size, same bytes: still a write
        data = f.read()
        f.seek(0)
        f.write(data)
    assert fingerprint(run) != first
    second = fingerprint(run)
    shutil.copytree(run, tmp_path / "copy", copy_function=shutil.copy2)  # same names, sizes and mtimes
    os.rename(run, tmp_path / "gone")
    os.rename(tmp_path / "copy", run)
    assert fingerprint(run) != second
    assert fingerprint(tmp_path / "nothing") is None


# --- never a half-written run -----------------------------------------------------------------

def copy_in_place(source: Path, target: Path, *, skip: tuple[str, ...] = (), half_weights: bool = False) -> None:
    """Copy `source`'s files over `target`'s, the manifest first (the worst order), stopping short as told."""
    names = [MANIFEST] + sorted(p.name for p in source.iterdir() if p.name not in (MANIFEST, WEIGHTS)) + [WEIGHTS]
    for name in names:
        if name in skip:
            continue
        data = (source / name).read_bytes()
        if name == WEIGHTS and half_weights:
            data = data[: len(data) // 2]
        (target / name).write_bytes(data)


def test_a_half_written_copy_is_never_served_and_the_old_one_serves_meanwhile(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    copy_in_place(run_b, root / "m", half_weights=True)  # the new manifest, half its weights
    poll(client)
    assert answered_by(encode(client, "m"), means) == "a"
    (row,) = index(client)
    assert row["state"] == "READY" and "SHA-256" in row["reason"] and "the copy loaded before still is" in row["reason"]
    (version,) = client.get("/models/m").json()["versions"]
    assert version["ready"] and "model.safetensors" in version["note"]
    assert reloads(client, "m", "failed") == 1
    poll(client)  # the same files: not tried again
    assert reloads(client, "m", "failed") == 1
    copy_in_place(run_b, root / "m")  # the copy completes
    poll(client)
    assert answered_by(encode(client, "m"), means) == "b"
    assert index(client)[0]["reason"] == "" and "note" not in client.get("/models/m").json()["versions"][0]


def test_a_run_without_its_manifest_is_not_served(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    (root / "m" / MANIFEST).unlink()  # as a copy that writes the manifest last would, mid-way
    copy_in_place(run_b, root / "m", skip=(MANIFEST,))
    poll(client)
    assert answered_by(encode(client, "m"), means) == "a"
    assert "checkpoint.json is missing" in index(client)[0]["reason"]
    copy_in_place(run_b, root / "m")
    poll(client)
    assert answered_by(encode(client, "m"), means) == "b"


def test_a_new_run_still_being_written_is_listed_but_not_ready(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    (root / "late").mkdir()
    copy_in_place(run_b, root / "late", skip=(MANIFEST,))
    poll(client)
    response = encode(client, "late")
    assert response.status_code == 503 and "checkpoint.json is missing" in response.json()["error"]
    assert client.get("/health/ready").status_code == 200  # m still is
    copy_in_place(run_b, root / "late")
    poll(client)
    assert answered_by(encode(client, "late"), means) == "b"


def test_the_old_copy_answers_while_the_new_one_warms_up(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    repository = client.app.state.service.repository
    warming, release = threading.Event(), threading.Event()
    original = repository.warm_up

    def slow_warm_up(entry, operation):
        warming.set()
        assert release.wait(60), "the test never released the warm-up"
        return original(entry, operation)

    repository.warm_up = slow_warm_up
    replace_by_rename(run_b, root / "m")
    polling = asyncio.run_coroutine_threadsafe(repository.poll_now(), client.loop)
    try:
        assert warming.wait(60)
        for _ in range(3):
            assert answered_by(encode(client, "m"), means) == "a"
        assert index(client) == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    finally:
        release.set()
        polling.result(timeout=60)
    assert answered_by(encode(client, "m"), means) == "b"


# --- versions ---------------------------------------------------------------------------------

def test_numbered_subdirectories_are_versions_and_the_highest_ready_one_answers(serve, run_a, run_b, means):
    client, _ = serve({"v": {"1": run_a, "2": run_b}, "plain": run_a})
    body = client.get("/models/v").json()
    assert body["version"] == "2" and [(v["version"], v["ready"]) for v in body["versions"]] == [("1", True), ("2", True)]
    assert body["path"].endswith("v/2")
    assert client.get("/models/plain").json()["versions"][0]["version"] == "1"
    response = encode(client, "v")
    assert answered_by(response, means) == "b" and response.headers["x-model-version"] == "2"
    response = encode(client, "v", version="1")
    assert answered_by(response, means) == "a" and response.headers["x-model-version"] == "1"
    assert client.get("/models/v", params={"version": "1"}).json()["path"].endswith("v/1")

    infer = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(IMAGES.shape),
                         "data": IMAGES.reshape(-1).tolist()}], "outputs": [{"name": "mu"}]}
    for path, version, run in (("/v2/models/v.encode/infer", "2", "b"),
                               ("/v2/models/v.encode/versions/1/infer", "1", "a"),
                               ("/v2/models/v.encode/versions/2/infer", "2", "b")):
        body = client.post(path, json=infer).json()
        assert body["model_version"] == version
        mu = np.asarray(body["outputs"][0]["data"]).reshape(means[run].shape)
        np.testing.assert_allclose(mu, means[run], rtol=1e-5, atol=1e-5)
    assert client.get("/v2/models/v.encode").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/v.encode/versions/1/ready").status_code == 200

    missing = client.get("/v2/models/v.encode/versions/7")
    assert missing.status_code == 404
    assert missing.json()["error"] == "model 'v' has no version '7'; versions: 1, 2"
    assert encode(client, "v", version="7").status_code == 404
    assert client.get("/v2/models/plain.encode/versions/2").status_code == 404


def test_versions_sort_as_numbers_and_others_are_ignored(run_a, tmp_path):
    model = tmp_path / "v"
    for name in ("2", "10", "01", "latest", ".5"):
        (model / name).mkdir(parents=True)
    assert list(versions_on_disk(model)) == ["2", "10"]
    shutil.copytree(run_a, tmp_path / "run")
    (tmp_path / "run" / "3").mkdir()  # a run directory is one, whatever it holds
    assert versions_on_disk(tmp_path / "run") == {"1": tmp_path / "run"}


def test_a_new_version_is_served_only_once_complete(serve, run_a, run_b, means):
    client, root = serve({"v": {"1": run_a}})
    (root / "v" / "2").mkdir()
    copy_in_place(run_b, root / "v" / "2", half_weights=True)
    poll(client)
    assert answered_by(encode(client, "v"), means) == "a"
    not_ready = encode(client, "v", version="2")
    assert not_ready.status_code == 503 and "model 'v version 2' is not ready" in not_ready.json()["error"]
    rows = index(client)
    assert [(r["version"], r["state"]) for r in rows] == [("1", "READY"), ("2", "UNAVAILABLE")]
    assert "SHA-256" in rows[1]["reason"]
    assert index(client, ready=True) == [rows[0]]
    copy_in_place(run_b, root / "v" / "2")
    poll(client)
    response = encode(client, "v")
    assert answered_by(response, means) == "b" and response.headers["x-model-version"] == "2"
    shutil.rmtree(root / "v" / "2")  # a version withdrawn: the one before answers again
    poll(client)
    poll(client)
    response = encode(client, "v")
    assert answered_by(response, means) == "a" and response.headers["x-model-version"] == "1"


# --- the repository extension -------------------------------------------------------------------

def test_index_lists_every_model_on_disk_even_before_a_poll(serve, run_a):
    client, root = serve({"m": run_a})
    shutil.copytree(run_a, root / "later")
    assert index(client) == [
        {"name": "later", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded yet: found since the last poll"},
        {"name": "m", "version": "1", "state": "READY", "reason": ""}]
    assert client.post("/v2/repository/index").status_code == 200  # the body is optional
    assert index(client, ready=True) == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    assert "model_repository" in client.get("/v2").json()["extensions"]


def test_unload_holds_across_polls_until_load(serve, run_a, run_b, means):
    client, root = serve({"m": run_a, "n": run_a})
    response = client.post("/v2/repository/models/m/unload")
    assert response.status_code == 200
    assert response.json() == [{"name": "m", "state": "UNAVAILABLE", "reason": "unloaded", "version": "1"}]
    refused = encode(client, "m")
    assert refused.status_code == 503 and "POST /v2/repository/models/m/load" in refused.json()["error"]
    assert client.get("/v2/models/m.encode/ready").status_code == 503
    assert not any(key[0] == "m" for key in client.app.state.service.inference.batchers)
    replace_by_rename(run_b, root / "m")  # even a change on disk does not bring it back
    poll(client)
    assert encode(client, "m").status_code == 503
    assert client.post("/v2/repository/models/m/unload").status_code == 200  # again: nothing to do
    loaded = client.post("/v2/repository/models/m/load", json={"parameters": {}})
    assert loaded.status_code == 200 and loaded.json() == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    assert answered_by(encode(client, "m"), means) == "b"
    poll(client)
    assert answered_by(encode(client, "m"), means) == "b"


def test_unloading_every_model_makes_the_server_unready(serve, run_a):
    client, _ = serve({"m": run_a})
    client.post("/v2/repository/models/m/unload")
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and "unloaded" in ready.json()["reason"]
    client.post("/v2/repository/models/m/load")
    assert client.get("/health/ready").status_code == 200


def test_load_serves_a_new_run_without_polling_and_reports_what_failed(serve, run_a, run_b, means):
    client, root = serve({"m": run_a})
    shutil.copytree(run_b, root / "fresh")
    assert client.post("/v2/repository/models/fresh/load").status_code == 200
    assert answered_by(encode(client, "fresh"), means) == "b"
    (root / "fresh" / WEIGHTS).write_bytes(b"not the weights")
    failed = client.post("/v2/repository/models/fresh/load")
    assert failed.status_code == 400
    assert failed.json()["error"].startswith("model 'fresh' could not be loaded entirely: version 1: ")
    assert "model.safetensors" in failed.json()["error"] and "the copy loaded before still is" in failed.json()["error"]
    assert answered_by(encode(client, "fresh"), means) == "b"


@pytest.mark.parametrize("path", ["/v2/repository/models/nope/load", "/v2/repository/models/nope/unload",
                                  "/v2/repository/models/.hidden/load"])
def test_unknown_models_are_404_naming_the_known_ones(serve, run_a, path):
    client, root = serve({"m": run_a})
    (root / ".hidden").mkdir()
    response = client.post(path)
    assert response.status_code == 404
    name = path.split("/")[-2]
    assert response.json()["error"] == (f"no model named {name!r} in the repository {root} (no directory "
                                        f"{root / name}); models: m")


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 422, "body: expected a JSON object, got invalid JSON"),
    (b"[]", 422, "body: expected a JSON object, got list"),
    (b'{"parameters": {"config": "{}"}}', 400, "parameters.config: not supported"),
    (b'{"parameters": {"file:1/model.safetensors": "AAAA"}}', 400, "parameters.file:1/model.safetensors: not supported"),
    (b'{"parameters": {"speed": 1}}', 422, "parameters.speed: not a known parameter; expected none"),
    (b'{"parameters": []}', 422, "parameters"),
])
def test_bad_load_requests(serve, run_a, body, status, fragment):
    client, _ = serve({"m": run_a})
    response = client.post("/v2/repository/models/m/load", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and fragment in response.json()["error"], response.text
    assert answered_by(encode(client, "m"), {"a": posterior_means(run_a)}) == "a"


def test_index_rejects_a_ready_that_is_no_boolean(serve, run_a):
    client, _ = serve({"m": run_a})
    response = client.post("/v2/repository/index", json={"ready": "perhaps"})
    assert response.status_code == 422 and response.json()["error"].startswith("ready: ")


def test_the_repository_needs_the_token(serve, run_a):
    client, _ = serve({"m": run_a}, api_token="s3cret")
    for path in ("/v2/repository/index", "/v2/repository/models/m/load", "/v2/repository/models/m/unload"):
        response = client.post(path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
        assert client.post(path, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v2/repository/index", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/models/m/encode", json={"images": IMAGES.tolist()},
                       headers={"authorization": "Bearer s3cret"}).status_code == 200  # nothing was unloaded


# --- the poller itself --------------------------------------------------------------------------

def test_the_server_polls_by_itself_and_stops_with_it(run_a, run_b, means, tmp_path):
    from conftest import AsgiClient

    root = tmp_path / "models"
    shutil.copytree(run_a, root / "m")
    client = AsgiClient(create_app(Settings(model_dir=root, poll_interval_s=0.05, max_wait_ms=0)))
    try:
        shutil.copytree(run_b, root / ".new")
        os.rename(root / ".new", root / "new")
        deadline = time.monotonic() + 60
        while encode(client, "new").status_code == 404:
            assert time.monotonic() < deadline, "the poller did not pick up the new run"
            time.sleep(0.05)
        assert answered_by(encode(client, "new"), means) == "b"
        metrics = client.get("/metrics").text
        assert "vae_repository_polls_total" in metrics and 'vae_model_reloads_total{model="new",outcome="loaded"} 1.0' in metrics
    finally:
        client.close()  # the lifespan's shutdown stops the poller and its thread
    repository = client.app.state.service.repository
    assert repository.stopping.is_set() and repository.executor._shutdown
    assert not [t for t in repository.executor._threads if t.is_alive()]
