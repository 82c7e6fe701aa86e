"""--compile: the training loss and the importance-weighted bound through torch.compile, with the
same random draws as eager torch, so the same seed gives the same numbers to float rounding."""

from __future__ import annotations

import json

import pytest
import torch

from model import TrainConfig, load_checkpoint
from model.core.compilation import CompiledObjective, compiling
from model.core.objectives import iwae_bound
from model.core.schedules import Progress
from model.kinds.registry import build_model, build_objective
from model.runs.train import TrainingError, train
from model.training.loop import adam

SHAPE = dict(input_shape=(1, 28, 28), class_labels=tuple(range(10)), device="cpu")


@pytest.mark.parametrize("kind", ["gaussian", "m2"])
def test_a_compiled_bound_draws_what_the_eager_bound_draws(kind):
    """Same seed, same weights: L_K compiled equals L_K eager to rounding, chunk boundaries included
    (K = 10 in chunks of 4: a last chunk of 2), and differs for another seed (the draws are real)."""
    config = TrainConfig.of(kind=kind, dataset="embedded", hidden=(32,), latent_features=3, **SHAPE)
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = torch.rand(6, 1, 28, 28).round()
    bounds = {}
    for compiled in (False, True):
        torch.manual_seed(5)
        with torch.inference_mode(), compiling(compiled):
            bounds[compiled] = iwae_bound(model, x, 10, chunk_size=4)
    torch.testing.assert_close(bounds[True], bounds[False], rtol=1e-5, atol=1e-3)
    torch.manual_seed(6)
    with torch.inference_mode(), compiling():
        other = iwae_bound(model, x, 10, chunk_size=4)
    assert (other - bounds[True]).abs().max() > 1e-3


def test_compiled_training_steps_follow_the_eager_trajectory():
    """Five optimiser steps from one seed: each loss and the weights after them agree with eager torch
    (the backward pass is compiled too), and the objective's schedule is the objective's own."""
    config = TrainConfig.of(dataset="embedded", hidden=(32,), latent_features=2, beta_warmup=3, **SHAPE)
    x = torch.rand(5, 16, 1, 28, 28).round()
    y = torch.zeros(16, dtype=torch.long)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(config).train()
        objective = build_objective(config)
        if compiled:
            objective = CompiledObjective(objective)
        optimizer = adam(model, 1e-2)
        losses = []
        for step in range(5):
            loss, diagnostics = objective(model, x[step], y, Progress(epoch=step / 5, step=step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert set(diagnostics) >= {"elbo", "log_px", "kl"}
        runs[compiled] = (losses, torch.cat([p.detach().flatten() for p in model.parameters()]),
                          objective.schedule(Progress(epoch=1.0, step=5)))
    torch.testing.assert_close(torch.tensor(runs[True][0]), torch.tensor(runs[False][0]), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-3, atol=1e-4)
    assert runs[True][2] == runs[False][2]
    assert len(set(runs[True][0])) == 5  # the weights moved


def test_a_compiled_run_matches_the_eager_run_and_may_resume_without_compiling(tmp_path, small_data):
    settings = dict(dataset="embedded", hidden=(32,), latent_features=2, epochs=1, batch_size=64, train_subset=512,
                    eval_k=8, calibration_k=4, seed=1, device="cpu")
    eager = load_checkpoint(train(TrainConfig.of(**settings), tmp_path / "eager", progress=False, data=small_data))
    run = train(TrainConfig.of(**settings, compile=True), tmp_path / "compiled", progress=False, data=small_data)
    compiled = load_checkpoint(run)
    assert compiled.config.compile and not eager.config.compile
    for key in ("elbo", "log_px", "kl"):
        assert compiled.evaluation["test"][key] == pytest.approx(eager.evaluation["test"][key], abs=0.02)
    assert compiled.evaluation["iwae"]["log_px"] == pytest.approx(eager.evaluation["iwae"]["log_px"], abs=0.02)
    # Whether the loss is compiled is not what is trained: a resume may switch it (and nothing else).
    resumed = train(TrainConfig.of(**{**settings, "epochs": 2}), run, resume=True, progress=False, data=small_data)
    assert json.loads((resumed / "config.json").read_text())["compile"] is False
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(TrainingError, match="latent_features"):
        train(TrainConfig.of(**{**settings, "latent_features": 3, "epochs": 3}), run, resume=True, progress=False,
              data=small_data)


def test_compile_without_a_cpp_compiler_is_refused_before_anything_is_written(tmp_path, small_data, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"C\+\+ compiler.*'no-such-compiler-here'"):
        train(TrainConfig.of(dataset="embedded", epochs=1, compile=True, device="cpu"), out, progress=False,
              data=small_data)
    assert not out.exists()


def test_the_anomaly_bench_under_compile_measures_what_it_measures_eagerly():
    """`vae bench anomaly --compile`: the same models (to rounding) and the same draws, so the same AUROCs."""
    from dataclasses import replace

    from model.bench.anomaly import run
    from model.bench.config import QUICK

    config = replace(QUICK, classes=(0,), epochs=2, scores=("iwae", "reconstruction"), test_subset=200)
    eager, compiled = (run(replace(config, compile=flag))["results"][0]["auroc"] for flag in (False, True))
    assert set(eager) == set(compiled) == {"iwae", "reconstruction"}
    for name in eager:
        assert compiled[name] == pytest.approx(eager[name], abs=0.01), (eager, compiled)
