"""`train(config, out_dir)`: a TrainConfig in, a complete run directory out (see model.runs.checkpoint).

Each epoch runs the training loop (model.training.loop), appends to metrics.jsonl and saves the
weights and optimizer state atomically, so an interrupted run continues with `resume=True` from
its last completed epoch. After the last epoch `model.runs.finish` evaluates the model and writes
the manifest.

Under torchrun (WORLD_SIZE > 1) the same function trains one run in every process, through
DistributedDataParallel (`model.training.distributed`): rank 0 alone reads and writes the run
directory and tells the others what it found (the settings to train, the state to resume); each
process trains on its shard of every global batch and evaluates its shard of the test split.
docs/distributed.md has the commands.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from model.config.train import TrainConfig
from model.core.compilation import CompilerMissing, check_available
from model.core.device import device_of, resolve_device
from model.core.labels import UNLABELLED
from model.core.precision import autocast
from model.core.schedules import Progress
from model.data.base import DataBundle
from model.data.batches import Shard, batches_per_epoch as steps_per_epoch, per_rank_batch_size
from model.data.loading import load_data
from model.evaluation.evaluate import split_elbo
from model.io.atomic import append_jsonl, read_jsonl, write_bytes, write_json
from model.kinds.registry import build_model, build_objective, get_kind
from model.runs import checkpoint as ckpt
from model.runs.errors import TrainingError
from model.runs.finish import finish
from model.training.distributed import (
    PERMUTATION, SINGLE, TRAINING_NOISE, DistributedError, Processes, data_parallel, joined, process_device,
    stream_seed,
)
from model.training.loop import NonFiniteLoss, adam, epoch_batches, fit_epoch, set_learning_rate

RECORDED = ("input_shape", "class_labels", "class_names", "arch")  # written by `train` from the data, not chosen
# How a folder is read and whether the loss is compiled, never what is trained: free on resume.
LOADING_ONLY = ("memory_budget", "data_workers", "compile")


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
                "only --epochs (and --memory-budget, --data-workers, --compile) may change when resuming"
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

    Under torchrun every process calls this with the same arguments; only rank 0 writes.

    Args:
        data: pre-loaded splits (tests and sweeps share them); loaded from `config` if omitted.
    Returns:
        The run directory.
    """
    out = Path(out_dir)
    try:
        processes = Processes.from_environment()
    except DistributedError as error:
        raise TrainingError(str(error)) from None
    if not processes.distributed:
        return _train_run(config, out, resume=resume, overwrite=overwrite, progress=progress, data=data)
    try:
        # Every process refuses on its own (no process waits for another): the batch size is the
        # global batch, the same in the config of every process (a resumed run may not change it).
        per_rank_batch_size(config.optim.batch_size, processes.world_size)
        device = process_device(resolve_device(config.device), processes)
    except (ValueError, DistributedError) as error:
        raise TrainingError(str(error)) from None
    with joined(processes, device):
        return _train_run(config, out, resume=resume, overwrite=overwrite, progress=progress and processes.is_main,
                          data=data, processes=processes, device=device)


def _train_run(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, progress: bool,
               data: DataBundle | None, processes: Processes = SINGLE, device: torch.device | None = None) -> Path:
    created = processes.broadcast(not out.exists())  # rank 0's view of the run directory is the run's
    saved = _on_main(processes, lambda: _check_run_dir(out, config, resume, overwrite))
    config = processes.broadcast(saved or config)
    try:
        return _train(config, out, resume=resume, overwrite=overwrite, progress=progress, data=data,
                      processes=processes, device=device)
    except BaseException as error:
        failure = error
        if processes.distributed and _lost_peer(error):
            # A process that died closes its connections: the others fail in their next collective.
            failure = TrainingError(f"process {processes.rank} of {processes.world_size} lost the others: another "
                                    f"process of the run failed (its own error says why; here: {error})")
        if (out / ckpt.TRAINING_STATE).exists():
            how = ("the same torchrun command with --resume" if processes.distributed else
                   f"`vae train --out {out} --resume`")
            failure.add_note(f"the run in {out} keeps its last completed epoch; continue it with {how}")
        elif not resume and processes.is_main:
            _discard(out, created)
        if failure is not error:
            raise failure from error
        raise


def _lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process went away (gloo raises a plain
    RuntimeError naming the closed connection; NCCL and newer backends a DistError)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(word in str(error) for word in ("gloo", "NCCL", "Connection")))


def _discard(out: Path, created: bool) -> None:
    """Remove what a run that never completed an epoch wrote, so a retry is not refused."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in (*ckpt.ARTEFACTS, ckpt.TRAINING_STATE, ckpt.MANIFEST):
        (out / name).unlink(missing_ok=True)


def _on_main(processes: Processes, work, share: bool = True):
    """`work()` on rank 0 alone (it reads the run directory, or loads the data first), then on every
    rank: its result if `share` (else None but on rank 0), or its error, so that all stop together."""
    if not processes.distributed:
        return work()
    result, failure = None, None
    if processes.is_main:
        try:
            result = work()
        except (TrainingError, ckpt.CheckpointError, ValueError) as error:  # DataError is a ValueError
            failure = error
    shared, message = processes.broadcast((result if share else None, None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if message is not None:
        raise TrainingError(f"rank 0 stopped the run: {message}")
    return shared if share else result


def _load_data(config: TrainConfig, processes: Processes) -> DataBundle:
    """The run's data; rank 0 first, since loading may download a data set or build a folder's cache."""
    data = _on_main(processes, lambda: load_data(config), share=False)
    return data if processes.is_main else load_data(config)


def _train(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, progress: bool,
           data: DataBundle | None, processes: Processes = SINGLE, device: torch.device | None = None) -> Path:
    if device is None:
        try:
            device = resolve_device(config.device)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    if config.compile:
        try:
            check_available(device)  # before anything is loaded or written
        except CompilerMissing as error:
            raise TrainingError(str(error)) from None
    torch.manual_seed(config.seed)
    data = (data or _load_data(config, processes)).to(device)
    config = _record_data(config, data)
    main = processes.is_main  # the one process that writes
    if main:
        if not resume and (out / ckpt.CONFIG).exists():  # --overwrite, checked in _check_run_dir
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / ckpt.CONFIG, config.to_dict())
    model = build_model(config).to(device)
    objective = build_objective(config)
    optimizer = adam(model, config.optim.lr, eps=config.optim.adam_eps)
    start_epoch, step = 0, 0
    # Rank 0 reads the state and hands it to the others, so the run directory need only be on its machine.
    state = _on_main(processes, lambda: ckpt.load_training_state(out) if (out / ckpt.TRAINING_STATE).exists()
                     else None) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        if not processes.distributed:  # several processes seed each epoch's streams instead (below)
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and state["rng_cuda"]:
                torch.cuda.set_rng_state_all(state["rng_cuda"])
    if main:
        # Lines past the last saved epoch belong to an epoch whose weights were never saved.
        history = read_jsonl(out / ckpt.METRICS)[:start_epoch]
        write_bytes(out / ckpt.METRICS, "".join(json.dumps(r) + "\n" for r in history).encode())
        if start_epoch < config.optim.epochs:
            (out / ckpt.MANIFEST).unlink(missing_ok=True)  # extending a finished run: no longer complete

    parallel = data_parallel(model, objective, device) if processes.distributed else None
    batches_per_epoch = steps_per_epoch(len(data.train), config.optim.batch_size, processes.world_size)
    with tqdm(total=config.optim.epochs, initial=start_epoch, desc="epochs", unit="epoch", dynamic_ncols=True,
              disable=not progress) as bar:
        for epoch in range(start_epoch, config.optim.epochs):
            shard = None
            if processes.distributed:
                # Streams that depend on the epoch alone, so a resumed epoch draws what it would have:
                # the permutation is the same on every rank, the noise each rank's own.
                torch.manual_seed(stream_seed(config.seed, TRAINING_NOISE, epoch, processes.rank))
                shard = Shard(processes.rank, processes.world_size, stream_seed(config.seed, PERMUTATION, epoch))
            lr = set_learning_rate(optimizer, config, epoch)  # after a resume's optimizer state, which holds one
            started = time.perf_counter()
            try:
                step, sums, seen = fit_epoch(model, objective, optimizer,
                                             epoch_batches(config, data.train, data.binarize, shard), epoch=epoch,
                                             step=step, batches_per_epoch=batches_per_epoch,
                                             grad_clip=config.optim.grad_clip, parallel=parallel, processes=processes,
                                             precision=config.precision)
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
                "validation": _validation_elbo(model, data, config, processes),
                **objective.schedule(Progress(epoch=epoch + 1, step=step)),
                "lr": lr,
                "seconds": round(seconds, 3),
                "images_per_second": round(seen / seconds, 1),
            }
            # The metrics line first, then the training state (model, optimizer, RNG and epoch in one
            # atomic file), then the weights file. Resume trusts only training_state.pt: a crash after
            # the metrics line leaves an extra line that resume trims, never a missing one.
            if main:
                append_jsonl(out / ckpt.METRICS, record)
                ckpt.save_training_state(out, model, optimizer, epoch + 1, step)
                ckpt.save_weights(out, model)
            bar.set_postfix(loss=f"{-record['train']['elbo']:.2f}", val_elbo=f"{record['validation']['elbo']:.2f}",
                            img_s=f"{record['images_per_second']:.0f}")
            bar.update(1)

    if not _on_main(processes, lambda: ckpt.is_complete(out)):
        if main:
            ckpt.save_weights(out, model)  # the weights file may predate a crash after the last state save
        finish(model, config, data, out, progress=progress, processes=processes)
    return out


def _validation_elbo(model, data: DataBundle, config: TrainConfig, processes: Processes) -> dict[str, float]:
    """The epoch's validation ELBO, computed in the run's precision as the test bounds will be."""
    with autocast(config.precision, device_of(model)):
        return split_elbo(model, data.validation, config.optim.kl, processes=processes)


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
