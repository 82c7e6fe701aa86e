"""`vae predict RUN_DIR PATH... --out DIR [--maps]`: anomaly scores of image files and folders (see
`model.runs.predict`)."""

from __future__ import annotations

import argparse

from model.anomaly.maps import MAPS


def register(commands) -> None:
    parser = commands.add_parser(
        "predict", help="anomaly scores (and heatmaps) of image files and folders, as the service gives them",
        description="Scores every image under PATH... with a trained run, exactly as the service scores an "
                    "upload sent alone with --seed. Writes OUT/predictions.csv (path, score, percentile, "
                    "is_anomaly, threshold, threshold_source, ...; unreadable files are listed with their "
                    "error) and with --maps one heatmap PNG per image under OUT/maps/.")
    parser.add_argument("run_dir", help="a complete run directory (trained with `vae train`)")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    parser.add_argument("--out", required=True, help="folder for predictions.csv and maps/")
    parser.add_argument("--maps", action="store_true", help="write a heatmap PNG of each image's anomaly map")
    parser.add_argument("--map", choices=tuple(MAPS), default=None, help="which map (default: nll)")
    parser.add_argument("--score", default=None, help="a calibrated score (default: the run's)")
    parser.add_argument("--threshold", choices=("f1", "false_positive_rate"), default=None,
                        help="which threshold flags images (default: f1 where the run has it and "
                             "--false-positive-rate is not given)")
    parser.add_argument("--false-positive-rate", type=float, default=None,
                        help="flag this share of normal images (default 0.01 where no F1 threshold is used)")
    parser.add_argument("--seed", type=int, default=0, help="seed of each image's noise (the service's `seed`)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="where to run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model.core.device import resolve_device
    from model.runs.checkpoint import load_checkpoint
    from model.runs.predict import PredictOptions, predict

    if args.false_positive_rate is not None and not 0 < args.false_positive_rate < 1:
        raise ValueError(f"--false-positive-rate: expected a number in (0, 1), got {args.false_positive_rate}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected at least 1, got {args.batch_size}")
    checkpoint = load_checkpoint(args.run_dir, resolve_device(args.device))
    options = PredictOptions(score=args.score, threshold=args.threshold, false_positive_rate=args.false_positive_rate,
                             maps=args.maps, map=args.map, seed=args.seed, batch_size=args.batch_size)
    result = predict(checkpoint, args.paths, args.out, options, progress=not args.quiet)
    print(f"scored {result['scored']:,} images with {result['score']!r} ({result['threshold_source']} threshold "
          f"{result['threshold']:.4g}): {result['flagged']:,} flagged, {result['skipped']:,} skipped; "
          f"{args.out}/predictions.csv" + (" and maps/" if result["map"] else ""))
    return 0
