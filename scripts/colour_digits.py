"""Write a folder of coloured, resized real images: the data of docs/own-images.md's walk-through.

    .venv/bin/python scripts/colour_digits.py --out DIR [--dataset mnist --data-dir ../shared/data/mnist]
        [--images 10000] [--split train|test] [--width 32 --height 40] [--layout classes|flat]

Each image of the chosen data set (MNIST by default; `embedded` needs no files) is tinted with a
random colour (its ink takes the colour, the background stays black), resized to width × height
and saved as PNG or, every third image, as JPEG (quality 90), in class subfolders `DIR/<label>/`
(or flat). Seeded: the same arguments write the same files.
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder")
    parser.add_argument("--dataset", default="mnist", help="a built-in data set (default: mnist)")
    parser.add_argument("--data-dir", default="../shared/data/mnist", help="its IDX files (not for embedded)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--images", type=int, default=10000, help="how many (the first N of a seeded shuffle)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--layout", choices=("classes", "flat"), default="classes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from model.data.loading import load_raw_data
    from model.config.train import DataConfig

    raw = load_raw_data(DataConfig(dataset=args.dataset, data_dir=None if args.dataset == "embedded" else args.data_dir))
    x, y = raw.train if args.split == "train" else raw.test
    rng = np.random.default_rng(args.seed)
    pick = rng.permutation(len(y))[: args.images]
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out}: expected a new or empty folder")
    for n, i in enumerate(pick):
        grey = x[i, 0].numpy().astype(np.float64) / 255
        tint = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0)))
        rgb = (grey[..., None] * tint * 255).round().astype(np.uint8)
        image = Image.fromarray(rgb, "RGB").resize((args.width, args.height), Image.BICUBIC)
        folder = out / str(int(y[i])) if args.layout == "classes" else out
        folder.mkdir(parents=True, exist_ok=True)
        if n % 3 == 2:
            image.save(folder / f"{n:06d}.jpg", quality=90)
        else:
            image.save(folder / f"{n:06d}.png")
    print(f"wrote {len(pick):,} {args.width}×{args.height} colour images of {args.dataset} ({args.split}) to {out}")


if __name__ == "__main__":
    main()
