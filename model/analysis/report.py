"""Comparing the runs of a sweep: one table, overlaid learning curves, and a Markdown report.

`write_comparison(SWEEP_DIR)` (which `vae sweep` calls after `run_sweep`) writes comparison.json,
comparison.md, learning_curves.png and rate_distortion.png. `write_report(SWEEP_DIR)` (`vae report`)
adds every run's plots and report.md, which holds the tables (overall and per class), the training
budget and the figures. The sweep directory's layout and record are `model.analysis.sweep`'s.

Classes are called digits for the digit data sets (`DIGIT_DATASETS`) and classes otherwise, each
shown by its name where the run's data names it (a folder's subfolders). Runs of different
likelihoods measure log p(x) in different units, and the report says so beside the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.analysis.plots import plot_run
from model.analysis.sweep import RUNS_DIR, load_shared, read_sweep_record
from model.analysis.sweep_plots import plot_overlaid_curves, plot_rate_distortion
from model.config.train import TrainConfig
from model.core.labels import UNLABELLED
from model.data.base import DataBundle, Split
from model.io.atomic import read_jsonl, write_bytes, write_json
from model.runs.checkpoint import CONFIG, EVALUATION, METRICS, is_complete, load_checkpoint

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
REPORT_MD = "report.md"
REPORT_DIR = "report"
DIGIT_DATASETS = ("mnist", "embedded")  # whose classes the tables call digits


@dataclass(frozen=True)
class RunSummary:
    """What a sweep's run directory says about one run (empty dicts where a file is missing)."""

    name: str
    changes: dict
    status: str
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None


def collect(sweep_dir: str | Path) -> tuple[dict, list[RunSummary]]:
    """The sweep record and a summary of each of its runs, in the sweep file's order."""
    sweep_dir = Path(sweep_dir)
    record = read_sweep_record(sweep_dir)
    runs = []
    for entry in record["runs"]:
        path = sweep_dir / RUNS_DIR / entry["name"]
        complete = is_complete(path)
        status = "complete" if complete else entry.get("status", "not run")
        if status == "complete" and not complete:
            status = "incomplete"
        runs.append(RunSummary(
            name=entry["name"], changes=entry.get("changes", {}), status=status, path=path,
            config=json.loads((path / CONFIG).read_text()) if (path / CONFIG).exists() else {},
            metrics=read_jsonl(path / METRICS),
            evaluation=json.loads((path / EVALUATION).read_text()) if complete else {},
            seconds=entry.get("seconds"), error=entry.get("error"),
        ))
    return record, runs


def _changes(run: RunSummary) -> str:
    def show(value):
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    return ", ".join(f"{k}={show(v)}" for k, v in run.changes.items()) or "base"


def comparison_row(run: RunSummary) -> dict:
    """The comparison table's numbers for one run (None where the run has no evaluation)."""
    e = run.evaluation
    if not e:
        return {"run": run.name, "changes": _changes(run), "status": run.status, "error": run.error}
    classifier = e.get("classifier", {})
    return {
        "run": run.name, "changes": _changes(run), "status": run.status,
        "epochs": len(run.metrics),
        "train_images": run.config.get("train_subset"),
        "test_elbo": e["test"]["elbo"], "test_log_px": e["test"]["log_px"], "test_kl": e["test"]["kl"],
        "iwae_log_px": e["iwae"]["log_px"], "iwae_k": e["iwae"]["k"],
        "active_units": e["active_units"]["count"], "latent_units": e["active_units"]["of"],
        "latent_accuracy": classifier.get("latent_accuracy"), "pixel_accuracy": classifier.get("pixel_accuracy"),
        "reconstruction_mse": e.get("reconstruction_mse"),
        "validation_elbo": run.metrics[-1]["validation"]["elbo"] if run.metrics else None,
        "seconds": run.seconds,
        "kind": run.config.get("kind"),
        "kind_evaluation": e.get("kind"),
    }


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def comparison_table(rows: list[dict]) -> str:
    """The Markdown comparison table (nats per test image; accuracy on the test set)."""
    header = ("| run | changes | test ELBO | IWAE log p(x) (K) | KL | log p(x\\|z) | active units "
              "| latent-classifier acc. | pixel-classifier acc. | recon. MSE | epochs | seconds |")
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        if "test_elbo" not in r:
            lines.append(f"| {r['run']} | {r['changes']} | {r['status']}: {r.get('error') or 'no evaluation'} "
                         "| | | | | | | | | |")
            continue
        lines.append(
            f"| {r['run']} | {r['changes']} | {_fmt(r['test_elbo'])} | {_fmt(r['iwae_log_px'])} ({r['iwae_k']}) "
            f"| {_fmt(r['test_kl'])} | {_fmt(r['test_log_px'])} | {r['active_units']}/{r['latent_units']} "
            f"| {_fmt(r['latent_accuracy'], 3)} | {_fmt(r['pixel_accuracy'], 3)} "
            f"| {_fmt(r['reconstruction_mse'], 4)} | {r['epochs']} "
            f"| {_fmt(r['seconds'], 0)} |")
    return "\n".join(lines)


def class_word(runs: list[RunSummary]) -> str:
    """"digit" where every run is of a digit data set (`DIGIT_DATASETS`), else "class"."""
    return "digit" if all(r.config.get("dataset", "mnist") in DIGIT_DATASETS for r in runs) else "class"


def class_names(runs: list[RunSummary]) -> dict[int, str]:
    """Each label's name as the first run whose data names it records it (config.json's class_names)."""
    names: dict[int, str] = {UNLABELLED: "unlabelled"}
    for r in runs:
        for label, name in zip(r.config.get("class_labels") or (), r.config.get("class_names") or ()):
            names.setdefault(int(label), name)
    return names


def class_headers(runs: list[RunSummary], labels: list[int]) -> list[str]:
    """A table header per label: "digit 3", or "class NAME" with the name a run's data gives it."""
    names, word = class_names(runs), class_word(runs)
    return [f"{word} {names.get(label, label)}" for label in labels]


def per_class_table(runs: list[RunSummary]) -> str:
    """Per digit (or class): reconstruction MSE and IWAE log p(x) of each evaluated run."""
    evaluated = [r for r in runs if r.evaluation.get("per_class")]
    if not evaluated:
        return ""
    digits = sorted({int(d) for r in evaluated for d in r.evaluation["per_class"]})
    lines = ["| run | " + " | ".join(class_headers(evaluated, digits)) + " |", "|" + "---|" * (len(digits) + 1)]
    for r in evaluated:
        cells = []
        for d in digits:
            c = r.evaluation["per_class"].get(str(d))
            cells.append("–" if c is None else f"{c['reconstruction_mse']:.4f} / {c['iwae_log_px']:.1f}")
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(runs: list[RunSummary], epochs=(1, 2, 5, 10, 20, 50, 100)) -> str:
    """Validation ELBO and KL (ELBO / KL) at a few epochs and the last one, per run."""
    with_metrics = [r for r in runs if r.metrics]
    if not with_metrics:
        return ""
    last = max(len(r.metrics) for r in with_metrics)
    shown = sorted({e for e in epochs if e <= last} | {last})
    lines = ["| run | " + " | ".join(f"epoch {e}" for e in shown) + " |", "|" + "---|" * (len(shown) + 1)]
    for r in with_metrics:
        by_epoch = {m["epoch"]: m["validation"] for m in r.metrics}
        cells = [f"{by_epoch[e]['elbo']:.1f} / {by_epoch[e]['kl']:.1f}" if e in by_epoch else "–" for e in shown]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_summary(run_dir: Path, test: Split) -> dict[str, dict] | None:
    """Per digit: recall of the run's latent classifier on the test set and the digit it most often says instead."""
    checkpoint = load_checkpoint(run_dir)
    if checkpoint.classifier is None:
        return None
    with torch.no_grad():
        predicted = torch.cat([checkpoint.classifier.predict(checkpoint.model.features(test.x[i:i + 1000]))
                               for i in range(0, len(test), 1000)])
    out = {}
    for digit in torch.unique(test.y).tolist():
        if digit == UNLABELLED:
            continue
        mine = predicted[test.y == digit]
        wrong = mine[mine != digit]
        out[str(digit)] = {"recall": float((mine == digit).float().mean()),
                           "confused_with": int(wrong.mode().values) if len(wrong) else None,
                           "confused_share": float((wrong == wrong.mode().values).float().sum() / len(mine))
                           if len(wrong) else 0.0}
    return out


def confusion_table(confusions: dict[str, dict], runs: list[RunSummary] = ()) -> str:
    """Markdown: per run and digit, 'recall % (→ most frequent wrong digit, its share %)'.

    `runs` name the classes in the headers (`class_headers`); without them they are digits.
    """
    digits = sorted({int(d) for c in confusions.values() for d in c})
    headers = class_headers(list(runs), digits) if runs else [f"digit {d}" for d in digits]
    names = class_names(list(runs))
    lines = ["| run | " + " | ".join(headers) + " |", "|" + "---|" * (len(digits) + 1)]
    for name, per_digit in confusions.items():
        cells = []
        for d in digits:
            c = per_digit.get(str(d))
            if c is None:
                cells.append("–")
            elif c["confused_with"] is None:
                cells.append(f"{100 * c['recall']:.1f}%")
            else:
                wrong = names.get(c["confused_with"], c["confused_with"])
                cells.append(f"{100 * c['recall']:.1f}% (→{wrong} {100 * c['confused_share']:.1f}%)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kind_table(rows: list[dict]) -> str:
    """Numbers only some model kinds report (evaluation.json's "kind"), one line per such run."""
    lines = [f"- {r['run']} ({r['kind']}): " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in r["kind_evaluation"].items())
             for r in rows if r.get("kind_evaluation")]
    return "\n".join(lines)


def write_comparison(sweep_dir: str | Path) -> list[Path]:
    """comparison.json, comparison.md, learning_curves.png and rate_distortion.png in SWEEP_DIR."""
    sweep_dir = Path(sweep_dir)
    record, runs = collect(sweep_dir)
    rows = [comparison_row(r) for r in runs]
    write_json(sweep_dir / COMPARISON_JSON, {"sweep": record["name"], "quick": record.get("quick", False),
                                             "runs": rows})
    write_bytes(sweep_dir / COMPARISON_MD, (comparison_table(rows) + "\n").encode())
    written = [sweep_dir / COMPARISON_JSON, sweep_dir / COMPARISON_MD]
    curves = {r.name: r.metrics for r in runs if r.metrics}
    if curves:
        written.append(plot_overlaid_curves(curves, sweep_dir / "learning_curves.png", record["name"]))
    points = {r.name: (r.evaluation["test"]["kl"], -r.evaluation["test"]["log_px"]) for r in runs if r.evaluation}
    if points:
        written.append(plot_rate_distortion(points, sweep_dir / "rate_distortion.png"))
    return written


def _budget(record: dict, runs: list[RunSummary]) -> str:
    base = record.get("base", {})
    seconds = [r.seconds for r in runs if r.seconds is not None]
    data = base.get("dataset")
    if base.get("data_dir"):
        data += f" from {base['data_dir']}"
    lines = [
        f"- data: {data}, binarization `{base.get('binarize')}`, classes "
        f"{base.get('classes') or 'all'} (unless a run changes them), training subset "
        f"{base.get('train_subset') or 'none (all training images)'}",
        f"- {base.get('epochs')} epochs, batch {base.get('batch_size')}, Adam lr {base.get('lr')}, "
        f"IWAE K = {base.get('eval_k')}, seed {base.get('seed')}",
    ]
    if seconds:
        lines.append(f"- wall time per run (training + evaluation, as recorded by `vae sweep`): "
                     f"{min(seconds):.0f}–{max(seconds):.0f} s, {sum(seconds) / 60:.1f} min in all")
    if record.get("quick"):
        lines.append("- **quick mode**: embedded digits, one epoch — a smoke test, not a result")
    return "\n".join(lines)


def _run_sections(sweep_dir: Path, runs: list[RunSummary], *, tsne: bool, log) -> tuple[list[str], dict]:
    """Each run's plots (drawn under SWEEP_DIR/report/NAME) as Markdown, and its classifier's confusions."""
    parts, confusions = ["## Runs", ""], {}
    cache: dict[tuple, DataBundle] = {}
    for run in runs:
        if run.status != "complete":
            parts += [f"### {run.name}", "", f"{run.status}: {run.error or 'no complete run'}", ""]
            continue
        data = load_shared(TrainConfig.from_dict(run.config), cache)
        written = plot_run(run.path, sweep_dir / REPORT_DIR / run.name, tsne=tsne, data=data, log=log)
        parts += [f"### {run.name} ({_changes(run)})", ""]
        parts += [f"![{p.stem}]({p.relative_to(sweep_dir).as_posix()})" for p in written]
        parts.append("")
        confusion = confusion_summary(run.path, data.test)
        if confusion is not None:
            confusions[run.name] = confusion
    return parts, confusions


def likelihood_note(runs: list[RunSummary]) -> str:
    """A warning where the runs' log p(x) are in different units (runs of several likelihoods), else ""."""
    likelihoods = sorted({r.config.get("likelihood", "bernoulli") for r in runs if r.config})
    if len(likelihoods) < 2:
        return ""
    return (f"The runs use different likelihoods ({', '.join(likelihoods)}): log p(x) under the course's Bernoulli "
            "(grey levels as soft targets) and under the discretized logistic (8-bit levels) are not in the same "
            "units, so compare the bounds only between runs of one likelihood.")


def write_report(sweep_dir: str | Path, *, run_plots: bool = True, tsne: bool = False, log=print) -> Path:
    """Write SWEEP_DIR/report.md with the comparison, per-class table, budget and figures."""
    sweep_dir = Path(sweep_dir)
    write_comparison(sweep_dir)
    record, runs = collect(sweep_dir)
    rows = [comparison_row(r) for r in runs]
    note = likelihood_note(runs)
    parts = [f"# Sweep `{record['name']}`", "", record.get("description", "").strip(), "",
             f"Regenerate: `vae sweep {record.get('source', 'SWEEP_FILE')}"
             f"{' --quick' if record.get('quick') else ''} --out {sweep_dir}` then `vae report {sweep_dir}`.", "",
             "## Budget", "", _budget(record, runs), "",
             "## Comparison (test set, nats per image)", "", comparison_table(rows), "",
             *([note, ""] if note else []),
             "IWAE log p(x) is the importance-weighted bound L_K with the K shown; active units have "
             "Var_x E_q[z_d] > 0.01; the classifier is logistic regression on the posterior means; "
             "reconstruction MSE is per pixel, decoder mean at the posterior mean.", "",
             "![learning curves](learning_curves.png)", "", "![rate-distortion](rate_distortion.png)", "",
             "## Learning curves (full validation set: ELBO / KL, nats per image)", "", curve_table(runs), ""]
    kinds = kind_table(rows)
    if kinds:
        parts += ["## Kind-specific evaluation", "", kinds, ""]
    word = class_word(runs)
    per_class = per_class_table(runs)
    if per_class:
        parts += [f"## Per {word} (reconstruction MSE / IWAE log p(x))", "", per_class, ""]
    if run_plots:
        run_parts, confusions = _run_sections(sweep_dir, runs, tsne=tsne, log=log)
        if confusions:
            parts += [f"## Latent classifier per {word} (test recall, → the {word} most often predicted instead)",
                      "", confusion_table(confusions, runs), ""]
        parts += run_parts
    path = sweep_dir / REPORT_MD
    write_bytes(path, "\n".join(parts).encode())
    return path
