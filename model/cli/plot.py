"""`vae plot RUN_DIR`: the course's plots of a run, as PNG files under RUN_DIR/plots."""

from __future__ import annotations

import argparse

from model.analysis.plot_names import GAUSSIAN_PLOTS


def register(commands) -> None:
    plot = commands.add_parser("plot", help="draw a run's plots as PNG files under RUN_DIR/plots")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots)")
    plot.add_argument("--tsne", action="store_true", help="add a t-SNE projection for more than two latent units")
    plot.add_argument("--images", type=int, default=2000, help="test images for the latent plots (default: 2000)")
    plot.add_argument("--data-dir", help="where the run's data set lives, if not where its config says")
    plot.add_argument("--only", nargs="+", choices=GAUSSIAN_PLOTS, help="draw only these plots")
    plot.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Keeps matplotlib off `vae serve`'s path: the serve image has no matplotlib.
    from model.analysis.plots import plot_run

    for path in plot_run(args.run_dir, args.out, tsne=args.tsne, images=args.images, data_dir=args.data_dir,
                         only=args.only):
        print(path)
    return 0
