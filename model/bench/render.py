"""The Markdown of a `vae bench anomaly` report: the mean AUROC per benchmark beside the published
anchors and the targets, then every case, then any K sweep (as docs/anomaly.md shows them)."""

from __future__ import annotations

import json

from model.bench.anomaly import scoring_seconds
from model.bench.config import ALL_SCORES, ONE_CLASS

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
            percent = benchmark.startswith(ONE_CLASS)
            cells = [_cell(s["mean_auroc"].get(n), percent) for n in names]
            target = TARGETS.get(benchmark)
            shown = "" if target is None else (f"{100 * target:.1f}" if percent else f"{target}")
            lines.append(f"| {benchmark} | " + " | ".join(cells)
                         + f" | {s['best']} | {shown} | {ANCHORS.get(benchmark, '')} |")
        lines.append("")
    rows = [r for r in report["results"] if "auroc" in r]
    if rows:
        names = _names([r["auroc"] for r in rows])
        lines += ["| benchmark | case | " + " | ".join(names) + " | train s | scoring s |",
                  "| --- | --- |" + " ---: |" * (len(names) + 2)]
        for r in rows:
            cells = [_cell(r["auroc"].get(n), False) for n in names]
            lines.append(f"| {r['benchmark']} | {r['case']} | " + " | ".join(cells)
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
