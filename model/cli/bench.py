"""`vae bench anomaly`: the AUROC of every anomaly score, one-class and out-of-distribution;
`vae bench ood`: a run against many kinds of out-of-distribution images; `vae bench defects`:
detection and localisation of defects on an MVTec AD folder, against two baselines.

`anomaly`'s flags are `model.bench.config.BenchConfig`'s fields and `defects`' are
`model.bench.defects.DefectBenchConfig`'s (`model.config.base.add_arguments`), plus what only the
command has: the CI preset (--quick), where the report goes, and for `anomaly` --render, which
prints stored reports (and with --write-rankings, ranks the scores per data set from them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from model.bench import config as bench_config
from model.bench import defects as defects_bench
from model.bench.config import QUICK, BenchConfig, OodConfig
from model.core.compilation import check_available
from model.bench.rankings import update_rankings, write_rankings
from model.config.base import add_arguments, given_arguments
from model.io.atomic import write_bytes, write_json


def register(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks of trained-model quality")
    benchmarks = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    parser = benchmarks.add_parser("anomaly", help="AUROC of every anomaly score, one-class and out-of-distribution",
                              description=bench_config.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CI preset: embedded digits, classes 0 and 1, small model; "
                             "fails if −L_K's AUROC < --min-auroc")
    parser.add_argument("--min-auroc", type=float, default=0.9, help="--quick fails below this mean AUROC")
    parser.add_argument("--out", default="runs/bench/anomaly.json",
                        help="JSON report (a .md table is written beside it)")
    parser.add_argument("--render", nargs="+", metavar="JSON",
                        help="print the Markdown tables of these reports, merged, and run nothing")
    parser.add_argument("--write-rankings", metavar="PATH",
                        help="with --render: rank each data set's scores by the mean of its one-class and OOD "
                             "AUROCs and write them as JSON, e.g. model/anomaly/rankings.json (the served default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_arguments(parser, BenchConfig, BenchConfig())
    parser.set_defaults(handler=anomaly)

    ood = benchmarks.add_parser(
        "ood", help="a trained run's scores against 18 kinds of out-of-distribution images and other data sets",
        description="Scores the run's normal test images against the families of model.bench.families "
                    "(noise, blank and saturated images, flips, rotations, photometric changes, corruptions) "
                    "and the other data sets: the AUROC of each calibrated score and the share its 1 % "
                    "threshold flags. The held-out families are reported apart.")
    ood.add_argument("run_dir", help="a complete run directory (trained with `vae train`)")
    ood.add_argument("--out", default=None, help="write the results as JSON here (a .md table beside it)")
    ood.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ood.add_argument("--write-rankings", metavar="PATH",
                     help="rank the scores by their worst visible family and make that the run's data set's "
                          "ranking in PATH, e.g. model/anomaly/rankings.json (the served default)")
    add_arguments(ood, OodConfig, OodConfig())
    ood.set_defaults(handler=ood_suite)

    defects = benchmarks.add_parser(
        "defects", help="image AUROC, F1-max, AUPR, pixel AUROC and AUPRO on an MVTec AD folder, against two "
                        "baselines", description=defects_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    defects.add_argument("--quick", action="store_true",
                         help="CI preset: draws a small defect folder on the embedded digits' ones (`vae data "
                              "make-defects`) into OUT without its suffix + -run/defects and trains a small model on "
                              "it; fails if the default score's image AUROC or the default map's pixel AUROC or "
                              "AUPRO is below its floor")
    for name, floor in defects_bench.QUICK_FLOORS.items():
        defects.add_argument(f"--min-{name.replace('_', '-')}", type=float, default=floor,
                             help=f"--quick fails below this overall {defects_bench.FLOOR_NAMES[name]} "
                                  f"(default: {floor})")
    defects.add_argument("--out", default="runs/bench/defects.json",
                         help="JSON report (a .md table is written beside it); a model the bench trains is written "
                              "to OUT without its suffix + -run/run, replaced by the next bench")
    defects.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_arguments(defects, defects_bench.DefectBenchConfig, defects_bench.DefectBenchConfig())
    defects.set_defaults(handler=defect_bench)

    nll = benchmarks.add_parser(
        "nll", help="test NLL on dynamically binarized MNIST: Burda et al. (2015), Table 1, resumable",
        description="Trains each row of Burda et al. (2015), Table 1 (VAE, IWAE k=5, k=50) with the paper's "
                    "protocol (model/bench/nll.py) and reports −L_K beside the paper's numbers. Each row is a "
                    "run directory OUT/<row>: rerunning the command resumes it; more --stages extend it.")
    nll.add_argument("--rows", default="vae,iwae5,iwae50", help="comma-separated rows: vae, iwae5, iwae50")
    nll.add_argument("--stages", type=int, default=None,
                     help="stages of the schedule, 3^i epochs each (default: 8, the paper's 3,280 epochs; "
                          "--quick: 2; 3: 13 epochs)")
    nll.add_argument("--eval-k", type=int, default=None, help="importance samples of the test bound (default: "
                                                              "5000, the paper's; --quick: 10)")
    nll.add_argument("--data-dir", default=None, help="the folder of MNIST's four IDX .gz files (default: a cache "
                                                      "folder; --quick: the embedded digits)")
    nll.add_argument("--out", default="runs/bench/nll", help="folder of the row's run directories and of "
                                                             "nll.json, nll.md")
    nll.add_argument("--seed", type=int, default=0, help="seed of initialisation, binarization and sampling")
    nll.add_argument("--quick", action="store_true",
                     help="CI preset: 300 training images (embedded digits without --data-dir), 2 stages "
                          "(1 + 3 epochs), K = 10; checks the pipeline, not the numbers")
    nll.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    nll.add_argument("--compile", action="store_true", help="torch.compile the loss and the bound (the same "
                     "protocol, faster after a first compile; model.core.compilation); may change between resumes")
    nll.set_defaults(handler=nll_bench)


def anomaly(args: argparse.Namespace) -> int:
    # Keeps scikit-learn (the AUROC) and the training stack off `vae serve`'s path: the serve image
    # has neither.
    from model.bench.anomaly import merge, run
    from model.bench.render import markdown

    if args.render:
        report = merge([json.loads(Path(path).read_text()) for path in args.render])
        print(markdown(report))
        if args.write_rankings:
            ranked = write_rankings(report["summary"], args.write_rankings)
            print(f"rankings of {', '.join(ranked['rankings'])} written to {args.write_rankings}")
        return 0
    if args.write_rankings:
        raise ValueError("--write-rankings: expected --render JSON... as well (rankings are read from reports)")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(QUICK if args.quick else BenchConfig(),
                     **given_arguments(args, [f.name for f in fields(BenchConfig)]))
    if config.compile:
        check_available(torch.device("cpu"))  # the bench trains and scores on the CPU
    out = Path(args.out)

    def save(report: dict) -> None:
        write_json(out, report)
        write_bytes(out.with_suffix(".md"), markdown(report).encode())

    command = "vae " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    report = run(config, command=command, on_case=save)
    print(markdown(report))
    if args.quick:
        # The likelihood must beat chance well on one-class digits. The corrected scores are built
        # for OOD and may not (complexity ranks a "1" model's other digits as normal: they are complex).
        for benchmark, summary in report["summary"].items():
            got = summary["mean_auroc"].get("iwae", summary["mean_auroc"][summary["best"]])
            if got < args.min_auroc:
                print(f"vae bench anomaly --quick: {benchmark} mean AUROC of −L_K is {got:.3f}, "
                      f"expected >= {args.min_auroc}", file=sys.stderr)
                return 1
    return 0


def ood_suite(args: argparse.Namespace) -> int:
    # Scoring a run imports scikit-learn (the AUROC) and the data loaders: off `vae serve`'s path.
    from model.bench.ood import render, run_ood

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_ood(args.run_dir, replace(OodConfig(), **given_arguments(args, [f.name for f in fields(OodConfig)])))
    table = render(result)
    if args.write_rankings:
        update_rankings(result, args.write_rankings)
        print(f"{result['dataset']}'s ranking written to {args.write_rankings}", file=sys.stderr)
    if args.out:
        write_json(Path(args.out), result)
        write_bytes(Path(args.out).with_suffix(".md"), (table + "\n").encode())
    print(table)
    return 0


def defect_bench(args: argparse.Namespace) -> int:
    # `model.bench.defects` imports scikit-learn (the metrics) and the training stack only in its
    # functions: this parser, which `vae serve` builds too, reads just its config.
    config_fields = [f.name for f in fields(defects_bench.DefectBenchConfig)]
    given = given_arguments(args, config_fields)
    if args.quick and {"data_dir", "run"} & set(given):
        flags = " or ".join("--" + name.replace("_", "-") for name in sorted({"data_dir", "run"} & set(given)))
        raise ValueError(f"--quick draws its own folder and trains its own model; expected no {flags}")
    if not args.quick and "data_dir" not in given:
        raise ValueError("expected --data-dir DIR, a folder in the MVTec AD layout (or --quick for the CI preset)")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(defects_bench.QUICK if args.quick else defects_bench.DefectBenchConfig(), **given)
    out = Path(args.out)

    def save(report: dict) -> None:
        write_json(out, report)
        write_bytes(out.with_suffix(".md"), (defects_bench.markdown(report) + "\n").encode())

    def log(line: str) -> None:
        print(f"vae bench defects: {line}", file=sys.stderr)

    command = "vae " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    options = dict(command=command, on_part=save, log=log, progress=sys.stderr.isatty())
    work = out.with_name(out.stem + "-run")  # the bench's own: its model (and --quick's folder), replaced
    bench = defects_bench.quick if args.quick else defects_bench.run_defects
    report = bench(config, work, **options)
    print(defects_bench.markdown(report))
    if args.quick:
        floors = {name: getattr(args, f"min_{name}") for name in defects_bench.QUICK_FLOORS}
        failures = defects_bench.quick_failures(report, floors)
        for failure in failures:
            print(f"vae bench defects --quick: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


def nll_bench(args: argparse.Namespace) -> int:
    # Training imports the training stack: off `vae serve`'s path.
    from model.bench import nll

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = nll.parse_rows(args.rows)
    stages = args.stages or (2 if args.quick else 8)
    eval_k = args.eval_k or (nll.QUICK_EVAL_K if args.quick else nll.PAPER_EVAL_K)
    if eval_k < 1:
        raise ValueError(f"--eval-k: expected >= 1, got {eval_k}")
    command = "vae " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    report = nll.run(rows, stages=stages, eval_k=eval_k, data_dir=args.data_dir, out=args.out, quick=args.quick,
                     seed=args.seed, command=command, progress=sys.stderr.isatty(),
                     on_row=lambda report: nll.save(report, args.out), compile=args.compile)
    print(nll.markdown(report))
    return 0
