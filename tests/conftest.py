"""Fixtures shared across the test suite: a tiny trained run (once per test run), a way to drive
the service's ASGI app from synchronous tests, and `vae serve` in its own process."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

TINY_RUN = dict(hidden=(32,), latent_features=2, epochs=1, batch_size=128, train_subset=500,
                eval_k=10, calibration_k=10, seed=3, device="cpu")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run directory of a tiny Gaussian VAE on the embedded data, trained once per session.

    Treat it as read-only; copy it (`shutil.copytree`) to damage or extend it.
    """
    from model.config.train import TrainConfig
    from model.data.base import DataBundle, Split
    from model.data.loading import load_data
    from model.runs.train import train

    config = TrainConfig.of(**TINY_RUN)
    data = load_data(config)
    # Fewer held-out images than the data set has: evaluation and calibration dominate the time.
    data = DataBundle(data.train, Split(data.validation.x[:60], data.validation.y[:60]),
                      Split(data.test.x[:200], data.test.y[:200]), data.binarize)
    return train(config, tmp_path_factory.mktemp("tiny-run") / "tiny", progress=False, data=data)


@pytest.fixture(scope="session")
def small_data():
    """The embedded digits cut small (512 training, 64 validation, 200 test images), for tests that
    train whole runs and compare them."""
    from model.config.train import TrainConfig
    from model.data.base import DataBundle, Split
    from model.data.loading import load_data

    data = load_data(TrainConfig.of(dataset="embedded", train_subset=512, device="cpu"))
    return DataBundle(data.train, Split(data.validation.x[:64], data.validation.y[:64]),
                      Split(data.test.x[:200], data.test.y[:200]), data.binarize)


@pytest.fixture(scope="session")
def model_dir(tiny_run, tmp_path_factory) -> Path:
    """A model directory holding only the tiny run, named `tiny`."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_run, root / "tiny")
    return root


class AsgiClient:
    """Drives an ASGI app (lifespan included) on its own event loop thread, through httpx.

    `client.get(...)`/`client.post(...)` are synchronous; `client.gather([...])` sends several
    requests concurrently, so the app sees them at once (dynamic batching).
    """

    def __init__(self, app):
        import httpx

        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._lifespan = app.router.lifespan_context(app)
        self.run(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                                        timeout=60)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def request(self, method: str, url: str, **kwargs):
        return self.run(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)

    def gather(self, requests: list[tuple[str, str, dict]]):
        """Send (method, url, kwargs) requests concurrently; responses in the same order."""
        async def all_at_once():
            return await asyncio.gather(*(self.client.request(m, u, **kw) for m, u, kw in requests))

        return self.run(all_at_once())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.client.aclose())
        self.run(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def asgi_client():
    """A factory: `asgi_client(app)` starts the app's lifespan and returns an `AsgiClient`,
    closed (lifespan shutdown included) at the end of the session."""
    clients = []

    def start(app) -> AsgiClient:
        client = AsgiClient(app)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="session")
def live_server():
    """A factory: `live_server(model_dir, **env)` runs `vae serve` over `model_dir` on a free port of
    127.0.0.1 (with the extra `VAE_*` environment given) and returns `(process, port, base_url)` once
    /health/ready answers 200. Servers still running at the end of the session are killed."""
    processes = []

    def start(model_dir: Path, **env: str) -> tuple[subprocess.Popen, int, str]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "model", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
             "--port", str(port)],
            env={**os.environ, "VAE_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited early ({process.returncode}):\n{process.stdout.read()}")
            try:
                if _status(f"{base}/health/ready") == 200:
                    return process, port, base
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        process.kill()
        pytest.fail("the server did not become ready within 120 s")

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def browser_host() -> str:
    """The name `chrome` reaches the server by: not a loopback name, so pages behave as deployed."""
    return "vae-browser.test"


@pytest.fixture
def chrome(monkeypatch, browser_host):
    """Debian's headless Chromium through Selenium, able to resolve only `browser_host` (to 127.0.0.1):
    no request can leave this machine. Its performance log records every request a page makes.

    Skipped without chromium and chromedriver on PATH (Debian: apt-get install chromium
    chromium-driver), unless VAE_REQUIRE_BROWSER=1 (as in CI), which makes it fail instead.
    """
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not on PATH (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("VAE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VAE_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-proxy-server",
                 f"--host-resolver-rules=MAP {browser_host} 127.0.0.1, MAP * ~NOTFOUND"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield browser
    browser.quit()


@pytest.fixture
def requested_urls(chrome):
    """Every URL the `chrome` browser has requested so far (read from its performance log)."""
    import json

    def read() -> set[str]:
        urls = set()
        for entry in chrome.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.add(message["params"]["request"]["url"])
        return urls

    return read


def mean_noise():
    """Deterministic 'noise' for the `model.core.noise.Noise` interface: every Gaussian draw is its mean
    and every uniform one 1/2, so a bound from it has no sampling error (the M2 and ADGM tests)."""
    import torch

    from model.core.noise import Noise

    class MeanNoise(Noise):
        def normal(self, sample_shape, batch_size, event_shape, *, device, dtype=torch.float32):
            return torch.zeros((*sample_shape, batch_size, *event_shape), device=device, dtype=dtype)

        def uniform(self, sample_shape, batch_size, event_shape, *, device, dtype=torch.float32):
            return torch.full((*sample_shape, batch_size, *event_shape), 0.5, device=device, dtype=dtype)

    return MeanNoise()
