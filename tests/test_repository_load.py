"""Replacing a model's run directory under load loses no request, and every answer comes from a
complete model.

`vae serve` runs in its own process on 127.0.0.1, polling its model directory every 0.2 s; 16
client threads call /encode on a fixed input for VAE_LOAD_TEST_SECONDS (30 by default) while the
run directory is replaced three times: by a copy renamed into place (run b), by copying run a's
files over it in place, the manifest first and the weights in two halves some polls apart (the
half-written state a poll must never serve), and by a rename again (run b). Every response must
be a 200 whose posterior means are exactly those of run a or run b, computed here in-process.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.runs.checkpoint import MANIFEST, WEIGHTS
from test_repository import IMAGES, posterior_means, replace_by_rename, variant_run

CLIENTS = 16
POLL_INTERVAL_S = 0.2


def seconds() -> float:
    return float(os.environ.get("VAE_LOAD_TEST_SECONDS", "30"))


class Clients:
    """CLIENTS threads posting /encode until stopped, each recording what every response was."""

    def __init__(self, base: str, means: dict[str, np.ndarray]):
        self.base, self.means = base, means
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: dict[str, int] = {name: 0 for name in means}
        self.failures: list[str] = []
        self.latest: dict[int, str] = {}  # thread -> the run that answered its last request
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def which(self, mu) -> str | None:
        mu = np.asarray(mu)
        matches = [k for k, v in self.means.items() if mu.shape == v.shape and np.allclose(mu, v, rtol=1e-5, atol=1e-5)]
        return matches[0] if len(matches) == 1 else None

    def _run(self, i: int) -> None:
        body = {"images": IMAGES.tolist()}
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/models/m/encode", json=body)
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                else:
                    run = self.which(response.json().get("mu")) if response.status_code == 200 else None
                    problem = None if run else f"{response.status_code}: {response.text[:300]}"
                with self.lock:
                    if problem is None:
                        self.answers[run] += 1
                        self.latest[i] = run
                    else:
                        self.failures.append(problem)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def wait_until_all_answer(self, run: str, timeout: float = 60) -> None:
        """Until every client's latest answer came from `run` (the swap is complete for everyone)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self.latest.clear()
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.latest) == CLIENTS and set(self.latest.values()) == {run}:
                    return
            time.sleep(0.05)
        pytest.fail(f"run {run} did not take over within {timeout} s: {self.latest}")


def copy_in_place_slowly(source: Path, target: Path, index) -> list[dict]:
    """Copy `source`'s files over `target`'s, manifest first and weights in two halves several polls
    apart; returns the repository index seen while the copy was half-written."""
    names = [MANIFEST] + sorted(p.name for p in source.iterdir() if p.name not in (MANIFEST, WEIGHTS))
    for name in names:
        (target / name).write_bytes((source / name).read_bytes())
    weights = (source / WEIGHTS).read_bytes()
    with open(target / WEIGHTS, "wb") as f:
        f.write(weights[: len(weights) // 2])
        f.flush()
        time.sleep(5 * POLL_INTERVAL_S)
        seen = index()
        time.sleep(5 * POLL_INTERVAL_S)
        f.write(weights[len(weights) // 2:])
    return seen


def test_replacing_a_run_under_load_loses_no_request(tiny_run, tmp_path_factory, tmp_path, live_server):
    run_a, run_b = tiny_run, variant_run(tmp_path_factory)
    means = {"a": posterior_means(run_a), "b": posterior_means(run_b)}
    assert np.abs(means["a"] - means["b"]).max() > 1e-2
    root = tmp_path / "models"
    root.mkdir()
    replace_target = root / "m"
    shutil.copytree(run_a, replace_target)
    process, _, base = live_server(root, VAE_POLL_INTERVAL_S=str(POLL_INTERVAL_S), VAE_MAX_QUEUE="1024")

    def index() -> list[dict]:
        return httpx.post(f"{base}/v2/repository/index", timeout=30).json()

    clients = Clients(base, means)
    started = time.monotonic()
    clients.start()
    try:
        phase = seconds() / 4
        time.sleep(phase)
        replace_by_rename(run_b, replace_target)  # 1: a copy renamed into place
        clients.wait_until_all_answer("b")

        time.sleep(max(0.0, started + 2 * phase - time.monotonic()))
        half_written = copy_in_place_slowly(run_a, replace_target, index)  # 2: a copy written in place
        clients.wait_until_all_answer("a")
        (row,) = half_written
        assert row["state"] == "READY" and "not served" in row["reason"] and "SHA-256" in row["reason"], row

        time.sleep(max(0.0, started + 3 * phase - time.monotonic()))
        replace_by_rename(run_b, replace_target)  # 3: renamed into place again
        clients.wait_until_all_answer("b")
        time.sleep(max(0.0, started + 4 * phase - time.monotonic()))
    finally:
        clients.join()
    assert process.poll() is None, "the server died"

    total = sum(clients.answers.values())
    assert clients.failures == [], f"{len(clients.failures)} of {total + len(clients.failures)} requests failed: " \
                                   f"{clients.failures[:5]}"
    assert clients.answers["a"] > 0 and clients.answers["b"] > 0
    final = httpx.post(f"{base}/models/m/encode", json={"images": IMAGES.tolist()}, timeout=30)
    assert clients.which(final.json()["mu"]) == "b" and final.headers["x-model-version"] == "1"
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'vae_model_reloads_total{model="m",outcome="loaded"} 4.0' in metrics  # start-up and three swaps
