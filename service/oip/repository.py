"""The Open Inference Protocol's model repository extension, as Triton defines it.

`POST /v2/repository/index` lists every model of the model directory (loaded or not) with its state;
`POST /v2/repository/models/{name}/load` (re)loads one from its files, `.../unload` stops serving it
until it is loaded again. `{name}` is a run directory's name (`default`), not an OIP model name
(`default.encode`): one load serves every operation of it. The work is `service.core.repository`'s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ValidationError

from service.core.errors import BadInputError, UnsupportedError, bad_input_from
from service.http.auth import require_token
from service.http.bodies import parse_json
from service.http.errors import error_responses
from service.oip.types import RepositoryIndexEntry, RepositoryIndexRequest, RepositoryModelRequest
from service.state import Service, ServiceDep

RunName = Annotated[str, Path(description="the model: its run directory's name", examples=["default"])]

router = APIRouter(prefix="/v2/repository", tags=["open inference protocol (V2): model repository"],
                   dependencies=[Depends(require_token)], responses=error_responses(401, 422))

INDEX_EXAMPLE = [{"name": "default", "version": "1", "state": "READY", "reason": ""},
                 {"name": "digits", "version": "1", "state": "READY", "reason": ""},
                 {"name": "digits", "version": "2", "state": "UNAVAILABLE",
                  "reason": "runs/digits/2: not a complete run (checkpoint.json is missing; did training finish?)"}]
INDEX_RESPONSE = {200: {"description": "one row per model version", "content": {"application/json": {
    "example": INDEX_EXAMPLE}}}}
LOAD_RESPONSES = {
    200: {"description": "the model's versions after the load, as the index lists them",
          "content": {"application/json": {"example": INDEX_EXAMPLE[:1]}}},
    **error_responses(404),
    400: {"description": "some version could not be loaded (the message says which and why; those that could "
                         "are served), or the request asked for a configuration override",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}, "example": {
              "error": "model 'digits' could not be loaded entirely: version 2: runs/digits/2/model.safetensors: "
                       "damaged, its SHA-256 differs from the one recorded in checkpoint.json"}}}},
}


def _body_doc(schema: type[BaseModel], example: dict) -> dict:
    return {"requestBody": {"required": False, "content": {"application/json": {
        "schema": schema.model_json_schema(), "example": example}}}}


async def _optional_body(request: Request, schema: type[BaseModel]):
    """The request's JSON body as `schema`; an empty body is the schema's defaults, as the protocol allows."""
    raw = await request.body()
    if not raw.strip():
        return schema()
    body = parse_json(raw, "a JSON object")
    if not isinstance(body, dict):
        raise BadInputError(f"body: expected a JSON object, got {type(body).__name__}")
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        raise bad_input_from(error) from None


def _check_parameters(parameters: dict, allowed: set[str]) -> None:
    for name in parameters:
        if name == "config" or name.startswith("file:"):
            raise UnsupportedError(f"parameters.{name}: not supported; vae-lab loads a model from its run "
                                   f"directory only (its configuration is the run's config.json)")
        if name not in allowed:
            raise BadInputError(f"parameters.{name}: not a known parameter; expected "
                                f"{', '.join(sorted(allowed)) or 'none'}")


def _rows(service: Service, name: str) -> list[dict]:
    return [row for row in service.repository.index() if row["name"] == name]


@router.post("/index", response_model=list[RepositoryIndexEntry], response_model_exclude_none=True,
             responses=INDEX_RESPONSE, openapi_extra=_body_doc(RepositoryIndexRequest, {"ready": False}),
             summary="Every model in the model directory, loaded or not, one row per version with its state")
async def index(request: Request, service: ServiceDep) -> list[dict]:
    """Every model version found in the model directory or being served: READY, UNAVAILABLE (the
    reason: its load error, `unloaded`, or not polled yet) or LOADING. `{"ready": true}` lists only
    the ready ones. The body is optional."""
    body = await _optional_body(request, RepositoryIndexRequest)
    return service.repository.index(ready_only=body.ready)


@router.post("/models/{name}/load", response_model=list[RepositoryIndexEntry], response_model_exclude_none=True,
             responses=LOAD_RESPONSES, openapi_extra=_body_doc(RepositoryModelRequest, {"parameters": {}}),
             summary="Load (or reload) a model from its run directory; it stays served across polls")
async def load(name: RunName, request: Request, service: ServiceDep) -> list[dict]:
    """Loads and warms up every version of the model whose files changed since they were loaded, or
    that failed before, and serves each once it is ready (the copy served until then answers
    meanwhile). Undoes an unload. 400 if a version could not be loaded, naming it and why; 404 when
    the model directory has no such folder."""
    body = await _optional_body(request, RepositoryModelRequest)
    _check_parameters(body.parameters, set())
    await service.repository.load_now(name)
    return _rows(service, name)


@router.post("/models/{name}/unload", response_model=list[RepositoryIndexEntry], response_model_exclude_none=True,
             responses={**LOAD_RESPONSES, 200: {**LOAD_RESPONSES[200], "content": {"application/json": {"example": [
                 {"name": "default", "state": "UNAVAILABLE", "reason": "unloaded"}]}}}},
             openapi_extra=_body_doc(RepositoryModelRequest, {"parameters": {}}),
             summary="Stop serving a model until it is loaded again (polls do not bring it back)")
async def unload(name: RunName, request: Request, service: ServiceDep) -> list[dict]:
    """Its requests are answered 503 from now on (those under way finish) and its weights are released;
    its folder stays listed by the index as `unloaded`. 404 when there is no such model."""
    body = await _optional_body(request, RepositoryModelRequest)
    _check_parameters(body.parameters, {"unload_dependents"})
    await service.repository.unload_now(name)
    return _rows(service, name)
