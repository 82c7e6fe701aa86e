"""The `vae` command: `vae train`, `vae evaluate`, and subcommands registered by other packages.

Subcommands outside `model/` (such as `vae serve` from `service/`) register through the entry-point
group "vae.commands" with a `register(subparsers)` function, so `model` never imports them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import importlib
from importlib.metadata import entry_points
from pathlib import Path

from model.config.train import TrainConfig, add_train_arguments, train_overrides
from model.kinds.registry import KINDS


SUBCOMMAND_MODULES: tuple[str, ...] = ("model.bench.anomaly", "model.analysis.plots", "model.analysis.sweep", "model.analysis.report", "model.analysis.demos")


def _train(args: argparse.Namespace) -> int:
    from model.runs.checkpoint import CONFIG, is_complete
    from model.runs.train import summary, train

    out = Path(args.out)
    if args.skip_if_complete and is_complete(out):
        print(f"{out} already holds a complete run; nothing to do")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a runtime knob, not part of the run's config
    overrides = train_overrides(args)
    if args.resume and (out / CONFIG).exists():
        # The saved run's settings, with the flags given; train() refuses any change but --epochs.
        config = TrainConfig.load(out / CONFIG).replace(**overrides)
    else:
        config = TrainConfig.of(**overrides)
    run = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(summary(run))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.runs.checkpoint import load_model
    from model.data.loading import load_data
    from model.runs.finish import finish
    from model.core.device import resolve_device
    from model.runs.train import summary

    model, config = load_model(args.run_dir)
    model.to(resolve_device(config.device if args.device is None else args.device))
    data = load_data(config).to(next(model.parameters()).device)
    finish(model, config, data, Path(args.run_dir), k=args.k, progress=not args.quiet)
    print(summary(args.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Train, analyse and serve variational autoencoders.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model into a run directory")
    add_train_arguments(train, choices={"kind": tuple(KINDS)})
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--skip-if-complete", action="store_true", help="exit 0 if --out holds a complete run")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (default 0: torch's choice; 1 is often faster on a busy machine)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="recompute evaluation.json of a run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--k", type=int, default=None, help="importance samples (default: the run's eval_k)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                          help="where to evaluate (default: the run's device)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=_evaluate)

    # Subcommands defined beside the code they run. Each module has `register(commands)` and keeps
    # its top-level imports light (matplotlib, torchvision, sklearn are imported inside functions).
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(commands)
    for entry in entry_points(group="vae.commands"):
        entry.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model.runs.checkpoint import CheckpointError
    from model.data.base import DataError
    from model.runs.train import TrainingError

    try:
        return args.handler(args)
    except (CheckpointError, DataError, TrainingError, ValueError) as error:
        print(f"vae {args.command}: error: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):  # e.g. how to resume a run that failed mid-way
            print(f"vae {args.command}: {note}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        notes = getattr(interrupt, "__notes__", ()) or ["nothing was kept"] * (args.command == "train")
        print(f"vae {args.command}: interrupted" + "".join(f"; {n}" for n in notes), file=sys.stderr)
        return 130
