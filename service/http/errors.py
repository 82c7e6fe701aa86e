"""One handler turns every error into `{"error": "..."}` with its status; /docs documents that body.

Request-validation errors from FastAPI are rewritten the same way, naming the field, what was
expected and what arrived, so every error a client sees has one shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import STATUSES, ServiceError, describe_validation_errors

log = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """Every error the server answers, whatever its status."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "images: expected pixel values in [0, 1], got values from -0.5 to 1.2 (first offender: image 3)"}]})
    error: str = Field(description="what was expected and what arrived")


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}  # service.http.docs puts ErrorResponse there


def error_responses(*statuses: int) -> dict[int, dict]:
    """`responses=` for a route that can answer these statuses: ErrorResponse, with an example.

    By reference rather than `"model": ErrorResponse`, which FastAPI would file under the route's own
    media type (text/plain for /metrics) although errors are always JSON.
    """
    return {status: {"description": STATUSES[status][0], "content": {"application/json": {
        "schema": ERROR_SCHEMA, "example": {"error": STATUSES[status][1]}}}} for status in statuses}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to `{"error": message}` with its status; nothing escapes as a bare 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_errors(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs"
        elif error.status_code == 405 and message == "Method Not Allowed":
            allowed = (error.headers or {}).get("Allow", "")
            message = f"{request.url.path} does not answer {request.method}; expected {allowed or 'another method'}"
        return error_response(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug, not bad input: log it with its traceback and say so without leaking internals.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); the server log has details")
