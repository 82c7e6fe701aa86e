"""Whole training epochs, eager against --compile and fp32 against bf16-mixed, interleaved.

The roofline benchmark times one step on a batch already in place; an epoch also draws, gathers and
binarizes every batch and reads the diagnostics back. This trains one model per variant, from the
same seed, through the library's loop (`model.training.loop.fit_epoch`, as `vae train` runs it),
and times their epochs in alternating rounds (one epoch of each per round), so a VM whose speed
drifts moves every variant together; each ratio is the median of the rounds' own ratios against
eager fp32. The first epoch of each variant, which compiles (or reads inductor's cache), is timed
apart and left out of the rounds.

    python benchmarks/epochs.py --data-dir ../shared/data/mnist --json docs/results/epochs.json

Nothing here is a test: it prints ratios measured in one run, never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.config.train import TrainConfig
from model.data.base import DataBundle
from model.data.batches import batches_per_epoch
from model.data.loading import load_data
from model.kinds.registry import build_model, build_objective
from model.training.loop import adam, epoch_batches, fit_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import interleaved, machine, median_ratio  # noqa: E402

VARIANTS = {"fp32": ("fp32", False), "fp32 --compile": ("fp32", True),
            "bf16-mixed": ("bf16-mixed", False), "bf16-mixed --compile": ("bf16-mixed", True)}


def epoch_runner(config: TrainConfig, data: DataBundle) -> Callable[[], int]:
    """A function training one more epoch of its own model each call; returns the images it saw."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    objective = build_objective(config)
    optimizer = adam(model, config.optim.lr)
    steps = batches_per_epoch(len(data.train), config.optim.batch_size)
    state = {"epoch": 0, "step": 0}

    def run() -> int:
        state["step"], _, seen = fit_epoch(model, objective, optimizer, epoch_batches(config, data.train, data.binarize),
                                           epoch=state["epoch"], step=state["step"], batches_per_epoch=steps,
                                           precision=config.precision)
        state["epoch"] += 1
        return seen
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: the embedded digits)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-features", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="epochs of each variant timed, interleaved")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = "mnist" if args.data_dir else "embedded"
    base = TrainConfig.of(dataset=dataset, data_dir=args.data_dir, latent_features=args.latent_features,
                          batch_size=args.batch_size, device="cpu")
    data = load_data(base)
    base = base.replace(input_shape=tuple(data.train.x.shape[1:]), class_labels=tuple(range(10)))
    runners, first = {}, {}
    for name, (precision, compiled) in VARIANTS.items():
        runners[name] = epoch_runner(base.replace(precision=precision, compile=compiled), data)
        started = time.perf_counter()
        runners[name]()
        first[name] = time.perf_counter() - started
    names = list(VARIANTS)
    medians, rounds = interleaved([runners[n] for n in names], min_seconds=0.0, device=torch.device("cpu"),
                                  warmup=0, min_rounds=args.rounds)
    images = len(data.train)
    rows = {name: {"first_epoch_seconds": first[name], "epoch_seconds": medians[i],
                   "images_per_second": images / medians[i],
                   "speedup_over_eager_fp32": median_ratio(rounds, 0, i)}
            for i, name in enumerate(names)}
    result = {"machine": machine(), "dataset": dataset, "train_images": images, "batch_size": args.batch_size,
              "latent_features": args.latent_features, "rounds": len(rounds), "rows": rows,
              "command": "python benchmarks/epochs.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"{dataset}, {images:,} training images, batch {args.batch_size}, latent {args.latent_features}, "
          f"{args.threads} threads, {len(rounds)} interleaved rounds")
    print(f"{'':<22} {'first epoch s':>14} {'epoch s':>8} {'images/s':>9} {'× eager fp32':>13}")
    for name, row in rows.items():
        print(f"{name:<22} {row['first_epoch_seconds']:14.1f} {row['epoch_seconds']:8.2f} "
              f"{row['images_per_second']:9,.0f} {row['speedup_over_eager_fp32']:13.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
