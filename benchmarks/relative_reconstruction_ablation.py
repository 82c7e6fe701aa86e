"""What each part of `relative_reconstruction` buys on the one-class benchmarks (docs/anomaly.md).

The score is Σ(√x̂ − √x)² / (edge_energy(x) + 1). This trains the benchmark's one-class models
(the course's MLP VAE, 30 epochs per class, as `vae bench anomaly` does, but with another seed
than the reported run's by default) and prints the mean AUROC of the score with each part taken
away or changed, beside a baseline with no model (nearest training images):

    python benchmarks/relative_reconstruction_ablation.py --data-root ../shared/data --seed 1

One thread per process; 2 to 3 minutes per data set on an idle core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.anomaly.reconstruction import EDGE_FLOOR, edge_energy
from model.anomaly.companions import fit_model
from model.bench.anomaly import auroc
from model.config.train import TrainConfig
from model.data.transforms import filter_classes
from model.data.loading import load_raw


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images (B, 1, H, W), separable, zero padding."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(x, g.view(1, 1, -1, 1), padding=(r, 0))


def variants(x: torch.Tensor, rec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each variant's score of images x (B, 1, H, W) reconstructed as rec."""
    sq = lambda v: v.flatten(1).pow(2).sum(1)  # noqa: E731
    root_error = sq(rec.sqrt() - x.sqrt())
    edges = edge_energy(x) + EDGE_FLOOR
    linear_edges = sq(x[..., 1:, :] - x[..., :-1, :]) + sq(x[..., :, 1:] - x[..., :, :-1]) + EDGE_FLOOR
    return {
        "Σ(x̂ − x)² (`reconstruction`)": sq(rec - x),
        "Σ(√x̂ − √x)²: square root, no division": root_error,
        "Σ(x̂ − x)² / (edges of x + 1): division, no square root": sq(rec - x) / linear_edges,
        "Σ(√x̂ − √x)² / (edges of √x + 1) (`relative_reconstruction`)": root_error / edges,
        "the same, both images blurred first (Gaussian, σ = 1 pixel)": sq(blur(rec.sqrt(), 1) - blur(x.sqrt(), 1)) / edges,
        "Σ(√x̂ − √x)² / (Σ x + 1): divided by the ink, not the edges": root_error / (x.flatten(1).sum(1) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig.of(latent_features=16, hidden=(256, 128), kl="analytic", epochs=args.epochs, seed=args.seed)
    table: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for name in args.datasets:
        train, test = load_raw(name, f"{args.data_root}/{name}")
        per_class: dict[str, list[float]] = {}
        for c in range(10):
            model = fit_model(config, filter_classes(train, [c]).x, epochs=args.epochs)
            with torch.no_grad():
                rec = torch.cat([model.reconstruct(test.x[i:i + 2000]) for i in range(0, len(test), 2000)]).clamp(0, 1)
            scores = variants(test.x, rec)
            # No model: the mean distance to the 5 nearest training images of the class, on raw pixels.
            distances = torch.cdist(test.x.flatten(1), filter_classes(train, [c]).x.flatten(1))
            scores["(no VAE) mean distance to the 5 nearest training images, raw pixels"] = (
                distances.topk(5, largest=False).values.mean(1))
            for variant, values in scores.items():
                per_class.setdefault(variant, []).append(auroc(values, test.y != c))
        table[name] = {variant: float(np.mean(v)) for variant, v in per_class.items()}
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\nOne-class mean AUROC × 100, seed {args.seed}, {args.epochs} epochs per class:\n")
    print("| score | " + " | ".join(args.datasets) + " |\n| --- |" + " ---: |" * len(args.datasets))
    for variant in table[args.datasets[0]]:
        print(f"| {variant} | " + " | ".join(f"{100 * table[d][variant]:.1f}" for d in args.datasets) + " |")


if __name__ == "__main__":
    main()
