"""The run directory records the geometry of its images: runs of any shape load and serve, and runs
written before the shape was recorded (format 1 as it first shipped, rewritten from a fresh run)
still load as 1×28×28."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import load_checkpoint
from model.config.train import TrainConfig
from model.core.labels import UNLABELLED
from model.data.base import DataBundle, Split
from model.kinds.m2 import _LEGACY_KEYS
from model.runs import checkpoint as ckpt
from model.runs.train import train
from service.app import create_app
from service.settings import Settings

# The config.json fields of a run written before input_shape, class_labels, arch, likelihood and the
# folder settings existed: the first release of format 1.
V1_FIELDS = ("activation", "alpha", "background_epochs", "batch_size", "beta", "beta_warmup", "binarize",
             "calibration_k", "categorical_variables", "categories", "classes", "data_dir", "dataset", "device",
             "epochs", "eval_k", "gaussian_features", "grad_clip", "hidden", "k", "kind", "kl", "labels",
             "latent_features", "lr", "objective", "perturb_rate", "seed", "straight_through", "temperature",
             "temperature_min", "temperature_rate", "train_subset", "validation_fraction")


def write_v1_run(out: Path, kind: str) -> Path:
    """A tiny run on the embedded digits, rewritten as format 1 first wrote it: config.json without the
    recorded fields, and for m2 the q(z|x, y) weights under their first names (encoder_x, ...)."""
    config = TrainConfig.of(kind=kind, hidden=(4,), latent_features=2, epochs=1, batch_size=128, train_subset=200,
                            eval_k=2, calibration_k=2, seed=5, device="cpu", **({"labels": 20} if kind == "m2" else {}))
    run = train(config, out, progress=False)
    saved = json.loads((run / ckpt.CONFIG).read_text())
    (run / ckpt.CONFIG).write_text(json.dumps({k: saved[k] for k in V1_FIELDS}, indent=2))
    if kind == "m2":
        first_names = {new: old for old, new in _LEGACY_KEYS.items()}
        weights = load_file(run / ckpt.WEIGHTS)
        renamed = {next((first_names[p] + k[len(p):] for p in first_names if k.startswith(p)), k): v
                   for k, v in weights.items()}
        ckpt.save_tensors(run / ckpt.WEIGHTS, renamed, {"format": ckpt.FORMAT, "kind": kind})
    ckpt.write_manifest(run, config, {"epochs_completed": 1})
    return run


@pytest.mark.parametrize("kind", ["gaussian", "m2"])
def test_a_run_written_before_the_shape_was_recorded_loads_as_28_by_28(kind, tmp_path):
    run = write_v1_run(tmp_path / f"run-v1-{kind}", kind)
    if kind == "m2":
        assert any(k.startswith("encoder_x.") for k in load_file(run / ckpt.WEIGHTS))
    checkpoint = load_checkpoint(run)
    assert "input_shape" not in (run / "config.json").read_text()
    # Read back with its data set's shape and labels (the embedded digits' spec), as training now records them.
    assert checkpoint.config.data.input_shape == checkpoint.config.data.shape == (1, 28, 28)
    assert checkpoint.config.data.class_labels == tuple(range(10))
    assert checkpoint.model.kind == kind and checkpoint.model.input_shape == (1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    assert torch.isfinite(checkpoint.model.elbo_terms(x).elbo).all()
    if kind == "m2":  # its q(z|x, y) weights were saved under the names of before (encoder_x, ...)
        assert checkpoint.model.classify(x).shape == (3, 10)


def _colour_bundle(shape=(3, 5, 7), n=96, seed=0) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=generator)
    y = torch.arange(n) % 3
    part = n // 4
    return DataBundle(Split(x[2 * part:], y[2 * part:]), Split(x[:part], y[:part]),
                      Split(x[part:2 * part], y[part:2 * part]), "none")


def test_a_colour_non_square_run_trains_loads_and_serves(tmp_path, asgi_client):
    config = TrainConfig.of(hidden=(8,), latent_features=2, epochs=1, batch_size=32, eval_k=2, calibration_k=2,
                            device="cpu", kind="m2", labels=6)
    data = _colour_bundle()
    data = DataBundle(Split(data.train.x, torch.where(torch.arange(len(data.train)) < 6, data.train.y,
                                                     torch.full_like(data.train.y, UNLABELLED))),
                      data.validation, data.test, data.binarize)
    run = train(config, tmp_path / "models" / "colour", progress=False, data=data)
    checkpoint = load_checkpoint(run)
    assert checkpoint.config.data.input_shape == (3, 5, 7)
    assert checkpoint.config.data.class_labels == (0, 1, 2)
    assert checkpoint.model.input_shape == (3, 5, 7) and checkpoint.model.classify(data.test.x).shape[1] == 3
    client = asgi_client(create_app(Settings(model_dir=tmp_path / "models")))
    response = client.post("/models/colour/elbo", json={"images": data.test.x[:2].reshape(2, -1).tolist()})
    assert response.status_code == 200, response.text
    assert len(response.json()["elbo"]) == 2
    shutil.rmtree(tmp_path / "models")


def test_a_recorded_shape_that_the_data_contradicts_is_refused(tmp_path):
    config = TrainConfig.of(hidden=(8,), latent_features=2, epochs=1, input_shape=(1, 28, 28), device="cpu")
    with pytest.raises(Exception, match=r"input_shape: the run records \[1, 28, 28\], but the data has \[3, 5, 7\]"):
        train(config, tmp_path / "run", progress=False, data=_colour_bundle())
    assert not (tmp_path / "run").exists()
