"""Sweeps: parsing, skipping complete runs, and CI's `--quick` smoke test that every artefact is written."""

import inspect
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from model.analysis.sweep import (DATA_FIELDS, QUICK_OVERRIDES, SweepError, data_key, load_sweep, parse_assignments,
                                  parse_sweep)
from model.cli.main import main
from model.config.train import DataConfig, TrainConfig
from model.data.loading import load_data

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_SWEEP = """
name = "tiny"
description = "two tiny runs"

[base]
hidden = [32]
latent_features = 2
epochs = 1
train_subset = 200
eval_k = 4
calibration_k = 4

[quick]
train_subset = 128

[[runs]]
name = "beta-1"

[[runs]]
name = "beta-10"
beta = 10
latent_features = 3
"""


def test_runs_are_variations_of_the_base():
    sweep = parse_sweep(TINY_SWEEP)
    assert [r.name for r in sweep.runs] == ["beta-1", "beta-10"]
    one, ten = (r.config for r in sweep.runs)
    assert (one.optim.beta, one.model.latent_features, one.model.hidden) == (1.0, 2, (32,))
    assert (ten.optim.beta, ten.model.latent_features, ten.data.train_subset) == (10.0, 3, 200)
    assert sweep.runs[1].changes == {"beta": 10, "latent_features": 3}


def test_quick_replaces_data_and_budget_and_keeps_the_variations():
    sweep = parse_sweep(TINY_SWEEP.replace('hidden = [32]', 'hidden = [32]\ndataset = "mnist"'), quick=True)
    for run in sweep.runs:
        assert run.config.data.dataset == "embedded" and run.config.optim.epochs == QUICK_OVERRIDES["epochs"]
        assert run.config.data.train_subset == 128  # the file's [quick] table wins over the defaults
    assert sweep.runs[1].config.optim.beta == 10.0


@pytest.mark.parametrize("text, message", [
    ('name = "x"\n[[runs]]\nname = "a"\nlatent_size = 3', r"runs\[0\] \(a\): unknown config fields \['latent_size'\]"),
    ('name = "x"\n[[runs]]\nname = "a"\n[[runs]]\nname = "a"', r"the run name 'a' is used twice"),
    ('name = "x"\nrunz = 1\n[[runs]]\nname = "a"', r"unknown keys \['runz'\]; expected some of"),
    ('name = "x"', r"expected at least one \[\[runs\]\] table, got None"),
    ('name = "a b"\n[[runs]]\nname = "a"', r"expected a `name` of letters, digits"),
    ('name = "x"\n[base]\nbeta = -1\n[[runs]]\nname = "a"', r"\[base\]: invalid training config: beta: expected >= 0, got -1"),
    ('name = [', r"not valid TOML"),
])
def test_bad_sweep_files_say_what_was_expected(text, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep(text, "bad.toml")


def test_assignments_are_toml_values():
    assert parse_assignments(["epochs=100", "classes=[0, 1]", "data_dir=/data/mnist", "beta=0.5"]) == {
        "epochs": 100, "classes": [0, 1], "data_dir": "/data/mnist", "beta": 0.5}
    with pytest.raises(SweepError, match="expected FIELD=VALUE"):
        parse_assignments(["epochs"])


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_sweeps_parse_in_both_modes(path):
    full, quick = load_sweep(path), load_sweep(path, quick=True)
    assert full.base.data.dataset == "mnist" and len(full.runs) >= 3
    assert all(r.config.data.dataset == "embedded" for r in quick.runs)
    assert [r.changes for r in full.runs] == [r.changes for r in quick.runs]


def test_shipped_sweeps_cover_the_exercises():
    sweeps = {s.name: s for s in map(load_sweep, SWEEPS.glob("*.toml"))}
    arch = sweeps["exercise-3.1-architecture"].runs
    assert len({r.config.model.hidden for r in arch}) >= 4 and len({r.config.model.activation for r in arch}) >= 3
    assert [r.config.data.classes for r in sweeps["exercise-3.2-classes"].runs] == [(3, 7), (0, 1, 4, 9), None]
    assert [r.config.model.latent_features for r in sweeps["exercise-3.3-latent"].runs] == [2, 5, 10, 32]
    assert [r.config.optim.beta for r in sweeps["exercise-4-beta"].runs] == [0, 0.1, 1, 10, 50]


def _check_sweep_dir(out: Path, names: list[str]) -> None:
    for name in ("sweep.json", "comparison.json", "comparison.md"):
        assert (out / name).is_file(), name
    for name in ("learning_curves.png", "rate_distortion.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["run"] for r in comparison["runs"]] == names
    for row in comparison["runs"]:
        assert row["status"] == "complete"
        assert row["iwae_log_px"] >= row["test_elbo"] - 5  # L_K is no looser than the ELBO (up to noise)
        assert 0 <= row["active_units"] <= row["latent_units"]
    table = (out / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in names)


def test_quick_sweep_writes_every_artefact_then_skips_and_reports(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SWEEP)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--quick", "--out", str(out), "--quiet"]) == 0
    _check_sweep_dir(out, ["beta-1", "beta-10"])
    weights = out / "runs" / "beta-1" / "model.safetensors"
    before = weights.stat().st_mtime_ns

    assert main(["sweep", str(path), "--quick", "--out", str(out), "--quiet"]) == 0
    assert "[beta-1] complete, skipped" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == before

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "learning_curves.png" in images and any("beta-10/latent.png" in i for i in images)
    for image in images:
        assert (out / image).read_bytes()[:8] == PNG_MAGIC, image
    assert "| beta-10 | beta=10, latent_features=3 |" in report
    assert re.search(r"\| beta-1 \| -?\d+\.\d / \d+\.\d \|", report)  # validation ELBO / KL at epoch 1
    assert re.search(r"\| beta-10 \| \d+\.\d%", report)  # latent classifier recall per digit


def test_a_directory_holding_other_settings_is_refused(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SWEEP)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--quick", "--out", str(out), "--quiet", "--only", "beta-1"]) == 0
    assert main(["sweep", str(path), "--quick", "--out", str(out), "--quiet", "--set", "lr=0.01"]) == 2
    assert "holds a run with other settings (lr)" in capsys.readouterr().err


def test_a_shipped_sweep_runs_quick(tmp_path):
    out = tmp_path / "classes"
    assert main(["sweep", str(SWEEPS / "exercise_3_2_classes.toml"), "--quick", "--out", str(out), "--quiet"]) == 0
    _check_sweep_dir(out, ["digits-3-7", "digits-0-1-4-9", "digits-all"])
    per_class = json.loads((out / "runs" / "digits-0-1-4-9" / "evaluation.json").read_text())["per_class"]
    assert sorted(per_class) == ["0", "1", "4", "9"]


def test_runs_share_loaded_data_only_when_every_field_load_data_reads_agrees():
    # load_data reads the data section and the seed of a config, nothing else ...
    read = set(re.findall(r"config\.([a-z_]+)", inspect.getsource(load_data)))
    assert read <= {"data", "seed"}, f"load_data reads config.{sorted(read - {'data', 'seed'})}, outside DATA_FIELDS"
    # ... and the key runs share data by is every field of those.
    assert set(DATA_FIELDS) == {f.name for f in fields(DataConfig)} | {"seed"}
    base = TrainConfig.of(classes=(3, 7), train_subset=100)
    assert data_key(base.replace(epochs=3, beta=2.0, latent_features=5, eval_k=4)) == data_key(base)
    for name, value in [("seed", 1), ("dataset", "mnist"), ("data_dir", "/data"), ("classes", (0, 1)),
                        ("binarize", "static"), ("validation_fraction", 0.2), ("train_subset", 50), ("labels", 10),
                        ("input_shape", (1, 2, 2)), ("class_labels", (3,))]:
        assert data_key(base.replace(**{name: value})) != data_key(base), name
