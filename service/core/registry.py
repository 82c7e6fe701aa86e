"""The models being served: every run directory under the model directory, loaded and warmed up.

A model's name is its directory's name. A directory that cannot be loaded is still listed, with
its error, and is never ready; the others are served. A model becomes ready once every operation
it offers has run once on a synthetic input (the warm-up), which also records the shapes of its
outputs for the OIP metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.core.device import resolve_device
from model.core.preprocess import Preprocessing
from model.kinds.registry import KINDS
from model.runs.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.anomaly.registry import SCORES, available_scores
from service.core.errors import ModelNotFoundError, NotReadyError, UnsupportedError
from service.core.operations import OPERATIONS
from service.settings import Settings

log = logging.getLogger(__name__)

# Errors that mean "this directory cannot be served", as opposed to bugs in the service.
LOAD_ERRORS = (CheckpointError, ValueError, TypeError, KeyError, OSError, RuntimeError)


@dataclass(frozen=True)
class TensorSpec:
    """One output of an operation: its dtype and its shape after the batch dimension (-1: varies)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass
class ModelEntry:
    """One run directory and what became of it."""

    name: str
    path: Path
    checkpoint: Checkpoint | None = None
    error: str | None = None
    ready: bool = False
    operations: tuple[str, ...] = ()
    outputs: dict[str, dict[str, TensorSpec]] = field(default_factory=dict)  # operation -> name -> spec
    load_seconds: float = 0.0

    @property
    def kind(self) -> str | None:
        return None if self.checkpoint is None else self.checkpoint.model.kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.checkpoint.model.input_shape)

    @property
    def preprocessing(self) -> Preprocessing:
        """What the run did to every image before the model saw it; encoded uploads get the same."""
        return self.checkpoint.config.data.preprocessing

    @property
    def latent_features(self) -> int | None:
        value = self.checkpoint.model.describe().get("latent_features")
        return None if value is None else int(value)

    def anomaly_scores(self) -> list[str]:
        """Calibrated scores this service can compute for this model (their companions present)."""
        calibration = self.checkpoint.calibration if self.checkpoint else None
        if calibration is None:
            return []
        usable = available_scores(self.checkpoint.model, self.checkpoint.companions)
        return sorted(s for s in calibration.scores if s in SCORES and s in usable)


def kinds_supporting(operation: str) -> list[str]:
    """Model kinds that can offer `operation`: every kind offers every operation (model.kinds.base.LatentModel);
    classify and anomaly also need their artefacts, which `unavailable_reason` names."""
    return sorted(KINDS) if operation in OPERATIONS else []


def unavailable_reason(entry: ModelEntry, operation: str) -> str | None:
    """Why `entry` cannot run `operation`, or None if it can."""
    ck = entry.checkpoint
    if operation == "classify" and not ck.model.capabilities.native_classifier and ck.classifier is None:
        return (f"model {entry.name!r} has no latent classifier (classifier.safetensors is absent: its "
                f"training data held fewer than two classes), so it cannot classify")
    if operation == "anomaly" and not entry.anomaly_scores():
        return f"model {entry.name!r} has no anomaly calibration this service can use (calibration.json)"
    return None


def run_directories(root: Path) -> list[Path]:
    """The directories under `root` served as models (hidden ones, such as `.cache`, are skipped)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _spec(operation: str, name: str, value: np.ndarray) -> TensorSpec:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
             np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}.get(value.dtype, str(value.dtype).upper())
    shape = tuple(value.shape[1:])
    if operation == "encode" and name == "z":
        shape = (-1, *shape[1:])  # as many samples per image as the request asks
    return TensorSpec(dtype, shape)


class Registry:
    """Loads every run under `settings.model_dir` and answers which models exist and are ready."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self.problem: str | None = None  # a reason no model can be ready, e.g. a missing directory
        self.loaded = False

    def load_all(self, warm_up: Callable[[ModelEntry, str], dict[str, np.ndarray]]) -> None:
        """Load and warm up every run directory (blocking; call it in a worker thread).

        Args:
            warm_up: runs one operation of a loaded model on a synthetic input, returning its outputs.
        """
        root = self.settings.model_dir
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            self.problem = "VAE_DEVICE is cuda, but torch finds no CUDA device (use cpu or auto)"
            log.error(self.problem)
        elif not root.is_dir():
            self.problem = f"the model directory {root} does not exist (set VAE_MODEL_DIR or --model-dir)"
            log.error(self.problem)
        else:
            runs = run_directories(root)
            if not runs:
                self.problem = f"the model directory {root} holds no run directories (train one with `vae train --out {root}/NAME`)"
                log.error(self.problem)
            for path in runs:
                self.models[path.name] = self._load_one(path, warm_up)
        self.loaded = True

    def _load_one(self, path: Path, warm_up) -> ModelEntry:
        entry = ModelEntry(path.name, path)
        started = time.perf_counter()
        try:
            checkpoint = load_checkpoint(path, resolve_device(self.settings.device))
            shape = checkpoint.config.data.preprocessing.shape
            if tuple(shape) != tuple(checkpoint.model.input_shape):
                raise ValueError(f"the config preprocesses images to {list(shape)}, but the model takes "
                                 f"{list(checkpoint.model.input_shape)}")
        except LOAD_ERRORS as error:
            entry.error = str(error) if isinstance(error, CheckpointError) else f"{path}: {type(error).__name__}: {error}"
            log.error("model %s cannot be served: %s", path.name, entry.error)
            return entry
        entry.checkpoint = checkpoint
        entry.operations = tuple(op for op in OPERATIONS if unavailable_reason(entry, op) is None)
        for operation in entry.operations:
            try:
                out = warm_up(entry, operation)
            except LOAD_ERRORS as error:
                entry.error = f"warm-up of {operation!r} failed: {type(error).__name__}: {error}"
                log.error("model %s is not ready: %s", path.name, entry.error)
                return entry
            entry.outputs[operation] = {name: _spec(operation, name, value) for name, value in out.items()}
        entry.ready = True
        entry.load_seconds = time.perf_counter() - started
        log.info("model %s (%s) ready in %.2f s: %s", entry.name, entry.kind, entry.load_seconds,
                 ", ".join(entry.operations))
        return entry

    # --- lookups -------------------------------------------------------------------------------

    def get(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"no model named {name!r}; models: {known}") from None

    def ready_model(self, name: str, operation: str | None = None) -> ModelEntry:
        """The entry of a ready model that can run `operation` (404, 503 or 400 otherwise)."""
        entry = self.get(name)
        if not entry.ready:
            reason = entry.error or "still loading"
            raise NotReadyError(f"model {name!r} is not ready: {reason}")
        if operation is not None and operation not in entry.operations:
            reason = unavailable_reason(entry, operation) or (
                f"model {name!r} is of kind {entry.kind!r}, which does not support {operation!r}")
            kinds = kinds_supporting(operation)
            raise UnsupportedError(f"{reason}; kinds that support {operation!r}: {', '.join(kinds) or 'none'}")
        return entry

    def readiness(self) -> tuple[bool, str]:
        if not self.loaded:
            return False, "models are still loading"
        ready = [e.name for e in self.models.values() if e.ready]
        if ready:
            return True, f"ready: {', '.join(ready)}"
        if self.problem:
            return False, self.problem
        failed = "; ".join(f"{e.name}: {e.error}" for e in self.models.values())
        return False, f"no model is ready ({failed})"
