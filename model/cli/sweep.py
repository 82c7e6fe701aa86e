"""`vae sweep FILE`: train the runs of a sweep file, then compare them.

A sweep file is TOML: a base TrainConfig and the runs, each a variation of it.

    name = "exercise-4-beta"
    description = "The KL weight beta: reconstruction against rate."

    [base]                 # TrainConfig fields, as in config.json
    dataset = "mnist"
    data_dir = "../shared/data/mnist"
    classes = [3, 7]
    epochs = 20

    [quick]                # optional: extra overrides for `vae sweep --quick`
    train_subset = 128

    [[runs]]
    name = "beta-0"
    beta = 0.0

Every run is trained into SWEEP_DIR/runs/NAME (a complete run with the same config is skipped, an
incomplete one resumed) and recorded in SWEEP_DIR/sweep.json; then the comparison is written
(comparison.md and .json, learning_curves.png, rate_distortion.png). `--quick` swaps the data for a
few hundred embedded digits and one epoch, so CI runs any sweep in seconds. `vae report SWEEP_DIR`
adds every run's plots and report.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def register(commands) -> None:
    sweep = commands.add_parser("sweep", help="train the runs of a sweep file and compare them",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("file", help="sweep file (TOML), e.g. sweeps/exercise_4_beta.toml")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweeps/NAME)")
    sweep.add_argument("--quick", action="store_true",
                       help="a few hundred embedded digits, one epoch: the whole sweep in seconds (CI)")
    sweep.add_argument("--data-dir", help="replace the base config's data_dir")
    sweep.add_argument("--set", nargs="+", metavar="FIELD=VALUE",
                       help="replace base config fields, e.g. --set epochs=100 train_subset=20000")
    sweep.add_argument("--only", nargs="+", metavar="NAME", help="train only these runs")
    sweep.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Keeps scikit-learn (training's evaluation) and matplotlib (the comparison's plots) off
    # `vae serve`'s path: the serve image has neither.
    from model.analysis.report import write_comparison
    from model.analysis.sweep import default_out, load_sweep, parse_assignments, run_sweep

    overrides = parse_assignments(args.set or [])
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    sweep = load_sweep(args.file, quick=args.quick, overrides=overrides)
    out = Path(args.out) if args.out else default_out(sweep)
    if args.threads:
        torch.set_num_threads(args.threads)  # a runtime knob, not part of any run's config
    started = time.perf_counter()
    run_sweep(sweep, out, only=tuple(args.only or ()), progress=not args.quiet)
    write_comparison(out)
    print(f"sweep {sweep.name!r} ({len(sweep.runs)} runs) written to {out} in {time.perf_counter() - started:.0f} s; "
          f"comparison in {out / 'comparison.md'}")
    return 0
