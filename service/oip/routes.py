"""The Open Inference Protocol (V2, as KServe, Triton and MLServer speak it) over the same operations.

Each operation of each model is an OIP model named `{name}.{operation}`, e.g. `mnist.encode`.
Inputs: `images` FP32 [B, C, H, W] of the model's shape (also flat [B, C·H·W], and [B, H, W] when
C = 1; values in [0, 1], already preprocessed) for image operations, `z` FP32 [N, D] for decode,
`n` INT64 [1] for sample. Image outputs (`probs`) are flat [N, C·H·W] rows, as on REST. Knobs
(seed, k, beta, num_samples, false_positive_rate, score) are request `parameters`. Tensors travel
as JSON (`data`, flat or nested) or, with the binary tensor data extension that `tritonclient`
uses by default, as raw little-endian bytes after the JSON header (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import ValidationError

from service.core.errors import BadInputError, ModelNotFoundError, bad_input_from
from service.core.operations import OPERATIONS
from service.core.params import PARAMS
from service.core.registry import ModelEntry
from service.http.auth import require_token
from service.http.errors import error_responses
from service.http.images import check_count, check_images
from service.oip.codec import (
    IGNORED_PARAMETERS, OIP_NAMES, PER_REQUEST_OUTPUTS, encode_response, read_infer_request, tensor_array,
)
from service.oip.types import (
    EXAMPLE_PIXELS, InferRequest, InferResponse, ModelMetadataResponse, ModelReadyResponse, ServerLiveResponse, ServerMetadataResponse,
    ServerReadyResponse,
)
from service.state import Service, ServiceDep

OipModel = Annotated[str, Path(description="{name}.{operation}", examples=["default.encode"])]
MODEL_ERRORS = error_responses(400, 404, 503)

router = APIRouter(prefix="/v2", tags=["open inference protocol (V2)"])
models = APIRouter(prefix="/v2", tags=["open inference protocol (V2)"], dependencies=[Depends(require_token)],
                   responses=error_responses(401))


def _server_version() -> str:
    try:
        return version("vae-lab")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health/live", response_model=ServerLiveResponse, summary="OIP server liveness")
async def live() -> dict:
    """`{"live": true}` while the process serves HTTP."""
    return {"live": True}


@router.get("/health/ready", response_model=ServerReadyResponse,
            summary="OIP server readiness: 200 when a model is ready, else 503",
            responses={503: {"model": ServerReadyResponse, "description": "no model is ready; `error` says why",
                             "content": {"application/json": {"example": {
                                 "ready": False, "error": "models are still loading"}}}}})
async def ready(service: ServiceDep) -> Response:
    """`{"ready": true}` once at least one model has loaded and warmed up, else 503 with the reason."""
    ok, reason = service.registry.readiness()
    body = {"ready": ok} if ok else {"ready": False, "error": reason}
    return Response(json.dumps(body), status_code=200 if ok else 503, media_type="application/json")


@models.get("", response_model=ServerMetadataResponse, summary="OIP server metadata")
async def server_metadata() -> dict:
    """The server's name, its version and the protocol extensions it speaks (binary tensor data, model repository)."""
    return {"name": "vae-lab", "version": _server_version(), "extensions": ["binary_tensor_data", "model_repository"]}


def resolve(service: Service, model: str, model_version: str | None = None) -> tuple[ModelEntry, str]:
    """`mnist.encode` -> (the ready entry of mnist, "encode"), or 404/400/503 saying why not.

    Without `model_version`, the model's default version (its highest ready one) answers.
    """
    name, _, operation = model.rpartition(".")
    if not name or operation not in OPERATIONS:
        raise ModelNotFoundError(
            f"no OIP model {model!r}: expected a name of the form {{model}}.{{operation}}, such as "
            f"{next(iter(service.registry.models), 'mnist')}.encode, with operation one of {sorted(OPERATIONS)}")
    return service.registry.ready_model(name, operation, model_version), operation


def _input_specs(entry: ModelEntry, operation: str) -> list[dict]:
    kind = OPERATIONS[operation].input
    if kind == "images":
        # The real (C, H, W), as image models declare it to Triton's and KServe's clients; flat rows are accepted too.
        return [{"name": "images", "datatype": "FP32", "shape": [-1, *entry.input_shape]}]
    if kind == "z":
        specs = [{"name": "z", "datatype": "FP32", "shape": [-1, entry.latent_features or -1]}]
    else:
        specs = [{"name": "n", "datatype": "INT64", "shape": [1]}]
    if entry.checkpoint.model.capabilities.conditional:
        specs.append({"name": "y", "datatype": "INT64", "shape": [-1]})  # class labels of conditional kinds
    return specs


def _output_specs(entry: ModelEntry, operation: str) -> list[dict]:
    return [{"name": name, "datatype": spec.dtype,
             "shape": [1] if name in PER_REQUEST_OUTPUTS else [-1, *spec.shape]}
            for name, spec in entry.outputs[operation].items()]


def _metadata(service: Service, model: str, model_version: str | None) -> dict:
    entry, operation = resolve(service, model, model_version)
    versions = [v for v, e in service.registry.served(entry.name).versions.items() if e.ready]
    return {"name": model, "versions": versions, "platform": f"vae-lab/{entry.kind}",
            "inputs": _input_specs(entry, operation), "outputs": _output_specs(entry, operation)}


@models.get("/models/{model}", response_model=ModelMetadataResponse, responses=MODEL_ERRORS,
            summary="OIP model metadata: inputs and outputs of {name}.{operation}")
async def model_metadata(model: OipModel, service: ServiceDep) -> dict:
    """The tensors `{name}.{operation}` takes and returns, with datatypes and shapes (-1: any size),
    as recorded when the model warmed up."""
    return _metadata(service, model, None)


@models.get("/models/{model}/versions/{model_version}", response_model=ModelMetadataResponse,
            responses=MODEL_ERRORS, summary="OIP model metadata of one version")
async def model_version_metadata(model: OipModel, model_version: str, service: ServiceDep) -> dict:
    """As the unversioned route, for one version: a plain run directory is version "1"; a model folder of
    numbered run directories (`runs/<name>/<n>/`) has those (404 for any other)."""
    return _metadata(service, model, model_version)


@models.get("/models/{model}/ready", response_model=ModelReadyResponse, responses=MODEL_ERRORS,
            summary="OIP model readiness: 200 when ready")
async def model_ready(model: OipModel, service: ServiceDep) -> dict:
    """200 when the model is loaded and can run the operation; 503 while it is not ready, 404 for
    an unknown model, 400 for an operation its kind or run cannot do."""
    resolve(service, model)
    return {"name": model, "ready": True}


@models.get("/models/{model}/versions/{model_version}/ready", response_model=ModelReadyResponse,
            responses=MODEL_ERRORS, summary="OIP model readiness of one version")
async def model_version_ready(model: OipModel, model_version: str, service: ServiceDep) -> dict:
    """As the unversioned route, for one version ("1" for a plain run directory; 404 for an unknown one)."""
    resolve(service, model, model_version)
    return {"name": model, "ready": True}


# --- inference -----------------------------------------------------------------------------------

def _inputs(service: Service, entry: ModelEntry, operation: str, request: InferRequest,
            binary: memoryview) -> dict:
    """Keyword arguments for `Inference.run` from the request's tensors."""
    kind = OPERATIONS[operation].input
    expected = {"images": ["images"], "z": ["z", "y"], "n": ["n", "y"]}[kind]
    arrays, offset = {}, 0
    for tensor in request.inputs:
        if tensor.name not in expected:
            raise BadInputError(f"inputs: {entry.name}.{operation} takes {expected}, got an input named {tensor.name!r}")
        if tensor.name in arrays:
            raise BadInputError(f"inputs: expected one tensor named {tensor.name!r}, got several")
        arrays[tensor.name], offset = tensor_array(tensor, binary, offset)
    if expected[0] not in arrays:
        raise BadInputError(f"inputs: {entry.name}.{operation} needs the input {expected[0]!r}, got "
                            f"{sorted(arrays) or 'none'}")
    main = arrays[expected[0]]
    limit = service.settings.max_images
    if kind == "images":
        if main.dtype.kind != "f":
            raise BadInputError(f"inputs.images.datatype: expected FP32, got {OIP_NAMES[main.dtype]}")
        if main.ndim < 2 or main.shape[0] == 0:
            channels, height, width = entry.input_shape
            raise BadInputError(f"inputs.images.shape: expected [B, {channels}, {height}, {width}] or "
                                f"[B, {math.prod(entry.input_shape)}] with B >= 1, got {list(main.shape)}")
        check_count(main.shape[0], limit, "inputs.images")
        return {"inputs": check_images(main.astype(np.float32), entry.input_shape, "inputs.images")}
    labels = arrays.get("y")
    if labels is not None and labels.dtype.kind not in "iu":
        raise BadInputError(f"inputs.y.datatype: expected an integer type, got {OIP_NAMES[labels.dtype]}")
    if kind == "z":
        if main.dtype.kind != "f" or main.ndim != 2 or main.shape[1] != entry.latent_features or main.shape[0] == 0:
            raise BadInputError(f"inputs.z: expected FP32 of shape [N, {entry.latent_features}] with N >= 1, "
                                f"got {OIP_NAMES[main.dtype]} of shape {list(main.shape)}")
        check_count(main.shape[0], limit, "inputs.z")
        return {"inputs": main.astype(np.float32), "labels": labels}
    if main.dtype.kind not in "iu" or main.size != 1 or int(main.reshape(-1)[0]) < 1:
        raise BadInputError(f"inputs.n: expected one positive integer (INT64, shape [1]), got "
                            f"{OIP_NAMES[main.dtype]} of shape {list(main.shape)}"
                            + (f" holding {main.reshape(-1)[0]}" if main.size == 1 else ""))
    return {"n": int(main.reshape(-1)[0]), "labels": labels}


def _parameters(operation: str, request: InferRequest) -> dict:
    given = {k: v for k, v in request.parameters.items() if k not in IGNORED_PARAMETERS}
    try:
        params = PARAMS[operation].model_validate(given)
    except ValidationError as error:
        raise bad_input_from(error, prefix="parameters.") from None
    return params.model_dump(exclude_none=True)


async def _infer(service: Service, request: Request, model: str, model_version: str | None) -> Response:
    entry, operation = resolve(service, model, model_version)
    infer_request, binary = await read_infer_request(request, service.settings.max_body_bytes)
    inputs = _inputs(service, entry, operation, infer_request, binary)
    params = _parameters(operation, infer_request)
    finish = {k: params.pop(k) for k in ("beta", "false_positive_rate", "threshold") if k in params}
    if operation == "anomaly":
        params["score"] = service.inference.anomaly_score(entry, params.get("score"))
    outputs = await service.inference.run(entry, operation, finish=finish, **inputs, **params)
    return encode_response(model, infer_request, outputs, entry.version)


INFER_DOC = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": InferRequest.model_json_schema(),
    "example": {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, EXAMPLE_PIXELS],
                "data": [0.0] * EXAMPLE_PIXELS}],
                "parameters": {"seed": 0}}}}}}
INFER_RESPONSES = {
    200: {"description": "the outputs, as JSON or (when binary outputs are asked for) as a JSON header of "
                         "`Inference-Header-Content-Length` bytes followed by the raw tensors",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    **error_responses(400, 404, 413, 422, 429, 503),
}


@models.post("/models/{model}/infer", response_model=InferResponse, responses=INFER_RESPONSES,
             summary="OIP inference on {name}.{operation}", openapi_extra=INFER_DOC)
async def infer(model: OipModel, request: Request, service: ServiceDep) -> Response:
    """Runs the operation on the request's tensors: `images` FP32 [B, C, H, W] (or [B, C·H·W], and
    [B, H, W] when C = 1) for image operations, `z` FP32 [N, D] for decode, `n` INT64 [1] for sample, plus `y` INT64 [N]
    for conditional kinds. Knobs (seed, k, beta, num_samples, false_positive_rate, score) are request
    `parameters`. Tensors travel as JSON `data` or, with the binary tensor data extension, as raw
    little-endian bytes after a JSON header of `Inference-Header-Content-Length` bytes."""
    return await _infer(service, request, model, None)


@models.post("/models/{model}/versions/{model_version}/infer", response_model=InferResponse,
             responses=INFER_RESPONSES, summary="OIP inference on one version", openapi_extra=INFER_DOC)
async def infer_version(model: OipModel, model_version: str, request: Request, service: ServiceDep) -> Response:
    """As the unversioned route, answered by that version ("1" for a plain run directory; 404 for an
    unknown one); the response's `model_version` says which answered."""
    return await _infer(service, request, model, model_version)
