"""The Open Inference Protocol (V2, as KServe, Triton and MLServer speak it) over the same operations.

Each operation of each model is an OIP model named `{name}.{operation}`, e.g. `mnist.encode`.
Inputs: `images` FP32 [B, H·W] (also [B, H, W] or [B, 1, H, W]) for image operations, `z` FP32
[N, D] for decode, `n` INT64 [1] for sample. Knobs (seed, k, beta, num_samples,
false_positive_rate, score) are request `parameters`. Tensors travel as JSON (`data`, flat or
nested) or, with the binary tensor data extension that `tritonclient` uses by default, as raw
little-endian bytes after the JSON header (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import inspect
import json
import math
import zlib
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json

from service.auth import require_token
from service.bodies import parse_json
from service.errors import (
    BadInputError, ModelNotFoundError, PayloadTooLargeError, UnsupportedError, bad_input_from, error_responses, plural,
)
from service.images import as_number_array, check_count, check_images
from service.operations import OPERATIONS
from service.registry import ModelEntry
from service.schemas import AnomalyParams, ElboParams, EncodeParams, IwaeParams, NoParams, SampleParams
from service.state import Service, ServiceDep

VERSION = "1"
DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.items()}
OIP_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOATS = ("FP16", "FP32", "FP64")
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
PARAMS: dict[str, type[BaseModel]] = {
    "encode": EncodeParams, "decode": NoParams, "sample": SampleParams, "reconstruct": NoParams,
    "elbo": ElboParams, "iwae": IwaeParams, "classify": NoParams, "anomaly": AnomalyParams,
}
PER_REQUEST_OUTPUTS = {"threshold"}  # one value per request, not per row
# Request parameters of the protocol or of Triton's client that mean nothing here and are ignored.
IGNORED_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Strict):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Strict):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


# --- response bodies, as the protocol defines them (for /docs; the routes build them as dicts) -----

def _example(example: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class ServerLiveResponse(BaseModel):
    model_config = _example({"live": True})
    live: bool


class ServerReadyResponse(BaseModel):
    model_config = _example({"ready": True})
    ready: bool
    error: str | None = Field(None, description="why no model is ready (with 503)")


class ServerMetadataResponse(BaseModel):
    model_config = _example({"name": "vae-lab", "version": "0.1.0", "extensions": ["binary_tensor_data"]})
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="an OIP datatype: FP32, INT64, BOOL, ...")
    shape: list[int] = Field(description="-1 where the size varies (the batch)")


class ModelMetadataResponse(BaseModel):
    model_config = _example({
        "name": "default.encode", "versions": ["1"], "platform": "vae-lab/gaussian",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "mu", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "sigma", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "z", "datatype": "FP32", "shape": [-1, -1, 2]}]})
    name: str
    versions: list[str]
    platform: str = Field(description="vae-lab/{kind}")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReadyResponse(BaseModel):
    model_config = _example({"name": "default.encode", "ready": True})
    name: str
    ready: bool


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="the values, flat in row-major order (JSON outputs)")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size, for binary outputs")


class InferResponse(BaseModel):
    model_config = _example({"model_name": "default.elbo", "model_version": "1", "outputs": [
        {"name": "elbo", "datatype": "FP32", "shape": [1], "data": [-146.64]},
        {"name": "log_px", "datatype": "FP32", "shape": [1], "data": [-140.17]},
        {"name": "kl", "datatype": "FP32", "shape": [1], "data": [6.47]}]})
    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, if it had one")
    outputs: list[OutputTensor]


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
    """The server's name, its version and the protocol extensions it speaks (binary tensor data)."""
    return {"name": "vae-lab", "version": _server_version(), "extensions": ["binary_tensor_data"]}


def resolve(service: Service, model: str, model_version: str | None = None) -> tuple[ModelEntry, str]:
    """`mnist.encode` -> (the ready entry of mnist, "encode"), or 404/400/503 saying why not."""
    name, _, operation = model.rpartition(".")
    if not name or operation not in OPERATIONS:
        raise ModelNotFoundError(
            f"no OIP model {model!r}: expected a name of the form {{model}}.{{operation}}, such as "
            f"{next(iter(service.registry.models), 'mnist')}.encode, with operation one of {sorted(OPERATIONS)}")
    if model_version is not None and model_version != VERSION:
        raise ModelNotFoundError(f"model {model!r} has only version {VERSION!r}, got {model_version!r}")
    return service.registry.ready_model(name, operation), operation


def _input_specs(entry: ModelEntry, operation: str) -> list[dict]:
    kind = OPERATIONS[operation].input
    if kind == "images":
        return [{"name": "images", "datatype": "FP32", "shape": [-1, math.prod(entry.input_shape)]}]
    if kind == "z":
        specs = [{"name": "z", "datatype": "FP32", "shape": [-1, entry.latent_features or -1]}]
    else:
        specs = [{"name": "n", "datatype": "INT64", "shape": [1]}]
    if "y" in inspect.signature(getattr(entry.checkpoint.model, operation)).parameters:
        specs.append({"name": "y", "datatype": "INT64", "shape": [-1]})  # class labels of conditional kinds
    return specs


def _output_specs(entry: ModelEntry, operation: str) -> list[dict]:
    return [{"name": name, "datatype": spec.dtype,
             "shape": [1] if name in PER_REQUEST_OUTPUTS else [-1, *spec.shape]}
            for name, spec in entry.outputs[operation].items()]


def _metadata(service: Service, model: str, model_version: str | None) -> dict:
    entry, operation = resolve(service, model, model_version)
    return {"name": model, "versions": [VERSION], "platform": f"vae-lab/{entry.kind}",
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
    """As the unversioned route; every model has the one version "1" (404 for any other)."""
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
    """As the unversioned route; every model has the one version "1" (404 for any other)."""
    resolve(service, model, model_version)
    return {"name": model, "ready": True}


# --- inference -----------------------------------------------------------------------------------

def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInputError(f"Content-Encoding: expected gzip, deflate or none, got {encoding!r}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise BadInputError(f"body: expected {encoding} data, got undecodable bytes ({error})") from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"body: expected at most {limit} bytes once decompressed (VAE_MAX_BODY_BYTES)")
    return out


async def read_infer_request(request: Request, limit: int) -> tuple[InferRequest, memoryview]:
    body = _decompress(await request.body(), request.headers.get("content-encoding", "").lower(), limit)
    header = request.headers.get("inference-header-content-length")
    if header is not None:
        try:
            size = int(header)
        except ValueError:
            raise BadInputError(f"Inference-Header-Content-Length: expected an integer, got {header!r}") from None
        if not 0 <= size <= len(body):
            raise BadInputError(f"Inference-Header-Content-Length: expected at most the body's {plural(len(body), 'byte')}, got {size}")
        head, binary = body[:size], memoryview(body)[size:]
    else:
        head, binary = body, memoryview(b"")
    data = parse_json(head, "an OIP inference request in JSON")
    try:
        return InferRequest.model_validate(data), binary
    except ValidationError as error:
        raise bad_input_from(error) from None


def tensor_array(tensor: InputTensor, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """The tensor as a numpy array of its shape, and the offset of the next binary tensor."""
    field = f"inputs.{tensor.name}"
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BadInputError(f"{field}.datatype: expected one of {sorted(DTYPES)}, got {tensor.datatype!r}")
    if any(d < 0 for d in tensor.shape):
        raise BadInputError(f"{field}.shape: expected non-negative sizes, got {tensor.shape}")
    count = math.prod(tensor.shape)
    if "shared_memory_region" in tensor.parameters:
        raise UnsupportedError(f"{field}: the shared-memory extension is not supported; send the data")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            expected = plural(count * dtype.itemsize, "byte")
            raise BadInputError(f"{field}.parameters.binary_data_size: expected {expected} for shape {tensor.shape} "
                                f"of {tensor.datatype}, got {size!r}")
        if offset + size > len(binary):
            raise BadInputError(f"{field}: expected {plural(size, 'byte')} of binary data, but the body holds "
                                f"{len(binary) - offset} after the JSON header")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(tensor.shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInputError(f"{field}: expected finite numbers, got NaN or infinity")
        return array, offset + size
    if tensor.data is None:
        raise BadInputError(f"{field}.data: expected the tensor's values (or binary data), got none")
    values = tensor.data if isinstance(tensor.data, list) else [tensor.data]
    if tensor.datatype == "BOOL":
        try:
            array = np.asarray(values, dtype=np.bool_)
        except (ValueError, TypeError):
            raise BadInputError(f"{field}.data: expected a flat or regularly nested list of booleans") from None
    elif tensor.datatype in INTEGERS:
        array = _integer_array(values, dtype, f"{field}.data")
    else:
        array = as_number_array(values, f"{field}.data").astype(dtype)
    if array.size != count:
        raise BadInputError(f"{field}: expected {plural(count, 'value')} for shape {tensor.shape}, got {array.size}")
    return array.reshape(tensor.shape), offset


def _integer_array(values: list, dtype: np.dtype, field: str) -> np.ndarray:
    """Integers parsed exactly (not through float32) and checked against the datatype's range."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise BadInputError(f"{field}: expected a flat or regularly nested list of integers") from None
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64) if np.all(np.abs(array) < 2**62) else array
    if array.size and array.dtype.kind not in "iu":
        raise BadInputError(f"{field}: expected integers, got {array.dtype.name} values")
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise BadInputError(f"{field}: expected integers in [{info.min}, {info.max}] for {dtype.name}, "
                            f"got values in [{array.min()}, {array.max()}]")
    return array.astype(dtype)


def _flag(value, field: str) -> bool:
    """A JSON boolean parameter; strings such as "false" are refused rather than read as true."""
    if not isinstance(value, bool):
        raise BadInputError(f"{field}: expected true or false, got {value!r}")
    return value


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
            raise BadInputError(f"inputs.images.shape: expected [B, {math.prod(entry.input_shape)}] with B >= 1, "
                                f"got {list(main.shape)}")
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


def _response(model: OipModel, request: InferRequest, outputs: dict[str, np.ndarray]) -> Response:
    default_binary = _flag(request.parameters.get("binary_data_output", False), "parameters.binary_data_output")
    if request.outputs:
        wanted = []
        for out in request.outputs:
            if out.name not in outputs:
                raise BadInputError(f"outputs: {model} has outputs {sorted(outputs)}, got a request for {out.name!r}")
            if "classification" in out.parameters:
                raise UnsupportedError(f"outputs.{out.name}: the classification extension is not supported")
            wanted.append((out.name, _flag(out.parameters.get("binary_data", default_binary),
                                           f"outputs.{out.name}.parameters.binary_data")))
    else:
        wanted = [(name, default_binary) for name in outputs]
    tensors, buffers = [], []
    for name, binary in wanted:
        array = np.ascontiguousarray(outputs[name])
        tensor = {"name": name, "datatype": OIP_NAMES[array.dtype], "shape": list(array.shape)}
        if binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    body = {"model_name": model, "model_version": VERSION, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    head = to_json(body)  # pydantic-core's encoder: several times faster than json.dumps on big outputs
    if not buffers:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(buffers), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


async def _infer(service: Service, request: Request, model: str, model_version: str | None) -> Response:
    entry, operation = resolve(service, model, model_version)
    infer_request, binary = await read_infer_request(request, service.settings.max_body_bytes)
    inputs = _inputs(service, entry, operation, infer_request, binary)
    params = _parameters(operation, infer_request)
    finish = {k: params.pop(k) for k in ("beta", "false_positive_rate") if k in params}
    if operation == "anomaly":
        params["score"] = service.inference.anomaly_score(entry, params.get("score"))
    outputs = await service.inference.run(entry.name, operation, finish=finish, **inputs, **params)
    return _response(model, infer_request, outputs)


INFER_DOC = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": InferRequest.model_json_schema(),
    "example": {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}],
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
    """Runs the operation on the request's tensors: `images` FP32 [B, H·W] (or [B, H, W], [B, 1, H, W])
    for image operations, `z` FP32 [N, D] for decode, `n` INT64 [1] for sample, plus `y` INT64 [N]
    for conditional kinds. Knobs (seed, k, beta, num_samples, false_positive_rate, score) are request
    `parameters`. Tensors travel as JSON `data` or, with the binary tensor data extension, as raw
    little-endian bytes after a JSON header of `Inference-Header-Content-Length` bytes."""
    return await _infer(service, request, model, None)


@models.post("/models/{model}/versions/{model_version}/infer", response_model=InferResponse,
             responses=INFER_RESPONSES, summary="OIP inference on one version", openapi_extra=INFER_DOC)
async def infer_version(model: OipModel, model_version: str, request: Request, service: ServiceDep) -> Response:
    """As the unversioned route; every model has the one version "1" (404 for any other)."""
    return await _infer(service, request, model, model_version)
