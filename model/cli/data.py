"""`vae data export`: a data set as a folder of PNG files (see `model.data.export`)."""

from __future__ import annotations

import argparse

from model.config.base import add_arguments, given_arguments
from model.config.train import DataConfig
from model.data.registry import DATASETS

EXPORTED = ("dataset", "data_dir", "classes", "image_size", "channels", "resize", "antialias")


def register(commands) -> None:
    data = commands.add_parser("data", help="work with data sets as folders of images")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write a data set as OUT/{train,test}/<label>/<n>.png, a folder "
                                               "`vae train --dataset folder` reads back")
    export.add_argument("--out", required=True, help="a new or empty folder")
    add_arguments(export, DataConfig, choices={"dataset": tuple(n for n in DATASETS if n != "folder")}, only=EXPORTED)
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from model.data.export import export_folder

    counts = export_folder(DataConfig(**given_arguments(args, EXPORTED)), args.out)
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test images to {args.out}")
    return 0
