"""What a new user meets first: `--help`, failures that leave no trap, data errors that say what is wrong."""

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from model.cli.main import build_parser, main
from model.config.train import TrainConfig
from model.data.base import DataError
from model.data.mnist import check_idx_folder
from model.kinds.registry import KINDS
from model.runs.train import summary, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = dict(hidden=(16,), latent_features=2, epochs=2, batch_size=128, train_subset=300,
            eval_k=5, calibration_k=5, seed=1)


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_train_help_states_each_default_once_and_lists_the_kinds(capsys):
    text = _help(capsys, "train")
    assert "default: None" not in text
    for line in text.split("\n  --")[1:]:  # one option's help per chunk
        assert line.count("default:") <= 1, line
    assert "{" + ",".join(KINDS) + "}" in text
    assert "--straight-through, --no-straight-through" in text


def test_straight_through_is_a_switch():
    parser = build_parser()
    assert parser.parse_args(["train", "--out", "x", "--straight-through"]).straight_through is True
    assert parser.parse_args(["train", "--out", "x", "--no-straight-through"]).straight_through is False
    assert parser.parse_args(["train", "--out", "x"]).straight_through is None  # not given: the config's default
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "x", "--kind", "nope"])


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "missing"), "--out", str(out)])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err
    assert not out.exists()
    # The same in a directory the user made: it stays, empty, and a retry is not refused.
    out.mkdir()
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert list(out.iterdir()) == []


def test_a_run_that_fails_later_is_resumable_and_says_so(tmp_path, monkeypatch):
    import model.runs.train as training

    calls = {"n": 0}
    real = training.split_elbo

    def fail_in_second_epoch(*args, **kwargs):  # validation runs once per epoch
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "split_elbo", fail_in_second_epoch)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError) as failure:
        train(TrainConfig.of(**TINY), out, progress=False)
    assert any("--resume" in note and str(out) in note for note in failure.value.__notes__)
    monkeypatch.setattr(training, "split_elbo", real)
    train(TrainConfig.of(**TINY), out, resume=True, progress=False)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_finished_run_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--quiet"]
    for key, value in TINY.items():
        argv += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else (value,))]
    assert main(argv) == 0
    text = capsys.readouterr().out
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert f"{evaluation['test']['elbo']:.2f}" in text
    assert f"L_{TINY['eval_k']}" in text and f"{evaluation['iwae']['log_px']:.2f}" in text
    assert f"{100 * evaluation['classifier']['latent_accuracy']:.1f} %" in text
    assert evaluation["calibration"]["score"] in text
    assert str(out) in text
    assert summary(out) in text


def test_calibration_stores_only_the_parameters_a_score_uses(tiny_run):
    scores = json.loads((tiny_run / "calibration.json").read_text())["scores"]
    assert scores["iwae"]["params"] == {"k": 10}
    for name in ("elbo", "reconstruction", "relative_reconstruction"):
        assert scores[name]["params"] == {}, name


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="needs ../shared/data")
def test_a_folder_of_another_data_set_is_named(tmp_path):
    with pytest.raises(DataError) as error:
        check_idx_folder("fashion-mnist", SHARED / "mnist")
    message = str(error.value)
    assert "mnist's" in message and "--dataset mnist" in message
    assert "[]" not in message
    # A folder missing some files lists exactly those; a file of nobody's is called damaged.
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz", partial)
    assert check_idx_folder("mnist", partial) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                  "t10k-images-idx3-ubyte.gz"]
    (partial / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DataError, match="not mnist's official files"):
        check_idx_folder("mnist", partial)


def test_the_latent_plot_title_counts_what_it_draws(tmp_path, monkeypatch):
    import model.analysis.plots as plots
    from model.kinds.gaussian import VariationalAutoencoder

    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 4, 4), 2, (8,)).eval()
    n = plots.MAX_ELLIPSES + 50
    x, y = torch.rand(n, 1, 4, 4), torch.arange(n) % 3
    titles = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: titles.append(fig.axes[0].get_title())
                        or real_save(fig, path))
    plots.plot_latent(model, x, y, tmp_path / "latent.png")
    assert titles == [f"q(z|x) over the prior: {n:,} means, 2σ ellipses of {plots.MAX_ELLIPSES:,}"]
