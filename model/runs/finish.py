"""Completing a run directory: fit the anomaly scores' companions, evaluate, calibrate, write the manifest.

`vae train` calls `finish` after its last epoch and `vae evaluate` calls it again on a finished run.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from model.anomaly.companions import fit_companions
from model.config.train import TrainConfig
from model.data.base import DataBundle
from model.evaluation.evaluate import evaluate
from model.io.atomic import write_json
from model.runs import checkpoint as ckpt


def finish(model: nn.Module, config: TrainConfig, data: DataBundle, out: Path, k: int | None = None,
           progress: bool = False) -> dict:
    """Fit the anomaly scores' companions, evaluate, store the classifier and calibration, then write
    the manifest (the run is complete). Companions already in `out` (`vae evaluate`) are reused."""
    # Files listed in the manifest are about to change: until the new manifest is written the run
    # is incomplete, never "complete" with stale hashes.
    (out / ckpt.MANIFEST).unlink(missing_ok=True)
    companions = ckpt.load_companions(out, config, data.train.x.device) or fit_companions(config, data.train.x)
    ckpt.save_companions(out, companions)
    evaluation, classifier, calibration = evaluate(
        model, data, k=k or config.eval_k, calibration_k=config.anomaly.calibration_k, kl=config.optim.kl,
        seed=config.seed, companions=companions, dataset=config.data.dataset, progress=progress)
    if classifier is not None:
        ckpt.save_tensors(out / ckpt.CLASSIFIER, classifier.state_tensors())
    write_json(out / ckpt.CALIBRATION, calibration.to_dict())
    write_json(out / ckpt.EVALUATION, evaluation)
    ckpt.write_manifest(out, config, {"epochs_completed": config.optim.epochs})
    return evaluation
