"""Plots: every PNG of a run is written and readable; the numbers behind them are right."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from model import TrainConfig
from model.runs.checkpoint import load_model
from model.cli.main import main
from model.data.base import DataBundle, Split
from model.data.loading import load_data
from model.analysis.figures import image_grid
from model.analysis.plots import GAUSSIAN_PLOTS, plot_run, unit_statistics
from model.analysis.sweep_plots import plot_overlaid_curves, plot_rate_distortion
from model.runs.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = dict(hidden=(32,), latent_features=2, epochs=2, batch_size=128, train_subset=300,
            eval_k=4, calibration_k=4, seed=3)


@pytest.fixture(scope="module")
def data():
    return load_data(TrainConfig.of(**TINY))


@pytest.fixture(scope="module")
def run(tiny_run):
    """The session's tiny two-unit run (tests/conftest.py): plots only read it."""
    return tiny_run


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_image_grid_places_each_image_in_row_major_order():
    images = torch.stack([torch.full((1, 3, 2), float(i) / 10) for i in range(5)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (3 * 4 + 1, 2 * 3 + 1)
    # image i sits at row i // 2, column i % 2, behind one pixel of padding
    for i in range(5):
        r, c = divmod(i, 2)
        block = grid[1 + r * 4: 1 + r * 4 + 3, 1 + c * 3: 1 + c * 3 + 2]
        assert np.allclose(block, i / 10)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\) with C = 1 or 3, got \(5, 3, 2\)"):
        image_grid(images[:, 0], nrow=2)
    with pytest.raises(ValueError, match=r"got \(5, 2, 3, 2\)"):
        image_grid(images.expand(5, 2, 3, 2), nrow=2)


def test_image_grid_keeps_the_colours_of_rgb_images_of_any_size():
    # 3 images of 4 x 5 pixels, each one colour: (R, G, B) = (i, 1 - i, 0.5) / 2
    colours = torch.tensor([[i / 2, 1 - i / 2, 0.5] for i in range(3)])
    images = colours[:, :, None, None].expand(3, 3, 4, 5)
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    for i in range(3):
        r, c = divmod(i, 2)
        block = grid[1 + r * 5: 1 + r * 5 + 4, 1 + c * 6: 1 + c * 6 + 5]
        assert np.allclose(block, colours[i].numpy())
    # grid lines look alike in both: grey grids are drawn with the reversed grey colormap, RGB as they are
    grey = image_grid(images[:, :1], nrow=2, pad=1)
    assert np.allclose(grid[0], 1 - grey[0, :, None])


def test_a_lone_image_is_framed_like_the_others():
    grid = image_grid(torch.full((1, 1, 3, 2), 0.5), nrow=4, pad=1)
    assert grid.shape == (5, 4) and np.allclose(grid[1:4, 1:3], 0.5)
    assert np.allclose(grid[0], image_grid(torch.full((2, 1, 3, 2), 0.5), nrow=2)[0, 0])


def test_vae_plot_writes_every_plot_of_a_two_unit_run(run, tmp_path, capsys):
    assert main(["plot", str(run), "--out", str(tmp_path), "--images", "200"]) == 0
    written = {Path(line).stem for line in capsys.readouterr().out.split()}
    assert written == set(GAUSSIAN_PLOTS)
    for name in GAUSSIAN_PLOTS:
        assert _is_png(tmp_path / f"{name}.png"), name


def test_a_colour_run_of_non_square_images_draws_every_plot(tmp_path):
    x = torch.rand(96, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.arange(96) % 3
    data = DataBundle(Split(x[48:], y[48:]), Split(x[:24], y[:24]), Split(x[24:48], y[24:48]), "none")
    config = TrainConfig.of(hidden=(8,), latent_features=2, epochs=1, batch_size=32, eval_k=2, calibration_k=2,
                            device="cpu")
    run = train(config, tmp_path / "colour", data=data, progress=False)
    written = plot_run(run, data=data, images=24)
    assert {p.stem for p in written} == set(GAUSSIAN_PLOTS) and all(_is_png(p) for p in written)


def test_more_latent_units_draw_a_projection_and_no_manifold(tmp_path, data):
    run = train(TrainConfig.of(**{**TINY, "latent_features": 3, "epochs": 1}), tmp_path / "three", data=data,
                progress=False)
    written = plot_run(run, data=data, tsne=True, images=120)
    names = {p.stem for p in written}
    assert "manifold" not in names and {"latent", "unit_kl", "interpolations"} <= names
    assert all(_is_png(p) and p.parent == run / "plots" for p in written)


def test_unit_kl_sums_to_the_analytic_kl(run, data):
    model, _ = load_model(run)
    x = data.test.x[:50]
    stats = unit_statistics(model, x)
    encoded = model.encode(x)
    expected = kl_divergence(Normal(encoded["mu"], encoded["sigma"]), Normal(0.0, 1.0)).mean(0)
    assert np.allclose(stats["kl"], expected.detach().numpy(), atol=1e-5)
    assert np.allclose(stats["mean_variance"], encoded["mu"].var(0).detach().numpy(), atol=1e-6)


def test_sweep_plots_are_written(run, tmp_path):
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert _is_png(plot_overlaid_curves({"a": metrics, "b": metrics}, tmp_path / "curves.png"))
    assert _is_png(plot_rate_distortion({"a": (3.0, 120.0), "b": (10.0, 100.0)}, tmp_path / "rd.png"))


def test_unknown_plot_names_are_refused(run, data):
    with pytest.raises(ValueError, match=r"unknown plots \['histogram'\]; expected some of"):
        plot_run(run, data=data, only=["histogram"])
