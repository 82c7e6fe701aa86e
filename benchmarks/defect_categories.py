"""The defect benchmark as MVTec AD runs it: one category per object class, each its own folder.

For each class c of a data set, `vae data make-defects --classes c` draws a folder (normal images
of c; scratches, blobs, missing parts and foreign patches on other images of c, with masks), and
`vae bench defects` trains the folder's default network on it and measures the model and the two
baselines. The mean over categories is the headline, as anomalib and the MVTec AD paper report it.

Resumable: a category whose report exists is not run again. Usage:

    python benchmarks/defect_categories.py --dataset mnist --data-dir ../shared/data/mnist \\
        --work /work/runs/defcat --out docs/results/defects_mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from model.bench.defects import DefectBenchConfig, markdown, run_defects
from model.data.defects import DefectConfig, make_defects
from model.io.atomic import write_bytes, write_json

# Training flags: the folder default network (conv), latent 16 as the README's folder example, 30 epochs; eval_k only
# sets the run's reported test bound, not the model or its scores.
BENCH = DefectBenchConfig(latent_features=16, epochs=30, eval_k=100, data_workers=0, device="cpu")
DRAW = DefectConfig(train=2000, validation=20, test=40, seed=0)
METRICS = ("auroc", "f1_max", "aupr", "pixel_auroc", "aupro")


def category(dataset: str, data_dir: str, label: int, work: Path) -> dict:
    folder, report_path = work / f"{label}" / "data", work / f"{label}" / "report.json"
    if report_path.is_file():
        return json.loads(report_path.read_text())
    started = time.perf_counter()
    if not (folder / "defects.json").is_file():
        make_defects(replace(DRAW, dataset=dataset, data_dir=data_dir, classes=(label,)), folder)
    drawn = {"make_defects": round(time.perf_counter() - started, 2)}
    report = run_defects(replace(BENCH, data_dir=str(folder)), work / f"{label}", seconds=drawn,
                         log=lambda line: print(f"[{dataset} {label}] {line}", flush=True))
    write_json(report_path, report)
    return report


def summarise(reports: dict[int, dict]) -> dict:
    """Mean and range over categories of each method's overall metrics."""
    methods: dict[str, dict] = {
        "default/score": {"label": "**model, its default score** (chosen per run)", "default": True, "per_class": {},
                          "chosen": {}},
        "default/map": {"label": "**model, its default map** (image: its max)", "default": True, "per_class": {},
                        "chosen": {}}}
    for label, report in sorted(reports.items()):
        for key, method in report["methods"].items():
            entry = methods.setdefault(key, {"label": method["label"].replace(" (default", " (").replace(
                "(; ", "(").replace(" ()", ""), "default": False, "per_class": {}})
            entry["per_class"][label] = {m: method["metrics"]["overall"].get(m) for m in METRICS}
            if method["default"]:
                which = "default/map" if key.startswith("map/") else "default/score"
                methods[which]["per_class"][label] = entry["per_class"][label]
                methods[which]["chosen"][label] = key.split("/", 1)[1]
    for entry in methods.values():
        for metric in METRICS:
            values = [v[metric] for v in entry["per_class"].values() if v[metric] is not None]
            if values:
                entry.setdefault("mean", {})[metric] = float(np.mean(values))
                entry.setdefault("min", {})[metric] = float(np.min(values))
    return methods


def table(methods: dict, categories: int) -> str:
    lines = [f"mean over {categories} categories (min in brackets)", "",
             "| method | image AUROC | F1-max | AUPR | pixel AUROC | AUPRO |", "| --- |" + " ---: |" * 5]
    for key, entry in methods.items():
        cells = []
        for metric in METRICS:
            if metric in entry.get("mean", {}):
                cells.append(f"{entry['mean'][metric]:.3f} ({entry['min'][metric]:.3f})")
            else:
                cells.append("—")
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=("mnist", "fashion-mnist", "embedded"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--work", required=True, help="folders and runs (resumable)")
    parser.add_argument("--out", required=True, help="JSON summary (a .md table beside it)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.dataset
    reports = {}
    started = time.perf_counter()
    for label in args.classes:
        reports[label] = category(args.dataset, args.data_dir, label, work / "categories")
        methods = summarise(reports)
        summary = {"dataset": args.dataset, "categories": sorted(reports), "bench": asdict(BENCH),
                   "draw": asdict(replace(DRAW, dataset=args.dataset, data_dir=args.data_dir)),
                   "command": "python benchmarks/defect_categories.py " + " ".join(sys.argv[1:]),
                   "threads": args.threads, "wall_seconds_this_invocation": round(time.perf_counter() - started),
                   "seconds_per_category": {k: r["wall_seconds"] for k, r in sorted(reports.items())},
                   "methods": methods}
        write_json(Path(args.out), summary)
        write_bytes(Path(args.out).with_suffix(".md"), (f"# Defect benchmark, {args.dataset}\n\n"
                                                        + table(methods, len(reports))).encode())
    print(table(summarise(reports), len(reports)))
    print(markdown(reports[args.classes[0]]).splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
