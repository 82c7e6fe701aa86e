"""`vae bench defects`: its metrics on cases whose answer is known, its baselines, the CI preset end
to end (a working pipeline passes its floors, broken ones would not), and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.anomaly.maps import default_map, maps_of_split
from model.bench.defects import (
    QUICK, QUICK_FLOORS, DefectBenchConfig, _run_config, mean_image_baseline, nearest_image_baseline,
    quick_failures,
)
from model.bench.metrics import aupro, f1_at, f1_max, image_metrics, pixel_auroc, pro_curve, regions
from model.cli.main import main
from model.config.base import ConfigError
from model.data.loading import load_data
from model.io.atomic import write_json
from model.runs.checkpoint import load_checkpoint


def blob_masks(n=6, size=16, seed=0) -> np.ndarray:
    """Masks (n, size, size) with one to three rectangles each, and one empty (a good image)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 3, size=2)
            h, w = rng.integers(1, 4, size=2)
            mask[y:y + h, x:x + w] = True
    return masks


def direct_aupro(maps, masks, limit=0.3) -> float:
    """AUPRO by its definition: every distinct map value as a threshold, FPR over normal pixels,
    PRO the mean over regions of the share flagged, trapezoids up to `limit` (interpolated there)."""
    labels = regions(masks)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        fpr = flagged[labels == 0].mean()
        pro = np.mean([flagged[labels == r].mean() for r in range(1, labels.max() + 1)])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (limit - x0) / (x1 - x0) * (y1 - y0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


# --- metrics --------------------------------------------------------------------------------------

def test_a_perfect_map_scores_one_an_inverted_map_zero_and_a_constant_map_chance():
    masks = blob_masks()
    noise = np.random.default_rng(1).random(masks.shape) * 0.5
    perfect = masks + noise  # every defective pixel above every normal one
    assert pixel_auroc(perfect, masks) == 1.0 and aupro(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(-perfect, masks) == 0.0 and aupro(-perfect, masks) == pytest.approx(0.0)
    constant = np.zeros(masks.shape)
    # One threshold flags everything: the curve is the diagonal, whose area to 0.3 is 0.3² / 2.
    assert pixel_auroc(constant, masks) == 0.5 and aupro(constant, masks) == pytest.approx(0.15)


def test_aupro_weighs_each_region_alike_whatever_its_size():
    """A 1-pixel region found at once and a 9-pixel region found last: PRO is 1/2 at every FPR below
    1, so AUPRO is 1/2, where the pixel-level recall would be 1/10."""
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 4:7, 4:7] = True
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 4:7, 4:7] = 0.0
    assert aupro(maps, masks) == pytest.approx(0.5)
    fpr, pro = pro_curve(maps, masks)
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0] and pro.tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0])


def test_aupro_matches_its_definition_on_random_maps_with_ties():
    masks = blob_masks(n=5, size=12, seed=3)
    rng = np.random.default_rng(4)
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 1)  # rounded: many ties
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, limit) == pytest.approx(direct_aupro(maps, masks, limit), abs=1e-12)


def test_regions_are_8_connected_and_numbered_across_images():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region, as OpenCV labels it
    masks[0, 3, 3] = True
    masks[1, 0, 3] = True
    labels = regions(masks)
    assert labels[0, 0, 0] == labels[0, 1, 1] and sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]


def test_f1_max_is_the_best_f1_over_every_threshold_and_f1_at_flags_above_it():
    rng = np.random.default_rng(5)
    anomalous = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.3 * anomalous, 1)  # ties

    def f1(flagged):
        return 2 * (flagged & anomalous).sum() / (flagged.sum() + anomalous.sum())

    assert f1_max(scores, anomalous) == pytest.approx(max(f1(scores >= t) for t in np.unique(scores)))
    assert f1_at(scores, anomalous, 0.55) == pytest.approx(f1(scores > 0.55))
    with pytest.raises(ValueError, match="expected normal and anomalous images, got 60 normal and 0 anomalous"):
        image_metrics(scores, np.zeros(60, bool))


# --- baselines ------------------------------------------------------------------------------------

def test_the_baselines_give_a_zero_map_on_their_own_reference_and_the_distance_as_score():
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (40, 1, 10, 12), dtype=torch.uint8, generator=generator)
    changed = train[[7]].clone()
    changed[0, 0, 2:4, 3:6] = 255 - changed[0, 0, 2:4, 3:6]  # six pixels inverted
    x = torch.cat([train[[3, 17]], changed])
    maps, scores, nearest = nearest_image_baseline(train, x, sigma=0.0)
    assert nearest.tolist() == [3, 17, 7]
    assert maps[:2].abs().max() == 0 and scores[:2].tolist() == [0.0, 0.0]
    assert set(map(tuple, torch.nonzero(maps[2]).tolist())) == {(r, c) for r in (2, 3) for c in (3, 4, 5)}
    difference = (changed.float() - train[7].float()) / 255
    assert scores[2].item() == pytest.approx(difference.norm().item(), rel=1e-5)

    mean = train.double().mean(0, keepdim=True) / 255  # a float image in [0, 1]: scored as it is
    maps, scores = mean_image_baseline(train, torch.cat([mean.float(), x.float() / 255]), sigma=0.0)
    assert maps[0].abs().max() < 1e-6 and scores[0] < 1e-9
    assert scores[1:].tolist() == pytest.approx(maps[1:].flatten(1).sum(1).tolist(), rel=1e-5)


# --- the CI preset end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "defects.json"
    code = main(["bench", "defects", "--quick", "--threads", "1", "--out", str(out)])
    return code, out


def test_quick_bench_measures_every_method_on_every_type_and_passes_its_floors(quick_bench, capsys):
    """`vae bench defects --quick` as CI runs it: the report, the table, and the floors met."""
    code, out = quick_bench
    assert code == 0
    report = json.loads(out.read_text())
    run = report["run"]
    calibrated = load_checkpoint(run["dir"]).calibration
    methods = report["methods"]
    assert set(methods) == {*(f"score/{s}" for s in calibrated.scores), "map/excess", "map/nll",
                            "map/reconstruction", "baseline/mean_image", "baseline/nearest_image"}
    assert run["default_map"] == default_map(calibrated.maps) == "excess"  # a Bernoulli run's
    assert [k for k, m in methods.items() if m["default"]] == [f"score/{calibrated.default}", "map/excess"]
    types = report["data"]["types"]
    assert sorted(types) == ["blob", "missing", "patch", "scratch"]
    for key, method in methods.items():
        assert list(method["metrics"]) == ["overall", *types]
        for row in method["metrics"].values():
            assert all(0 <= v <= 1 for v in row.values())
            assert ("aupro" in row) == (not key.startswith("score/"))
            assert ("f1_at_f1" in row) == key.startswith("score/")  # the run's thresholds: its scores only
    assert quick_failures(report, QUICK_FLOORS) == []
    table = out.with_suffix(".md").read_text()
    assert "#### overall (100 test images, 80 defective)" in table and "baseline: nearest training image" in table
    assert set(report["comparison"]) == {"auroc", "f1_max", "aupr", "pixel_auroc", "aupro"}
    assert report["data"]["made_by"]["config"]["classes"] == [1]  # make-defects' own record of the folder


def test_quick_floors_fail_a_broken_pipeline(quick_bench):
    """The same run's default map, scored against shuffled masks, random maps or shuffled labels,
    falls below the floors that the working pipeline clears."""
    _, out = quick_bench
    report = json.loads(out.read_text())
    checkpoint = load_checkpoint(report["run"]["dir"])
    DEFAULT_MAP = report["run"]["default_map"]
    data = load_data(_run_config(checkpoint.config, QUICK, Path(report["data"]["data_dir"])))
    torch.manual_seed(0)
    maps = maps_of_split(checkpoint.model, data.test.x, name=DEFAULT_MAP,
                         **checkpoint.calibration.maps[DEFAULT_MAP].params).numpy()
    masks = data.test_masks[:, 0].numpy().astype(bool)
    default_map = report["methods"][f"map/{DEFAULT_MAP}"]["metrics"]["overall"]
    assert pixel_auroc(maps, masks) == pytest.approx(default_map["pixel_auroc"])  # the report's own numbers
    rng = np.random.default_rng(0)
    labels = data.test.y.numpy()
    swapped = masks.copy()  # each image gets the mask of another image of its type
    for label in np.unique(labels):
        same = np.flatnonzero(labels == label)
        swapped[same] = masks[np.roll(same, 1)]
    for broken_maps, broken_masks in ((maps, swapped), (rng.random(maps.shape), masks)):
        broken = json.loads(out.read_text())
        broken["methods"][f"map/{DEFAULT_MAP}"]["metrics"]["overall"].update(
            pixel_auroc=pixel_auroc(broken_maps, broken_masks), aupro=aupro(broken_maps, broken_masks))
        assert quick_failures(broken, QUICK_FLOORS), broken["methods"][f"map/{DEFAULT_MAP}"]["metrics"]["overall"]
    default_score = report["methods"][f"score/{checkpoint.calibration.default}"]["metrics"]["overall"]
    shuffled = image_metrics(maps.reshape(len(maps), -1).max(1), rng.permutation(labels != 0))["auroc"]
    assert shuffled < QUICK_FLOORS["image_auroc"] <= default_score["auroc"]


def test_a_run_evaluated_again_with_run_measures_exactly_what_its_bench_measured(quick_bench, tmp_path,
                                                                                monkeypatch):
    """--run scores as the run was calibrated, with the same seed: the same numbers, nothing trained;
    the report is saved once the model is ready and again after each method."""
    import model.cli.bench as cli

    _, out = quick_bench
    report = json.loads(out.read_text())
    again = tmp_path / "again.json"
    saved = []
    monkeypatch.setattr(cli, "write_json", lambda path, obj: (saved.append(len(obj["methods"])),
                                                              write_json(path, obj)))
    assert main(["bench", "defects", "--run", report["run"]["dir"], "--data-dir", report["data"]["data_dir"],
                 "--data-workers", "0", "--device", "cpu", "--threads", "1", "--out", str(again)]) == 0
    measured = json.loads(again.read_text())
    assert not measured["run"]["trained_by_bench"] and "train" not in measured["seconds"]
    assert {k: m["metrics"] for k, m in measured["methods"].items()} == \
        {k: m["metrics"] for k, m in report["methods"].items()}
    assert not (tmp_path / "again-run").exists()
    n = len(report["methods"])
    assert saved == [*range(n + 1), n]


# --- errors ---------------------------------------------------------------------------------------

def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_a_folder_not_in_the_mvtec_layout_is_refused_naming_what_was_expected_and_found(tmp_path, capsys):
    root = tmp_path / "digits"
    for part in ("train", "test"):
        write_png(root / part / "3" / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["bench", "defects", "--data-dir", str(root), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert (f"vae bench: error: --data-dir {root}: expected the MVTec AD layout: train/good/ (normal images), "
            "test/<good|type>/ and ground_truth/<type>/<name>_mask.png; found no train/good/ or ground_truth/ "
            "(it holds test/, train/)") in err
    assert not (tmp_path / "r.json").exists()


def test_an_mvtec_folder_without_masks_for_a_type_is_refused_before_training(tmp_path, capsys):
    root = tmp_path / "parts"
    rng = np.random.default_rng(0)
    for path in ("train/good/0.png", "train/good/1.png", "test/good/2.png", "test/scratch/3.png"):
        write_png(root / path, rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (root / "ground_truth").mkdir()
    assert main(["bench", "defects", "--data-dir", str(root), "--data-workers", "0", "--epochs", "1",
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "expected defect masks ground_truth/<type>/<name>_mask.png for the images of test/<type>/, found none " \
           "for ['scratch']" in err
    assert not (tmp_path / "r-run").exists()  # nothing was trained


def test_flags_that_contradict_each_other_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"epochs: expected no training settings with --run r \(the run is already "
                                          r"trained\), got epochs=3"):
        DefectBenchConfig(run="r", epochs=3)
    assert main(["bench", "defects", "--quick", "--data-dir", str(tmp_path)]) == 2
    assert "--quick draws its own folder and trains its own model; expected no --data-dir" in capsys.readouterr().err
    assert main(["bench", "defects"]) == 2
    assert "expected --data-dir DIR, a folder in the MVTec AD layout" in capsys.readouterr().err
