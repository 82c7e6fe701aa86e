"""`vae predict`: anomaly scores (and maps) of files and folders of images, as the service gives them.

Every image is decoded and preprocessed as the service decodes an upload (`model.io.images.decode_image`,
then `model.core.preprocess.preprocess` with the run's recorded preprocessing) and scored as a
one-image request with the seed (`model.anomaly.predict`), so a file's row equals the service's
answer for that file sent alone with the same seed. Unreadable files are listed, not fatal.

Output: OUT/predictions.csv (path, score, percentile, is_anomaly, threshold, threshold_source; the
skipped files with their error), and with maps OUT/maps/<n>_<name>.png, the heatmap over each image
at its own size (at most `max_map_pixels`), the file named in the csv's `map` column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.anomaly.heatmap import at_image_size, overlay
from model.anomaly.predict import choose_map, read_scores, score_images
from model.core.noise import RowwiseNoise
from model.core.preprocess import preprocess
from model.io.atomic import write_bytes
from model.io.images import IMAGE_SUFFIXES, ImageError, decode_image, encode_png
from model.runs.checkpoint import Checkpoint

COLUMNS = ("path", "score", "percentile", "is_anomaly", "threshold", "threshold_source", "score_name", "map",
           "error")
MAX_MAP_PIXELS = 512 * 512  # the service's VAE_MAX_MAP_PIXELS default


@dataclass(frozen=True)
class PredictOptions:
    score: str | None = None  # default: the run's
    threshold: str | None = None  # "f1" | "false_positive_rate" | None (as the service)
    false_positive_rate: float | None = None
    maps: bool = False
    map: str | None = None
    seed: int = 0
    batch_size: int = 64
    max_map_pixels: int = MAX_MAP_PIXELS


def collect(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files named or found (recursively, sorted) under `paths`, and the paths skipped with why."""
    files, skipped = [], []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(given).parts))
            files += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [(p, f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})") for p in found
                        if p.suffix.lower() not in IMAGE_SUFFIXES]
        elif given.is_file():
            files.append(given)  # named explicitly: decoded whatever its suffix, an error if it is no image
        else:
            skipped.append((given, "no such file or directory"))
    if not files and not skipped:
        raise ValueError(f"PATH: expected image files or folders holding some, got none in {list(map(str, paths))}")
    return files, skipped


def predict(checkpoint: Checkpoint, paths: Sequence[str | Path], out: str | Path,
            options: PredictOptions = PredictOptions(), progress: bool = True) -> dict:
    """Score every image under `paths` and write OUT/predictions.csv (and OUT/maps/); returns a summary."""
    from tqdm.auto import tqdm  # not on the serving path

    calibration = checkpoint.calibration
    if calibration is None:
        raise ValueError(f"{checkpoint.path}: the run has no anomaly calibration (calibration.json); "
                         f"run `vae evaluate {checkpoint.path}`")
    model = checkpoint.model
    score = options.score or calibration.default
    if score not in calibration.scores:
        raise ValueError(f"--score: expected one of the calibrated scores {sorted(calibration.scores)}, got {score!r}")
    threshold, source, _ = calibration.threshold_for(score, options.threshold, options.false_positive_rate)
    map_name = None
    if options.maps:
        try:
            map_name = choose_map(calibration, options.map)
        except ValueError as error:
            raise ValueError(f"--maps {checkpoint.path}: {error}") from None
    out = Path(out)
    files, skipped = collect(paths)
    preprocessing = checkpoint.config.data.preprocessing
    device = next(model.parameters()).device
    rows = [{"path": str(p), "error": reason} for p, reason in skipped]
    flagged = 0

    def run(batch: list[tuple[Path, torch.Tensor, torch.Tensor]], first: int) -> None:
        nonlocal flagged
        x = torch.stack([pixels for _, pixels, _ in batch]).to(device)
        noise = RowwiseNoise([options.seed] * len(batch), [1] * len(batch))  # each a one-image request
        with torch.no_grad():
            raw = score_images(model, x, score=score, params=calibration.scores[score].params, noise=noise,
                               companions=checkpoint.companions, map=map_name,
                               map_params=calibration.maps[map_name].params if map_name else None)
        read = read_scores(calibration, {k: v.cpu().numpy() for k, v in raw.items()}, score=score,
                           threshold=options.threshold, false_positive_rate=options.false_positive_rate,
                           map=map_name)
        for i, (path, _, original) in enumerate(batch):
            row = {"path": str(path), "score": f"{read['scores'][i]:.6g}", "percentile": f"{read['percentiles'][i]:.3f}",
                   "is_anomaly": str(bool(read["is_anomaly"][i])).lower(), "threshold": f"{threshold:.6g}",
                   "threshold_source": source, "score_name": score}
            flagged += bool(read["is_anomaly"][i])
            if map_name is not None:
                values = torch.from_numpy(read["anomaly_map"][i])
                heat = overlay(original, at_image_size(original, values, options.max_map_pixels))
                name = Path("maps") / f"{first + i:06d}_{path.stem}.png"
                write_bytes(out / name, encode_png(heat))
                row["map"] = str(name)
            rows.append(row)

    batch: list = []
    done = 0
    with tqdm(total=len(files), desc="scoring", unit="img", disable=not progress) as bar:
        for path in files:
            try:
                decoded = decode_image(path)
            except (ImageError, OSError) as error:
                rows.append({"path": str(path), "error": str(error).removeprefix(f"{path}: ")})
                bar.update(1)
                continue
            batch.append((path, preprocess(decoded.pixels, preprocessing), decoded.pixels))
            if len(batch) == options.batch_size:
                run(batch, done)
                done += len(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            run(batch, done)
            done += len(batch)
            bar.update(len(batch))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(out / "predictions.csv", buffer.getvalue().encode())
    return {"scored": done, "flagged": flagged, "skipped": len(rows) - done, "score": score,
            "threshold": threshold, "threshold_source": source, "map": map_name, "out": str(out)}


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions.csv as dicts (numbers as floats), for tests and notebooks."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("score", "percentile", "threshold"):
            row[key] = float(row[key]) if row.get(key) else None
        row["is_anomaly"] = {"true": True, "false": False}.get(row.get("is_anomaly") or "", None)
    return rows



