"""Self-describing run directories, written atomically and loaded without executing code.

A run directory holds:

    config.json            the TrainConfig (every setting of the run, the input shape and class labels it was
                           trained on; a run without them is one of 1×28×28 images of the ten digits)
    model.safetensors      the weights
    training_state.pt      model, optimizer and RNG state for --resume (tensors only: weights_only=True)
    metrics.jsonl          one line per completed epoch
    evaluation.json        test metrics
    classifier.safetensors the latent-feature classifier (exercise 2.4)
    calibration.json       anomaly-score quantiles on held-out normal data
    background.safetensors the background model of the likelihood-ratio score, if fitted (model.anomaly.likelihood)
    checkpoint.json        the manifest, written last: format, version, kind, SHA-256 of each file

A run is complete when checkpoint.json exists; loading checks every listed file's hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model.io.atomic import atomic_write, sha256, write_json
from model.anomaly.calibration import AnomalyCalibration
from model.nets.classifier import LinearSoftmaxClassifier
from model.config.train import TrainConfig
from model.data.registry import with_recorded_data
from model.kinds.registry import build_model

FORMAT = "vae-lab-run"
FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
CLASSIFIER = "classifier.safetensors"
CALIBRATION = "calibration.json"
BACKGROUND = "background.safetensors"
# Companion models of the anomaly scores, by the name `Checkpoint.companions` uses: same kind and
# config as the model, weights only.
COMPANIONS = {"background": BACKGROUND}
ARTEFACTS = (CONFIG, WEIGHTS, METRICS, EVALUATION, CLASSIFIER, CALIBRATION, BACKGROUND)


class CheckpointError(Exception):
    """A run directory cannot be loaded; the message names the file and the reason."""


@dataclass(frozen=True)
class Checkpoint:
    """Everything a run directory holds, loaded."""

    path: Path
    config: TrainConfig
    model: nn.Module
    classifier: LinearSoftmaxClassifier | None
    calibration: AnomalyCalibration | None
    evaluation: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    companions: dict[str, nn.Module] = field(default_factory=dict)  # e.g. {"background": VAE}

    @property
    def name(self) -> str:
        return self.path.name


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_weights(run_dir: Path, model: nn.Module) -> None:
    save_tensors(Path(run_dir) / WEIGHTS, model.state_dict(), {"format": FORMAT, "kind": model.kind})


def save_companions(run_dir: Path, companions: dict[str, nn.Module]) -> None:
    """Weights of the anomaly scores' companion models (see COMPANIONS)."""
    unknown = sorted(set(companions) - set(COMPANIONS))
    if unknown:
        raise ValueError(f"unknown companion models {unknown}; expected some of {sorted(COMPANIONS)}")
    for name, module in companions.items():
        save_tensors(Path(run_dir) / COMPANIONS[name], module.state_dict(), {"format": FORMAT, "kind": module.kind})


def load_companions(run_dir: Path, config: TrainConfig, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """The companion models a run directory holds, each built from the run's config, in eval mode."""
    run_dir = Path(run_dir)
    companions = {}
    for name, filename in COMPANIONS.items():
        if not (run_dir / filename).exists():
            continue
        module = build_model(config)
        try:
            module.load_state_dict(_read_tensors(run_dir / filename))
        except RuntimeError as error:
            raise CheckpointError(f"{run_dir / filename}: weights do not fit the model in {CONFIG} ({error})") from error
        companions[name] = module.to(device).eval()
    return companions


def write_manifest(run_dir: Path, config: TrainConfig, extra: dict | None = None) -> dict:
    """Write checkpoint.json last: the run is complete from this moment on."""
    run_dir = Path(run_dir)
    files = {name: sha256(run_dir / name) for name in ARTEFACTS if (run_dir / name).exists()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": config.model.kind,
                "files": files, **(extra or {})}
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / MANIFEST).is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: damaged, not valid JSON ({error})") from error


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: damaged, not a readable safetensors file ({error})") from error


def read_manifest(run_dir: Path) -> dict:
    """The manifest of a complete run, after checking its format, version and file hashes."""
    manifest = _read_json(run_dir / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{run_dir / MANIFEST}: expected format {FORMAT!r}, got {manifest.get('format')!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir / MANIFEST}: unsupported format version {manifest.get('format_version')!r}; "
            f"this version of vae-lab reads version {FORMAT_VERSION}"
        )
    for name, digest in manifest.get("files", {}).items():
        path = run_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST})")
        if sha256(path) != digest:
            raise CheckpointError(f"{path}: damaged, its SHA-256 differs from the one recorded in {MANIFEST}")
    return manifest


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The model and config of a run directory (complete or not), in eval mode on `device`."""
    run_dir = Path(run_dir)
    try:
        # A run written before the images' shape and labels were recorded: its data set's.
        config = with_recorded_data(TrainConfig.from_dict(_read_json(run_dir / CONFIG)))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{run_dir / CONFIG}: not a valid training config ({error})") from error
    model = build_model(config)
    state = _read_tensors(run_dir / WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{run_dir / WEIGHTS}: weights do not fit the model in {CONFIG} ({error})") from error
    return model.to(device).eval(), config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a complete run directory: model, config, classifier, calibration, evaluation, companions.

    Raises:
        CheckpointError: the directory is not a complete run, has an unknown format version,
            or a file is missing or damaged (the message says which file and why).
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not is_complete(run_dir):
        raise CheckpointError(f"{run_dir}: not a complete run ({MANIFEST} is missing; did training finish?)")
    manifest = read_manifest(run_dir)
    model, config = load_model(run_dir, device)
    classifier = None
    if (run_dir / CLASSIFIER).exists():
        classifier = LinearSoftmaxClassifier.from_tensors(_read_tensors(run_dir / CLASSIFIER)).to(device)
    calibration = None
    if (run_dir / CALIBRATION).exists():
        try:
            calibration = AnomalyCalibration.from_dict(_read_json(run_dir / CALIBRATION))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{run_dir / CALIBRATION}: not a valid calibration ({error})") from error
    evaluation = _read_json(run_dir / EVALUATION) if (run_dir / EVALUATION).exists() else {}
    companions = load_companions(run_dir, config, device)
    return Checkpoint(run_dir, config, model, classifier, calibration, evaluation, manifest, companions)


def save_training_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                        step: int) -> None:
    """Model, optimizer and RNG state after `epoch` completed epochs, in one atomic file (for --resume)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_write(Path(run_dir) / TRAINING_STATE, lambda tmp: torch.save(state, tmp))


def load_training_state(run_dir: Path) -> dict:
    path = Path(run_dir) / TRAINING_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; there is nothing to resume") from None
    except Exception as error:  # torch raises many types for a damaged zip/pickle stream
        raise CheckpointError(f"{path}: damaged ({type(error).__name__}: {error})") from error
