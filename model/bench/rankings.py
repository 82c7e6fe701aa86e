"""Each data set's ranking of the anomaly scores, from `vae bench anomaly` reports, written as the JSON
file `model.anomaly.registry` reads (model/anomaly/rankings.json):

    vae bench anomaly --render runs/bench/*.json --write-rankings model/anomaly/rankings.json

A data set D ranks its scores by the mean of two AUROCs (docs/anomaly.md, "The score served by
default"): its one-class mean (benchmark `oneclass-D`) and its out-of-distribution AUROC with D as
the normal data (`D-vs-*`; their mean if several were run). Only scores measured on both count
(likelihood regret, not run one-class at full size, is not ranked), and only data sets with both
kinds of benchmark are ranked.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.bench.config import ALL_SCORES, benchmark_data
from model.io.atomic import write_json

SOURCE = ("vae bench anomaly (docs/anomaly.md): each data set's scores ranked by the mean of its one-class "
          "mean AUROC and its out-of-distribution AUROC")


def score_means(summary: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per ranked data set, {score: mean of its one-class and OOD AUROCs}, best first.

    Args:
        summary: a report's summary (`model.bench.anomaly.summarise`): per benchmark, "mean_auroc".
    Returns:
        Data sets in the order of their one-class benchmarks; equal means keep `ALL_SCORES` order.
    """
    one_class: dict[str, dict[str, float]] = {}
    ood: dict[str, list[dict[str, float]]] = {}
    for benchmark, s in summary.items():
        normal, other = benchmark_data(benchmark)
        if other is None:
            one_class[normal] = s["mean_auroc"]
        else:
            ood.setdefault(normal, []).append(s["mean_auroc"])
    out = {}
    for dataset, inside in one_class.items():
        directions = ood.get(dataset, [])
        names = [n for n in ALL_SCORES if n in inside and directions and all(n in d for d in directions)]
        means = {n: (inside[n] + sum(d[n] for d in directions) / len(directions)) / 2 for n in names}
        if means:
            out[dataset] = dict(sorted(means.items(), key=lambda item: -item[1]))  # sorted is stable
    return out


def rankings(summary: dict[str, dict], source: str = SOURCE) -> dict:
    """The rankings file: its source, each data set's scores best first, and the means they were ranked by."""
    means = score_means(summary)
    return {"source": source, "rankings": {dataset: list(m) for dataset, m in means.items()},
            "means": {dataset: {n: round(v, 4) for n, v in m.items()} for dataset, m in means.items()}}


def write_rankings(summary: dict[str, dict], path: str | Path, source: str = SOURCE) -> dict:
    """Write `rankings(summary)` to `path` (atomically) and return it."""
    ranked = rankings(summary, source)
    if not ranked["rankings"]:
        raise ValueError(f"no data set has both a one-class and an out-of-distribution benchmark in these reports "
                         f"(got {sorted(summary)}); expected e.g. oneclass-mnist with mnist-vs-fashion-mnist")
    write_json(path, ranked)
    return ranked


WORST_CASE = ("vae bench ood RUN --write-rankings: the scores ranked by their worst AUROC over the suite's "
              "visible families (held-out ones apart), ties by their worst flag rate at 1 % false positives")


def worst_case_ranking(result: dict) -> dict[str, dict[str, float]]:
    """A `vae bench ood` result's scores, best worst case first: {score: {"auroc", "flagged"}}.

    A score is only as trustworthy as the family it fails worst on, so the ranking reads the minimum
    over families, never the mean. The held-out families are left out: they check the choice.
    """
    per = {}
    for score, families in result["scores"].items():
        visible = [v for k, v in families.items() if k != "normal" and k not in result["held_out"]]
        per[score] = {"auroc": min(v["auroc"] for v in visible), "flagged": min(v["flagged"] for v in visible)}
    return dict(sorted(per.items(), key=lambda item: (-item[1]["auroc"], -item[1]["flagged"])))


def update_rankings(result: dict, path: str | Path) -> dict:
    """Replace the ranking of the result's data set in the rankings file at `path` by its worst case."""
    path = Path(path)
    ranked = json.loads(path.read_text()) if path.exists() else {"source": WORST_CASE, "rankings": {}}
    worst = worst_case_ranking(result)
    dataset = result["dataset"]
    ranked["rankings"][dataset] = list(worst)
    ranked.setdefault("rules", {})[dataset] = WORST_CASE
    ranked.setdefault("worst_case", {})[dataset] = {
        score: {k: round(v, 4) for k, v in values.items()} for score, values in worst.items()}
    ranked.get("means", {}).pop(dataset, None)
    write_json(path, ranked)
    return ranked
