"""Request and response bodies of the REST API, with the examples shown at /docs.

Image and latent fields are typed loosely here (`list[Any]`) and checked in `service.http.images` with
numpy: pydantic would validate 200,000 numbers one by one, and numpy names the problem just as well.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.core.params import (
    AnomalyParams, ElboParams, EncodeParams, IwaeParams, SampleParams, StrictModel,
)

# A real test digit (a 0 from the embedded MNIST set) as a 28×28 greyscale PNG, for /docs examples.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA+UlEQVR42mNgGHhgPP/vfCMccgbv/vz58xa7nNnjv3/ev/xjyYYpxWXz4M/f"
    "P6dC/vytgggwIUnOPCDDwMBgxHOQQRdD0tibkfFQKeOL85OYGLG5ZTOPd6UoA8Pfz2gOVlv69+WFEAj775+lKHLsm/58cBeWgUkeRpG0/PPH"
    "Hs5Blzz2dx+C8//vEWTX+hj834SQ/Pf/ArLG0D/PJOHWt//dxYMqeR8u1/znoTsDquREmHeX/lmLFgJhfx9CGEXv/i5CD57QPz8nGciGbnr4"
    "9/5yC0zJP3+eXv/z58+RJszYkjn+58/fP39eTsQazZINf/7+6VUd+HQKAKxwbkTy8Ab1AAAAAElFTkSuQmCC"
)
# A flat 28×28 image: a vertical bar, like a "1".
EXAMPLE_SIDE = 28  # the examples are images of the embedded digits' size
EXAMPLE_IMAGE = [1.0 if 12 <= i % EXAMPLE_SIDE <= 15 and 4 <= i // EXAMPLE_SIDE <= 23 else 0.0
                 for i in range(EXAMPLE_SIDE * EXAMPLE_SIDE)]

_ROW = {"type": "array", "items": {"type": "number"}}
# An image's items: numbers (flat), rows of numbers (H×W) or channels of rows (C×H×W).
_NESTED = {"anyOf": [{"type": "number"}, {"type": "array", "items": {"anyOf": [{"type": "number"}, _ROW]}}]}
ImagesField = Annotated[
    list[Any] | None,
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "array", "items": _NESTED}}, {"type": "null"}]}),
    Field(None, description="images already of the model's input_shape (GET /models/{name}), values in [0, 1]: "
                            "each a C×H×W nested list (H×W also for C = 1) or a flat list of its C·H·W values in "
                            "that order"),
]
PngField = Annotated[list[str] | None, Field(
    None, description="images as base64-encoded files (PNG, JPEG, ...) of any size, grey or colour: decoded and "
                      "preprocessed as the run's training images were (channels, then size); the response's "
                      "`preprocessing` says what that changed")]
PngFlag = Annotated[bool, Field(False, description="return images_png (base64 8-bit PNGs, grey for C = 1, RGB for "
                                                   "C = 3) instead of probs")]
IMAGE_SHAPE = "(C, H, W) of each image: a row of probs holds its C·H·W values in row-major order (channel by channel)"
# The last field of every response to images: what was done to encoded ones to fit the model.
PreprocessingNotes = Annotated[list[str] | None, Field(
    None, description="each change made to an encoded image to fit the model, naming the image, in order: decoding "
                      "(\"images_png[0]: alpha channel dropped\"), channels (\"images_png[0]: colour converted to "
                      "grey (ITU-R 601-2 luma)\"), size (\"images_png[0]: resized from 64×48 to 40×32 (bilinear, "
                      "antialiased)\"); absent when no image needed any")]


class ImagesRequest(StrictModel):
    """Exactly one of `images` and `images_png` (or image files uploaded as multipart field `images`)."""

    images: ImagesField
    images_png: PngField


def _examples(*examples: dict) -> dict:
    return {"examples": list(examples)}


class EncodeRequest(ImagesRequest, EncodeParams):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG], "num_samples": 2, "seed": 0}))


class EncodeResponse(BaseModel):
    """The posterior's parameters per image (`mu`, `sigma` for the Gaussian kind; see the model's
    `describe.encode_outputs`) and, if asked, `z`: num_samples latent samples per image."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_examples(
        {"mu": [[1.142, -2.568]], "sigma": [[0.180, 0.221]], "z": [[[1.419, -2.632], [0.750, -2.442]]]}))
    mu: list[list[float]] | None = None
    sigma: list[list[float]] | None = None
    z: list[list[list[float]]] | None = None
    preprocessing: PreprocessingNotes


class DecodeRequest(StrictModel):
    model_config = ConfigDict(json_schema_extra=_examples({"z": [[0.0, 0.0], [1.5, -0.5]]}))
    z: Annotated[list[Any], WithJsonSchema({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}),
                 Field(description="latent vectors, each of the model's latent size")]
    y: list[int] | None = Field(None, description="class labels, one per latent (conditional kinds only)")
    png: PngFlag


class ProbsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG], "image_shape": [1, 28, 28]}))
    probs: list[list[float]] | None = Field(
        None, description="the means of p(x|z) per pixel in [0, 1] (Bernoulli: probabilities), one flat row of "
                          "C·H·W per image (see image_shape)")
    images_png: list[str] | None = Field(None, description="the same as 8-bit PNGs (grey or RGB), when png=true")
    image_shape: list[int] = Field(description=IMAGE_SHAPE)


class ReconstructResponse(ProbsResponse):
    preprocessing: PreprocessingNotes


class SampleRequest(SampleParams):
    model_config = ConfigDict(json_schema_extra=_examples({"n": 4, "seed": 0}))
    n: int = Field(1, ge=1, description="how many samples")
    y: int | list[int] | None = Field(None, description="class label(s) to sample (conditional kinds only)")
    png: PngFlag


class SampleResponse(ProbsResponse):
    """Prior samples `z` and their decoded means; conditional kinds (M2) also return the labels `y`."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_examples(
        {"z": [[1.54, -0.29]], "images_png": [EXAMPLE_PNG], "image_shape": [1, 28, 28]}))
    z: list[list[float]] = Field(description="the prior samples z ~ p(z)")


class ReconstructRequest(ImagesRequest):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG]},
                                                          {"images": [EXAMPLE_IMAGE], "png": True}))
    png: PngFlag


class ElboRequest(ImagesRequest, ElboParams):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG], "seed": 0},
                                                          {"images": [EXAMPLE_IMAGE], "beta": 0.5}))


class ElboResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples(
        {"elbo": [-146.64], "log_px": [-140.17], "kl": [6.47], "beta": 1.0}))
    elbo: list[float] = Field(description="log_px − beta·kl per image (nats); with beta=1, the ELBO")
    log_px: list[float] = Field(description="log p(x|z) at one sample z ~ q(z|x)")
    kl: list[float] = Field(description="KL(q(z|x) || p(z)), as the model was trained to estimate it")
    beta: float
    preprocessing: PreprocessingNotes


class IwaeRequest(ImagesRequest, IwaeParams):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG], "k": 100, "seed": 0}))


class IwaeResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples({"log_px": [-145.10], "bits_per_dim": [0.267], "k": 1000}))
    log_px: list[float] = Field(description="L_K per image: a lower bound on log p(x) (nats)")
    bits_per_dim: list[float] = Field(description="−L_K / (C·H·W · ln 2)")
    k: int
    preprocessing: PreprocessingNotes


class ClassifyRequest(ImagesRequest):
    model_config = ConfigDict(json_schema_extra=_examples({"images_png": [EXAMPLE_PNG]}))


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples(
        {"probs": [[0.956, 0.0, 0.014, 0.02, 0.0, 0.004, 0.006, 0.0, 0.0, 0.0]], "labels": [0],
         "classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}))
    probs: list[list[float]] = Field(description="class probabilities per image, columns in the order of classes")
    labels: list[int] = Field(description="the most probable class per image")
    classes: list[int]
    class_names: list[str] | None = Field(None, description="the name of each of classes, where the run records "
                                                            "names (a folder's class subfolders)")
    preprocessing: PreprocessingNotes


class AnomalyRequest(ImagesRequest, AnomalyParams):
    model_config = ConfigDict(json_schema_extra=_examples(
        {"images_png": [EXAMPLE_PNG], "seed": 0}, {"images": [EXAMPLE_IMAGE], "false_positive_rate": 0.05},
        {"images_png": [EXAMPLE_PNG], "seed": 0, "maps": True, "map_format": "png"}))
    map_format: Literal["both", "numbers", "png"] = Field(
        "both", description="with maps: numbers (`maps`), a heatmap PNG over the input (`maps_png`), or both")


class MapInfo(BaseModel):
    name: str = Field(description="the map's definition (docs/anomaly.md): nll or reconstruction")
    params: dict[str, float] = Field(description="how it was computed and calibrated: sigma (pixels), samples")
    shapes: list[list[int]] = Field(description="[height, width] of each image's map: the input's own size, "
                                                "scaled down to VAE_MAX_MAP_PIXELS if larger")
    values: str = "percent of the pixels of held-out normal images' maps at most this (0–100)"


class AnomalyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples(
        {"scores": [146.15], "percentiles": [22.98], "is_anomaly": [False], "threshold": 246.58,
         "threshold_source": "false_positive_rate", "score": "iwae", "false_positive_rate": 0.05}))
    scores: list[float] = Field(description="anomaly score per image (higher: more anomalous)")
    percentiles: list[float] = Field(description="percent of held-out normal images scoring at most this")
    is_anomaly: list[bool] = Field(description="score > threshold")
    threshold: float = Field(description="the score above which an image is flagged")
    threshold_source: Literal["f1", "false_positive_rate"] = Field(
        description="f1: the threshold maximising F1 on the run's labelled validation images; "
                    "false_positive_rate: the quantile flagging that share of normal images")
    score: str
    false_positive_rate: float = Field(description="the share of normal images the threshold flags (for f1: "
                                                   "measured on the normal validation images)")
    preprocessing: PreprocessingNotes
    maps: list[list[list[float]]] | None = Field(None, description="with maps: each image's anomaly map, rows of "
                                                                   "percentiles (see `map`)")
    maps_png: list[str] | None = Field(None, description="with maps: base64 PNG of each map's heatmap over its image")
    map: MapInfo | None = None


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples({"status": "ready", "reason": "ready: default"}))
    status: str
    reason: str | None = None


class VersionSummary(BaseModel):
    """One version of a model: a plain run directory is version "1"; a model folder's are its numbered subfolders."""

    version: str
    ready: bool
    error: str | None = Field(None, description="why it is not ready")
    path: str = Field(description="its run directory")
    note: str | None = Field(None, description="why the files now in its directory are not what is served (e.g. a "
                                               "copy still being written); the copy loaded before still is")


class ModelSummary(BaseModel):
    name: str
    kind: str | None
    ready: bool
    error: str | None = None
    operations: list[str]
    version: str | None = Field(None, description="the version described: the one requests without ?version= "
                                                  "reach (the highest ready one)")
    versions: list[VersionSummary] | None = Field(None, description="every version, oldest first")


_OPERATIONS = ["encode", "decode", "sample", "reconstruct", "elbo", "iwae", "classify", "anomaly"]


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples({"models": [
        {"name": "default", "kind": "gaussian", "ready": True, "error": None, "operations": _OPERATIONS, "version": "1",
         "versions": [{"version": "1", "ready": True, "path": "runs/default"}]}]}))
    models: list[ModelSummary]


class ScoreInfo(BaseModel):
    threshold: float = Field(description="score threshold at the default false-positive rate")
    false_positive_rate: float
    n: int = Field(description="held-out normal images the calibration comes from")
    params: dict[str, Any]
    f1: dict[str, float] | None = Field(None, description="the threshold maximising F1 on the run's labelled "
                                                          "validation images, with its f1, precision, recall and "
                                                          "false-positive rate there (absent without such images)")


class AnomalyInfo(BaseModel):
    default: str
    maps: dict[str, dict[str, float]] | None = Field(None, description="the calibrated anomaly maps and their "
                                                                       "parameters (sigma in pixels, samples)")
    scores: dict[str, ScoreInfo]


class ModelDetail(ModelSummary):
    model_config = ConfigDict(json_schema_extra=_examples({
        "name": "default", "kind": "gaussian", "ready": True, "operations": _OPERATIONS, "path": "runs/default",
        "version": "1", "versions": [{"version": "1", "ready": True, "path": "runs/default"}],
        "input_shape": [1, 28, 28], "latent_features": 2, "likelihood": "bernoulli",
        "preprocessing": {"channels": 1, "height": 28, "width": 28, "resize": "bilinear", "antialias": True,
                          "aspect": "stretched", "scaling": "uint8 / 255 -> [0, 1]",
                          "colour_to_grey": "ITU-R 601-2 luma (PIL 'L')"},
        "classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "anomaly": {"default": "iwae", "scores": {"iwae": {
            "threshold": 302.4, "false_positive_rate": 0.01, "n": 1000, "params": {"k": 100}}}}}))
    path: str
    input_shape: list[int] | None = Field(None, description="(C, H, W) the model takes: the shape of `images`")
    preprocessing: dict[str, Any] | None = Field(
        None, description="what is done to encoded images (images_png, uploads) before the model, as in training: "
                          "channels, size (resize mode, antialiasing; the aspect ratio is not kept), scaling")
    likelihood: str | None = Field(None, description="p(x|z): bernoulli or logistic")
    latent_features: int | None = None
    describe: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    classes: list[int] | None = None
    class_names: list[str] | None = Field(None, description="the name of each of classes (or, without a classifier, "
                                                            "of the run's class labels), where the run records names")
    anomaly: AnomalyInfo | None = None


class NoopResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=_examples({"fields": 2}))
    fields: int = Field(description="how many top-level fields the JSON body had")
