"""Images/s of a folder's two paths: decoded into memory, and streamed from the decoded disk cache.

    .venv/bin/python scripts/bench_folder_loading.py [--images 5000] [--size 64] [--workers 2] [--out JSON]

Writes a folder of real MNIST digits (the embedded set), coloured and resized to size × size, as
PNG files into a temporary directory, then measures in the same run:
  - loading it into memory (decode + preprocess, `--data-workers` processes);
  - loading it streamed (`--memory-budget 0`): the first time decodes into the disk cache, the
    second time only maps the cache;
  - epochs of training batches (batch 64, scaled to float) from each, the fastest of five.
and prints each path's images/s and the streamed/in-memory ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int) -> None:
    from model.data.loading import load_raw

    train, _ = load_raw("embedded", None)
    rng = np.random.default_rng(0)
    tints = rng.uniform(0.3, 1.0, size=(10, 3))
    for i in range(n):
        j = i % len(train)
        grey = (train.x[j, 0].numpy() * 255).astype(np.uint8)
        label = int(train.y[j])
        rgb = (grey[..., None] * tints[label]).astype(np.uint8)
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size), Image.BILINEAR).save(folder / f"{i:06d}.png")


def epoch_rate(split, repeats: int = 5) -> float:
    """Images/s of the fastest of `repeats` epochs of training batches (the least disturbed by other work)."""
    from model.data.batches import training_batches

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        seen = sum(x.shape[0] for x, _ in training_batches(split, 64))
        best = min(best, time.perf_counter() - started)
    return seen / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VAE_CACHE_DIR"] = str(Path(tmp) / "cache")
        from model.config.train import TrainConfig
        from model.data.loading import load_data

        root = Path(tmp) / "images"
        make_folder(root, args.images, args.size)
        config = TrainConfig.of(dataset="folder", data_dir=str(root), data_workers=args.workers)
        results = {"images": args.images, "size": [3, args.size, args.size], "workers": args.workers,
                   "cpu_count": os.cpu_count()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, budget in (("in_memory", 4096), ("streamed_first", 0), ("streamed_cached", 0)):
                started = time.perf_counter()
                data = load_data(config.replace(memory_budget=budget))
                seconds = time.perf_counter() - started
                assert data.info["streamed"] == (budget == 0)
                results[name] = {"load_seconds": round(seconds, 3), "load_images_per_second": round(args.images / seconds, 1),
                                 "epoch_images_per_second": round(epoch_rate(data.train), 1)}
    memory, streamed = results["in_memory"], results["streamed_cached"]
    results["ratio_streamed_over_memory"] = {
        "first_load": round(results["streamed_first"]["load_images_per_second"] / memory["load_images_per_second"], 3),
        "epoch": round(streamed["epoch_images_per_second"] / memory["epoch_images_per_second"], 3)}
    for name in ("in_memory", "streamed_first", "streamed_cached"):
        r = results[name]
        print(f"{name:16s} load {r['load_images_per_second']:>10,.0f} images/s   "
              f"training batches {r['epoch_images_per_second']:>10,.0f} images/s")
    print(f"streamed / in memory: first load {results['ratio_streamed_over_memory']['first_load']:.2f}x, "
          f"training batches {results['ratio_streamed_over_memory']['epoch']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
