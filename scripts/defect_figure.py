"""A figure of anomaly maps: for a few defective test images of an MVTec-layout folder, the input,
the run's reconstruction, its anomaly map (percentiles of normal pixels) and the true mask, side by side.

    python scripts/defect_figure.py RUN_DIR --out docs/figures/defect-maps-mnist.png [--per-type 2]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.anomaly.maps import anomaly_maps, default_map  # noqa: E402
from model.core.noise import RowwiseNoise  # noqa: E402
from model.data.loading import load_data  # noqa: E402
from model.io.atomic import write_bytes  # noqa: E402
from model.runs.checkpoint import load_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-type", type=int, default=2, help="images of each defect type")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.run_dir)
    data = load_data(checkpoint.config)
    names = data.class_names
    name = default_map(checkpoint.calibration.maps)
    calibration = checkpoint.calibration.maps[name]
    picks = [i for label in range(1, len(names))
             for i in torch.nonzero(data.test.y == label).flatten()[: args.per_type].tolist()]
    x = data.test.x[picks]
    with torch.no_grad():
        recon = checkpoint.model.reconstruct(x)
        maps = anomaly_maps(checkpoint.model, x, name=name, noise=RowwiseNoise([0], [len(x)]),
                            **calibration.params)
    percentiles = calibration.percentile(maps.numpy())
    masks = data.test_masks[picks, 0]
    columns = ("input", "reconstruction", f"{name} map (percentile)", "true mask")
    fig, axes = plt.subplots(len(picks), 4, figsize=(6.4, 1.6 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        grey = x[row].shape[0] == 1
        panels = (x[row].float() / 255, recon[row], None, masks[row])
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if col == 2:
                image = ax.imshow(percentiles[row], cmap="turbo", vmin=90, vmax=100)
            elif col == 3:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            else:
                shown = panel[0] if grey else panel.permute(1, 2, 0)
                ax.imshow(shown.clamp(0, 1), cmap="gray" if grey else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
        axes[row, 0].set_ylabel(names[int(data.test.y[i])], fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="map: percentile of normal pixels")
    fig.subplots_adjust(top=1 - 0.3 / len(picks), wspace=0.05, hspace=0.1)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(Path(args.out), buffer.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
