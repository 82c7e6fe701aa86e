"""`vae data export`: a data set as a folder of PNG files (see `model.data.export`); `vae data make-defects`:
synthetic defects on real images in the MVTec AD layout (see `model.data.defects`)."""

from __future__ import annotations

import argparse
import dataclasses

from model.config.base import add_arguments, given_arguments
from model.config.train import DataConfig
from model.data.defects import BUILT_IN, DEFECTS, DefectConfig
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
    defects = actions.add_parser("make-defects", help="write synthetic defects drawn on a built-in data set's real "
                                                      "images as an MVTec AD folder (train/good, validation/, "
                                                      "test/, ground_truth/), seeded")
    defects.add_argument("--out", required=True, help="a new or empty folder")
    add_arguments(defects, DefectConfig, choices={"dataset": BUILT_IN, "types": tuple(DEFECTS)})
    defects.set_defaults(handler=run_make_defects)


def run_export(args: argparse.Namespace) -> int:
    from model.data.export import export_folder

    counts = export_folder(DataConfig(**given_arguments(args, EXPORTED)), args.out)
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test images to {args.out}")
    return 0


def run_make_defects(args: argparse.Namespace) -> int:
    from model.data.defects import make_defects

    names = [f.name for f in dataclasses.fields(DefectConfig)]
    report = make_defects(DefectConfig(**given_arguments(args, names)), args.out)
    counts = report["counts"]
    print(f"wrote {sum(counts['train'].values()):,} training, {sum(counts['validation'].values()):,} validation and "
          f"{sum(counts['test'].values()):,} test images of {report['dataset']} to {args.out} (MVTec AD layout)")
    for kind, area in report["mean_area"].items():
        print(f"  {kind:<8} {counts['validation'][kind]:>5} validation, {counts['test'][kind]:>5} test, "
              f"mean area {area['fraction']:.1%} of the image: {report['types'][kind]}")
    print(f"the report is {args.out}/defects.json")
    return 0
