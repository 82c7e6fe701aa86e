"""The Open Inference Protocol's (V2) request and response bodies, as pydantic models.

Requests are parsed into `InferRequest`; responses are built as dicts by `service.oip.codec` and
documented by the response models here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_SHAPE = (1, 28, 28)  # the /docs examples are of the quickstart's embedded digits (C, H, W)
EXAMPLE_PIXELS = 28 * 28

class _Tolerant(BaseModel):
    """Fields this server does not use (Triton's client sends several) are ignored, as the protocol allows."""

    model_config = ConfigDict(extra="ignore")


class InputTensor(_Tolerant):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Tolerant):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Tolerant):
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
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *EXAMPLE_SHAPE]}],
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


# --- the model repository extension (Triton's `extension_model_repository.md`) --------------------

class RepositoryIndexRequest(_Tolerant):
    ready: bool = Field(False, description="list only the models ready for inference")


class RepositoryModelRequest(_Tolerant):
    parameters: dict[str, Any] = Field(default_factory=dict, description=(
        "none are needed: `config` and `file:...` overrides are refused (a model is its run directory); "
        "`unload_dependents` is accepted on unload (no model here depends on another)"))


class RepositoryIndexEntry(BaseModel):
    model_config = _example({"name": "default", "version": "1", "state": "READY", "reason": ""})
    name: str = Field(description="the model: its run directory's name (its OIP models are {name}.{operation})")
    version: str | None = Field(None, description="\"1\" for a plain run directory, else its numbered subdirectory")
    state: str = Field(description="READY, UNAVAILABLE (see reason) or LOADING")
    reason: str = Field(description="why it is in that state: its load error, \"unloaded\", or for a READY version "
                                    "why newer files on disk are not served (e.g. a copy still being written)")
