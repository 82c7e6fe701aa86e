"""Anomaly scores: each on a case where its answer is known; the quick benchmark beats chance."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model.anomaly.base import BACKGROUND
from model.anomaly.reconstruction import EDGE_FLOOR, edge_energy, relative_reconstruction
from model.anomaly.registry import NLL_SCORES
from model.anomaly.likelihood import complexity_bits, excess, input_complexity, input_entropy, likelihood_ratio
from model.anomaly.companions import fit_companions, fit_model, perturb
from model.anomaly.regret import likelihood_regret
from model.anomaly.scoring import score_split
from model.bench.anomaly import auroc
from model.bench.config import QUICK
from model.anomaly.calibration import AnomalyCalibration
from model.runs.checkpoint import load_companions, save_companions
from model.config.train import TrainConfig
from model.data.transforms import filter_classes
from model.data.loading import load_raw
from model.anomaly.scoring import calibrate
from model.core.noise import Noise
from model.anomaly.registry import SCORES, available_scores, default_score, rankings
from model.anomaly.likelihood import negative_iwae

TINY = TrainConfig.of(latent_features=2, hidden=(32,), epochs=3, batch_size=64, kl="analytic", seed=0)


class ZeroNoise(Noise):
    """eps = 0: every posterior sample is the posterior mean, so bounds become deterministic."""

    def normal(self, sample_shape, batch_size, event_shape, *, device, dtype=torch.float32):
        return torch.zeros((*sample_shape, batch_size, *event_shape), device=device, dtype=dtype)


@pytest.fixture(scope="module")
def digits():
    """Embedded digits: training images of class 0, test images of classes 0 and 1."""
    train, test = load_raw("embedded", None)
    return filter_classes(train, [0]).x, filter_classes(test, [0, 1])


@pytest.fixture(scope="module")
def trained(digits):
    return fit_model(TINY, digits[0], epochs=3)


def test_complexity_bits_rank_noise_above_a_blank_image():
    blank = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bits = complexity_bits(torch.cat([blank, noise]))
    assert bits[0] < 8 * 50  # 784 equal bytes: a few back-references
    assert bits[1] >= 8 * 784  # uniform bytes are incompressible: at least 8 bits per pixel
    with pytest.raises(ValueError, match="expected a batch of images"):
        complexity_bits(torch.zeros(784))


def test_input_complexity_is_the_nll_minus_the_code_length_in_nats(trained, digits):
    x = digits[1].x[:8]
    expected = negative_iwae(trained, x, k=1, noise=ZeroNoise()) - math.log(2) * complexity_bits(x)
    torch.testing.assert_close(input_complexity(trained, x, k=1, noise=ZeroNoise()), expected)


def test_input_entropy_is_zero_for_binary_images_and_ln2_per_half_grey_pixel():
    binary = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.testing.assert_close(input_entropy(binary), torch.zeros(3))
    torch.testing.assert_close(input_entropy(torch.full((2, 1, 28, 28), 0.5)), torch.full((2,), 784 * math.log(2)))


def test_excess_is_the_nll_minus_the_input_entropy_and_never_below_the_latent_terms(trained, digits):
    x = digits[1].x[:8]
    expected = negative_iwae(trained, x, k=1, noise=ZeroNoise()) - input_entropy(x)
    torch.testing.assert_close(excess(trained, x, k=1, noise=ZeroNoise()), expected)
    # With z at the posterior mean, the excess is Σ KL(x_i ‖ p_i) ≥ 0 plus log q(z|x) − log p(z).
    z = trained.posterior(x).mu
    latent = trained.posterior(x).log_prob(z).sum(1) - trained.prior(8).log_prob(z).sum(1)
    assert (expected - latent >= -1e-3).all()


def stroke(grey: float, length: int = 10) -> torch.Tensor:
    """A vertical stroke of `length` pixels of one grey level, away from the border, on black."""
    x = torch.zeros(1, 1, 28, 28)
    x[..., 5:5 + length, 14] = grey
    return x


def test_edge_energy_counts_the_edges_of_a_stroke_in_square_root_grey_levels():
    assert edge_energy(torch.zeros(2, 1, 28, 28)).tolist() == [0.0, 0.0]
    assert edge_energy(torch.ones(1, 1, 28, 28)).item() == 0.0  # flat: no edge, however bright
    # A 10-pixel stroke: 2 edges in each of its 10 rows, 1 at each end; each costs (√grey − 0)².
    torch.testing.assert_close(edge_energy(stroke(1.0)), torch.tensor([22.0]))
    torch.testing.assert_close(edge_energy(stroke(0.25)), torch.tensor([22 * 0.25]))
    torch.testing.assert_close(edge_energy(stroke(1.0, length=20)), torch.tensor([42.0]))
    with pytest.raises(ValueError, match=r"expected images \(B, ..., H, W\)"):
        edge_energy(torch.zeros(3, 784))


class Reconstructs(torch.nn.Module):
    """A stand-in model whose reconstruction is a fixed function of the input."""

    def __init__(self, fn, input_shape=(1, 28, 28)):
        super().__init__()
        self.fn, self.input_shape = fn, input_shape

    def reconstruct(self, x):
        return self.fn(x)


def test_relative_reconstruction_is_the_root_error_over_the_edge_energy():
    x = torch.cat([stroke(1.0), stroke(0.25, length=20)])
    assert torch.equal(relative_reconstruction(Reconstructs(lambda v: v), x), torch.zeros(2))
    # Reconstructing black misses every pixel by √x_i: the error is Σ x_i.
    missed = relative_reconstruction(Reconstructs(torch.zeros_like), x)
    torch.testing.assert_close(missed, torch.tensor([10 / (22 + EDGE_FLOOR), 5 / (42 * 0.25 + EDGE_FLOOR)]))
    # Flat vectors are reshaped to the model's images; a model of vectors has no edges to count.
    torch.testing.assert_close(relative_reconstruction(Reconstructs(torch.zeros_like), x.flatten(1)), missed)
    with pytest.raises(ValueError, match="needs a model of images"):
        relative_reconstruction(Reconstructs(torch.zeros_like, input_shape=(784,)), x.flatten(1))


def test_relative_reconstruction_divides_by_edges_not_by_ink():
    """Two images of the same ink, both missed entirely: the one with fewer edges is the worse miss."""
    block, line = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    block[..., 10:14, 10:14] = 1.0  # 16 pixels, 16 edges
    line[..., 6:22, 14] = 1.0  # 16 pixels, 34 edges
    assert block.sum() == line.sum()
    scores = relative_reconstruction(Reconstructs(torch.zeros_like), torch.cat([block, line]))
    torch.testing.assert_close(scores, torch.tensor([16 / (16 + EDGE_FLOOR), 16 / (34 + EDGE_FLOOR)]))


def test_relative_reconstruction_checks_its_images():
    model = Reconstructs(torch.zeros_like)
    with pytest.raises(ValueError, match="expected a batch of images of 784 pixels"):
        relative_reconstruction(model, torch.zeros(2, 1, 27, 27))
    with pytest.raises(ValueError, match=r"expected pixel values in \[0, 1\]"):
        relative_reconstruction(model, torch.full((2, 1, 28, 28), 2.0))


def test_likelihood_ratio_against_itself_is_zero_and_needs_its_background(trained, digits):
    x = digits[1].x[:8]
    ratio = likelihood_ratio(trained, x, k=1, noise=ZeroNoise(), companions={BACKGROUND: trained})
    torch.testing.assert_close(ratio, torch.zeros(8))
    with pytest.raises(ValueError, match="needs the companion model 'background'"):
        likelihood_ratio(trained, x, k=1)


def test_perturb_replaces_the_asked_fraction_of_pixels():
    torch.manual_seed(0)
    x = torch.full((200, 1, 28, 28), 2.0)  # outside [0, 1]: every replaced pixel is visible
    assert torch.equal(perturb(x, 0.0), x)
    assert (perturb(x, 1.0) <= 1.0).all()
    changed = (perturb(x, 0.3) != x).float().mean().item()
    assert abs(changed - 0.3) < 0.01, changed
    with pytest.raises(ValueError, match="expected a probability"):
        perturb(x, 1.5)


def test_likelihood_regret_is_nonnegative_zero_without_steps_and_leaves_the_model_alone(trained, digits):
    x = digits[1].x[:16]
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(0)
    regret = likelihood_regret(trained, x, steps=10)
    assert regret.shape == (16,) and (regret >= 0).all() and regret.sum() > 0
    assert torch.equal(likelihood_regret(trained, x, steps=0), torch.zeros(16))
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert all(p.grad is None for p in trained.parameters())


def test_likelihood_regret_is_larger_where_the_encoder_is_poor(trained, digits):
    """A broken encoder (posterior N(0, I) for every image) leaves more to gain than a trained one."""
    broken = fit_model(TINY, digits[0], epochs=3)
    with torch.no_grad():
        broken.encoder[-1].weight.zero_()
        broken.encoder[-1].bias.zero_()
    x = digits[1].x[:32]
    torch.manual_seed(0)
    assert likelihood_regret(broken, x).mean() > 1.5 * likelihood_regret(trained, x).mean()


def test_every_score_has_the_common_signature(trained, digits):
    x = digits[1].x[:4]
    companions = {BACKGROUND: trained}
    for name, fn in SCORES.items():
        if fn.components:  # a derived score needs its calibration (tests/test_ood.py)
            continue
        values = fn(trained, x, k=2, noise=None, companions=companions)
        assert values.shape == (4,) and torch.isfinite(values).all(), name


def test_score_split_shares_the_nll_and_agrees_with_every_score_function(trained, digits):
    x = digits[1].x[:10]
    companions = {BACKGROUND: fit_model(TINY, digits[0], epochs=1, perturb_rate=0.2, seed=1)}
    direct = {name: fn for name, fn in SCORES.items() if not fn.components}  # derived ones: tests/test_ood.py
    values, seconds = score_split(trained, x, list(direct), k=2, noise=ZeroNoise(), companions=companions,
                                  batch_size=4, params={"likelihood_regret": {"steps": 3}})
    assert list(values) == list(direct) and set(seconds) == set(direct)
    nll = values["iwae"]  # −L_K(x), hundreds of nats
    for name, fn in direct.items():
        extra = {"steps": 3} if name == "likelihood_regret" else {}
        expected = fn(trained, x, k=2, noise=ZeroNoise(), companions=companions, **extra).detach()
        # Same float32 terms, summed in batches of 4 against one batch of 10 and split over however
        # many threads torch runs: the two agree to rounding of the terms, not of the result. A score
        # on −L_K adds a correction to it, and likelihood_ratio = −L_K + L_K^bg is a small difference
        # of two large bounds, so the tolerance is relative to |−L_K| + |correction|. 1e-5 of that
        # (~100 float32 epsilons) is far below a real disagreement (a term or a sample off: nats).
        terms = nll.abs() + (expected - nll).abs() if name in NLL_SCORES else expected.abs()
        torch.testing.assert_close(
            values[name], expected, rtol=0, atol=1e-5 * terms.max().item(),
            msg=lambda m, name=name, expected=expected: (
                f"{name}: {m}\nscore_split: {values[name].tolist()}\n{name}(): {expected.tolist()}"))
    with pytest.raises(ValueError, match="needs the companion model"):
        score_split(trained, x, ["likelihood_ratio"], k=2)


def test_available_scores_follow_companions_and_the_default_follows_the_benchmark(trained):
    without = available_scores(trained)
    assert "likelihood_ratio" not in without and "complexity" in without
    assert "likelihood_ratio" in available_scores(trained, {BACKGROUND: trained})
    # A data set the benchmark never ranked (a user's folder): combined, else −L_K.
    assert default_score(None, without) == default_score("folder", without) == "combined"
    assert default_score("folder", [s for s in without if s != "combined"]) == "iwae"
    # The rankings by worst family of `vae bench ood` (docs/anomaly.md, "The default score"): the
    # combined score on every data set; a model whose components are not all available falls back.
    for dataset in ("mnist", "fashion-mnist", "embedded"):
        assert default_score(dataset, without) == "combined"
    assert default_score("mnist", [s for s in without if s != "combined"]) == rankings()["mnist"][1]
    with pytest.raises(ValueError, match="none of the preferred scores"):
        default_score("mnist", ["likelihood_ratio"])  # measured by neither bench run: not ranked


def test_calibrate_fits_every_available_score(trained, digits):
    calibration = calibrate(trained, digits[1], k=2, companions={BACKGROUND: trained}, dataset="mnist")
    assert set(calibration.scores) == set(SCORES)
    assert calibration.default == default_score("mnist", list(SCORES))
    assert AnomalyCalibration.from_dict(calibration.to_dict()) == calibration


def test_background_companion_is_fitted_saved_and_loaded(tmp_path, digits):
    assert fit_companions(TINY, digits[0]) == {}
    config = TINY.replace(background_epochs=1)
    companions = fit_companions(config, digits[0])
    save_companions(tmp_path, companions)
    loaded = load_companions(tmp_path, config)
    assert set(loaded) == {BACKGROUND}
    for key, value in companions[BACKGROUND].state_dict().items():
        assert torch.equal(loaded[BACKGROUND].state_dict()[key], value)
    with pytest.raises(ValueError, match="unknown companion models"):
        save_companions(tmp_path, {"foreground": companions[BACKGROUND]})


def test_auroc_known_values():
    assert auroc([0.0, 1.0, 2.0, 3.0], [False, False, True, True]) == 1.0
    assert auroc([3.0, 2.0, 1.0, 0.0], [False, False, True, True]) == 0.0
    assert auroc([1.0, 1.0, 1.0, 1.0], [False, True, False, True]) == 0.5


def test_quick_benchmark_command_runs_every_score_and_beats_chance(tmp_path, capsys):
    """`vae bench anomaly --quick` exactly as CI documents it: embedded digits, classes 0 and 1."""
    from model.cli.main import main

    out = tmp_path / "anomaly.json"
    assert main(["bench", "anomaly", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert out.with_suffix(".md").is_file() and "| oneclass-embedded |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [r["case"] for r in report["results"]] == ["class 0", "class 1"]
    for result in report["results"]:
        assert set(result["auroc"]) == set(QUICK.scores) and result["test_images"] == QUICK.test_subset
        assert result["auroc"]["iwae"] > 0.9 and result["auroc"]["reconstruction"] > 0.9, result["auroc"]
    mean = report["summary"]["oneclass-embedded"]["mean_auroc"]["iwae"]
    assert mean == pytest.approx(sum(r["auroc"]["iwae"] for r in report["results"]) / 2)


def _result(benchmark: str, case: str, aurocs: dict[str, float]) -> dict:
    return {"benchmark": benchmark, "case": case, "auroc": aurocs, "score_seconds": dict.fromkeys(aurocs, 1.0),
            "train_seconds": 1.0, "background_seconds": 0.0}


def test_rankings_order_each_data_sets_scores_by_the_mean_of_its_one_class_and_ood_aurocs(tmp_path, capsys):
    """Ranked by one-class alone: relative_reconstruction first; by OOD alone: iwae; by their mean: excess."""
    from model.anomaly.registry import rankings
    from model.cli.main import main

    results = [
        _result("oneclass-mnist", "class 0", {"iwae": 0.70, "relative_reconstruction": 1.00, "excess": 0.94}),
        _result("oneclass-mnist", "class 1", {"iwae": 0.90, "relative_reconstruction": 0.98, "excess": 0.96}),
        _result("mnist-vs-fashion-mnist", "mnist vs fashion-mnist",
                {"iwae": 0.99, "relative_reconstruction": 0.90, "excess": 0.96, "likelihood_regret": 1.0}),
        _result("oneclass-embedded", "class 0", {"iwae": 0.8, "excess": 0.9}),  # no OOD benchmark: not ranked
    ]
    report = {"command": "synthetic", "config": {}, "threads": 1, "wall_seconds": 1.0, "results": results,
              "summary": {}}
    reports, out = tmp_path / "report.json", tmp_path / "rankings.json"
    reports.write_text(json.dumps(report))
    assert main(["bench", "anomaly", "--render", str(reports), "--write-rankings", str(out)]) == 0
    assert "rankings of mnist written to" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["rankings"] == {"mnist": ["excess", "relative_reconstruction", "iwae"]}  # regret: OOD only
    assert written["means"]["mnist"] == pytest.approx({"excess": 0.955, "relative_reconstruction": 0.945,
                                                       "iwae": 0.895})
    assert rankings(out) == {"mnist": ("excess", "relative_reconstruction", "iwae")}  # as the registry reads it
