"""The service as it runs in production: `vae serve` (uvicorn) in its own process on 127.0.0.1, a
stock Open Inference Protocol client against it, and SIGTERM while a request is in flight."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import free_port

rng = np.random.default_rng(1)
IMAGES = rng.uniform(0, 1, (2, 784)).astype(np.float32)


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_json(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(model_dir, live_server):
    process, port, base = live_server(model_dir, VAE_SHUTDOWN_TIMEOUT_S="60")
    yield process, port, base
    if process.poll() is None:
        process.kill()
        process.wait()


def test_rest_over_a_real_socket(server):
    _, _, base = server
    status, body = post_json(f"{base}/models/tiny/elbo", {"images": IMAGES.tolist(), "seed": 1})
    assert status == 200 and len(body["elbo"]) == 2
    status, body = post_json(f"{base}/models/tiny/elbo", {"images": [[2.0] * 784]})
    assert status == 422 and "[0, 1]" in body["error"]


def test_a_stock_oip_client(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    _, port, base = server
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny.elbo")
    metadata = client.get_model_metadata("tiny.encode")
    assert metadata["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}  # flat also taken

    images = httpclient.InferInput("images", list(IMAGES.shape), "FP32")
    images.set_data_from_numpy(IMAGES)  # binary tensor data, the client's default
    result = client.infer("tiny.elbo", [images], parameters={"seed": 1})
    elbo = result.as_numpy("elbo")
    assert elbo.shape == (2,) and elbo.dtype == np.float32
    _, rest = post_json(f"{base}/models/tiny/elbo", {"images": IMAGES.tolist(), "seed": 1})
    np.testing.assert_allclose(elbo, rest["elbo"], rtol=1e-6)

    as_json = httpclient.InferInput("images", list(IMAGES.shape), "FP32")
    as_json.set_data_from_numpy(IMAGES, binary_data=False)
    wanted = [httpclient.InferRequestedOutput("mu", binary_data=False), httpclient.InferRequestedOutput("z")]
    encoded = client.infer("tiny.encode", [as_json], outputs=wanted, parameters={"num_samples": 3, "seed": 0})
    assert encoded.as_numpy("mu").shape == (2, 2) and encoded.as_numpy("z").shape == (2, 3, 2)
    assert encoded.as_numpy("sigma") is None  # not asked for

    n = httpclient.InferInput("n", [1], "INT64")
    n.set_data_from_numpy(np.array([4], dtype=np.int64))
    sample = client.infer("tiny.sample", [n], parameters={"seed": 3})
    assert sample.as_numpy("probs").shape == (4, 784)

    anomaly = client.infer("tiny.anomaly", [images])
    assert anomaly.as_numpy("is_anomaly").dtype == np.bool_ and anomaly.as_numpy("threshold").shape == (1,)

    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("nope.elbo", [images])
    client.close()


def test_sigterm_finishes_the_request_in_flight_then_exits(server):
    process, port, base = server
    slow = {"images": rng.uniform(0, 1, (64, 784)).tolist(), "k": 5000, "seed": 0}
    result = {}

    def call():
        result["status"], result["body"] = post_json(f"{base}/models/tiny/iwae", slow, timeout=120)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the slow request is inside the server
        metrics = get(f"{base}/metrics")[1].decode()
        in_flight = float(re.search(r"^vae_requests_in_flight (\S+)$", metrics, re.M).group(1))
        if in_flight >= 2:  # this /metrics request and the slow one
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert result.get("status") == 200, result
    assert len(result["body"]["log_px"]) == 64 and result["body"]["k"] == 5000
    assert process.wait(timeout=60) == 0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(f"{base}/health/live", timeout=2)


def test_serving_imports_no_training_libraries(model_dir):
    """`uvicorn service.main:app` path: nothing built at import; serving (and `vae serve`'s parser)
    works without torchvision, matplotlib, scikit-learn, tqdm or mlxtend, which the serve image lacks:
    here they cannot be imported at all."""
    script = textwrap.dedent(f"""
        import asyncio, sys

        class Absent:  # as in the serve image: these are not installed
            NAMES = ("torchvision", "matplotlib", "sklearn", "tqdm", "mlxtend")

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.NAMES:
                    raise ImportError(f"{{name}} is not installed in the serve image")
                return None

        sys.meta_path.insert(0, Absent())
        import httpx
        from model.cli.main import build_parser
        build_parser()  # what `vae serve` runs first
        import service.main
        assert "app" not in vars(service.main), "the app was built at import"
        app = service.main.app

        async def main():
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    image = [[0.5] * 784]
                    for op, body in [("encode", {{"images": image, "num_samples": 1}}), ("decode", {{"z": [[0, 0]]}}),
                                     ("sample", {{"n": 1, "png": True}}), ("reconstruct", {{"images": image}}),
                                     ("elbo", {{"images": image}}), ("iwae", {{"images": image}}),
                                     ("classify", {{"images": image}}), ("anomaly", {{"images": image}})]:
                        response = await client.post(f"/models/tiny/{{op}}", json=body)
                        assert response.status_code == 200, (op, response.text)

        asyncio.run(main())
        print(sorted(m for m in Absent.NAMES if sys.modules.get(m) is not None))
    """)
    env = {**os.environ, "VAE_MODEL_DIR": str(model_dir), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("layout, expected", [
    ("missing", "vae serve: error: the model directory {root} does not exist; expected a folder of run "
                "directories written by `vae train --out {root}/NAME`\n"),
    ("empty", "vae serve: error: the model directory {root} holds no run directories and VAE_POLL_INTERVAL_S "
              "is 0, so none added later would be served; train one first with `vae train --out {root}/NAME`, "
              "or poll for it (VAE_POLL_INTERVAL_S > 0)\n"),
    ("file", "vae serve: error: the model directory {root} is not a directory; expected a folder of run "
             "directories written by `vae train --out {root}/NAME`\n"),
])
def test_serve_refuses_a_model_directory_with_nothing_to_serve(layout, expected, tmp_path, monkeypatch, capsys):
    """One line on stderr and exit status 2, before uvicorn starts (it would answer 503 forever)."""
    import uvicorn

    from model.cli.main import main

    root = tmp_path / "models"
    if layout == "empty":
        (root / ".cache").mkdir(parents=True)  # hidden directories are not runs
        (root / "notes.txt").write_text("not a run")
    elif layout == "file":
        root.write_text("not a directory")

    def run(*args, **kwargs):
        raise AssertionError("uvicorn started over a model directory with nothing to serve")

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("VAE_POLL_INTERVAL_S", "0")  # polling, an empty directory is served once filled (below)
    assert main(["serve", "--model-dir", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.err == expected.format(root=root)
    assert captured.out == ""


def test_a_polling_server_over_an_empty_directory_waits_unready_and_serves_the_first_run(tiny_run, tmp_path):
    """Started before any run exists (a pod before its training Job), /health/ready answers 503 naming
    the empty directory; a run renamed into place is served without a restart."""
    root = tmp_path / "models"
    root.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "model", "serve", "--model-dir", str(root), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "VAE_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", "VAE_POLL_INTERVAL_S": "0.2"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, body = _wait_for(f"{base}/health/ready", lambda code: code is not None, process)
        assert status == 503, body
        assert str(root) in body
        staging = tmp_path / "staging"
        shutil.copytree(tiny_run, staging)
        staging.rename(root / "tiny")
        status, body = _wait_for(f"{base}/health/ready", lambda code: code == 200, process)
        assert "tiny" in body
        request = urllib.request.Request(f"{base}/models/tiny/elbo", method="POST",
                                         data=json.dumps({"images": [[[[0.0] * 28] * 28]]}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            assert len(json.loads(response.read())["elbo"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_for(url: str, done, process, timeout: float = 120) -> tuple[int | None, str]:
    """(status, body) of GET url once done(status) holds; fails if the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, body = None, ""
        if done(status):
            return status, body
        time.sleep(0.2)
    pytest.fail(f"{url}: the condition did not hold within {timeout} s")
