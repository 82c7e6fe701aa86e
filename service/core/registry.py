"""The models being served: every run directory under the model directory, loaded and warmed up.

A model's name is its directory's name; `runs/<name>/` is one run (version "1"), or a folder of
versions `runs/<name>/<n>/` (see `service.core.repository`, which finds, loads and replaces them).
A directory that cannot be loaded is still listed, with its error, and is never ready; the others
are served. A model becomes ready once every operation it offers has run once on a synthetic input
(the warm-up), which also records the shapes of its outputs for the OIP metadata.

What is served is one immutable `Snapshot`, replaced whole (`Registry.publish`): a request that
looked up an entry keeps it, and every lookup sees either the old set of models or the new one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

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
SINGLE_VERSION = "1"  # the version of a model that is one plain run directory
_generations = itertools.count(1)

WarmUp = Callable[["ModelEntry", str], dict[str, np.ndarray]]


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
    version: str = SINGLE_VERSION
    fingerprint: tuple | None = None  # the directory's state when it was loaded (service.core.repository)
    # Unique per load: batchers and caches are keyed by it, so a replaced model never answers for its successor.
    generation: int = field(default_factory=lambda: next(_generations))

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


def load_entry(name: str, version: str, path: Path, settings: Settings, warm_up: WarmUp,
               fingerprint: tuple | None = None) -> ModelEntry:
    """Load the run directory `path` as `version` of model `name` and warm up every operation it offers.

    Never raises for a directory that cannot be served: the entry then carries the error and is not ready.
    """
    entry = ModelEntry(name, path, version=version, fingerprint=fingerprint)
    started = time.perf_counter()
    label = name if version == SINGLE_VERSION and path.name == name else f"{name} version {version}"
    try:
        checkpoint = load_checkpoint(path, resolve_device(settings.device))
        shape = checkpoint.config.data.preprocessing.shape
        if tuple(shape) != tuple(checkpoint.model.input_shape):
            raise ValueError(f"the config preprocesses images to {list(shape)}, but the model takes "
                             f"{list(checkpoint.model.input_shape)}")
    except LOAD_ERRORS as error:
        entry.error = str(error) if isinstance(error, CheckpointError) else f"{path}: {type(error).__name__}: {error}"
        log.error("model %s cannot be served: %s", label, entry.error)
        return entry
    entry.checkpoint = checkpoint
    entry.operations = tuple(op for op in OPERATIONS if unavailable_reason(entry, op) is None)
    for operation in entry.operations:
        try:
            out = warm_up(entry, operation)
        except LOAD_ERRORS as error:
            entry.error = f"warm-up of {operation!r} failed: {type(error).__name__}: {error}"
            log.error("model %s is not ready: %s", label, entry.error)
            return entry
        entry.outputs[operation] = {name: _spec(operation, name, value) for name, value in out.items()}
    entry.ready = True
    entry.load_seconds = time.perf_counter() - started
    log.info("model %s (%s) ready in %.2f s: %s", label, entry.kind, entry.load_seconds, ", ".join(entry.operations))
    return entry


def version_order(version: str) -> tuple[int, str]:
    """Sort key of version names: numerically (2 before 10)."""
    return (int(version), version) if version.isdigit() else (-1, version)


@dataclass(frozen=True)
class ServedModel:
    """One model name: its versions, which one unversioned requests reach, and what is wrong on disk.

    `versions` is ordered oldest first. `default` is the highest version that is ready (or, when none
    is, the highest one, so that its error is what clients see). `unloaded` models have no versions
    and a placeholder `default` that says how to load them again.
    """

    name: str
    versions: Mapping[str, ModelEntry]
    default: ModelEntry
    unloaded: bool = False
    # version -> why the files now on disk are not what is served (e.g. a copy still being written)
    notes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, versions: Mapping[str, ModelEntry], notes: Mapping[str, str] | None = None) -> "ServedModel":
        assert versions, "a served model has at least one version"
        ordered = dict(sorted(versions.items(), key=lambda item: version_order(item[0])))
        ready = [e for e in ordered.values() if e.ready]
        default = ready[-1] if ready else list(ordered.values())[-1]
        return cls(name, ordered, default, notes=dict(notes or {}))

    @classmethod
    def unloaded_model(cls, name: str, path: Path) -> "ServedModel":
        reason = (f"model {name!r} was unloaded through the repository API; POST /v2/repository/models/{name}/load "
                  f"serves it again")
        return cls(name, {}, ModelEntry(name, path, error=reason), unloaded=True)


@dataclass(frozen=True)
class Snapshot:
    """Every model being served, at one moment."""

    served: Mapping[str, ServedModel] = field(default_factory=dict)

    @cached_property
    def models(self) -> dict[str, ModelEntry]:
        return {name: model.default for name, model in self.served.items()}

    @cached_property
    def generations(self) -> frozenset[int]:
        return frozenset(e.generation for m in self.served.values() for e in m.versions.values())


class Registry:
    """The models under `settings.model_dir` (loaded by `service.core.repository`) and which are ready."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.snapshot = Snapshot()
        self.problem: str | None = None  # a reason no model can be ready, e.g. a missing directory
        self.loaded = False

    @property
    def models(self) -> dict[str, ModelEntry]:
        """Name -> the entry requests without a version reach."""
        return self.snapshot.models

    def publish(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from now on: one assignment, so a reader sees either the old models or the new."""
        self.snapshot = snapshot

    # --- lookups -------------------------------------------------------------------------------

    def served(self, name: str) -> ServedModel:
        try:
            return self.snapshot.served[name]
        except KeyError:
            known = ", ".join(sorted(self.snapshot.served)) or "none"
            raise ModelNotFoundError(f"no model named {name!r}; models: {known}") from None

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry of `version` of model `name` (default: the version unversioned requests reach)."""
        model = self.served(name)
        if version is None:
            return model.default
        try:
            return model.versions[version]
        except KeyError:
            known = ", ".join(model.versions) or ("none: it is unloaded" if model.unloaded else "none")
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; versions: {known}") from None

    def ready_model(self, name: str, operation: str | None = None, version: str | None = None) -> ModelEntry:
        """The entry of a ready model that can run `operation` (404, 503 or 400 otherwise)."""
        entry = self.get(name, version)
        if not entry.ready:
            reason = entry.error or "still loading"
            which = name if version is None else f"{name} version {version}"
            raise NotReadyError(f"model {which!r} is not ready: {reason}")
        if operation is not None:
            self.check_operation(entry, operation)
        return entry

    def check_operation(self, entry: ModelEntry, operation: str) -> None:
        """400 unless the ready `entry` can run `operation`."""
        if operation not in entry.operations:
            reason = unavailable_reason(entry, operation) or (
                f"model {entry.name!r} is of kind {entry.kind!r}, which does not support {operation!r}")
            kinds = kinds_supporting(operation)
            raise UnsupportedError(f"{reason}; kinds that support {operation!r}: {', '.join(kinds) or 'none'}")

    def readiness(self) -> tuple[bool, str]:
        if not self.loaded:
            return False, "models are still loading"
        models = self.snapshot.models
        ready = [e.name for e in models.values() if e.ready]
        if ready:
            return True, f"ready: {', '.join(ready)}"
        if self.problem:
            return False, self.problem
        failed = "; ".join(f"{e.name}: {e.error}" for e in models.values())
        return False, f"no model is ready ({failed or 'the model directory holds none'})"
