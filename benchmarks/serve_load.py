"""Serving throughput and latency under load, against baselines measured in the same run.

Starts `vae serve` (uvicorn, one process) with the benchmark endpoints on, drives it with
concurrent keep-alive connections and prints requests/s, images/s and p50/p99 latency:

(a) single-image `POST /models/{name}/elbo` at concurrency 1, 8 and 32, next to
    `POST /benchmark/noop` (reads and parses the same JSON body, runs nothing): the HTTP floor.
    Target: at concurrency 32, at least 70% of the floor's throughput.
(b) requests of 256 images (as JSON lists and as PNG files, base64 in JSON or a multipart upload,
    on REST; as binary FP32 tensors on OIP) next to the same operation called in-process on a
    tensor (`model.elbo_terms`, no HTTP, no JSON, no decoding).
    Target: at least 50% of the in-process images/second.

Each configuration and its baseline alternate in short slices (`--rounds`), so that load from
other jobs on a shared machine falls on both alike.

The client is a minimal asyncio HTTP/1.1 client over raw sockets with pre-built requests, so the
load generator costs little next to the server (they share the machine's cores). Every response's
status is checked. The model is the course's architecture (784-256-128-2·latent), trained for one
epoch on the embedded digits if --model-dir is not given (its weights do not change the costs).

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py                   # trains a model first
    python benchmarks/serve_load.py --model-dir runs --model default --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(path: str, body: bytes, content_type: str = "application/json", extra: dict | None = None) -> bytes:
    headers = {"Host": "127.0.0.1", "Content-Type": content_type, "Content-Length": str(len(body)),
               "Connection": "keep-alive", **(extra or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: np.ndarray  # seconds

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000)

    def __add__(self, other: "LoadResult") -> "LoadResult":
        return LoadResult(self.requests + other.requests, self.seconds + other.seconds,
                          np.concatenate([self.latencies, other.latencies]))


def interleaved(first, second, rounds: int) -> tuple[LoadResult, LoadResult]:
    """Alternate short slices of two measurements, so that a change in the machine's load (it is
    shared) falls on both alike; returns the two totals."""
    totals = [None, None]
    for _ in range(rounds):
        for i, measure in enumerate((first, second)):
            result = measure()
            totals[i] = result if totals[i] is None else totals[i] + result
    return totals[0], totals[1]


async def drive(port: int, request: bytes, concurrency: int, seconds: float, warmup: float = 0.5) -> LoadResult:
    """`concurrency` connections, each sending `request` back to back for `seconds` (after a warm-up).

    Each connection has at least one request measured, and the time measured runs until the last
    measured response, so that requests longer than the slice (IWAE over 256 uploads on a busy
    machine) are counted at their real rate."""
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds
    last_response = stop

    async def worker():
        nonlocal last_response
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        measured = 0
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop and measured:
                    return
                writer.write(request)
                status, body = await read_response(reader)
                if status != 200:
                    raise RuntimeError(f"status {status}: {body[:300]!r}")
                if sent >= measure_from:
                    received = time.perf_counter()
                    latencies.append(received - sent)
                    last_response = max(last_response, received)
                    measured += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), last_response - measure_from, np.asarray(latencies))


def wait_ready(process: subprocess.Popen, base: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready after {timeout} s")


def train_model(root: Path) -> str:
    from model import TrainConfig
    from model.runs.train import train

    print("training the course's architecture for one epoch (the benchmark measures serving, not the fit)...",
          flush=True)
    train(TrainConfig.of(epochs=1, train_subset=1000, eval_k=10, calibration_k=10, device="cpu"), root / "bench",
          progress=False)
    return "bench"


def in_process(run_dir: Path, images: np.ndarray, operation: str, k: int, threads: int):
    """A function measuring the operation on a ready tensor in this process for some seconds: the
    upper bound serving is measured against."""
    import torch

    from model import load_checkpoint
    from model.core.objectives import iwae_bound

    torch.set_num_threads(threads)
    model = load_checkpoint(run_dir).model
    x = torch.from_numpy(images)
    run = (lambda: model.elbo_terms(x)) if operation == "elbo" else (lambda: iwae_bound(model, x, k))

    def measure(seconds: float) -> LoadResult:
        latencies = []
        with torch.no_grad():
            run()
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                began = time.perf_counter()
                run()
                latencies.append(time.perf_counter() - began)
        return LoadResult(len(latencies), time.perf_counter() - start, np.asarray(latencies))

    return measure


def row(label: str, result: LoadResult, images_per_request: int = 1) -> str:
    return (f"{label:<44} {result.throughput:9.1f} req/s {result.throughput * images_per_request:10.0f} img/s "
            f"  p50 {result.percentile(50):7.1f} ms  p99 {result.percentile(99):7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    import torch

    from model.io.images import encode_png

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="a model directory (default: train one)")
    parser.add_argument("--model", default=None, help="the run to load (default: the only one)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices each configuration and its baseline alternate in (the machine may be shared)")
    parser.add_argument("--batch-images", type=int, default=256)
    parser.add_argument("--k", type=int, default=100, help="importance samples for the IWAE rows of (b)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads, the same for the server and the in-process baseline")
    args = parser.parse_args(argv)

    scratch = tempfile.TemporaryDirectory(prefix="serve-load-")
    model_dir = args.model_dir or Path(scratch.name)
    name = args.model or (train_model(model_dir) if args.model_dir is None else
                          next(p.name for p in sorted(model_dir.iterdir()) if (p / "checkpoint.json").exists()))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VAE_BENCHMARK_ENDPOINTS": "1", "VAE_LOG_LEVEL": "warning", "VAE_MAX_BATCH_SIZE": "256",
           "VAE_MAX_QUEUE": "1024", "VAE_TORCH_THREADS": str(args.torch_threads)}
    server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--model-dir", str(model_dir),
                               "--host", "127.0.0.1", "--port", str(port)], env=env)
    try:
        wait_ready(server, base)
        settings = {k: v for k, v in env.items() if k.startswith("VAE_")}
        print(f"server: vae serve, one uvicorn process, model {name!r}, {os.cpu_count()} CPUs, settings {settings}")
        rng = np.random.default_rng(0)

        print(f"\n(a) single-image requests, same JSON payload, {args.seconds:g} s each")
        single = json.dumps({"images": rng.uniform(0, 1, (1, 784)).round(4).tolist()}).encode()
        ratios = {}
        slice_s = args.seconds / args.rounds
        for concurrency in (1, 8, 32):
            floor, elbo = interleaved(
                lambda: asyncio.run(drive(port, http_request("/benchmark/noop", single), concurrency, slice_s, 0.2)),
                lambda: asyncio.run(drive(port, http_request(f"/models/{name}/elbo", single), concurrency, slice_s, 0.2)),
                args.rounds)
            ratios[concurrency] = elbo.throughput / floor.throughput
            print(row(f"noop   (HTTP floor)      concurrency {concurrency:>2}", floor))
            print(row(f"elbo                     concurrency {concurrency:>2}", elbo))
            print(f"{'':<44} elbo / floor = {ratios[concurrency]:.2f}")

        n = args.batch_images
        images = rng.uniform(0, 1, (n, 784)).astype(np.float32)
        print(f"\n(b) requests of {n} images, {args.seconds:g} s each; in-process = the library call on a tensor")
        rest_body = json.dumps({"images": images.round(4).tolist()}).encode()

        def oip_request(operation: str, parameters: dict) -> bytes:
            header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [n, 784],
                                             "parameters": {"binary_data_size": images.nbytes}}],
                                 "parameters": parameters}).encode()
            return http_request(f"/v2/models/{name}.{operation}/infer", header + images.tobytes(),
                                "application/octet-stream", {"Inference-Header-Content-Length": str(len(header))})

        # The same images as 8-bit PNG files: as base64 strings in JSON (images_png) and as a
        # multipart/form-data upload of n files (the bulk paths of the REST API).
        pngs = [encode_png(torch.from_numpy(image.reshape(1, 28, 28))) for image in images]
        png_json = json.dumps({"images_png": [base64.b64encode(png).decode("ascii") for png in pngs]}).encode()
        boundary = "vae-lab-bench-boundary"
        multipart = b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n" for i, png in enumerate(pngs)
        ) + f"--{boundary}--\r\n".encode()
        multipart_type = f"multipart/form-data; boundary={boundary}"

        results = {}
        for operation, parameters in (("elbo", {}), ("iwae", {"k": args.k})):
            label = operation if operation == "elbo" else f"iwae k={args.k}"
            local = in_process(model_dir / name, images, operation, args.k, args.torch_threads)
            runs = [("OIP binary", oip_request(operation, parameters), 1), ("OIP binary", oip_request(operation, parameters), 4)]
            if operation == "elbo":
                runs[:0] = [("REST JSON", http_request(f"/models/{name}/elbo", rest_body), 1),
                            ("REST PNG b64", http_request(f"/models/{name}/elbo", png_json), 1),
                            ("REST PNG form", http_request(f"/models/{name}/elbo", multipart, multipart_type), 1),
                            ("REST PNG form", http_request(f"/models/{name}/elbo", multipart, multipart_type), 2)]
            else:
                query = f"/models/{name}/iwae"
                runs += [("REST PNG form", http_request(query, multipart.replace(
                    f"--{boundary}--".encode(), f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n"
                    f"{args.k}\r\n--{boundary}--".encode()), multipart_type), 1)]
            # IWAE calls take about a second: longer, fewer slices.
            rounds = args.rounds if operation == "elbo" else 1
            slice_s = args.seconds / rounds
            for transport, request, concurrency in runs:
                baseline, served = interleaved(lambda: local(slice_s),
                                               lambda: asyncio.run(drive(port, request, concurrency, slice_s, 0.2)),
                                               rounds)
                ratio = served.throughput / baseline.throughput
                results[(label, transport, concurrency)] = ratio
                print(row(f"{label} in-process (interleaved)", baseline, n))
                print(row(f"{label} {transport:<11} concurrency {concurrency}", served, n))
                print(f"{'':<44} served / in-process = {ratio:.2f}")

        print("\nsummary")
        print(f"  (a) elbo / HTTP floor at concurrency 32: {ratios[32]:.2f} (target >= 0.70)")
        for (label, transport, concurrency), ratio in results.items():
            print(f"  (b) {label}, {transport}, concurrency {concurrency}: {ratio:.2f} of in-process img/s (target >= 0.50)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
