"""Completing a run directory: fit the anomaly scores' companions, evaluate, calibrate, write the manifest.

`vae train` calls `finish` after its last epoch and `vae evaluate` calls it again on a finished run.
Under torchrun every process takes its shard of the test split's passes (the bulk of the time,
`model.evaluation.evaluate.image_passes`); rank 0 alone does the rest and writes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.anomaly.companions import fit_companions
from model.config.train import TrainConfig
from model.core.compilation import compiling
from model.data.base import DataBundle
from model.evaluation.evaluate import evaluate, image_passes
from model.io.atomic import write_json
from model.runs import checkpoint as ckpt
from model.training.distributed import EVALUATION_NOISE, SINGLE, Processes, stream_seed


def finish(model: nn.Module, config: TrainConfig, data: DataBundle, out: Path, k: int | None = None,
           progress: bool = False, processes: Processes = SINGLE) -> dict | None:
    """Fit the anomaly scores' companions, evaluate, store the classifier and calibration, then write
    the manifest (the run is complete). Companions already in `out` (`vae evaluate`) are reused.

    With several `processes`, each computes its shard of the test passes; the others then return
    None having written nothing, and rank 0 finishes alone and returns the evaluation.
    """
    k = k or config.eval_k
    with compiling(config.compile):  # the bounds' chunks compiled under --compile (model.core.compilation)
        return _finish(model, config, data, out, k, progress, processes)


def _finish(model: nn.Module, config: TrainConfig, data: DataBundle, out: Path, k: int, progress: bool,
            processes: Processes) -> dict | None:
    tested = None
    if processes.distributed:
        # Each process its own posterior samples, the same on a rerun with as many processes.
        torch.manual_seed(stream_seed(config.seed, EVALUATION_NOISE, processes.rank))
        tested = image_passes(model, data.test, k=k, kl=config.optim.kl, processes=processes,
                              progress=progress and processes.is_main, precision=config.precision)
        if not processes.is_main:
            return None
    # Files listed in the manifest are about to change: until the new manifest is written the run
    # is incomplete, never "complete" with stale hashes.
    (out / ckpt.MANIFEST).unlink(missing_ok=True)
    companions = ckpt.load_companions(out, config, data.train.x.device) or fit_companions(config, data.train.x)
    ckpt.save_companions(out, companions)
    evaluation, classifier, calibration = evaluate(
        model, data, k=k, calibration_k=config.anomaly.calibration_k, kl=config.optim.kl,
        seed=config.seed, companions=companions, dataset=config.data.dataset, progress=progress, tested=tested,
        precision=config.precision)
    if classifier is not None:
        ckpt.save_tensors(out / ckpt.CLASSIFIER, classifier.state_tensors())
    write_json(out / ckpt.CALIBRATION, calibration.to_dict())
    write_json(out / ckpt.EVALUATION, evaluation)
    ckpt.write_manifest(out, config, {"epochs_completed": config.optim.epochs})
    return evaluation
