"""Training throughput: our tensor-slicing loop against a pytorch/examples-style DataLoader loop.

Both train the same architecture (the course's 784-256-128-2·latent MLP) with the same objective,
optimizer, batch size and number of epochs, one after the other in this process, on the CPU.
The baseline reads images the way pytorch/examples/vae does: a torchvision dataset with a
ToTensor transform per image, collated by a DataLoader. Ours keeps the whole set as one tensor and
slices a permutation (model.train.train). Prints images/second for each, the ratio, and the test
ELBO of both models so the speed-up is not bought with a worse model.

    python benchmarks/train_throughput.py --data-dir ../shared/data/mnist --epochs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from model import TrainConfig, VariationalAutoencoder, VariationalInference
from model.data.loading import load_data
from model.evaluation.evaluate import split_elbo
from model.runs.train import train


class PilImages(Dataset):
    """uint8 images served one PIL image at a time through ToTensor, as torchvision's MNIST does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision.transforms import ToTensor

        self.images = (images.reshape(-1, 28, 28) * 255).round().to(torch.uint8).numpy()
        self.labels = labels
        self.to_tensor = ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.to_tensor(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def dataloader_loop(config: TrainConfig, data) -> tuple[VariationalAutoencoder, float]:
    """Train as pytorch/examples/vae does; returns the model and images/second of the training passes."""
    torch.manual_seed(config.seed)
    model = VariationalAutoencoder((1, 28, 28), config.model.latent_features, config.model.hidden, config.model.activation)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    loader = DataLoader(PilImages(data.train.x, data.train.y), batch_size=config.optim.batch_size, shuffle=True)
    vi = VariationalInference(beta=config.optim.beta)
    seconds, images = 0.0, 0
    for _ in range(config.optim.epochs):
        model.train()
        started = time.perf_counter()
        for x, _ in loader:
            loss, _, _ = vi(model, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += x.shape[0]
        seconds += time.perf_counter() - started
    return model.eval(), images / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: the embedded 5,000 digits)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig.of(dataset="mnist" if args.data_dir else "embedded", data_dir=args.data_dir,
                         epochs=args.epochs, batch_size=args.batch_size, device="cpu", eval_k=1,
                         calibration_k=1)
    data = load_data(config)

    baseline, baseline_rate = dataloader_loop(config, data)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(config, Path(tmp) / "run", data=data, progress=False)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ours_rate = len(data.train) * len(lines) / sum(line["seconds"] for line in lines)
        from model import load_checkpoint

        ours = load_checkpoint(run).model

    torch.manual_seed(0)
    baseline_elbo = split_elbo(baseline, data.test, "analytic")["elbo"]
    ours_elbo = split_elbo(ours, data.test, "analytic")["elbo"]
    print(f"data: {config.data.dataset} ({len(data.train)} training images), batch {config.optim.batch_size}, "
          f"{config.optim.epochs} epochs, {args.threads} threads, CPU")
    print(f"DataLoader + ToTensor loop: {baseline_rate:10.0f} images/s   test ELBO {baseline_elbo:8.2f}")
    print(f"tensor-slicing loop (ours): {ours_rate:10.0f} images/s   test ELBO {ours_elbo:8.2f}")
    print(f"speed-up: {ours_rate / baseline_rate:.2f}x (target: at least 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
