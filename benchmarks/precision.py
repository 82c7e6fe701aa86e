"""fp32 against --precision bf16-mixed: the same run (seed, data, epochs) trained and evaluated in
each precision, side by side: training images/s, evaluation seconds, test ELBO and L_K.

Targets (the performance issue): bf16-mixed at least 2x fp32's training throughput, its test ELBO
within 0.3 nats and its L_K within 0.1 nats of fp32's. The runs train one after the other in this
process; run it on a quiet machine (another job's load would fall on one run more than the other).

    python benchmarks/precision.py                                  # embedded digits, a few minutes
    python benchmarks/precision.py --data-dir ../shared/data/mnist --epochs 5 --json docs/results/precision.json

With `--compile` both precisions also train and evaluate under `--compile` (model.core.compilation),
two more rows against the same eager fp32 run; their first epoch and their evaluation include the
compilation (or reading inductor's cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.config.train import TrainConfig
from model.core.precision import autocast
from model.data.base import Split
from model.data.loading import load_data
from model.evaluation.evaluate import split_iwae
from model.runs.checkpoint import load_checkpoint
from model.runs.train import train

PRECISIONS = ("fp32", "bf16-mixed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: the embedded digits)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-features", type=int, default=16)
    parser.add_argument("--eval-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--same-weights-images", type=int, default=2000,
                        help="test images for the bound of the fp32 run's weights in both precisions")
    parser.add_argument("--compile", action="store_true", help="also both precisions under --compile")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    dataset = "mnist" if args.data_dir else "embedded"
    config = TrainConfig.of(dataset=dataset, data_dir=args.data_dir, latent_features=args.latent_features,
                            batch_size=args.batch_size, eval_k=args.eval_k, calibration_k=10, seed=args.seed,
                            device="cpu")
    data = load_data(config)
    scratch = tempfile.TemporaryDirectory(prefix="precision-")
    root = Path(args.out or scratch.name)
    variants = {p: (p, False) for p in PRECISIONS}
    if args.compile:
        variants.update({f"{p} --compile": (p, True) for p in PRECISIONS})
    runs = {name: root / name.replace(" --", "-") for name in variants}
    for name, (precision, compiled) in variants.items():
        train(config.replace(precision=precision, compile=compiled, epochs=args.epochs), runs[name], progress=False,
              data=data)
    rows = {}
    for name, run in runs.items():
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evaluation = json.loads((run / "evaluation.json").read_text())
        seconds = sum(m["seconds"] for m in metrics)
        rows[name] = {
            "train_images_per_second": sum(m["images_per_second"] for m in metrics) / len(metrics),
            "training_seconds": seconds, "train_images_per_second_overall": len(data.train) * len(metrics) / seconds,
            "evaluation_seconds": evaluation["seconds"],
            "test_elbo": evaluation["test"]["elbo"], "test_log_px": evaluation["iwae"]["log_px"],
        }
    # The bound's own error in bf16, apart from the training trajectory: the fp32 run's weights
    # evaluated in both precisions on the same images with the same seed.
    model = load_checkpoint(runs["fp32"]).model
    test = Split(data.test.x[:args.same_weights_images], data.test.y[:args.same_weights_images])
    same_weights = {}
    for precision in PRECISIONS:
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            log_px = split_iwae(model, test, args.eval_k)
        same_weights[precision] = {"log_px": float(log_px.mean()), "seconds": time.perf_counter() - started}
    fp32, bf16 = rows["fp32"], rows["bf16-mixed"]
    result = {
        "dataset": dataset, "train_images": len(data.train), "epochs": args.epochs, "batch_size": args.batch_size,
        "latent_features": args.latent_features, "eval_k": args.eval_k, "seed": args.seed, "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "rows": rows,
        "speedup_training": bf16["train_images_per_second"] / fp32["train_images_per_second"],
        "speedup_evaluation": fp32["evaluation_seconds"] / bf16["evaluation_seconds"],
        "elbo_difference": bf16["test_elbo"] - fp32["test_elbo"],
        "log_px_difference": bf16["test_log_px"] - fp32["test_log_px"],
        "against_eager_fp32": {name: {"training": row["train_images_per_second_overall"]
                                             / fp32["train_images_per_second_overall"],
                                         "evaluation": fp32["evaluation_seconds"] / row["evaluation_seconds"],
                                         "elbo_difference": row["test_elbo"] - fp32["test_elbo"],
                                         "log_px_difference": row["test_log_px"] - fp32["test_log_px"]}
                               for name, row in rows.items()},
        "same_weights": {"images": len(test), "k": args.eval_k, **same_weights,
                         "log_px_difference": same_weights["bf16-mixed"]["log_px"] - same_weights["fp32"]["log_px"],
                         "speedup": same_weights["fp32"]["seconds"] / same_weights["bf16-mixed"]["seconds"]},
        "command": "python benchmarks/precision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"{dataset}, {len(data.train):,} training images, {args.epochs} epochs, batch {args.batch_size}, "
          f"latent {args.latent_features}, L_{args.eval_k}, {args.threads} threads, CPU {result['cpu_capability']}")
    print(f"{'':<22} {'train img/s':>12} {'train s':>8} {'eval s':>8} {'test ELBO':>10} {'L_K':>10}")
    for name, row in rows.items():
        print(f"{name:<22} {row['train_images_per_second']:12.0f} {row['training_seconds']:8.1f} "
              f"{row['evaluation_seconds']:8.1f} {row['test_elbo']:10.2f} {row['test_log_px']:10.2f}")
    for name, ratio in result["against_eager_fp32"].items():
        if name != "fp32":
            print(f"{name} / fp32: training {ratio['training']:.2f}x, evaluation {ratio['evaluation']:.2f}x, "
                  f"ELBO {ratio['elbo_difference']:+.2f}, L_K {ratio['log_px_difference']:+.2f} nats")
    print(f"bf16-mixed / fp32: training {result['speedup_training']:.2f}x (target >= 2), evaluation "
          f"{result['speedup_evaluation']:.2f}x; ELBO {result['elbo_difference']:+.2f} nats (target within 0.3), "
          f"L_K {result['log_px_difference']:+.2f} nats (target within 0.1)")
    sw = result["same_weights"]
    print(f"the fp32 run's weights, L_{args.eval_k} of {len(test):,} test images in each precision: fp32 "
          f"{sw['fp32']['log_px']:.2f}, bf16-mixed {sw['bf16-mixed']['log_px']:.2f} ({sw['log_px_difference']:+.2f} "
          f"nats), {sw['speedup']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
