"""Anomaly maps, F1 thresholds and batch prediction: the map's definition (its pixels add up to the
ELBO's reconstruction term), its calibration into percentiles, where it lights up on real defects,
the service's `maps` (at each input's own size, bounded, the scores unchanged) and `vae predict`
giving the service's numbers. One small run on an MVTec-layout folder of real embedded digits with
drawn defects (`vae data make-defects`), trained once per module."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_curve

from model.anomaly.calibration import AnomalyCalibration, F1Threshold
from model.anomaly.heatmap import fit_size, overlay
from model.anomaly.maps import MAPS, anomaly_maps, available_maps, excess_map, gaussian_blur, map_params
from model.cli.main import main
from model.config.train import ModelConfig, TrainConfig
from model.core.noise import RowwiseNoise
from model.data.defects import DefectConfig, make_defects
from model.data.loading import load_data
from model.kinds.gaussian import VariationalAutoencoder
from model.runs.checkpoint import load_checkpoint
from model.runs.predict import read_predictions
from model.runs.train import train
from service.app import create_app
from service.settings import Settings

RUN = dict(dataset="folder", arch="mlp", hidden=(64,), latent_features=8, epochs=4, batch_size=64, eval_k=5,
           calibration_k=5, seed=0, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("defects") / "digits"
    make_defects(DefectConfig(train=800, validation=10, test=10, seed=0), root)
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    return train(TrainConfig.of(**RUN, data_dir=str(folder)), out, progress=False)


@pytest.fixture(scope="module")
def checkpoint(run):
    return load_checkpoint(run)


@pytest.fixture(scope="module")
def client(run, asgi_client):
    return asgi_client(create_app(Settings(model_dir=run.parent, max_map_pixels=48 * 40)))


def b64_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


# --- the map itself --------------------------------------------------------------------------------

def test_the_nll_map_is_the_elbos_reconstruction_term_pixel_by_pixel():
    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 12, 10), 3)
    x = torch.rand(4, 1, 12, 10)
    maps = anomaly_maps(model, x, name="nll", samples=1, sigma=0, noise=RowwiseNoise([7], [4]))
    terms = model.elbo_terms(x, noise=RowwiseNoise([7], [4]))
    assert maps.shape == (4, 12, 10)
    torch.testing.assert_close(maps.flatten(1).sum(1), -terms.log_px, rtol=1e-5, atol=1e-4)
    assert (maps >= 0).all()  # Bernoulli: each pixel's −log p is a cross-entropy


def test_the_excess_map_is_the_nll_map_less_each_pixels_entropy_and_vanishes_where_the_model_is_exact():
    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 6, 5), 2)
    x = torch.rand(3, 1, 6, 5)
    nll = anomaly_maps(model, x, name="nll", sigma=0, noise=RowwiseNoise([1], [3]))
    excess = anomaly_maps(model, x, name="excess", sigma=0, noise=RowwiseNoise([1], [3]))
    entropy = -(x * x.log() + (1 - x) * (1 - x).log()).sum(1)
    torch.testing.assert_close(nll - excess, entropy, rtol=1e-4, atol=1e-4)
    assert (excess >= -1e-5).all()  # a sum of KL divergences
    logits = torch.randn(1, 6, 5)

    class Constant(torch.nn.Module):  # a decoder whose p(x|z) is the same for every z
        def forward(self, z):
            return logits.expand(*z.shape[:-1], 1, 6, 5)

    model.decoder = Constant()
    exact = torch.sigmoid(logits).unsqueeze(0)  # the image the model explains exactly
    torch.testing.assert_close(excess_map(model, exact, samples=2), torch.zeros(1, 6, 5), atol=1e-5, rtol=0)
    logistic = VariationalAutoencoder((1, 6, 5), 2, config=ModelConfig(latent_features=2, likelihood="logistic"))
    assert available_maps(logistic) == ["nll", "reconstruction"]
    with pytest.raises(ValueError, match="likelihood 'logistic'"):
        anomaly_maps(logistic, x, name="excess")


def test_the_reconstruction_map_is_the_squared_error_of_the_reconstruction():
    torch.manual_seed(0)
    model = VariationalAutoencoder((3, 8, 6), 2)
    x = torch.rand(2, 3, 8, 6)
    maps = anomaly_maps(model, x, name="reconstruction", sigma=0)
    torch.testing.assert_close(maps, (model.reconstruct(x) - x).pow(2).sum(1))


def test_smoothing_keeps_the_mass_of_an_interior_peak_and_a_constant_map_constant():
    peak = torch.zeros(1, 15, 13)
    peak[0, 7, 6] = 5.0
    blurred = gaussian_blur(peak, 1.5)
    torch.testing.assert_close(blurred.sum(), torch.tensor(5.0))
    assert blurred[0, 7, 6] == blurred.max() and blurred[0, 7, 6] < 5.0
    torch.testing.assert_close(gaussian_blur(torch.full((2, 4, 3), 2.0), 3.0), torch.full((2, 4, 3), 2.0))
    assert torch.equal(gaussian_blur(peak, 0), peak)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(peak, -1.0)


def test_the_f1_threshold_maximises_f1_as_sklearn_counts_it():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(3, 60))
        values, anomalous = rng.integers(0, 10, n).astype(float), rng.random(n) < 0.4
        if anomalous.all() or not anomalous.any():
            continue
        fit = F1Threshold.fit("s", values, anomalous)
        precision, recall, _ = precision_recall_curve(anomalous, values)
        best = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
        assert fit.f1 == pytest.approx(best)
        flagged = values > fit.threshold  # the stored threshold reproduces the F1 it claims
        assert 2 * (flagged & anomalous).sum() / (flagged.sum() + anomalous.sum()) == pytest.approx(fit.f1)
    with pytest.raises(ValueError, match="normal and anomalous"):
        F1Threshold.fit("s", np.ones(3), np.zeros(3, bool))


def test_a_calibration_written_before_maps_and_f1_still_loads():
    old = {"default": "iwae", "scores": {"iwae": {"score": "iwae", "levels": [0.0, 1.0], "quantiles": [1.0, 2.0],
                                                  "n": 2, "params": {"k": 5}}}}
    calibration = AnomalyCalibration.from_dict(old)
    assert calibration.maps == {} and calibration.f1 == {}
    assert calibration.threshold_for("iwae") == (pytest.approx(1.99), "false_positive_rate", 0.01)
    with pytest.raises(ValueError, match="no F1 threshold"):
        calibration.threshold_for("iwae", "f1")


def test_a_heatmap_is_the_maps_size_in_rgb_and_fits_the_pixel_bound():
    image = torch.randint(0, 256, (1, 30, 20), dtype=torch.uint8)
    heat = overlay(image, torch.linspace(0, 100, 12 * 8).reshape(12, 8))
    assert heat.shape == (3, 12, 8) and heat.dtype == torch.uint8
    assert fit_size((1000, 500), 5000) == (100, 50) and fit_size((10, 20), 5000) == (10, 20)


# --- a trained run -----------------------------------------------------------------------------------

def test_training_calibrates_every_map_and_the_f1_thresholds_on_the_labelled_validation_images(run, checkpoint):
    calibration = checkpoint.calibration
    assert set(calibration.maps) == set(MAPS) == set(available_maps(checkpoint.model))  # a Bernoulli run has all
    assert calibration.maps["excess"].params == map_params("excess", checkpoint.model.input_shape)
    assert set(calibration.f1) == set(calibration.scores)
    f1 = calibration.f1[calibration.default]
    assert (f1.normal, f1.anomalous) == (10, 40)  # validation/good and 4 defect types of 10
    report = json.loads((run / "evaluation.json").read_text())
    assert report["data"]["labelled_validation"]["anomalous"] == 40
    assert report["calibration"]["f1"]["threshold"] == f1.threshold
    # The labelled anomalies choose the default score: the best AUROC on them.
    aurocs = calibration.validation_auroc
    assert set(aurocs) == set(calibration.scores) and aurocs[calibration.default] == max(aurocs.values())
    assert report["calibration"]["default_chosen_by"] == "AUROC on the labelled validation images"


def test_the_map_is_hotter_inside_the_defects_than_around_them(checkpoint):
    data = load_data(checkpoint.config)
    defective = data.test.y != 0
    x, masks = data.test.x[defective], data.test_masks[defective, 0].bool()
    calibration = checkpoint.calibration.maps["excess"]
    percentiles = torch.from_numpy(calibration.percentile(anomaly_maps(
        checkpoint.model, x, name="excess", noise=RowwiseNoise([0], [len(x)]), **calibration.params).numpy()))
    assert percentiles.min() >= 0 and percentiles.max() <= 100
    inside, outside = percentiles[masks].mean(), percentiles[~masks].mean()
    assert inside > outside + 15, (inside, outside)


# --- the service ---------------------------------------------------------------------------------------

def test_without_maps_the_anomaly_response_is_as_before(client, folder):
    png = b64_png(np.asarray(Image.open(next((folder / "test" / "blob").iterdir()))))
    body = client.post("/models/digits/anomaly", json={"images_png": [png], "seed": 0}).json()
    assert not {"maps", "maps_png", "map"} & set(body)
    assert body["threshold_source"] == "f1"  # the run has labelled validation images


def test_maps_come_at_each_inputs_size_within_the_bound_and_leave_the_scores_alone(client, folder, checkpoint):
    digit = np.asarray(Image.open(next((folder / "test" / "scratch").iterdir())))
    big = np.asarray(Image.fromarray(digit).resize((digit.shape[1] * 2, digit.shape[0] * 3)))  # 84 × 56
    images = [b64_png(digit), b64_png(big)]
    plain = client.post("/models/digits/anomaly", json={"images_png": images, "seed": 3}).json()
    mapped = client.post("/models/digits/anomaly", json={"images_png": images, "seed": 3, "maps": True}).json()
    assert mapped["scores"] == plain["scores"] and mapped["is_anomaly"] == plain["is_anomaly"]
    assert mapped["map"]["name"] == "excess" and mapped["map"]["params"] == checkpoint.calibration.maps["excess"].params
    small_shape = list(digit.shape)
    bounded = list(fit_size(big.shape, 48 * 40))  # 84 × 56 is over VAE_MAX_MAP_PIXELS here
    assert mapped["map"]["shapes"] == [small_shape, bounded]
    for values, shape, png in zip(mapped["maps"], mapped["map"]["shapes"], mapped["maps_png"]):
        array = np.asarray(values)
        assert list(array.shape) == shape and array.min() >= 0 and array.max() <= 100
        heat = decoded(png)
        assert heat.mode == "RGB" and [heat.height, heat.width] == shape
    one = {"images_png": images[:1], "seed": 3, "maps": True}  # a request's noise is its own: compare like with like
    both = client.post("/models/digits/anomaly", json=one).json()
    only_png = client.post("/models/digits/anomaly", json={**one, "map_format": "png"}).json()
    assert "maps" not in only_png and only_png["maps_png"] == both["maps_png"]


def test_map_and_threshold_errors_name_what_was_expected(client, folder):
    png = b64_png(np.asarray(Image.open(next((folder / "test" / "good").iterdir()))))
    wrong_map = client.post("/models/digits/anomaly", json={"images_png": [png], "maps": True, "map": "edges"})
    assert wrong_map.status_code == 422 and "calibrated maps" in wrong_map.json()["error"]
    both = client.post("/models/digits/anomaly", json={"images_png": [png], "threshold": "f1",
                                                       "false_positive_rate": 0.05})
    assert both.status_code == 422 and "false_positive_rate" in both.json()["error"]
    rate = client.post("/models/digits/anomaly", json={"images_png": [png], "false_positive_rate": 0.05}).json()
    assert rate["threshold_source"] == "false_positive_rate" and rate["false_positive_rate"] == 0.05


def test_a_run_without_labelled_anomalies_has_no_f1_threshold_to_offer(tiny_run, asgi_client):
    client = asgi_client(create_app(Settings(model_dir=tiny_run.parent)))
    image = [[0.0] * 784]
    default = client.post(f"/models/{tiny_run.name}/anomaly", json={"images": image}).json()
    assert default["threshold_source"] == "false_positive_rate"
    refused = client.post(f"/models/{tiny_run.name}/anomaly", json={"images": image, "threshold": "f1"})
    assert refused.status_code == 422 and "labelled anomalous validation images" in refused.json()["error"]


def test_the_oip_anomaly_map_is_the_rest_map_of_the_same_images(client, checkpoint):
    x = load_data(checkpoint.config).test.x[:2].float() / 255
    rest = client.post("/models/digits/anomaly", json={"images": x.tolist(), "seed": 5, "maps": True,
                                                       "map_format": "numbers"}).json()
    oip = client.post("/v2/models/digits.anomaly/infer", json={
        "inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}],
        "parameters": {"seed": 5, "maps": True}}).json()
    outputs = {o["name"]: o for o in oip["outputs"]}
    assert outputs["anomaly_map"]["shape"] == [2, *checkpoint.model.input_shape[1:]]
    np.testing.assert_allclose(np.asarray(outputs["anomaly_map"]["data"]).reshape(2, *x.shape[2:]),
                               np.asarray(rest["maps"]), atol=1e-3)
    np.testing.assert_allclose(outputs["scores"]["data"], rest["scores"], rtol=1e-6)


# --- vae predict ---------------------------------------------------------------------------------------

def test_predict_gives_the_services_numbers_lists_bad_files_and_writes_heatmaps(run, folder, client, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = sorted((folder / "test" / "patch").iterdir())[:3] + sorted((folder / "test" / "good").iterdir())[:2]
    for path in files:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--maps", "--quiet"]) == 0
    assert "5 images" in capsys.readouterr().out
    rows = {row["path"]: row for row in read_predictions(out / "predictions.csv")}
    assert set(rows) == {str(inputs / p.name) for p in files} | {str(inputs / "broken.png"), str(inputs / "notes.txt")}
    assert rows[str(inputs / "broken.png")]["error"] and rows[str(inputs / "notes.txt")]["error"]
    for path in files:
        row = rows[str(inputs / path.name)]
        served = client.post("/models/digits/anomaly", json={
            "images_png": [base64.b64encode(path.read_bytes()).decode()], "seed": 0}).json()
        assert row["score"] == pytest.approx(served["scores"][0], rel=1e-5)
        assert row["percentile"] == pytest.approx(served["percentiles"][0], abs=1e-3)
        assert row["is_anomaly"] == served["is_anomaly"][0]
        assert row["threshold"] == pytest.approx(served["threshold"], rel=1e-5)
        assert row["threshold_source"] == served["threshold_source"] == "f1"
        heat = Image.open(out / row["map"])
        assert heat.mode == "RGB" and heat.size == Image.open(path).size
    with open(out / "predictions.csv", newline="") as f:
        assert csv.DictReader(f).fieldnames[:6] == ["path", "score", "percentile", "is_anomaly", "threshold",
                                                     "threshold_source"]


def test_predict_refuses_a_bad_false_positive_rate_and_paths_with_no_images(run, tmp_path, capsys):
    assert main(["predict", str(run), str(tmp_path), "--out", str(tmp_path / "o"), "--false-positive-rate", "2"]) == 2
    assert "expected a number in (0, 1)" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(run), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "expected image files" in capsys.readouterr().err


# --- labelled validation images from --validation-dir -------------------------------------------------

def test_any_folder_takes_labelled_validation_images_from_validation_dir(folder, tmp_path):
    import shutil

    from model.data.base import DataError

    flat = tmp_path / "parts"
    shutil.copytree(folder / "train" / "good", flat)
    config = TrainConfig.of(dataset="folder", data_dir=str(flat), validation_dir=str(folder / "validation"))
    data = load_data(config)
    labelled = data.labelled_validation
    assert data.info["layout"] == "flat" and len(labelled) == 50 and int(labelled.y.sum()) == 40
    assert data.info["labelled_validation"] == {"normal": 10, "anomalous": 40, "from": str(folder / "validation")}
    assert data.class_names is None  # the validation folders' names are not classes of the training data
    with pytest.raises(DataError, match="its own validation/ folder"):
        load_data(TrainConfig.of(dataset="folder", data_dir=str(folder), validation_dir=str(folder / "validation")))
    with pytest.raises(DataError, match="expected subfolders good/"):
        load_data(TrainConfig.of(dataset="folder", data_dir=str(flat), validation_dir=str(folder / "validation" / "blob")))
    with pytest.raises(Exception, match="validation_dir"):
        TrainConfig.of(dataset="embedded", validation_dir=str(folder / "validation"))
