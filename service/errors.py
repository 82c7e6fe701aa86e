"""Domain errors carry their HTTP status; one handler turns any of them into `{"error": "..."}`.

Request-validation errors from FastAPI are rewritten the same way, naming the field, what was
expected and what arrived, so every error a client sees has one shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the client caused or should know about; `status` is the HTTP status code."""

    status: int = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadInputError(ServiceError):
    status = 422


class UnsupportedError(ServiceError):
    status = 400


class UnauthorizedError(ServiceError):
    status = 401

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFoundError(ServiceError):
    status = 404


class PayloadTooLargeError(ServiceError):
    status = 413


class UnsupportedMediaTypeError(ServiceError):
    status = 415


class OverloadedError(ServiceError):
    status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReadyError(ServiceError):
    status = 503


# What each status means here, and an example body: the `responses=` of the routes, for /docs.
STATUSES: dict[int, tuple[str, str]] = {
    400: ("the model cannot run this operation (its kind lacks it, or the run has no classifier or calibration)",
          "model 'default' has no anomaly calibration this service can use (calibration.json); kinds that "
          "support 'anomaly': categorical, gaussian, m2"),
    401: ("VAE_API_TOKEN is set and the bearer token is missing or wrong",
          "Authorization: expected 'Bearer <token>', got nothing"),
    404: ("no such model", "no model named 'nope'; models: default"),
    413: ("body larger than VAE_MAX_BODY_BYTES",
          "body: expected at most 16777216 bytes (VAE_MAX_BODY_BYTES), got 20000000"),
    415: ("a body that is neither JSON nor (for image operations) multipart/form-data",
          "Content-Type: expected application/json or multipart/form-data, got text/plain"),
    422: ("bad input: the message names the field, what was expected and what arrived",
          "k: expected at most 5000 importance samples (VAE_MAX_K), got 100000"),
    429: ("the model's queue is full (VAE_MAX_QUEUE); Retry-After says when to try again",
          "default.elbo: the queue is full (256 requests, VAE_MAX_QUEUE=256); retry in 1 s"),
    503: ("the model is not ready (still loading, or it failed to load), or the server is shutting down",
          "model 'default' is not ready: still loading"),
}


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}  # service.docs puts ErrorResponse there


def error_responses(*statuses: int) -> dict[int, dict]:
    """`responses=` for a route that can answer these statuses: ErrorResponse, with an example.

    By reference rather than `"model": ErrorResponse`, which FastAPI would file under the route's own
    media type (text/plain for /metrics) although errors are always JSON.
    """
    return {status: {"description": STATUSES[status][0], "content": {"application/json": {
        "schema": ERROR_SCHEMA, "example": {"error": STATUSES[status][1]}}}} for status in statuses}


def plural(count: int, noun: str) -> str:
    """`plural(1, "image")` is "1 image", `plural(3, "image")` "3 images"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe_validation_errors(errors, prefix: str = "") -> str:
    """'field: expected ..., got ...' for each pydantic error, joined by '; '."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or "body")
        got = error.get("input")
        shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if error.get("type") == "missing":
            parts.append(f"{field}: required, but missing")
        elif error.get("type") == "extra_forbidden":
            parts.append(f"{field}: not a known field")
        else:
            parts.append(f"{field}: {error.get('msg', 'invalid')}, got {shown}")
    return "; ".join(parts)


def bad_input_from(error: ValidationError, prefix: str = "") -> BadInputError:
    return BadInputError(describe_validation_errors(error.errors(include_url=False), prefix))


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
