"""Runs on colour, non-square images and on the discretized logistic: every plot, the report, the
demos and both benches work on them, and draw what the images are.

One folder of synthetic colour images 20 high and 12 wide, in two class subfolders, is trained on
six times through a sweep (so `vae report` can reload the data as it would a user's): each kind
once on the tall images and once stretched to 12 × 20 (`image_size`), each with both likelihoods
between its two runs. Figures of images must follow the images' aspect: the tall run's PNG is
taller for its width than the wide run's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.analysis.demos import gradient_estimators, quadrature_log_px
from model.analysis.kind_plots import MODE_OBSERVATIONS
from model.analysis.plot_names import GAUSSIAN_PLOTS, KIND_PLOT_NAMES
from model.analysis.report import REPORT_DIR, write_report
from model.analysis.sweep import parse_sweep, run_sweep
from model.bench.config import BenchConfig, OodConfig
from model.bench.families import FAMILIES, generate
from model.core.preprocess import Preprocessing, prepare, scale
from model.data.base import DataError
from model.runs.checkpoint import load_checkpoint

HEIGHT, WIDTH = 20, 12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Plots that show images (their size follows the images'); the others are charts.
IMAGE_PLOTS = {"reconstructions", "samples", "interpolations", "manifold", "category_codes",
               "conditional_generation", "analogies"}
SWEEP = """
name = "colour"
description = "every kind on tall and on wide colour images, under both likelihoods"

[base]
dataset = "folder"
data_dir = "{folder}"
data_workers = 0
arch = "conv"
conv_channels = [8, 16]
hidden = [32]
latent_features = 2
categorical_variables = 2
categories = 3
epochs = 1
batch_size = 64
eval_k = 5
calibration_k = 5
seed = 0
device = "cpu"

[[runs]]
name = "gaussian-tall"
[[runs]]
name = "gaussian-wide"
likelihood = "logistic"
image_size = [12, 20]
[[runs]]
name = "categorical-tall"
kind = "categorical"
likelihood = "logistic"
[[runs]]
name = "categorical-wide"
kind = "categorical"
image_size = [12, 20]
[[runs]]
name = "m2-tall"
kind = "m2"
[[runs]]
name = "m2-wide"
kind = "m2"
likelihood = "logistic"
image_size = [12, 20]
"""
KINDS = ("gaussian", "categorical", "m2")


def _write_folder(root: Path, per_class: int = 40) -> Path:
    """Class 'bar' (a vertical bar) and class 'ring' (a hollow box), each in a random saturated colour on black."""
    rng = np.random.default_rng(0)
    for name in ("bar", "ring"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            colour = rng.permutation([255, int(rng.integers(0, 256)), 0])
            top, left = int(rng.integers(1, 6)), int(rng.integers(1, 5))
            if name == "bar":
                image[top:HEIGHT - top, left + 2:left + 5] = colour
            else:
                image[top:HEIGHT - top, left:WIDTH - left // 2 - 1] = colour
                image[top + 2:HEIGHT - top - 2, left + 2:WIDTH - left // 2 - 3] = 0
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep directory of the six runs, with its report (and so every run's plots) written."""
    root = tmp_path_factory.mktemp("colour")
    folder = _write_folder(root / "images")
    out = run_sweep(parse_sweep(SWEEP.format(folder=folder)), root / "sweep", log=lambda *_: None)
    write_report(out, log=lambda *_: None)
    return out


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        return image.size  # (width, height)


def _aspect(path: Path) -> float:
    width, height = _png_size(path)
    return height / width


@pytest.mark.parametrize("kind", KINDS)
def test_every_plot_of_each_kind_is_drawn_with_the_images_aspect(sweep, kind):
    expected = {"reconstructions", "latent", "learning_curves", "samples", *KIND_PLOT_NAMES.get(kind, ())}
    if kind == "gaussian":
        expected = set(GAUSSIAN_PLOTS)  # two latent units: the manifold too
    tall, wide = (sweep / REPORT_DIR / f"{kind}-{shape}" for shape in ("tall", "wide"))
    for plots in (tall, wide):
        assert {p.stem for p in plots.glob("*.png")} == expected
    for name in sorted(expected & IMAGE_PLOTS):
        # (20 / 12)² ≈ 2.8 for the image grids alone; margins, titles and labels take some of it.
        assert _aspect(tall / f"{name}.png") > 1.4 * _aspect(wide / f"{name}.png"), name


def test_vae_plot_draws_a_logistic_run_which_has_no_probs(sweep, tmp_path, capsys):
    from model.cli.main import main

    assert main(["plot", str(sweep / "runs" / "gaussian-wide"), "--out", str(tmp_path), "--only",
                 "reconstructions", "samples"]) == 0
    assert {Path(line).name for line in capsys.readouterr().out.split()} == {"reconstructions.png", "samples.png"}
    assert _png_size(tmp_path / "reconstructions.png") == _png_size(sweep / REPORT_DIR / "gaussian-wide" /
                                                                    "reconstructions.png")


def test_colour_images_are_drawn_in_colour(sweep):
    with Image.open(sweep / REPORT_DIR / "gaussian-tall" / "reconstructions.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    spread = pixels.max(-1) - pixels.min(-1)  # 0 for a grey pixel
    assert (spread > 150).mean() > 0.01  # the data panel's saturated bars and rings


def test_the_report_names_the_classes_and_warns_of_mixed_likelihoods(sweep):
    report = (sweep / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert any("m2-wide/analogies.png" in i for i in images)
    for image in images:
        assert (sweep / image).read_bytes()[:8] == PNG_MAGIC, image
    assert "## Per class (reconstruction MSE" in report and "| class bar | class ring |" in report
    assert "different likelihoods (bernoulli, logistic)" in report
    for name in ("gaussian-tall", "gaussian-wide", "categorical-tall", "m2-wide"):
        assert f"| {name} |" in report


@pytest.mark.parametrize("name", ["categorical-tall", "categorical-wide", "m2-tall", "m2-wide"])
def test_the_sampled_reconstructions_are_of_the_distribution_reconstruct_decodes(sweep, name):
    model = load_checkpoint(sweep / "runs" / name).model
    x = (torch.rand(5, *model.input_shape, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        px = MODE_OBSERVATIONS[model.kind](model, scale(x))
        torch.testing.assert_close(px.mean, model.reconstruct(x))
        sample = px.sample()
    assert sample.shape == x.shape and 0 <= sample.min() and sample.max() <= 1
    if model.likelihood.bernoulli:
        assert set(sample.unique().tolist()) <= {0.0, 1.0}
    else:  # 8-bit levels
        assert torch.equal(sample, (sample * 255).round() / 255)


def test_the_ood_suite_scores_a_colour_logistic_run(sweep):
    from model.bench.ood import run_ood

    run = sweep / "runs" / "gaussian-wide"
    result = run_ood(run, OodConfig(families=("blank", "rotate_90", "impulse"), scores=("iwae", "reconstruction"),
                                    test_subset=20))
    assert result["dataset"] == "folder" and result["datasets"] == []
    for score in ("iwae", "reconstruction"):
        for family in result["families"]:
            assert 0 <= result["scores"][score][family]["auroc"] <= 1


@pytest.mark.parametrize("shape", [(4, 3, HEIGHT, WIDTH), (4, 3, WIDTH, HEIGHT)])
def test_ood_families_keep_shape_dtype_and_range_of_colour_non_square_images(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    for name in FAMILIES:
        out = generate(name, x, seed=1)
        assert out.shape == x.shape and out.dtype == torch.float32, name
        assert 0 <= out.min() and out.max() <= 1, name
    for name in ("binary_noise", "sparse_noise", "impulse"):  # black and white in colour too: channels agree
        out = generate(name, x, seed=1)
        changed = (out != x).any(1)  # pixels the family set
        assert torch.equal(out[:, 0][changed], out[:, 1][changed]) and torch.equal(out[:, 1][changed],
                                                                                  out[:, 2][changed]), name
    # A non-square image is turned, then stretched back as the run's preprocessing would.
    levels = (x * 255).round().to(torch.uint8)
    turned = scale(prepare(levels.rot90(1, dims=(-2, -1)).contiguous(), Preprocessing(shape[1:])))
    assert torch.equal(generate("rotate_90", scale(levels), seed=1), turned)


def test_grey_families_draw_as_they_always_did():
    # One value per pixel is one value per subpixel when C = 1: the course's suite is unchanged.
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(generate("binary_noise", x, 5), (torch.rand(x.shape, generator=generator) < 0.5).float())
    assert torch.equal(generate("rotate_90", x, 5), x.rot90(1, dims=(-2, -1)))


def test_demos_scale_uint8_images_of_any_shape(sweep):
    checkpoint = load_checkpoint(sweep / "runs" / "gaussian-wide")
    model = checkpoint.model
    x = (torch.rand(2, *model.input_shape, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    got = quadrature_log_px(model, x, points=11)
    assert torch.allclose(got, quadrature_log_px(model, scale(x), points=11))
    assert bool(torch.isfinite(got).all()) and bool((got < 0).all())  # log-probabilities of 8-bit images
    a, b = gradient_estimators(model, x[:1], samples=50, seed=0), gradient_estimators(model, scale(x[:1]), samples=50)
    assert a["units"] == b["units"]


def test_one_class_benchmarks_take_a_folder_s_classes(sweep, tmp_path):
    from model.bench.anomaly import cases, run

    folder = str(load_checkpoint(sweep / "runs" / "gaussian-tall").config.data.data_dir)
    config = BenchConfig(benchmarks=("oneclass-folder",), folder=folder, scores=("iwae", "reconstruction"),
                         latent_features=2, hidden=(16,), epochs=1, k=2)
    found = list(cases(config, {}))
    assert [c.name for c in found] == ["class 0", "class 1"]
    assert all(c.train_x.shape[1:] == (3, HEIGHT, WIDTH) and 0 < c.test_anomalous.sum() < len(c.test_x)
               for c in found)
    report = run(config, log=lambda *_: None)
    assert report["summary"]["oneclass-folder"]["cases"] == 2
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(Path(folder).glob("*/*.png"))[:8]):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="oneclass-folder: .* has no labelled training images; a one-class benchmark "
                                        "needs classes: class subfolders"):
        list(cases(BenchConfig(benchmarks=("oneclass-folder",), folder=str(flat)), {}))
    with pytest.raises(DataError, match=r"classes: folder has the labels \[0, 1\], got \[7\]"):
        list(cases(BenchConfig(benchmarks=("oneclass-folder",), folder=folder, classes=(7,)), {}))
