"""`vae bench nll`: Burda et al. (2015), Table 1 (one stochastic layer), as a benchmark anyone can rerun.

The paper's protocol (section 5 and appendix C of "Importance Weighted Autoencoders"):

- MNIST, dynamically binarized: a fresh Bernoulli draw of every training image in every pass, on
  all 60,000 training images; the 10,000 test images binarized once (here: seeded, seed + 1).
- pixels–200–200–50: two deterministic tanh layers of 200 units on each side, a diagonal Gaussian
  q(z|x) of 50 units, a Bernoulli p(x|z).
- Adam with β1 = 0.9, β2 = 0.999, ε = 1e-4; batches of 20.
- 3^i epochs at learning rate 0.001 · 10^(−i/7), for i = 0 … 7: 3,280 epochs.
- Test NLL reported as −L_5000, the importance-weighted bound with 5,000 samples.

Each row of the table is one `vae train` run directory under `--out`, trained through
`model.runs.train.train` and so resumable after any interruption: rerunning the command resumes
every row from its last completed epoch (and a shortened run extends to more `--stages`). The
report (JSON and Markdown) is rewritten after every row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.config.train import TrainConfig
from model.io.atomic import read_jsonl, write_bytes, write_json
from model.runs import checkpoint as ckpt
from model.runs.train import train
from model.training.loop import BURDA_STAGES, burda_epochs, burda_stage_epochs, learning_rate

PAPER = "Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, Table 1"
PAPER_EVAL_K = 5000
PAPER_EPOCHS = burda_epochs(BURDA_STAGES)  # 3,280
PAPER_TRAIN_IMAGES = 60_000
QUICK_TRAIN_IMAGES = 300
QUICK_EVAL_K = 10


@dataclass(frozen=True)
class Row:
    """One row of Table 1: an objective, its samples per example, the paper's test NLL in nats."""

    name: str
    objective: str
    k: int
    paper_nll: float


ROWS = {row.name: row for row in (Row("vae", "elbo", 1, 86.76), Row("iwae5", "iwae", 5, 85.54),
                                  Row("iwae50", "iwae", 50, 84.78))}


def parse_rows(text: str) -> tuple[Row, ...]:
    """`vae,iwae5` → those rows, in the order given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        raise ValueError(f"--rows: expected a comma-separated list of {sorted(ROWS)}, got {text!r}")
    return tuple(ROWS[name] for name in dict.fromkeys(names))


def row_config(row: Row, *, stages: int, eval_k: int, data_dir: str | None, quick: bool = False,
               seed: int = 0, compile: bool = False) -> TrainConfig:
    """The TrainConfig of one row: the paper's protocol for its first `stages` stages of the schedule.

    --quick trains on the embedded digits (a few hundred of them) unless a data directory is given;
    `compile` (--compile, model.core.compilation) changes the speed, not the protocol.
    """
    if not 1 <= stages <= BURDA_STAGES:
        raise ValueError(f"--stages: expected 1 to {BURDA_STAGES} stages of the schedule, got {stages}")
    data = {"dataset": "mnist", "data_dir": data_dir}
    if quick:
        data = {"dataset": "mnist", "data_dir": data_dir} if data_dir else {"dataset": "embedded"}
        data["train_subset"] = QUICK_TRAIN_IMAGES
    return TrainConfig.of(
        **data, binarize="dynamic", train_on_validation=True,
        hidden=(200, 200), activation="tanh", latent_features=50, likelihood="bernoulli",
        objective=row.objective, k=row.k, batch_size=20, lr=1e-3, lr_schedule="burda", adam_eps=1e-4,
        epochs=burda_epochs(stages), eval_k=eval_k,
        calibration_k=10,  # the run's anomaly calibration, which this bench does not read: kept cheap
        seed=seed, compile=compile)


def deviations(config: TrainConfig, train_images: int) -> list[str]:
    """Every way the row's run departs from the paper's protocol, each with its number."""
    found = []
    if config.optim.epochs != PAPER_EPOCHS:
        found.append(f"{config.optim.epochs:,} epochs of the paper's {PAPER_EPOCHS:,} (the first "
                     f"{_stages_of(config.optim.epochs)} of {BURDA_STAGES} stages of the schedule)")
    if config.eval_k != PAPER_EVAL_K:
        found.append(f"test NLL as −L_{config.eval_k}, not −L_{PAPER_EVAL_K}")
    if train_images != PAPER_TRAIN_IMAGES or config.data.dataset != "mnist":
        found.append(f"{train_images:,} training images of {config.data.dataset}, not MNIST's {PAPER_TRAIN_IMAGES:,}")
    if config.optim.batch_size != 20:
        found.append(f"batch size {config.optim.batch_size}, not 20")
    found.append("initialisation: torch's default (uniform ±1/√fan_in), not the paper's heuristic of "
                 "Glorot & Bengio (2010)")
    found.append("the test images are binarized once with seed + 1 (the paper's draw is not published)")
    return found


def _stages_of(epochs: int) -> int:
    return next((s for s in range(BURDA_STAGES + 1) if burda_epochs(s) >= epochs), BURDA_STAGES)


def learning_curve(metrics: list[dict], config: TrainConfig) -> list[dict]:
    """At the end of each completed stage: its epochs, learning rate and the validation ELBO.

    With `train_on_validation` the validation images are a sample of the training images, so the
    curve is a training bound (the paper trains on all 60,000 and reports no validation curve).
    """
    curve = []
    for stage in range(BURDA_STAGES):
        last = burda_epochs(stage + 1)
        if last > len(metrics):
            break
        curve.append({"stage": stage, "epochs": burda_stage_epochs(stage), "through_epoch": last,
                      "lr": learning_rate(config.optim.lr, config.optim.lr_schedule, last - 1),
                      "validation_elbo": metrics[last - 1]["validation"]["elbo"]})
    return curve


def run_row(row: Row, config: TrainConfig, out: Path, *, progress: bool = False) -> dict:
    """Train (or resume, or extend) the row's run directory `out` and report it."""
    started = time.perf_counter()
    resume = (out / ckpt.CONFIG).exists()
    train(config, out, resume=resume, progress=progress)
    evaluation = json.loads((out / ckpt.EVALUATION).read_text())
    metrics = read_jsonl(out / ckpt.METRICS)
    images = evaluation.get("data", {}).get("images", {}).get("train")
    if images is None:
        images = json.loads((out / ckpt.CONFIG).read_text()).get("train_subset") or PAPER_TRAIN_IMAGES
    nll = evaluation["iwae"]["nll"]
    return {
        "row": row.name, "objective": row.objective, "k": row.k, "run_dir": str(out),
        "paper_nll": row.paper_nll, "nll": round(nll, 3), "difference": round(nll - row.paper_nll, 3),
        "eval_k": evaluation["iwae"]["k"], "test_elbo": round(evaluation["test"]["elbo"], 3),
        "epochs_done": len(metrics), "epochs_paper": PAPER_EPOCHS, "train_images": images,
        "train_seconds": round(sum(r["seconds"] for r in metrics), 1),
        "seconds_this_invocation": round(time.perf_counter() - started, 1),
        "learning_curve": learning_curve(metrics, config),
        "deviations": deviations(config, images),
    }


def run(rows: tuple[Row, ...], *, stages: int, eval_k: int, data_dir: str | None, out: str | Path,
        quick: bool = False, seed: int = 0, command: str = "", progress: bool = False,
        on_row: Callable[[dict], None] | None = None, compile: bool = False) -> dict:
    """Every row's run under `out`/<row>, resumed where present; the report after each row to `on_row`."""
    out = Path(out)
    report = {"benchmark": "nll", "paper": PAPER, "command": command, "stages": stages,
              "epochs": burda_epochs(stages), "paper_epochs": PAPER_EPOCHS, "quick": quick,
              "protocol": __doc__.split("The paper's protocol")[1].split("Each row")[0].strip(), "rows": []}
    for row in rows:
        config = row_config(row, stages=stages, eval_k=eval_k, data_dir=data_dir, quick=quick, seed=seed,
                            compile=compile)
        report["rows"].append(run_row(row, config, out / row.name, progress=progress))
        if on_row is not None:
            on_row(report)
    return report


def markdown(report: dict) -> str:
    """The table: ours beside the paper's, the deviations under it, then each row's learning curve."""
    lines = [f"# Test NLL on dynamically binarized MNIST ({report['paper']})", "",
             f"{report['epochs']:,} of the paper's {report['paper_epochs']:,} epochs "
             f"({report['stages']} of 8 stages){' — --quick: a pipeline check, not a result' if report['quick'] else ''}.",
             "", "| model | paper −L_5000 (nats) | ours −L_K (nats) | K | Δ | test ELBO | epochs | training images "
                 "| training time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        name = "VAE" if r["k"] == 1 else f"IWAE k={r['k']}"
        lines.append(f"| {name} | {r['paper_nll']:.2f} | {r['nll']:.2f} | {r['eval_k']:,} | {r['difference']:+.2f} "
                     f"| {-r['test_elbo']:.2f} | {r['epochs_done']:,} of {r['epochs_paper']:,} "
                     f"| {r['train_images']:,} | {r['train_seconds'] / 60:.1f} min |")
    for r in report["rows"]:
        lines += ["", f"**{r['row']}** deviations from the paper:", *[f"- {d}" for d in r["deviations"]], "",
                  "| stage | epochs | through epoch | lr | −validation ELBO (nats) |", "| ---: | ---: | ---: | ---: | ---: |",
                  *[f"| {c['stage']} | {c['epochs']} | {c['through_epoch']} | {c['lr']:.3g} | {-c['validation_elbo']:.2f} |"
                    for c in r["learning_curve"]]]
    return "\n".join(lines) + "\n"


def save(report: dict, out: str | Path) -> None:
    """nll.json and nll.md in `out`."""
    out = Path(out)
    write_json(out / "nll.json", report)
    write_bytes(out / "nll.md", markdown(report).encode())
