"""The `vae` command: every subcommand registers itself from its module in `model.cli`.

Subcommands outside `model/` (such as `vae serve` from `service/`) register through the
entry-point group "vae.commands" with a `register(subparsers)` function, so `model` never imports
them. Building the parser imports no training-only dependency: `vae serve` builds it too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from functools import partial
from importlib.metadata import entry_points

from model.cli import bench, data, demo, evaluate, plot, predict, report, sweep, train
from model.data.base import DataError
from model.runs.checkpoint import CheckpointError
from model.runs.errors import TrainingError

COMMANDS = (train, evaluate, predict, plot, sweep, report, demo, bench, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Train, analyse and serve variational autoencoders.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    for entry in entry_points(group="vae.commands"):
        entry.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        # Warnings meant for a person (files skipped or converted) print as one line each, no source line.
        warnings.showwarning = partial(_show_warning, args.command)
        return _run(args)


def _show_warning(command, message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vae {command}: warning: {message}", file=file or sys.stderr)


def _run(args: argparse.Namespace) -> int:
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
