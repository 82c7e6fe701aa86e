"""`vae bench anomaly`: the AUROC of every anomaly score on the standard benchmarks.

Benchmarks (results and anchors in docs/anomaly.md):

- `oneclass-<data>` (Ruff et al. 2018): for each class c, train on the training images of class c
  only, score the test set; normal = test images of class c, anomalous = the other nine classes.
- `<a>-vs-<b>` (Nalisnick et al. 2019): train on all of data set a, score a's test set (normal)
  against b's test set (anomalous). `fashion-mnist-vs-mnist` is where the likelihood fails;
  `embedded-vs-fashion-mnist` is the quickstart's case (the embedded digits against garments).

Every case trains a fresh model (and, for the likelihood ratio, a background model on perturbed
inputs) with `model.anomaly.likelihood.fit_model`, scores the test images in batches and reports the AUROC
of each score with its wall time. Scoring goes through `model.anomaly.likelihood.score_split`, as
calibration does: −L_K is computed once and shared by the `iwae`, `complexity`, `excess` and
`likelihood_ratio` scores, so they all see the same importance samples.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DATASETS = ("embedded", "mnist", "fashion-mnist")
BENCHMARKS = ("oneclass-embedded", "oneclass-mnist", "oneclass-fashion-mnist",
              "mnist-vs-fashion-mnist", "fashion-mnist-vs-mnist", "embedded-vs-fashion-mnist")
ALL_SCORES = ("elbo", "iwae", "reconstruction", "relative_reconstruction", "complexity", "excess", "likelihood_ratio",
              "likelihood_regret")
# Published AUROCs (percent for one-class means, fraction for OOD as the papers print them).
ANCHORS = {
    "oneclass-mnist": "Deep SVDD 94.8; VAE ≈ 97.0 (Abati et al. 2019); OCGAN 97.5; GEOM 98.0; ARNet 98.3",
    "oneclass-fashion-mnist": "Deep SVDD 89.2; GEOM 93.5; ARNet 93.9",
    "mnist-vs-fashion-mnist": "≈ 1.00 for likelihood-based scores",
    "fashion-mnist-vs-mnist": "raw likelihood 0.09 (PixelCNN++); likelihood ratio 0.994 (Ren et al. 2019); "
                              "likelihood regret ≈ 0.99 (Xiao et al. 2020); hierarchical-VAE ratio 0.98 "
                              "(Havtorn et al. 2021)",
}
TARGETS = {"oneclass-mnist": 0.980, "oneclass-fashion-mnist": 0.935,
           "mnist-vs-fashion-mnist": 0.999, "fashion-mnist-vs-mnist": 0.98}


@dataclass(frozen=True)
class BenchConfig:
    """What `vae bench anomaly` runs: benchmarks, model size, training budget, scores."""

    benchmarks: tuple[str, ...] = ("oneclass-mnist", "oneclass-fashion-mnist",
                                   "mnist-vs-fashion-mnist", "fashion-mnist-vs-mnist")
    data_root: str = "../shared/data"
    classes: tuple[int, ...] = tuple(range(10))
    scores: tuple[str, ...] = ALL_SCORES
    latent_features: int = 16
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 20  # per one-class model (≈6,000 images)
    ood_epochs: int = 10  # per model trained on a whole data set (60,000 images)
    background_epochs: float = 0.5  # as a fraction of the model's epochs (rounded up)
    perturb_rate: float = 0.2
    batch_size: int = 64
    lr: float = 1e-3
    k: int = 10
    k_sweep: tuple[int, ...] = ()  # measure the AUROC each K buys on the first case, then stop
    test_subset: int | None = None  # score a seeded random subset of this many test images
    regret_steps: int = 20
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS)) + sorted(set(self.scores) - set(ALL_SCORES))
        if unknown:
            raise ValueError(f"unknown benchmarks or scores {unknown}; expected benchmarks from {list(BENCHMARKS)} "
                             f"and scores from {list(ALL_SCORES)}")
        if any(not 0 <= c <= 9 for c in self.classes) or not self.classes:
            raise ValueError(f"classes: expected labels in 0..9, got {list(self.classes)}")
        if min(self.epochs, self.ood_epochs, self.k, *self.k_sweep, 1) < 1 or self.background_epochs < 0:
            raise ValueError("epochs, ood_epochs, k and k_sweep: expected >= 1; background_epochs: expected >= 0")


# CI: the embedded digits (no download), two classes, a small model, a few epochs.
QUICK = BenchConfig(benchmarks=("oneclass-embedded",), classes=(0, 1), latent_features=8, hidden=(128, 64),
                    epochs=15, background_epochs=0.5, k=10, regret_steps=10, test_subset=500)


@dataclass
class Case:
    """One trained model and the test images it scores (normal = label 0, anomalous = 1)."""

    benchmark: str
    name: str
    train_x: object  # Tensor (N, 1, 28, 28)
    test_x: object
    test_anomalous: object  # bool Tensor (M,)
    epochs: int
    results: dict = field(default_factory=dict)


def _load(name: str, root: str, cache: dict):
    from model.data.loading import load_raw

    if name not in cache:
        cache[name] = load_raw(name, None if name == "embedded" else str(Path(root) / name))
    return cache[name]


def _subset(x, anomalous, n: int | None, seed: int):
    import torch

    if n is None or n >= x.shape[0]:
        return x, anomalous
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[pick], anomalous[pick]


def cases(config: BenchConfig, cache: dict):
    """Yield the cases of every benchmark, loading each data set once."""
    import torch

    from model.data.transforms import filter_classes

    for benchmark in config.benchmarks:
        if benchmark.startswith("oneclass-"):
            train, test = _load(benchmark.removeprefix("oneclass-"), config.data_root, cache)
            for c in config.classes:
                x, anomalous = _subset(test.x, test.y != c, config.test_subset, config.seed + c)
                yield Case(benchmark, f"class {c}", filter_classes(train, [c]).x, x, anomalous, config.epochs)
        else:
            normal, other = benchmark.split("-vs-")
            train, test = _load(normal, config.data_root, cache)
            _, ood = _load(other, config.data_root, cache)
            n = None if config.test_subset is None else config.test_subset // 2
            x_in, _ = _subset(test.x, torch.zeros(len(test), dtype=torch.bool), n, config.seed)
            x_out, _ = _subset(ood.x, torch.ones(len(ood), dtype=torch.bool), n, config.seed + 1)
            x = torch.cat([x_in, x_out])
            anomalous = torch.cat([torch.zeros(len(x_in), dtype=torch.bool), torch.ones(len(x_out), dtype=torch.bool)])
            yield Case(benchmark, f"{normal} vs {other}", train.x, x, anomalous, config.ood_epochs)


def auroc(scores, anomalous) -> float:
    """Area under the ROC curve of `scores` (higher = anomalous) against the boolean labels."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"AUROC needs finite scores, got {int((~np.isfinite(scores)).sum())} non-finite")
    return float(roc_auc_score(np.asarray(anomalous, dtype=bool), scores))


def run_case(case: Case, config: BenchConfig) -> dict:
    """Train the case's model (and background model), score its test images, return the AUROCs."""
    import torch

    from model.anomaly.base import BACKGROUND
    from model.anomaly.registry import NLL_SCORES
    from model.anomaly.companions import fit_model
    from model.anomaly.scoring import score_split
    from model.config.train import TrainConfig

    train_config = TrainConfig(latent_features=config.latent_features, hidden=config.hidden, kl="analytic",
                               epochs=case.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
    started = time.perf_counter()
    model = fit_model(train_config, case.train_x, epochs=case.epochs)
    train_seconds = time.perf_counter() - started
    background, background_epochs, background_seconds = None, 0, 0.0
    if "likelihood_ratio" in config.scores:
        background_epochs = max(1, math.ceil(config.background_epochs * case.epochs))
        started = time.perf_counter()
        background = fit_model(train_config, case.train_x, epochs=background_epochs,
                               perturb_rate=config.perturb_rate, seed=config.seed + 1)
        background_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)
    companions = {BACKGROUND: background} if background is not None else None
    regret = {"likelihood_regret": {"steps": config.regret_steps}}

    def score_case(k: int, names=config.scores):
        return score_split(model, case.test_x, names, k=k, companions=companions, params=regret)

    result = {"benchmark": case.benchmark, "case": case.name, "train_images": int(case.train_x.shape[0]),
              "test_images": int(case.test_x.shape[0]), "anomalous_images": int(case.test_anomalous.sum()),
              "epochs": case.epochs, "background_epochs": background_epochs,
              "train_seconds": round(train_seconds, 2), "background_seconds": round(background_seconds, 2)}
    if config.k_sweep:
        result["k_sweep"] = {}
        for k in config.k_sweep:
            values, seconds = score_case(k, [n for n in config.scores if n in NLL_SCORES])
            result["k_sweep"][str(k)] = {
                name: {"auroc": auroc(values[name], case.test_anomalous), "seconds": seconds[name]}
                for name in values}
        return result
    values, seconds = score_case(config.k)
    result["auroc"] = {name: auroc(v, case.test_anomalous) for name, v in values.items()}
    result["score_seconds"] = seconds
    return result


def scoring_seconds(result: dict) -> float:
    """Wall time of a case's scoring: a derived score's seconds include the shared −L_K, counted once."""
    seconds = result["score_seconds"]
    derived = [n for n in ("complexity", "excess", "likelihood_ratio") if n in seconds]
    shared = seconds.get("iwae", 0.0) if "iwae" in seconds else 0.0
    return sum(seconds.values()) - shared * len(derived)


def summarise(results: list[dict]) -> dict:
    """Per benchmark: the mean AUROC of each score over its cases, and the wall time."""
    import numpy as np

    summary = {}
    for benchmark in dict.fromkeys(r["benchmark"] for r in results):
        rows = [r for r in results if r["benchmark"] == benchmark and "auroc" in r]
        if not rows:
            continue
        names = list(rows[0]["auroc"])
        summary[benchmark] = {
            "cases": len(rows),
            "mean_auroc": {n: float(np.mean([r["auroc"][n] for r in rows])) for n in names},
            "seconds": round(sum(r["train_seconds"] + r["background_seconds"] + scoring_seconds(r) for r in rows), 1),
        }
        best = max(names, key=lambda n: summary[benchmark]["mean_auroc"][n])
        summary[benchmark]["best"] = best
    return summary


def _names(dicts) -> list[str]:
    """Score names in ALL_SCORES order, the union over `dicts`."""
    present = set().union(*dicts) if dicts else set()
    return [n for n in ALL_SCORES if n in present]


def _cell(value: float | None, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def markdown(report: dict) -> str:
    """The results as Markdown tables: means beside the anchors, then every case ("—": not run)."""
    lines = [f"Command: `{report['command']}`  ", f"Wall time: {report['wall_seconds']:.0f} s; "
             f"torch threads: {report['threads']}; config: `{json.dumps(report['config'])}`", ""]
    summary = report["summary"]
    if summary:
        names = _names([s["mean_auroc"] for s in summary.values()])
        lines += ["| benchmark | " + " | ".join(names) + " | best | target | anchors |",
                  "| --- |" + " ---: |" * len(names) + " --- | ---: | --- |"]
        for benchmark, s in summary.items():
            cells = [_cell(s["mean_auroc"].get(n), benchmark.startswith("oneclass")) for n in names]
            target = TARGETS.get(benchmark)
            shown = "" if target is None else (f"{100 * target:.1f}" if benchmark.startswith("oneclass") else f"{target}")
            lines.append(f"| {benchmark} | " + " | ".join(cells) + f" | {s['best']} | {shown} | {ANCHORS.get(benchmark, '')} |")
        lines.append("")
    rows = [r for r in report["results"] if "auroc" in r]
    if rows:
        names = _names([r["auroc"] for r in rows])
        lines += ["| benchmark | case | " + " | ".join(names) + " | train s | scoring s |",
                  "| --- | --- |" + " ---: |" * (len(names) + 2)]
        for r in rows:
            lines.append(f"| {r['benchmark']} | {r['case']} | " + " | ".join(_cell(r["auroc"].get(n), False) for n in names)
                         + f" | {r['train_seconds'] + r['background_seconds']:.0f} | {scoring_seconds(r):.0f} |")
        lines.append("")
    for r in report["results"]:
        if "k_sweep" in r:
            lines += [f"K sweep on {r['benchmark']} {r['case']} ({r['test_images']} test images):", "",
                      "| K | score | AUROC | seconds |", "| ---: | --- | ---: | ---: |"]
            for k, by_score in r["k_sweep"].items():
                lines += [f"| {k} | {n} | {v['auroc']:.4f} | {v['seconds']:.1f} |" for n, v in by_score.items()]
            lines.append("")
    return "\n".join(lines)


def merge(reports: list[dict]) -> dict:
    """Several reports as one (e.g. OOD and one-class run separately): results joined, summary redone."""
    results = [r for report in reports for r in report["results"]]
    return {"command": " && ".join(r["command"] for r in reports), "config": [r["config"] for r in reports],
            "threads": reports[0]["threads"], "results": results, "summary": summarise(results),
            "wall_seconds": round(sum(r["wall_seconds"] for r in reports), 1)}


def run(config: BenchConfig, out: Path, command: str = "", log=print) -> dict:
    """Run every case, writing the JSON report (and a .md beside it) after each one."""
    import torch

    from model.io.atomic import write_bytes, write_json

    started = time.perf_counter()
    report = {"command": command, "config": asdict(config), "threads": torch.get_num_threads(),
              "results": [], "summary": {}, "wall_seconds": 0.0}
    cache: dict = {}
    for case in cases(config, cache):
        report["results"].append(run_case(case, config))
        report["summary"] = summarise(report["results"])
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(out, report)
        write_bytes(out.with_suffix(".md"), markdown(report).encode())
        last = report["results"][-1]
        log(f"{case.benchmark} {case.name}: " + json.dumps(last.get("auroc") or last.get("k_sweep"))
            + f" ({report['wall_seconds']:.0f} s so far)")
        if config.k_sweep:
            break
    return report


def _anomaly(args: argparse.Namespace) -> int:
    import shlex
    import sys

    import torch

    if args.render:
        print(markdown(merge([json.loads(Path(path).read_text()) for path in args.render])))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    config = QUICK if args.quick else BenchConfig()
    given = {name: getattr(args, name) for name in (
        "benchmarks", "data_root", "classes", "scores", "latent_features", "hidden", "epochs", "ood_epochs",
        "background_epochs", "perturb_rate", "k", "k_sweep", "test_subset", "regret_steps", "seed")
        if getattr(args, name) is not None}
    config = replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    command = "vae " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    report = run(config, Path(args.out), command=command)
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


def register(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks of trained-model quality")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    parser = kinds.add_parser("anomaly", help="AUROC of every anomaly score, one-class and out-of-distribution",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true",
                        help="CI preset: embedded digits, classes 0 and 1, small model; fails if −L_K's AUROC < --min-auroc")
    parser.add_argument("--min-auroc", type=float, default=0.9, help="--quick fails below this mean AUROC")
    parser.add_argument("--out", default="runs/bench/anomaly.json", help="JSON report (a .md table is written beside it)")
    parser.add_argument("--render", nargs="+", metavar="JSON",
                        help="print the Markdown tables of these reports, merged, and run nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, help=f"default: {' '.join(defaults.benchmarks)}")
    parser.add_argument("--data-root", help=f"folder holding mnist/ and fashion-mnist/ (default: {defaults.data_root})")
    parser.add_argument("--classes", nargs="+", type=int, help="one-class benchmarks: the normal classes (default: 0-9)")
    parser.add_argument("--scores", nargs="+", choices=ALL_SCORES, help="default: all")
    parser.add_argument("--latent-features", type=int, help=f"default: {defaults.latent_features}")
    parser.add_argument("--hidden", nargs="+", type=int, help=f"default: {' '.join(map(str, defaults.hidden))}")
    parser.add_argument("--epochs", type=int, help=f"per one-class model (default: {defaults.epochs})")
    parser.add_argument("--ood-epochs", type=int, help=f"per whole-data-set model (default: {defaults.ood_epochs})")
    parser.add_argument("--background-epochs", type=float,
                        help=f"background-model epochs as a fraction of the model's (default: {defaults.background_epochs})")
    parser.add_argument("--perturb-rate", type=float, help=f"default: {defaults.perturb_rate}")
    parser.add_argument("--k", type=int, help=f"importance samples of −L_K (default: {defaults.k})")
    parser.add_argument("--k-sweep", nargs="+", type=int, help="AUROC per K on the first case only, then stop")
    parser.add_argument("--test-subset", type=int, help="score a seeded random subset of the test images")
    parser.add_argument("--regret-steps", type=int, help=f"default: {defaults.regret_steps}")
    parser.add_argument("--seed", type=int)
    parser.set_defaults(handler=_anomaly)
