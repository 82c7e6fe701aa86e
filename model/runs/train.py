"""The training loop: a TrainConfig in, a complete run directory out (see model.runs.checkpoint)."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from model.runs import checkpoint as ckpt
from model.io.atomic import append_jsonl, read_jsonl, write_bytes, write_json
from model.config.train import TrainConfig
from model.data.loading import DataBundle, load_data, training_batches
from model.evaluation.evaluate import evaluate, split_elbo
from model.kinds.registry import build_model, build_objective, get_kind
from model.core.schedules import Progress


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to try."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but torch finds no CUDA device")
    return torch.device(name)


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> TrainConfig:
    """Check the run directory against the request; returns the config to train with."""
    has_run = (out / ckpt.CONFIG).exists()
    if resume:
        if not has_run:
            raise TrainingError(f"--resume: {out} holds no run to resume ({ckpt.CONFIG} is missing)")
        saved = TrainConfig.load(out / ckpt.CONFIG)
        # Only the epoch budget may change on resume; anything else would be another experiment.
        differing = {k for k, v in config.to_dict().items() if k != "epochs" and saved.to_dict()[k] != v}
        if differing:
            raise TrainingError(
                f"--resume: the settings {sorted(differing)} differ from the run in {out}; "
                "only --epochs may change when resuming"
            )
        resumed = saved.replace(epochs=config.epochs)
        if resumed != saved:  # a new epoch budget is part of the run from now on
            write_json(out / ckpt.CONFIG, resumed.to_dict())
        return resumed
    if has_run and not overwrite:
        raise TrainingError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to start afresh, "
            "or choose another --out (curves must never silently continue an old run)"
        )
    if has_run:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ckpt.CONFIG, config.to_dict())
    return config


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, data: DataBundle | None = None) -> Path:
    """Train a model as `config` says and write a complete run directory to `out_dir`.

    Each epoch appends to metrics.jsonl and saves weights and optimizer state atomically, so an
    interrupted run continues with `resume=True` from the last completed epoch. After the last
    epoch the model is evaluated and the manifest is written. A run that fails before its first
    epoch is saved leaves nothing behind (a retry starts afresh); one that fails later keeps its
    last epoch, and the error carries a note saying how to resume it.

    Args:
        data: pre-loaded splits (tests and sweeps share them); loaded from `config` if omitted.
    Returns:
        The run directory.
    """
    out = Path(out_dir)
    created = not out.exists()
    config = _prepare_run_dir(out, config, resume, overwrite)
    try:
        return _train(config, out, resume=resume, progress=progress, data=data)
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


def _train(config: TrainConfig, out: Path, *, resume: bool, progress: bool, data: DataBundle | None) -> Path:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = (data or load_data(config)).to(device)
    model = build_model(config, data.train.x.shape[1:]).to(device)
    objective = build_objective(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
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
    if start_epoch < config.epochs:
        (out / ckpt.MANIFEST).unlink(missing_ok=True)  # extending a finished run: no longer complete

    bar = _progress_bar(progress, start_epoch, config.epochs)
    batches_per_epoch = math.ceil(len(data.train) / config.batch_size)
    draw_batches = get_kind(config.kind).batches or training_batches
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        for i, (x, y) in enumerate(draw_batches(data.train, config.batch_size, data.binarize)):
            position = Progress(epoch=epoch + i / batches_per_epoch, step=step)
            loss, diagnostics = objective(model, x, y, position)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}; the last completed "
                    f"epoch ({epoch}) is saved. Try a lower --lr, --grad-clip 100, --kl analytic or --beta-warmup"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            seen += x.shape[0]
            for key, value in diagnostics.items():
                sums[key] = sums.get(key, 0.0) + value.detach().sum().item()
        seconds = time.perf_counter() - started
        model.eval()
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train": {k: v / seen for k, v in sums.items()},
            "validation": split_elbo(model, data.validation, config.kl),
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
        if bar is not None:
            bar.set_postfix(loss=f"{-record['train']['elbo']:.2f}", val_elbo=f"{record['validation']['elbo']:.2f}",
                            img_s=f"{record['images_per_second']:.0f}")
            bar.update(1)
    if bar is not None:
        bar.close()

    if not ckpt.is_complete(out):
        ckpt.save_weights(out, model)  # the weights file may predate a crash after the last state save
        finish(model, config, data, out, progress=progress)
    return out


def finish(model, config: TrainConfig, data: DataBundle, out: Path, k: int | None = None,
           progress: bool = False) -> dict:
    """Fit the anomaly scores' companions, evaluate, store the classifier and calibration, then write
    the manifest (the run is complete). Companions already in `out` (`vae evaluate`) are reused."""
    from model.anomaly.likelihood import fit_companions

    # Files listed in the manifest are about to change: until the new manifest is written the run
    # is incomplete, never "complete" with stale hashes.
    (out / ckpt.MANIFEST).unlink(missing_ok=True)
    companions = ckpt.load_companions(out, config, data.train.x.device) or fit_companions(config, data.train.x)
    ckpt.save_companions(out, companions)
    evaluation, classifier, calibration = evaluate(
        model, data, k=k or config.eval_k, calibration_k=config.calibration_k, kl=config.kl, seed=config.seed,
        companions=companions, dataset=config.dataset, progress=progress)
    if classifier is not None:
        ckpt.save_tensors(out / ckpt.CLASSIFIER, classifier.state_tensors())
    write_json(out / ckpt.CALIBRATION, calibration.to_dict())
    write_json(out / ckpt.EVALUATION, evaluation)
    ckpt.write_manifest(out, config, {"epochs_completed": config.epochs})
    return evaluation


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
    lines.append(f"  anomaly score      {calibration['score']} (flags above {calibration['threshold']:.4g}, "
                 f"{100 * calibration['false_positive_rate']:g} % of normal images)")
    return "\n".join(lines)


def _progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="epochs", unit="epoch", dynamic_ncols=True)
