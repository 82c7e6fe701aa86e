"""The M2 table: test classification error with 100 / 600 / 1,000 / 3,000 labels on MNIST.

For each label count N it trains M2 (`vae train --kind m2 --labels N`) and sets it beside two
classifiers given the same N labels (the same balanced, seeded subset: `model.data.loading.hide_labels`):

- pixels: multinomial logistic regression on standardised pixels (`model.evaluation.evaluate.fit_classifiers`);
- plain VAE: the same logistic regression on the posterior means of a Gaussian VAE with the same
  latent size and networks, trained without labels. Its training never reads a label, so one VAE
  serves every N: training it with `--labels N` gives the same weights for every N.

Everything runs in this process, one run after another, and the result is written atomically as
JSON (with the equivalent `vae train` command of each run and its training time):

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/m2_labels.py --data-dir ../shared/data/mnist \\
        --out /tmp/m2-table --json docs/m2_labels.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model import TrainConfig, load_checkpoint
from model.io.atomic import write_json
from model.data.loading import load_data
from model.evaluation.evaluate import fit_classifiers
from model.runs.train import train

# Kingma et al. (2014), Table 1: test error (%) on MNIST.
PUBLISHED = {"M2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
             "M1+M2": {100: 3.33, 600: 2.59, 1000: 2.40, 3000: 2.18}}


def command(config: TrainConfig, out: Path) -> str:
    """The `vae train` command line that trains `config` (the fields that differ from the defaults)."""
    defaults = TrainConfig().to_dict()
    parts = ["vae train"]
    for key, value in config.to_dict().items():
        if value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return " ".join(parts + [f"--out {out}"])


def train_timed(config: TrainConfig, out: Path) -> tuple[dict, float, float]:
    """Train into `out`; returns evaluation.json, seconds of training epochs, and wall seconds in all."""
    started = time.perf_counter()
    train(config, out, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "evaluation.json").read_text()), sum(e["seconds"] for e in epochs), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--train-subset", type=int, default=20_000,
                        help="training images (labelled and not) of every run; MNIST has 54,000 after validation")
    parser.add_argument("--m2-epochs", type=int, default=20)
    parser.add_argument("--vae-epochs", type=int, default=30)
    parser.add_argument("--latent-features", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=TrainConfig().optim.alpha)
    parser.add_argument("--eval-k", type=int, default=10, help="importance samples of the test L_K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--vae-run", type=Path, default=None,
                        help="reuse this complete plain-VAE run (trained by an earlier call) instead of training one")
    parser.add_argument("--out", type=Path, required=True, help="folder for the run directories")
    parser.add_argument("--json", type=Path, required=True, help="where to write the table as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    common = dict(dataset="mnist", data_dir=args.data_dir, train_subset=args.train_subset,
                  latent_features=args.latent_features,
                  hidden=tuple(args.hidden), batch_size=args.batch_size, eval_k=args.eval_k,
                  calibration_k=args.eval_k, seed=args.seed, device="cpu")
    started = time.perf_counter()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"published_error_percent": PUBLISHED, "settings": settings, "torch_threads": torch.get_num_threads(),
              "rows": []}

    # The plain VAE: trained once, without reading labels; `--labels` only changes which labels
    # its evaluation's classifiers may use.
    vae_config = TrainConfig.of(kind="gaussian", epochs=args.vae_epochs, labels=min(args.labels), **common)
    vae_dir = args.out / "gaussian"
    if args.vae_run is not None:
        vae_dir = args.vae_run
        vae_checkpoint = load_checkpoint(vae_dir)
        expected = vae_config.replace(labels=vae_checkpoint.config.data.labels).to_dict()
        differing = sorted(k for k, v in vae_checkpoint.config.to_dict().items() if expected[k] != v)
        if differing:
            raise SystemExit(f"--vae-run {vae_dir}: expected a run with this call's settings, but {differing} differ")
        vae_config = vae_checkpoint.config
        vae_eval = vae_checkpoint.evaluation
        vae_wall = vae_train_seconds = sum(
            json.loads(line)["seconds"] for line in (vae_dir / "metrics.jsonl").read_text().splitlines())
    else:
        vae_eval, vae_train_seconds, vae_wall = train_timed(vae_config, vae_dir)
    vae = load_checkpoint(vae_dir).model
    result["vae"] = {"command": command(vae_config, vae_dir), "train_seconds": round(vae_train_seconds, 1),
                     "wall_seconds": round(vae_wall, 1), "test_elbo": vae_eval["test"]["elbo"],
                     "test_iwae": vae_eval["iwae"]["log_px"]}
    print(f"plain VAE: {vae_train_seconds:.0f} s of training, test ELBO {vae_eval['test']['elbo']:.1f}", flush=True)

    for n in args.labels:
        config = TrainConfig.of(kind="m2", epochs=args.m2_epochs, labels=n, alpha=args.alpha, **common)
        run_dir = args.out / f"m2-{n}"
        evaluation, train_seconds, wall = train_timed(config, run_dir)
        data = load_data(config)  # the same labelled subset the M2 run saw
        _, baselines = fit_classifiers(vae, data, seed=args.seed)
        last_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        row = {
            "labels": n,
            "m2_error": evaluation["kind"]["test_error"],
            "pixel_logistic_error": 1 - baselines["pixel_accuracy"],
            "vae_latent_logistic_error": 1 - baselines["latent_accuracy"],
            "m2_latent_logistic_error": 1 - evaluation["classifier"]["latent_accuracy"],
            "classifier_train_images": baselines["train_images"],
            "m2_test_elbo": evaluation["test"]["elbo"],
            "m2_test_iwae": evaluation["iwae"]["log_px"],
            "m2_train_elbo_last_epoch": last_epoch["train"]["elbo"],
            "m2_epochs": args.m2_epochs,
            "m2_train_seconds": round(train_seconds, 1),
            "m2_wall_seconds": round(wall, 1),
            "command": command(config, run_dir),
        }
        result["rows"].append(row)
        result["total_seconds"] = round(time.perf_counter() - started, 1)
        result["cpu_seconds"] = round(time.process_time(), 1)  # wall time on a shared machine overstates the cost
        write_json(args.json, result)  # after every row, so a stopped job keeps what it finished
        print(f"N={n}: M2 {100 * row['m2_error']:.2f}%  pixels {100 * row['pixel_logistic_error']:.2f}%  "
              f"VAE latent {100 * row['vae_latent_logistic_error']:.2f}%  ({train_seconds:.0f} s)", flush=True)

    print("\n| labels | M2 (ours) | M2 (published) | pixels, logistic | plain VAE latent, logistic | M2 training |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        n = row["labels"]
        published = PUBLISHED["M2"].get(n)
        print(f"| {n:,} | {100 * row['m2_error']:.2f} % | {f'{published:.2f} %' if published else '—'} | "
              f"{100 * row['pixel_logistic_error']:.2f} % | {100 * row['vae_latent_logistic_error']:.2f} % | "
              f"{row['m2_train_seconds'] / 60:.1f} min |")
    print(f"\ntotal {result['total_seconds'] / 60:.1f} min wall, {result['cpu_seconds'] / 60:.1f} min CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
