"""Folders of a user's own images: every layout, grey and colour, other sizes, bad files, the
streamed path, and the same preprocessing in training and serving.

The folders are written from real digits (the embedded MNIST set), coloured, resized and saved as
PNG and JPEG into temporary directories.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from model.config.train import TrainConfig
from model.core.labels import UNLABELLED
from model.core.preprocess import Preprocessing, prepare, preprocess
from model.data.base import DataError
from model.data.export import export_folder
from model.data.folder import FolderWarning
from model.data.loading import load_data, load_raw
from model.io.images import decode_image
from model.runs.checkpoint import load_checkpoint
from model.runs.train import TrainingError, train


@pytest.fixture(scope="module")
def digits():
    """120 real digits (uint8 28×28) and their labels."""
    train, _ = load_raw("embedded", None)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:120]
    return (train.x[pick, 0] * 255).round().to(torch.uint8).numpy(), train.y[pick].numpy()


def colour(digit: np.ndarray, label: int, size=(32, 40)) -> Image.Image:
    """A digit tinted by its label and resized to `size` (W, H)."""
    tint = np.array([(label * 37) % 256, (label * 91) % 256, 255 - (label * 53) % 256]) / 255
    rgb = (digit[..., None].astype(np.float64) * tint).round().astype(np.uint8)
    return Image.fromarray(rgb, "RGB").resize(size, Image.BILINEAR)


def write(image: Image.Image, path, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def folder_config(path, **values) -> TrainConfig:
    return TrainConfig.of(**{"dataset": "folder", "data_dir": str(path), "data_workers": 0, **values})


def quiet_load(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FolderWarning)
        return load_data(config)


def test_class_subfolders_of_colour_png_and_jpeg_keep_their_names_and_size(tmp_path, digits):
    images, labels = digits
    names = {0: "circle", 1: "stick"}
    for i, (d, y) in enumerate(zip(images, labels)):
        if y in names:
            write(colour(d, y), tmp_path / names[y] / f"{i}.{'jpg' if i % 2 else 'png'}")
    data = quiet_load(folder_config(tmp_path))
    assert data.info["layout"] == "classes" and data.class_names == ("circle", "stick")
    assert data.train.x.shape[1:] == (3, 40, 32) and data.train.x.dtype == torch.uint8
    n = int(np.isin(labels, [0, 1]).sum())
    assert len(data.train) + len(data.validation) + len(data.test) == n
    assert set(torch.cat([data.train.y, data.test.y]).tolist()) == {0, 1}


def test_flat_folder_is_unlabelled_and_its_test_split_does_not_follow_the_run_seed(tmp_path, digits):
    for i, d in enumerate(digits[0][:40]):
        write(Image.fromarray(d, "L"), tmp_path / f"img{i:03d}.png")
    a, b = quiet_load(folder_config(tmp_path, seed=1)), quiet_load(folder_config(tmp_path, seed=2))
    assert a.info["layout"] == "flat" and a.train.x.shape[1:] == (1, 28, 28)
    assert (a.train.y == UNLABELLED).all() and len(a.test) == round(0.2 * 40)
    assert torch.equal(a.test.x, b.test.x)  # the test images are the folder's, not the seed's
    assert not torch.equal(a.validation.x, b.validation.x)
    with pytest.raises(TrainingError, match=r"needs at least two classes.*put the images in class subfolders"):
        train(folder_config(tmp_path, kind="m2", epochs=1), tmp_path / "m2", progress=False, data=a)


def test_the_most_common_size_and_grey_are_the_defaults_and_flags_override_them(tmp_path, digits):
    for i, d in enumerate(digits[0][:12]):
        size = (20, 30) if i < 9 else (50, 50)  # (W, H): nine 20×30, three 50×50
        write(Image.fromarray(d, "L").resize(size), tmp_path / f"{i:02d}.png")
    with pytest.warns(FolderWarning, match=r"3 of 12 images are not 20×30 and were resized"):
        data = load_data(folder_config(tmp_path))
    assert data.train.x.shape[1:] == (1, 30, 20)
    data = quiet_load(folder_config(tmp_path, image_size=(16, 24), channels=3))
    assert data.train.x.shape[1:] == (3, 16, 24)
    # One colour image makes the whole folder colour.
    write(colour(digits[0][0], 3, (20, 30)), tmp_path / "zz.png")
    assert quiet_load(folder_config(tmp_path)).train.x.shape[1] == 3


def test_train_test_and_mvtec_layouts(tmp_path, digits):
    images, labels = digits
    for i, d in enumerate(images[:30]):
        write(Image.fromarray(d, "L"), tmp_path / "tt" / ("train" if i < 20 else "test") / str(labels[i]) / f"{i}.png")
    data = quiet_load(folder_config(tmp_path / "tt"))
    assert data.info["layout"] == "train-test" and len(data.test) == 10

    root = tmp_path / "part"
    for i, d in enumerate(images[:20]):
        write(Image.fromarray(d, "L"), root / "train" / "good" / f"{i:03d}.png")
    for i, d in enumerate(images[20:26]):
        write(Image.fromarray(d, "L"), root / "test" / "good" / f"{i:03d}.png")
    for i, d in enumerate(images[26:30]):
        scratched = d.copy()
        scratched[10:14, :] = 255
        write(Image.fromarray(scratched, "L"), root / "test" / "scratch" / f"{i:03d}.png")
        mask = np.zeros_like(d)
        mask[10:14, :] = 255
        write(Image.fromarray(mask, "L"), root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    write(Image.fromarray(np.zeros((28, 28), np.uint8)), root / "ground_truth" / "scratch" / "999_mask.png")
    with pytest.warns(FolderWarning, match=r"a mask without its image .*999_mask\.png"):
        data = load_data(folder_config(root))
    assert data.info["layout"] == "mvtec" and data.class_names == ("good", "scratch")
    assert len(data.train) + len(data.validation) == 20 and len(data.test) == 10
    assert data.test_masks.shape == (10, 1, 28, 28)
    defect = data.test.y == 1
    # Each defect image has its mask (rows 10..13), each good one an empty mask.
    assert (data.test_masks[defect][:, 0, 10:14].all()) and data.test_masks[defect].sum() == 4 * 4 * 28
    assert data.test_masks[~defect].sum() == 0
    assert any("999_mask" in f["file"] for f in data.info["ignored_files"])


def test_bad_files_are_named_counted_and_never_silently_dropped(tmp_path, digits):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="found none .*it is empty"):
        load_data(folder_config(empty))
    with pytest.raises(DataError, match="no such directory"):
        load_data(folder_config(tmp_path / "missing"))

    root = tmp_path / "mixed"
    d = digits[0]
    write(Image.fromarray(d[0], "L"), root / "grey.png")
    write(colour(d[1], 1, (28, 28)).convert("RGBA"), root / "rgba.png")
    write(colour(d[2], 2, (28, 28)).convert("P"), root / "palette.png")
    write(Image.fromarray(d[3].astype(np.uint16) * 257), root / "sixteen.png")
    write(colour(d[4], 4, (28, 28)), root / "photo.tif")
    write(colour(d[5], 5, (28, 28)), root / "photo.bmp")
    (root / "readme.txt").write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(d[6], "L").save(good, "PNG")
    (root / "truncated.png").write_bytes(good.getvalue()[:60])
    (root / "fake.jpg").write_bytes(b"this is no jpeg")
    with pytest.warns(FolderWarning) as caught:
        data = load_data(folder_config(root))
    messages = "\n".join(str(w.message) for w in caught)
    assert "readme.txt" in messages and "truncated.png" in messages and "fake.jpg" in messages
    assert "alpha channel dropped" in messages and "palette expanded" in messages and "scaled to 8 bits" in messages
    total = len(data.train) + len(data.validation) + len(data.test)
    assert total == 6 and data.train.x.shape[1] == 3
    skipped = {f["file"].rsplit("/", 1)[-1] for f in data.info["skipped_files"]}
    assert skipped == {"truncated.png", "fake.jpg"}
    assert [f["file"].rsplit("/", 1)[-1] for f in data.info["ignored_files"]] == ["readme.txt"]
    assert data.info["converted"]["alpha channel dropped"] == 1

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"garbage")
    (unreadable / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of its 2 image files can be read: a\.png, b\.png"):
        load_data(folder_config(unreadable))


def test_training_and_serving_preprocess_a_file_to_the_same_tensor(tmp_path, digits):
    """The same JPEG, read by the folder loader at training time and decoded from its bytes as the
    service does (decode_image + preprocess), gives identical pixels."""
    images, labels = digits
    for i in range(10):
        write(colour(images[i], labels[i], (48, 36)), tmp_path / "data" / f"{i:02d}.jpg", "JPEG")
    config = folder_config(tmp_path / "data", image_size=(20, 24), seed=0)
    data = quiet_load(config)
    everything = torch.cat([data.train.x, data.validation.x, data.test.x])
    preprocessing = Preprocessing((3, 20, 24), "bilinear", True)
    for i in range(10):
        served = preprocess(decode_image((tmp_path / "data" / f"{i:02d}.jpg").read_bytes()).pixels, preprocessing)
        matches = [(torch.equal(served, x.float() / 255)) for x in everything]
        assert sum(matches) == 1, f"image {i} matches {sum(matches)} loaded images"


def test_a_folder_over_the_memory_budget_streams_from_a_cache_with_the_same_images(tmp_path, digits, monkeypatch):
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    for i, (d, y) in enumerate(zip(*digits)):
        write(colour(d, y, (20, 16)), tmp_path / "data" / str(y) / f"{i:03d}.png")
    config = folder_config(tmp_path / "data", memory_budget=0, data_workers=2)
    streamed = quiet_load(config)
    assert streamed.info["streamed"] and streamed.train.streamed
    cache = list((tmp_path / "cache" / "folders").glob("*/images.npy"))
    assert len(cache) == 1
    total = len(streamed.train) + len(streamed.validation) + len(streamed.test)
    assert np.load(cache[0], mmap_mode="r").shape == (total, 3, 16, 20)  # every decoded image, once
    again = quiet_load(config)  # from the cache: the same images without decoding
    assert torch.equal(again.train.x, streamed.train.x) and torch.equal(again.test.x, streamed.test.x)
    in_memory = quiet_load(config.replace(memory_budget=4096))
    assert not in_memory.info["streamed"]
    # The same image set either way (the streamed path draws its validation images before decoding).
    def rows(bundle):
        x = torch.cat([bundle.train.x, bundle.validation.x, bundle.test.x]).flatten(1)
        return sorted(map(bytes, x.numpy()))
    assert rows(streamed) == rows(in_memory)
    assert torch.equal(streamed.test.x, in_memory.test.x)
    run = train(config.replace(epochs=1, hidden=(16,), conv_channels=(8,), latent_features=2, eval_k=3,
                               calibration_k=3, device="cpu"), tmp_path / "run", progress=False, data=streamed)
    assert json.loads((run / "evaluation.json").read_text())["data"]["streamed"] is True


def test_an_exported_data_set_trains_exactly_as_the_built_in_loader(tmp_path):
    counts = export_folder(TrainConfig.of(dataset="embedded", classes=(0, 1)).data, tmp_path / "export")
    assert counts == {"train": 800, "test": 200}  # 500 digits per class, 100 of them test images
    tiny = dict(arch="mlp", classes=(0, 1), hidden=(16,), latent_features=2, epochs=1, batch_size=128,
                train_subset=300, eval_k=3, calibration_k=3, seed=5, device="cpu")
    built_in = TrainConfig.of(dataset="embedded", **tiny)
    exported = folder_config(tmp_path / "export", **tiny)
    a, b = load_data(built_in), quiet_load(exported)
    for split in ("train", "validation", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)
    run_a = train(built_in, tmp_path / "a", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FolderWarning)
        run_b = train(exported, tmp_path / "b", progress=False)
    metrics = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0]) for run in (run_a, run_b)]
    assert metrics[0]["train"] == metrics[1]["train"] and metrics[0]["validation"] == metrics[1]["validation"]
    weights = [load_checkpoint(run).model.state_dict() for run in (run_a, run_b)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(DataError, match="expected a new or empty folder"):
        export_folder(TrainConfig.of(dataset="embedded").data, tmp_path / "export")


def test_prepare_converts_channels_like_pil_and_resizes_to_the_shape():
    rgb = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = prepare(rgb, Preprocessing((1, 9, 7)))
    pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB").convert("L"))
    assert torch.equal(grey[0], torch.from_numpy(pil.copy()))
    for mode in ("bilinear", "bicubic", "nearest", "area"):
        out = prepare(rgb, Preprocessing((3, 4, 11), mode))
        assert out.shape == (3, 4, 11) and out.dtype == torch.uint8
    assert torch.equal(prepare(grey, Preprocessing((3, 9, 7)))[2], grey[0])


def test_a_relative_data_dir_is_recorded_absolute_and_resumes_under_its_relative_name(tmp_path, digits, monkeypatch):
    from model.cli.main import main

    for i, (digit, label) in enumerate(zip(*digits)):
        if i < 40:
            write(colour(digit, label), tmp_path / "images" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    flags = ["train", "--dataset", "folder", "--data-dir", "images", "--arch", "mlp", "--hidden", "16",
             "--batch-size", "16", "--eval-k", "2", "--calibration-k", "2", "--data-workers", "0", "--quiet"]
    assert main([*flags, "--epochs", "1", "--out", "run"]) == 0
    recorded = TrainConfig.load(tmp_path / "run" / "config.json").data.data_dir
    assert recorded == str((tmp_path / "images").resolve())
    monkeypatch.chdir(tmp_path / "run")  # another working directory: the run still finds its images
    assert load_data(TrainConfig.load("config.json")).info["layout"] == "flat"
    monkeypatch.chdir(tmp_path)
    assert main([*flags, "--epochs", "2", "--out", "run", "--resume"]) == 0
