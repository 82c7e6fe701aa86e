"""`vae report SWEEP_DIR`: a sweep's Markdown report, with its tables and every run's figures."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    report = commands.add_parser("report", help="write a sweep's Markdown report with tables and figures")
    report.add_argument("sweep_dir", help="a directory written by `vae sweep`")
    report.add_argument("--no-run-plots", action="store_true", help="only the sweep's tables and overlaid plots")
    report.add_argument("--tsne", action="store_true", help="add t-SNE to the latent plots of runs with > 2 units")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Keeps matplotlib off `vae serve`'s path: the serve image has no matplotlib.
    from model.analysis.report import write_report

    print(f"report written to {write_report(args.sweep_dir, run_plots=not args.no_run_plots, tsne=args.tsne)}")
    return 0
