"""`train(config, out_dir)`: a TrainConfig in, a complete run directory out (see model.runs.checkpoint).

Each epoch runs the training loop (model.training.loop), appends to metrics.jsonl and saves the
weights and optimizer state atomically, so an interrupted run continues with `resume=True` from
its last completed epoch. After the last epoch `model.runs.finish` evaluates the model and writes
the manifest.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from model.config.train import TrainConfig
from model.core.device import resolve_device
from model.core.labels import UNLABELLED
from model.core.schedules import Progress
from model.data.base import DataBundle
from model.data.loading import load_data
from model.evaluation.evaluate import split_elbo
from model.io.atomic import append_jsonl, read_jsonl, write_bytes, write_json
from model.kinds.registry import build_model, build_objective, get_kind
from model.runs import checkpoint as ckpt
from model.runs.errors import TrainingError
from model.runs.finish import finish
from model.training.loop import NonFiniteLoss, epoch_batches, fit_epoch

RECORDED = ("input_shape", "class_labels", "class_names", "arch")  # written by `train` from the data, not chosen
LOADING_ONLY = ("memory_budget", "data_workers")  # how a folder is read, never what is trained: free on resume


def _check_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> TrainConfig | None:
    """Check the run directory against the request; returns the saved config when resuming."""
    has_run = (out / ckpt.CONFIG).exists()
    if resume:
        if not has_run:
            raise TrainingError(f"--resume: {out} holds no run to resume ({ckpt.CONFIG} is missing)")
        saved = TrainConfig.load(out / ckpt.CONFIG)
        # Only the epoch budget (and how a folder is loaded) may change on resume; anything else would
        # be another experiment.
        # The recorded fields count only where the request names them.
        given, kept = config.to_dict(), saved.to_dict()
        differing = {k for k, v in given.items()
                     if k != "epochs" and k not in LOADING_ONLY and kept[k] != v and not (k in RECORDED and v is None)}
        if differing:
            raise TrainingError(
                f"--resume: the settings {sorted(differing)} differ from the run in {out}; "
                "only --epochs (and --memory-budget, --data-workers) may change when resuming"
            )
        return saved.replace(epochs=config.optim.epochs, **{k: given[k] for k in LOADING_ONLY})
    if has_run and not overwrite:
        raise TrainingError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to start afresh, "
            "or choose another --out (curves must never silently continue an old run)"
        )
    return None


def _record_data(config: TrainConfig, data: DataBundle) -> TrainConfig:
    """The config with the data's image shape and class labels recorded (checked if already there)."""
    shape = tuple(int(d) for d in data.train.x.shape[1:])
    labels = torch.cat([data.train.y, data.validation.y, data.test.y]).unique().tolist()
    labels = tuple(int(c) for c in labels if c != UNLABELLED)
    names = None
    if data.class_names is not None:
        by_label = _names_by_label(data)
        names = tuple(by_label.get(c, str(c)) for c in labels)
    if get_kind(config.model.kind).capabilities.semi_supervised and len(labels) < 2:
        layout = data.info.get("layout")
        raise TrainingError(
            f"--kind {config.model.kind} learns from class labels and needs at least two classes, got {list(labels)}"
            + (f" (a {layout} folder has no labels: put the images in class subfolders DIR/<class>/)"
               if layout == "flat" else ""))
    for name, value in (("input_shape", shape), ("class_labels", labels)):
        recorded = getattr(config.data, name)
        if recorded is not None and tuple(recorded) != value:
            raise TrainingError(f"{name}: the run records {list(recorded)}, but the data has {list(value)}")
    return config.replace(input_shape=shape, class_labels=labels, class_names=names, arch=config.arch)


def _names_by_label(data: DataBundle) -> dict[int, str]:
    """Each label's name: a folder's class names are given in label order (see `model.data.folder`)."""
    names = data.class_names or ()
    if all(n.lstrip("-").isdigit() for n in names):
        return {int(n): n for n in names}
    return dict(enumerate(names))


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, data: DataBundle | None = None) -> Path:
    """Train a model as `config` says and write a complete run directory to `out_dir`.

    A run that fails before its first epoch is saved leaves nothing behind (a retry starts
    afresh); one that fails later keeps its last epoch, and the error carries a note saying how to
    resume it.

    Args:
        data: pre-loaded splits (tests and sweeps share them); loaded from `config` if omitted.
    Returns:
        The run directory.
    """
    out = Path(out_dir)
    created = not out.exists()
    saved = _check_run_dir(out, config, resume, overwrite)
    try:
        return _train(saved or config, out, resume=resume, overwrite=overwrite, progress=progress, data=data)
    except BaseException as error:
        if (out / ckpt.TRAINING_STATE).exists():
            error.add_note(f"the run in {out} keeps its last completed epoch; continue it with "
                           f"`vae train --out {out} --resume`")
        elif not resume:
            _discard(out, created)
        raise


def _discard(out: Path, created: bool) -> None:
    """Remove what a run that never completed an epoch wrote, so a retry is not refused."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in (*ckpt.ARTEFACTS, ckpt.TRAINING_STATE, ckpt.MANIFEST):
        (out / name).unlink(missing_ok=True)


def _train(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, progress: bool,
           data: DataBundle | None) -> Path:
    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    torch.manual_seed(config.seed)
    data = (data or load_data(config)).to(device)
    config = _record_data(config, data)
    if not resume and (out / ckpt.CONFIG).exists():  # --overwrite, checked in _check_run_dir
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ckpt.CONFIG, config.to_dict())
    model = build_model(config).to(device)
    objective = build_objective(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    start_epoch, step = 0, 0
    if resume and (out / ckpt.TRAINING_STATE).exists():
        state = ckpt.load_training_state(out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    # Lines past the last saved epoch belong to an epoch whose weights were never saved.
    history = read_jsonl(out / ckpt.METRICS)[:start_epoch]
    write_bytes(out / ckpt.METRICS, "".join(json.dumps(r) + "\n" for r in history).encode())
    if start_epoch < config.optim.epochs:
        (out / ckpt.MANIFEST).unlink(missing_ok=True)  # extending a finished run: no longer complete

    batches_per_epoch = math.ceil(len(data.train) / config.optim.batch_size)
    with tqdm(total=config.optim.epochs, initial=start_epoch, desc="epochs", unit="epoch", dynamic_ncols=True,
              disable=not progress) as bar:
        for epoch in range(start_epoch, config.optim.epochs):
            started = time.perf_counter()
            try:
                step, sums, seen = fit_epoch(model, objective, optimizer,
                                             epoch_batches(config, data.train, data.binarize), epoch=epoch,
                                             step=step, batches_per_epoch=batches_per_epoch,
                                             grad_clip=config.optim.grad_clip)
            except NonFiniteLoss as error:
                raise TrainingError(
                    f"{error}; the last completed epoch ({epoch}) is saved. Try a lower --lr, --grad-clip 100, "
                    "--kl analytic or --beta-warmup") from None
            seconds = time.perf_counter() - started
            model.eval()
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train": {k: v / seen for k, v in sums.items()},
                "validation": split_elbo(model, data.validation, config.optim.kl),
                **objective.schedule(Progress(epoch=epoch + 1, step=step)),
                "seconds": round(seconds, 3),
                "images_per_second": round(seen / seconds, 1),
            }
            # The metrics line first, then the training state (model, optimizer, RNG and epoch in one
            # atomic file), then the weights file. Resume trusts only training_state.pt: a crash after
            # the metrics line leaves an extra line that resume trims, never a missing one.
            append_jsonl(out / ckpt.METRICS, record)
            ckpt.save_training_state(out, model, optimizer, epoch + 1, step)
            ckpt.save_weights(out, model)
            bar.set_postfix(loss=f"{-record['train']['elbo']:.2f}", val_elbo=f"{record['validation']['elbo']:.2f}",
                            img_s=f"{record['images_per_second']:.0f}")
            bar.update(1)

    if not ckpt.is_complete(out):
        ckpt.save_weights(out, model)  # the weights file may predate a crash after the last state save
        finish(model, config, data, out, progress=progress)
    return out


def summary(run_dir: str | Path) -> str:
    """A few lines for a person: the run's test bounds, classifier accuracy and default anomaly score."""
    run = Path(run_dir)
    evaluation = json.loads((run / ckpt.EVALUATION).read_text())
    test, iwae, calibration = evaluation["test"], evaluation["iwae"], evaluation["calibration"]
    lines = [f"run written to {run}",
             f"  test ELBO          {test['elbo']:.2f} nats ({test['images']:,} images)",
             f"  test L_{iwae['k']:<11} {iwae['log_px']:.2f} nats ({iwae['bits_per_dim']:.4f} bits/dim)"]
    classifier = evaluation.get("classifier", {})
    if "latent_accuracy" in classifier:
        lines.append(f"  latent classifier  {100 * classifier['latent_accuracy']:.1f} % test accuracy "
                     f"(pixels: {100 * classifier['pixel_accuracy']:.1f} %)")
    else:
        lines.append(f"  latent classifier  none: {classifier.get('skipped', 'not fitted')}")
    data = evaluation.get("data", {})
    if data.get("layout"):
        p = data["preprocessing"]
        lines.append(f"  data               {data['layout']} folder {data['data_dir']}: {sum(data['images'].values()):,} "
                     f"images as {p['channels']}×{p['height']}×{p['width']}; {len(data['skipped_files'])} files "
                     f"skipped, {len(data['ignored_files'])} ignored (listed in evaluation.json)")
    lines.append(f"  anomaly score      {calibration['score']} (flags above {calibration['threshold']:.4g}, "
                 f"{100 * calibration['false_positive_rate']:g} % of normal images)")
    return "\n".join(lines)
