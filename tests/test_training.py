"""Training on the embedded data: artefacts, round trips, --resume, and clear errors."""

import json
from pathlib import Path

import pytest
import torch

from model import CheckpointError, TrainConfig, load_checkpoint
from model.runs.checkpoint import ARTEFACTS, COMPANIONS, MANIFEST, TRAINING_STATE
from model.cli.main import main
from model.data.base import DataError
from model.data.batches import training_batches
from model.data.loading import load_data
from model.runs.train import TrainingError, train

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TINY = dict(hidden=(32,), latent_features=2, epochs=2, batch_size=128, train_subset=600,
            eval_k=20, calibration_k=10, seed=7)


@pytest.fixture(scope="module")
def data():
    return load_data(TrainConfig.of(**TINY))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    return train(TrainConfig.of(**TINY), tmp_path_factory.mktemp("runs") / "tiny", data=data, progress=False)


def test_run_directory_is_complete(run):
    optional = set(COMPANIONS.values())  # companions exist only when the config asks for them
    for name in (*(set(ARTEFACTS) - optional), MANIFEST, TRAINING_STATE):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert set(lines[0]["validation"]) == {"elbo", "log_px", "kl"}
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["iwae"]["k"] == 20
    # L_K is a tighter bound than the ELBO on average.
    assert evaluation["iwae"]["log_px"] >= evaluation["test"]["elbo"] - 1.0
    assert 0 <= evaluation["active_units"]["count"] <= 2
    assert 0.1 < evaluation["classifier"]["latent_accuracy"] <= 1
    assert evaluation["calibration"]["threshold"] > 0


def test_checkpoint_round_trips(run, data):
    checkpoint = load_checkpoint(run)
    # The config round-trips, with the data's shape, labels and the network recorded beside the settings.
    assert checkpoint.config.replace(input_shape=None, class_labels=None, arch=None) == TrainConfig.of(**TINY)
    assert checkpoint.config.model.arch == "mlp"  # the default for a built-in data set, recorded
    assert checkpoint.config.data.input_shape == (1, 28, 28)
    assert checkpoint.config.data.class_labels == tuple(range(10))
    x = data.test.x[:5]
    again = load_checkpoint(run)
    assert torch.equal(checkpoint.model.features(x), again.model.features(x))
    probs = checkpoint.classifier(checkpoint.model.features(x))
    assert torch.allclose(probs.sum(1), torch.ones(5))
    calibration = checkpoint.calibration.scores[checkpoint.calibration.default]
    assert calibration.threshold(0.01) >= calibration.threshold(0.5)


def test_resume_continues_exactly_where_it_stopped(tmp_path, data):
    one = train(TrainConfig.of(**{**TINY, "epochs": 1}), tmp_path / "resumed", data=data, progress=False)
    # How a folder is loaded may change on resume; it never changes what is trained.
    train(TrainConfig.of(**TINY, memory_budget=1, data_workers=0), one, resume=True, data=data, progress=False)
    assert TrainConfig.load(one / "config.json").data.data_workers == 0
    straight = train(TrainConfig.of(**TINY), tmp_path / "straight", data=data, progress=False)
    resumed_lines = (one / "metrics.jsonl").read_text().splitlines()
    assert len(resumed_lines) == 2
    a, b = load_checkpoint(one).model.state_dict(), load_checkpoint(straight).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_in", ["save_training_state", "save_weights"])
def test_resume_after_a_crash_inside_the_epoch_end_save_is_exact(tmp_path, data, monkeypatch, crash_in):
    import model.runs.checkpoint as ckpt

    straight = train(TrainConfig.of(**TINY), tmp_path / "straight", data=data, progress=False)
    original, calls = getattr(ckpt, crash_in), []

    def crash_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Crash()
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, crash_in, crash_on_second_epoch)
    with pytest.raises(_Crash):
        train(TrainConfig.of(**TINY), tmp_path / "crashed", data=data, progress=False)
    monkeypatch.setattr(ckpt, crash_in, original)
    train(TrainConfig.of(**TINY), tmp_path / "crashed", resume=True, data=data, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    a, b = load_checkpoint(tmp_path / "crashed").model.state_dict(), load_checkpoint(straight).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_an_interrupted_extension_resumes_to_the_new_epoch_budget(tmp_path, data, monkeypatch):
    import model.runs.checkpoint as ckpt

    out = train(TrainConfig.of(**{**TINY, "epochs": 1}), tmp_path / "extended", data=data, progress=False)
    original, calls = ckpt.save_weights, []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Crash()
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_weights", crash_on_second_call)
    with pytest.raises(_Crash):  # --resume --epochs 3, interrupted in epoch 3's save
        train(TrainConfig.of(**{**TINY, "epochs": 3}), out, resume=True, data=data, progress=False)
    monkeypatch.setattr(ckpt, "save_weights", original)
    assert TrainConfig.load(out / "config.json").optim.epochs == 3
    saved = TrainConfig.load(out / "config.json")  # `vae train --resume` without --epochs uses the saved budget
    train(saved, out, resume=True, data=data, progress=False)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert load_checkpoint(out).manifest["epochs_completed"] == 3


def test_rerunning_into_an_existing_run_is_refused(run, data):
    with pytest.raises(TrainingError, match="already holds a run"):
        train(TrainConfig.of(**TINY), run, data=data, progress=False)


def test_resume_refuses_changed_settings(run, data):
    with pytest.raises(TrainingError, match=r"\['beta'\]"):
        train(TrainConfig.of(**{**TINY, "beta": 2.0}), run, resume=True, data=data, progress=False)


def test_damaged_checkpoint_is_named(run, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in run.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: damaged"):
        load_checkpoint(damaged)
    manifest = json.loads((damaged / MANIFEST).read_text())
    (damaged / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="unsupported format version 99"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_checkpoint(tmp_path / "nowhere")


def test_bad_images_are_refused_with_what_was_expected(run):
    model = load_checkpoint(run).model
    with pytest.raises(ValueError, match=r"784 pixels.*got shape \(2, 27, 28\)"):
        model.encode(torch.rand(2, 27, 28))
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.encode(torch.full((1, 784), float("nan")))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model.encode(torch.full((1, 784), 2.0))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="classes: expected at least one class label"):
        TrainConfig.of(classes=())
    with pytest.raises(ValueError, match="binarize: expected one of"):
        TrainConfig.of(binarize="sometimes")
    with pytest.raises(ValueError, match="'iwae' trains the importance-weighted bound"):
        TrainConfig.of(objective="iwae", k=5, beta=0.5)
    with pytest.raises(ValueError, match="the ELBO objective draws one sample"):
        TrainConfig.of(objective="elbo", k=5)
    with pytest.raises(DataError, match="no such directory"):
        load_data(TrainConfig.of(dataset="mnist", data_dir="/nonexistent/mnist"))


def test_class_filter_and_binarization(data):
    filtered = load_data(TrainConfig.of(**{**TINY, "classes": (3, 7)}))
    assert set(filtered.train.y.tolist()) == {3, 7} and set(filtered.test.y.tolist()) == {3, 7}
    static = load_data(TrainConfig.of(**{**TINY, "binarize": "static"}))
    # Images stay uint8 in memory (batches are scaled to [0, 1]): a binary draw is 0 or 255.
    assert static.train.x.dtype == torch.uint8 and set(torch.unique(static.train.x).tolist()) <= {0, 255}
    dynamic = load_data(TrainConfig.of(**{**TINY, "binarize": "dynamic"}))
    assert len(torch.unique(dynamic.train.x)) > 2  # drawn afresh each pass
    assert set(torch.unique(dynamic.test.x).tolist()) <= {0, 255}
    x, _ = next(training_batches(dynamic.train, 64, "dynamic"))
    assert x.dtype == torch.float32 and set(torch.unique(x).tolist()) <= {0.0, 1.0}


def test_cli_trains_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "cli-run"
    args = ["train", "--out", str(out), "--hidden", "16", "--epochs", "1", "--train-subset", "300",
            "--eval-k", "5", "--calibration-k", "5", "--quiet"]
    assert main(args) == 0
    assert (out / MANIFEST).is_file()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--skip-if-complete"]) == 0
    assert main(["evaluate", str(out), "--k", "7"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["iwae"]["k"] == 7
    load_checkpoint(out)  # the manifest was rewritten with the new hashes


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist is not beside the checkout")
def test_real_mnist_from_a_data_directory():
    bundle = load_data(TrainConfig.of(dataset="mnist", data_dir=str(SHARED_MNIST), classes=(3, 7)))
    # COURSE.md: classes [3, 7] have 12,396 training and 2,038 test images.
    assert len(bundle.train) + len(bundle.validation) == 12_396
    assert len(bundle.test) == 2_038
    assert bundle.train.x.shape[1:] == (1, 28, 28) and bundle.train.x.dtype == torch.uint8
