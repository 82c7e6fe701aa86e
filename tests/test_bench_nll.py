"""`vae bench nll`: Burda et al.'s schedule and optimiser settings, the CI preset end to end, and a
bench interrupted between stages resuming to the run it would have been."""

import json
import math

import pytest
import torch

from model.bench import nll
from model.cli.main import main
from model.config.train import TrainConfig
from model.data.loading import load_data
from model.runs import checkpoint as ckpt
from model.runs import train as train_module
from model.training.loop import BURDA_STAGES, adam, burda_epochs, fit_epoch, learning_rate


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`vae bench nll --quick` for the VAE row: 2 stages straight through."""
    out = tmp_path_factory.mktemp("nll") / "straight"
    assert main(["bench", "nll", "--quick", "--rows", "vae", "--out", str(out)]) == 0
    return out


def test_the_schedule_is_the_papers_stage_lengths_and_learning_rates():
    rates = [learning_rate(1e-3, "burda", epoch) for epoch in range(burda_epochs(BURDA_STAGES))]
    assert len(rates) == 3280
    stages = []  # (lr, epochs at it) in order
    for lr in rates:
        if stages and stages[-1][0] == lr:
            stages[-1][1] += 1
        else:
            stages.append([lr, 1])
    assert [n for _, n in stages] == [3 ** i for i in range(8)]
    for i, (lr, _) in enumerate(stages):
        assert lr == pytest.approx(0.001 * 10 ** (-i / 7), rel=1e-12)
    assert learning_rate(1e-3, "burda", 10_000) == stages[-1][0]  # past the last stage: its rate
    assert all(learning_rate(3e-4, "constant", e) == 3e-4 for e in (0, 5, 3279))


def test_adam_eps_reaches_the_optimiser(tmp_path):
    model = torch.nn.Linear(3, 2)
    assert adam(model, 1e-3).param_groups[0]["eps"] == 1e-8  # torch's default: existing runs unchanged
    assert adam(model, 1e-3, eps=1e-4).param_groups[0]["eps"] == 1e-4
    assert TrainConfig().optim.adam_eps == 1e-8 and TrainConfig().optim.lr_schedule == "constant"
    config = nll.row_config(nll.ROWS["vae"], stages=1, eval_k=2, data_dir=None, quick=True)
    assert (config.optim.adam_eps, config.optim.batch_size, config.optim.lr_schedule) == (1e-4, 20, "burda")


def test_training_on_validation_keeps_every_training_image():
    held_out = load_data(TrainConfig.of(seed=1))
    kept = load_data(TrainConfig.of(seed=1, train_on_validation=True))
    assert len(kept.train) == len(held_out.train) + len(held_out.validation)
    assert torch.equal(kept.validation.x, held_out.validation.x)  # the same seeded sample
    some = kept.validation.x[:20].flatten(1)  # (20, 784), each among the training images
    assert (kept.train.x.flatten(1)[None] == some[:, None]).all(-1).any(-1).all()


def test_quick_bench_reports_a_bound_beside_the_paper(quick):
    report = json.loads((quick / "nll.json").read_text())
    assert (quick / "nll.md").read_text().startswith("# Test NLL")
    (row,) = report["rows"]
    assert row["row"] == "vae" and row["paper_nll"] == 86.76 and row["eval_k"] == nll.QUICK_EVAL_K
    assert row["epochs_done"] == burda_epochs(2) == 4 and row["train_images"] == nll.QUICK_TRAIN_IMAGES
    assert math.isfinite(row["nll"]) and row["nll"] > 0
    # −L_K ≤ −ELBO on the same images: the importance-weighted bound is the tighter one (a small
    # Monte Carlo allowance: both are estimates).
    assert row["nll"] <= -row["test_elbo"] + 1.0
    assert [c["lr"] for c in row["learning_curve"]] == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])
    assert any("4 epochs of the paper's 3,280" in d for d in row["deviations"])
    assert any("−L_10, not −L_5000" in d for d in row["deviations"])
    lines = [json.loads(x) for x in (quick / "vae" / ckpt.METRICS).read_text().splitlines()]
    assert [line["lr"] for line in lines] == pytest.approx([1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3)
    state = ckpt.load_training_state(quick / "vae")
    assert {g["eps"] for g in state["optimizer"]["param_groups"]} == {1e-4}


def test_an_interrupted_bench_resumes_to_the_straight_run(quick, tmp_path, monkeypatch):
    # Stopped in the middle of stage 1 (during epoch 3 of 4), before evaluating: what a kill leaves.
    epochs_begun = []

    def fit_then_stop(*args, **kwargs):
        epochs_begun.append(kwargs["epoch"])
        if len(epochs_begun) == 3:
            raise KeyboardInterrupt
        return fit_epoch(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fit_epoch", fit_then_stop)
        with pytest.raises(KeyboardInterrupt):
            nll.run((nll.ROWS["vae"],), stages=2, eval_k=nll.QUICK_EVAL_K, data_dir=None, out=tmp_path, quick=True)
    assert len((tmp_path / "vae" / ckpt.METRICS).read_text().splitlines()) == 2
    assert not (tmp_path / "vae" / ckpt.MANIFEST).exists()
    options = dict(eval_k=nll.QUICK_EVAL_K, data_dir=None, out=tmp_path, quick=True)
    resumed = nll.run((nll.ROWS["vae"],), stages=2, **options)  # the rerun continues the stopped one

    def lines(run):
        return [json.loads(x) for x in (run / ckpt.METRICS).read_text().splitlines()]

    straight, again = lines(quick / "vae"), lines(tmp_path / "vae")
    assert [(r["epoch"], r["step"], r["lr"]) for r in again] == [(r["epoch"], r["step"], r["lr"]) for r in straight]
    for a, b in zip(again, straight):  # the same draws: resume restores the RNG with the weights
        assert a["train"] == pytest.approx(b["train"], rel=1e-5)
    assert resumed["rows"][0]["nll"] == pytest.approx(json.loads((quick / "nll.json").read_text())["rows"][0]["nll"],
                                                      abs=1e-2)


def test_rows_and_stages_are_checked():
    assert [r.name for r in nll.parse_rows("iwae50, vae,vae")] == ["iwae50", "vae"]
    with pytest.raises(ValueError, match="--rows"):
        nll.parse_rows("vae,iwae7")
    with pytest.raises(ValueError, match="--stages"):
        nll.row_config(nll.ROWS["vae"], stages=9, eval_k=1, data_dir=None)
