"""The REST API: health, model descriptions and one sub-resource per operation. Routes are thin:
parse the body, decode the inputs, call `Inference.run`, shape the response."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from model.anomaly.calibration import DEFAULT_FALSE_POSITIVE_RATE
from service.http.auth import require_token
from service.rest.bodies import body_of, request_body_doc
from service.http.bodies import read_json
from service.core.errors import ServiceError
from service.http.errors import error_responses
from service.http.images import Images, images_from_request, latents_from_request, png_base64
from service.core.operations import OPERATIONS, class_names_of, classes_of, threshold_of
from service.http.maps import render_maps
from service.core.registry import ModelEntry, ServedModel
from service.rest.schemas import (
    AnomalyInfo, AnomalyRequest, AnomalyResponse, MapInfo, ClassifyRequest, ClassifyResponse, DecodeRequest, ElboRequest,
    ElboResponse, EncodeRequest, EncodeResponse, Health, ImagesRequest, IwaeRequest, IwaeResponse,
    ModelDetail, ModelList, ModelSummary, NoopResponse, ProbsResponse, ReconstructRequest, ReconstructResponse,
    SampleRequest, SampleResponse, ScoreInfo, VersionSummary,
)
from service.state import Service, ServiceDep

ModelName = Annotated[str, Path(description="the model: its run directory's name", examples=["default"])]
Version = Annotated[str | None, Query(
    description="the version to answer (a plain run directory is version \"1\"; a model folder's versions are its "
                "numbered subdirectories); default: the highest ready version", examples=["2"])]
VERSION_HEADER = "X-Model-Version"

health = APIRouter(tags=["health"])
NOT_READY = {"status": "not ready", "reason": "models are still loading"}
models = APIRouter(tags=["models"], dependencies=[Depends(require_token)], responses=error_responses(401))
OPERATION_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503)


def json_response(body, entry: ModelEntry | None = None) -> Response:
    """Serialize a response schema once (FastAPI would validate it again); `X-Model-Version` says which
    version of the model answered."""
    headers = {VERSION_HEADER: entry.version} if entry is not None else None
    return Response(body.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


# --- health -------------------------------------------------------------------------------------

@health.get("/health/live", response_model=Health, response_model_exclude_none=True,
            summary="200 while the process runs")
async def live() -> Health:
    """Liveness: answers as long as the process serves HTTP, whether or not any model is ready."""
    return Health(status="live")


@health.get("/health/ready", response_model=Health, summary="200 when at least one model is ready, else 503",
            responses={503: {"model": Health, "description": "no model is ready; `reason` says why",
                             "content": {"application/json": {"example": NOT_READY}}}})
async def ready(service: ServiceDep) -> Response:
    """Readiness: 200 once at least one model has loaded and warmed up, else 503 with the reason
    (models still loading, a missing model directory, every run failing to load)."""
    ok, reason = service.registry.readiness()
    body = Health(status="ready" if ok else "not ready", reason=reason)
    return Response(body.model_dump_json(), status_code=200 if ok else 503, media_type="application/json")


# --- models ---------------------------------------------------------------------------------------

def summary(entry: ModelEntry, model: ServedModel | None = None) -> ModelSummary:
    out = ModelSummary(name=entry.name, kind=entry.kind, ready=entry.ready, error=entry.error,
                       operations=list(entry.operations))
    if model is not None:
        out.version = None if model.unloaded else entry.version
        out.versions = [VersionSummary(version=v, ready=e.ready, error=e.error, path=str(e.path),
                                       note=model.notes.get(v)) for v, e in model.versions.items()]
    return out


def detail(entry: ModelEntry, model: ServedModel | None = None) -> ModelDetail:
    out = ModelDetail(**summary(entry, model).model_dump(), path=str(entry.path))
    ck = entry.checkpoint
    if ck is None:
        return out
    out.input_shape = list(entry.input_shape)
    out.preprocessing = entry.preprocessing.describe()
    out.latent_features = entry.latent_features
    out.describe = ck.model.describe()
    out.likelihood = out.describe.get("likelihood", ck.config.model.likelihood)
    out.config = ck.config.to_dict()
    out.evaluation = ck.evaluation
    out.classes = classes_of(ck)
    out.class_names = class_names_of(ck, out.classes if out.classes is not None else list(ck.config.data.labels_known))
    if ck.calibration is not None and entry.anomaly_scores():
        out.anomaly = AnomalyInfo(default=ck.calibration.default, scores={
            name: ScoreInfo(threshold=ck.calibration.scores[name].threshold(DEFAULT_FALSE_POSITIVE_RATE),
                            false_positive_rate=DEFAULT_FALSE_POSITIVE_RATE, n=ck.calibration.scores[name].n,
                            params=ck.calibration.scores[name].params,
                            f1=_f1_info(ck.calibration.f1.get(name)))
            for name in entry.anomaly_scores()},
            maps={name: m.params for name, m in ck.calibration.maps.items()} or None)
    return out


def _f1_info(f1) -> dict[str, float] | None:
    if f1 is None:
        return None
    return {"threshold": f1.threshold, "f1": f1.f1, "precision": f1.precision, "recall": f1.recall,
            "false_positive_rate": f1.false_positive_rate, "normal": f1.normal, "anomalous": f1.anomalous}


@models.get("/models", response_model=ModelList, summary="Every model: name, kind, ready, error if any")
async def list_models(service: ServiceDep) -> ModelList:
    """Every run directory under the model directory, ready or not; a run that failed to load
    carries its error."""
    return ModelList(models=[summary(m.default, m) for m in service.registry.snapshot.served.values()])


@models.get("/models/{name}", response_model=ModelDetail, response_model_exclude_none=True,
            summary="Kind, shapes, config, test metrics, operations and anomaly calibration of one model",
            responses=error_responses(404))
async def describe_model(name: ModelName, service: ServiceDep, version: Version = None) -> Response:
    """What a client needs to call the model: its input shape, the preprocessing of encoded images,
    its likelihood and latent size, the operations it offers, its classes (and their names), its
    calibrated anomaly scores with their thresholds, and the config and test metrics of its
    training run; `versions` lists every version with its state, `version` says which one is
    described (`?version=` picks another; default: the one unversioned requests reach)."""
    entry = service.registry.get(name, version)
    return json_response(detail(entry, service.registry.served(name)), entry)


# --- operations ------------------------------------------------------------------------------------

async def _images(service: Service, entry: ModelEntry, body: ImagesRequest) -> Images:
    s = service.settings
    args = (body.images, body.images_png, entry.preprocessing, s.max_images, s.max_image_pixels)
    if body.images_png is None:
        return images_from_request(*args)
    # Decoding and resizing a large JPEG takes milliseconds or more: not on the event loop.
    return await run_in_threadpool(images_from_request, *args)


def _notes(images: Images) -> list[str] | None:
    return list(images.notes) or None


def _pngs(probs: np.ndarray, entry: ModelEntry) -> list[str]:
    return [png_base64(p.reshape(entry.input_shape)) for p in probs]


def _op(path: str, request_model, response_model, summary: str):
    return models.post(f"/models/{{name}}/{path}", response_model=response_model, response_model_exclude_none=True,
                       summary=summary, description=OPERATIONS[path].summary, responses=OPERATION_ERRORS,
                       openapi_extra=request_body_doc(request_model))


@_op("encode", EncodeRequest, EncodeResponse, "Posterior parameters per image, and samples z ~ q(z|x) if asked")
async def encode(name: ModelName, service: ServiceDep,
                 body: Annotated[EncodeRequest, Depends(body_of(EncodeRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    out = await service.inference.run(entry, "encode", inputs=images.x, seed=body.seed, num_samples=body.num_samples)
    return json_response(EncodeResponse(**{k: v.tolist() for k, v in out.items()}, preprocessing=_notes(images)), entry)


@_op("decode", DecodeRequest, ProbsResponse, "The means of p(x|z) per pixel for each latent")
async def decode(name: ModelName, service: ServiceDep,
                 body: Annotated[DecodeRequest, Depends(body_of(DecodeRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, "decode", version)
    z = latents_from_request(body.z, entry.latent_features, service.settings.max_images)
    out = await service.inference.run(entry, "decode", inputs=z, labels=body.y)
    return json_response(_probs(out["probs"], entry, body.png, ProbsResponse), entry)


def _probs(probs: np.ndarray, entry: ModelEntry, png: bool, schema, **extra):
    """Image outputs: flat rows of C·H·W (the layout of every model, grey or colour), or PNGs."""
    images = {"images_png": _pngs(probs, entry)} if png else {"probs": probs.tolist()}
    return schema(**images, image_shape=list(entry.input_shape), **extra)


@_op("sample", SampleRequest, SampleResponse, "Prior samples z ~ p(z) and their decoded means")
async def sample(name: ModelName, service: ServiceDep,
                 body: Annotated[SampleRequest, Depends(body_of(SampleRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, "sample", version)
    out = await service.inference.run(entry, "sample", n=body.n, seed=body.seed, labels=body.y)
    extra = {k: v.tolist() for k, v in out.items() if k != "probs"}
    return json_response(_probs(out["probs"], entry, body.png, SampleResponse, **extra), entry)


@_op("reconstruct", ReconstructRequest, ReconstructResponse, "Decoder means at the posterior mean of each image")
async def reconstruct(name: ModelName, service: ServiceDep,
                      body: Annotated[ReconstructRequest, Depends(body_of(ReconstructRequest))],
                      version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    out = await service.inference.run(entry, "reconstruct", inputs=images.x)
    return json_response(_probs(out["probs"], entry, body.png, ReconstructResponse, preprocessing=_notes(images)),
                         entry)


@_op("elbo", ElboRequest, ElboResponse, "Per-image ELBO, log p(x|z) and KL from one posterior sample")
async def elbo(name: ModelName, service: ServiceDep,
               body: Annotated[ElboRequest, Depends(body_of(ElboRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    out = await service.inference.run(entry, "elbo", inputs=images.x, seed=body.seed, finish={"beta": body.beta})
    return json_response(ElboResponse(elbo=out["elbo"].tolist(), log_px=out["log_px"].tolist(),
                                      kl=out["kl"].tolist(), beta=body.beta, preprocessing=_notes(images)), entry)


@_op("iwae", IwaeRequest, IwaeResponse, "The importance-weighted bound L_K per image, and bits per dimension")
async def iwae(name: ModelName, service: ServiceDep,
               body: Annotated[IwaeRequest, Depends(body_of(IwaeRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    k = body.k or service.settings.default_k
    out = await service.inference.run(entry, "iwae", inputs=images.x, seed=body.seed, k=k)
    return json_response(IwaeResponse(log_px=out["log_px"].tolist(), bits_per_dim=out["bits_per_dim"].tolist(), k=k,
                                      preprocessing=_notes(images)), entry)


@_op("classify", ClassifyRequest, ClassifyResponse, "Class probabilities and the most probable label per image")
async def classify(name: ModelName, service: ServiceDep,
                   body: Annotated[ClassifyRequest, Depends(body_of(ClassifyRequest))],
                   version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    out = await service.inference.run(entry, "classify", inputs=images.x)
    checkpoint = entry.checkpoint
    classes = classes_of(checkpoint) or list(range(out["probs"].shape[1]))
    return json_response(ClassifyResponse(probs=out["probs"].tolist(), labels=out["labels"].tolist(), classes=classes,
                                          class_names=class_names_of(checkpoint, classes),
                                          preprocessing=_notes(images)), entry)


@_op("anomaly", AnomalyRequest, AnomalyResponse,
     "Anomaly scores, percentiles against held-out normal images, and flags at a false-positive rate")
async def anomaly(name: ModelName, service: ServiceDep,
                  body: Annotated[AnomalyRequest, Depends(body_of(AnomalyRequest))], version: Version = None) -> Response:
    entry = service.registry.ready_model(name, version=version)
    images = await _images(service, entry, body)
    service.registry.check_operation(entry, "anomaly")
    score = service.inference.anomaly_score(entry, body.score)
    _, source, rate = threshold_of(entry.checkpoint, score, body.threshold, body.false_positive_rate)  # 400 early
    out = await service.inference.run(
        entry, "anomaly", inputs=images.x, seed=body.seed, score=score, maps=body.maps, map=body.map,
        finish={"false_positive_rate": body.false_positive_rate, "threshold": body.threshold})
    response = AnomalyResponse(
        scores=out["scores"].tolist(), percentiles=out["percentiles"].tolist(), is_anomaly=out["is_anomaly"].tolist(),
        threshold=float(out["threshold"][0]), threshold_source=source, score=score, false_positive_rate=rate,
        preprocessing=_notes(images))
    if body.maps:
        map_name = service.inference.anomaly_map(entry, body.map)
        response.maps, response.maps_png, shapes = await run_in_threadpool(
            render_maps, out["anomaly_map"], images, service.settings.max_map_pixels,
            body.map_format in ("both", "numbers"), body.map_format in ("both", "png"))
        response.map = MapInfo(name=map_name, params=entry.checkpoint.calibration.maps[map_name].params, shapes=shapes)
    return json_response(response, entry)


# --- benchmarking ------------------------------------------------------------------------------------

benchmark = APIRouter(tags=["benchmark"], dependencies=[Depends(require_token)],
                      responses=error_responses(401, 413, 422))


@benchmark.post("/benchmark/noop", response_model=NoopResponse,
                summary="Read and parse a JSON body, then answer: the HTTP floor (VAE_BENCHMARK_ENDPOINTS=1)")
async def noop(body=Depends(read_json)) -> NoopResponse:
    """Parses the body as the operations do, runs no model and counts its fields: the cost of HTTP
    and JSON alone, which `benchmarks/serve_load.py` compares the operations with."""
    if not isinstance(body, dict):
        raise ServiceError("body: expected a JSON object")
    return NoopResponse(fields=len(body))
